import type { DeepSeekConfig } from '../../checkpoint/config.js';
import { loadBackend } from '../../backends/load.js';
import { fail } from '../../errors.js';
import { argmax } from '../../generate/sampler.js';
import type { ModelBackend } from '../../model/backend.js';
import { Model } from '../../model/model.js';
import { modelSchema, parameterCounts } from '../../model/schema.js';
import { chosenSimd, type Runtime } from '../../runtime/runtime.js';
import { profileKernels, type KernelTime } from '../../runtime/kernel-profile.js';
import { loadOptions } from '../load.js';
import { loadProgress } from '../progress.js';
import { BACKEND_FLAG, MODEL_FLAG, MEMORY_LIMIT_FLAG, QUANT_FLAG, THREADS_FLAG, type Command } from './command.js';

/**
 * A deterministic prompt of n ids: BOS (when the config names one), then ids spread over the vocabulary by a
 * multiplicative hash, so that every run routes the same tokens to the same experts.
 */
export function benchPrompt(c: DeepSeekConfig, n: number): number[] {
  const ids: number[] = [];
  if (c.bosTokenId !== null && c.bosTokenId < c.vocabSize) ids.push(c.bosTokenId);
  for (let i = ids.length; i < n; i++) ids.push(Number((BigInt(i) * 2654435761n + 12345n) % BigInt(c.vocabSize)));
  return ids.slice(0, n);
}


const MB = 1024 * 1024;
const PROBE_MAX_BYTES = 1024 * MB;
/** Below this the probed bytes may sit in the last-level cache (300 MiB on some hosts). */
const PROBE_CACHE_BYTES = 512 * MB;

/**
 * The read bandwidth of this machine, now, with the model's threads: the read_probe kernel streaming the
 * first GiB of the model's own memory (its weights), median of three passes, in GB/s.
 */
function probeBandwidth(rt: Runtime, bytes: number): number {
  const out = rt.arena.alloc(4, 'probe sum');
  const rates: number[] = [];
  for (let i = 0; i < 3; i++) {
    const t = performance.now();
    rt.kernels.read_probe(rt.arena.start, bytes, out);
    rates.push(bytes / (performance.now() - t) / 1e6);
  }
  rt.arena.release(out);
  return rates.sort((a, b) => a - b)[1];
}

export const benchCommand: Command = {
  name: 'bench',
  summary: 'measure prefill and decode speed and peak memory on a checkpoint',
  description:
    'Loads the model, runs a deterministic prompt of --prompt-tokens ids as one prefill (in passes of 256 tokens when longer), then decodes --gen-tokens ' +
    'greedy tokens, and prints prefill tok/s, decode tok/s (with the GB/s of weights that implies), the read bandwidth ' +
    'the read_probe kernel measures over the model\'s memory right before and after decode, and peak memory. ' +
    'One warm-up token runs first and is forgotten. With --json the last stdout line is ' +
    '{"prefill_tok_s":..,"decode_tok_s":..,"peak_rss_mb":..,"decode_gb_s":..,"read_probe_gb_s":..,"load_s":..,"load_bytes":..,' +
    '"load_gb_s":..,"load_peak_rss_bytes":..,"weight_bytes":..,"active_bytes":..,"peak_rss_bytes":..,"memories":..} ' +
    '(load_peak_rss_bytes: the peak resident memory when the load ends, before any token runs; memories: the WebAssembly memories of a CPU model).',
  flags: [
    { ...MODEL_FLAG, required: true },
    QUANT_FLAG,
    { name: 'prompt-tokens', kind: 'int', value: 'N', min: 1, help: 'prompt length for the prefill pass (default 64)' },
    { name: 'gen-tokens', kind: 'int', value: 'N', min: 1, help: 'tokens to decode (default 32)' },
    THREADS_FLAG,
    BACKEND_FLAG,
    MEMORY_LIMIT_FLAG,
    { name: 'json', kind: 'boolean', help: 'end with one JSON line of the results' },
    { name: 'profile', kind: 'boolean', help: 'after the timed run, decode --gen-tokens more tokens with every kernel call timed and print where a token\'s time goes' },
  ],
  async run(flags) {
    const dir = flags.model as string;
    const promptTokens = (flags['prompt-tokens'] as number | undefined) ?? 64;
    const genTokens = (flags['gen-tokens'] as number | undefined) ?? 32;
    const context = promptTokens + genTokens * (flags.profile === true ? 2 : 1);
    const progress = loadProgress(`loading ${dir}`);
    const loadStart = performance.now();
    let loadedBytes = 0;
    let model: ModelBackend;
    try {
      model = await loadBackend(dir, {
        ...loadOptions(flags),
        contextLength: context,
        onProgress: (read, total) => {
          loadedBytes = read;
          progress.onProgress(read, total);
        },
      });
    } catch (e) {
      // The one limit a benchmark hits first: say which numbers to change.
      if (e instanceof Error && /exceed max_position_embeddings|context length must be/.test(e.message)) {
        fail(`--prompt-tokens + --gen-tokens (${context}) is more than this model's context: ${e.message}`);
      }
      throw e;
    }
    progress.done();
    const loadSecs = (performance.now() - loadStart) / 1000;
    // Before any token runs, so it is the load's own peak (the weights, the staging, the runtime), to hold
    // against the weights it produced.
    const loadRssBytes = process.resourceUsage().maxRSS * 1024;
    try {
      const cfg = model.config;
      const params = parameterCounts(modelSchema(cfg));
      const prompt = benchPrompt(cfg, promptTokens);
      // On the CPU the read probe streams the model's own memory; other backends have no probe here.
      const rt = model instanceof Model ? model.rt : null;
      if (flags.profile === true && !rt) fail(`--profile times the WebAssembly kernels; it runs on --backend cpu only`);

      // Warm-up: one token through every layer (JIT, first touch of scratch memory), then forgotten.
      const sequence = model.createSequence();
      const step = (tokens: ArrayLike<number>): Float32Array => model.forward([{ sequence, tokens }])[0];
      step(prompt.slice(0, 1));
      model.truncate(sequence, 0);

      // The probe runs right before and after decode, so the two see the same machine.
      const probeBytes = rt ? Math.floor(Math.min(rt.arena.used - rt.arena.start, PROBE_MAX_BYTES) / 64) * 64 : 0;
      let t = performance.now();
      let logits = step(prompt);
      const prefillMs = performance.now() - t;
      const probeBefore = rt ? probeBandwidth(rt, probeBytes) : 0;
      t = performance.now();
      for (let k = 0; k < genTokens; k++) logits = step([argmax(logits)]);
      const decodeMs = performance.now() - t;
      const readGbs = rt ? (probeBefore + probeBandwidth(rt, probeBytes)) / 2 : 0;

      const prefillTokS = (promptTokens * 1000) / prefillMs;
      const decodeTokS = (genTokens * 1000) / decodeMs;
      const activeBytes = model.activeBytes;
      const decodeGbs = (activeBytes * decodeTokS) / 1e9;
      const probeNote = probeBytes < PROBE_CACHE_BYTES ? `; only ${(probeBytes / MB).toFixed(0)} MiB, which may sit in cache` : '';
      const peakRssMb = process.resourceUsage().maxRSS / 1024;
      const calibration = rt ? (await chosenSimd()).calibration : undefined;
      const lines = [
        `model    ${dir}: ${cfg.modelType}, ${cfg.numHiddenLayers} layers, ${(params.total / 1e9).toFixed(2)} B parameters ` +
          `(${(params.active / 1e9).toFixed(2)} B read per token), weights ${model.quant === 'stored' ? 'as stored' : model.quant}, ${model.device}`,
        `load     ${loadSecs.toFixed(1)} s, ${(loadedBytes / 1e9).toFixed(2)} GB of checkpoint read at ${(loadedBytes / loadSecs / 1e9).toFixed(2)} GB/s; ` +
          `peak RSS ${(loadRssBytes / 1e9).toFixed(2)} GB for ${(model.weightBytes / 1e9).toFixed(2)} GB of weights (${((100 * loadRssBytes) / model.weightBytes - 100).toFixed(1)}% over)`,
        `prefill  ${promptTokens} tokens in ${(prefillMs / 1000).toFixed(2)} s: ${prefillTokS.toFixed(2)} tok/s`,
        `decode   ${genTokens} tokens in ${(decodeMs / 1000).toFixed(2)} s: ${decodeTokS.toFixed(2)} tok/s ` +
          `(${(decodeMs / genTokens).toFixed(1)} ms/token, ~${(activeBytes / 1e6).toFixed(0)} MB of weights each: ${decodeGbs.toFixed(1)} GB/s)`,
        ...(rt
          ? [
              `read     ${readGbs.toFixed(1)} GB/s read probe around decode (same threads, ${(probeBytes / MB).toFixed(0)} MiB of model memory${probeNote}): ` +
                `decode streams ${((100 * decodeGbs) / readGbs).toFixed(0)}% of it`,
            ]
          : []),
        `memory   peak RSS ${peakRssMb.toFixed(0)} MB${rt ? `, wasm arena ${(rt.arena.highWater / MB).toFixed(0)} MiB` : ''}`,
        ...(calibration
          ? [
              `simd     the ${calibration.level === 'relaxed' ? 'relaxed' : 'plain SIMD128'} build, as this machine's calibration chose it ` +
                `(plain time / relaxed time: ${Object.entries(calibration.speedups).map(([k, v]) => `${k} ${v.toFixed(2)}`).join(', ')}; ` +
                `${calibration.file ? `kept in ${calibration.file}` : 'not kept: the cache folder is not writable'}; DEEPWASM_SIMD=plain|relaxed overrides it)`,
            ]
          : []),
      ];
      if (flags.profile === true && rt) {
        const times = profileKernels((model as Model).runtimes, () => {
          for (let k = 0; k < genTokens; k++) logits = step([argmax(logits)]);
        });
        const total = times.kernels.reduce((n, t) => n + t.ms, 0) / genTokens;
        const perToken = (t: KernelTime): string =>
          `${(t.ms / genTokens).toFixed(3).padStart(8)} ms/token  ${(t.calls / genTokens).toFixed(1).padStart(5)} calls/token`;
        lines.push(`profile  ${total.toFixed(2)} ms/token inside kernels, by kernel:`);
        for (const t of times.kernels) lines.push(`  ${t.name.padEnd(16)} ${perToken(t)}`);
        lines.push(`by matrix (the matmul rows above, by weights; GB/s of weights read, and its share of the ${readGbs.toFixed(1)} GB/s probe):`);
        for (const m of times.matrices) {
          const gbs = m.bytes / m.ms / 1e6;
          lines.push(
            `  ${m.name.padEnd(40)} ${perToken(m)} ${(m.bytes / genTokens / 1e6).toFixed(1).padStart(7)} MB/token ` +
              `${gbs.toFixed(1).padStart(5)} GB/s ${((100 * gbs) / readGbs).toFixed(0).padStart(3)}%`,
          );
        }
      }
      process.stdout.write(lines.join('\n') + '\n');
      if (flags.json === true) {
        const round = (x: number): number => Math.round(x * 100) / 100;
        const json = {
          prefill_tok_s: round(prefillTokS),
          decode_tok_s: round(decodeTokS),
          peak_rss_mb: round(peakRssMb),
          decode_gb_s: round(decodeGbs),
          ...(rt ? { read_probe_gb_s: round(readGbs) } : {}),
          load_s: round(loadSecs),
          load_bytes: loadedBytes,
          load_gb_s: round(loadedBytes / loadSecs / 1e9),
          load_peak_rss_bytes: loadRssBytes,
          weight_bytes: model.weightBytes,
          active_bytes: activeBytes,
          peak_rss_bytes: process.resourceUsage().maxRSS * 1024,
          ...(model instanceof Model ? { memories: model.runtimes.length } : {}),
        };
        process.stdout.write(JSON.stringify(json) + '\n');
      }
    } finally {
      await model.close();
    }
  },
};
