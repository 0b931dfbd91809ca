// Benchmark of the CUDA backend on the 16B preset (DeepSeek-V2-Lite's shape: 27 layers, 64 experts
// top-6, 2 shared, no q_lora) with random weights made on the device (bf16, or q8 with --quant q8),
// one sequence (batch 1).
//
//   node dist/bench/cuda.bench.js [--out results.json] [--prompt 128] [--gen 128] [--quant q8] [--pdl 0]
//
// Prints a table and writes every number (and the method) as JSON.
import { writeFileSync } from 'node:fs';
import { pathToFileURL } from 'node:url';
import { openLibrary } from '../host/backends/cuda/ffi.js';
import { randomCudaModel } from '../host/backends/cuda/model.js';
import { parseConfig } from '../host/checkpoint/config.js';
import { presetConfig } from '../host/checkpoint/presets.js';

/** DeepSeek-V2-Lite's config (the synth command's 16B preset); weights made up on the device. */
const PRESET_16B = presetConfig('16B')!;

export interface BenchOptions {
  prompt?: number;
  gen?: number;
  repeats?: number;
  seed?: number;
  /** Longer prompts timed once each (prefill throughput at size). */
  longPrompts?: number[];
  /** Weights made as bf16 (default) or q8. */
  quant?: 'bf16' | 'q8';
  /** Programmatic dependent launch in the decode graph (default true). */
  pdl?: boolean;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

function promptIds(n: number, vocab: number, seed: number): Int32Array {
  const ids = new Int32Array(n);
  let s = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    ids[i] = s % vocab;
  }
  return ids;
}

export async function benchCuda(opts: BenchOptions = {}): Promise<Record<string, unknown>> {
  const prompt = opts.prompt ?? 128;
  const gen = opts.gen ?? 128;
  const repeats = opts.repeats ?? 5;
  const longPrompts = opts.longPrompts ?? [512, 2048];
  const cfg = parseConfig(PRESET_16B, 'preset 16B');
  const lib = openLibrary();
  const copyGBs = lib.bandwidthProbe(2 ** 31, 21);

  const say = (line: string) => console.log(`  ${line}`);
  say(`copy bandwidth ${copyGBs.toFixed(0)} GB/s (bytes read + written)`);
  const t0 = performance.now();
  const model = await randomCudaModel(cfg, opts.seed ?? 1234, { contextLength: 4096, passTokens: 512, quant: opts.quant, decode: { pdl: opts.pdl } });
  const setupMs = performance.now() - t0;
  try {
    const vocab = cfg.vocabSize;
    const ids = promptIds(prompt, vocab, 7);
    const seq = model.createSequence();
    const fresh = () => model.truncate(seq, 0);

    // Warm-up: cuBLAS heuristics, the decode graph's capture, every kernel once.
    let next = model.greedyStep(seq, ids);
    for (let i = 0; i < 4; i++) next = model.greedyStep(seq, [next]);
    model.generate(seq, next, 8);
    say(`model ready in ${(setupMs / 1000).toFixed(1)} s: ${(model.weightBytes / 1e9).toFixed(2)} GB of weights, ${(model.activeBytes / 1e9).toFixed(3)} GB read per decode step`);

    // Where a step's time goes (events between stages of one uncaptured step).
    fresh();
    next = model.greedyStep(seq, ids);
    const profile = model.profileDecode(seq, next);
    for (const l of profile.split('\n')) if (l.trim()) say(`profile: ${l}`);

    const prefillMs: number[] = [];
    for (let r = 0; r < repeats; r++) {
      fresh();
      const t = performance.now();
      model.greedyStep(seq, ids);
      prefillMs.push(performance.now() - t);
    }
    say(`prefill ${prompt}: ${prefillMs.map((x) => x.toFixed(2)).join(' ')} ms`);
    const long: { tokens: number; ms: number; tokPerS: number }[] = [];
    for (const n of longPrompts) {
      const lid = promptIds(n, vocab, 11);
      fresh();
      model.greedyStep(seq, lid); // warm
      const runs: number[] = [];
      for (let r = 0; r < 3; r++) {
        fresh();
        const t = performance.now();
        model.greedyStep(seq, lid);
        runs.push(performance.now() - t);
      }
      const ms = median(runs);
      long.push({ tokens: n, ms, tokPerS: (n / ms) * 1000 });
      say(`prefill ${n}: ${ms.toFixed(1)} ms`);
    }

    // Decode driven from TypeScript: one FFI call (graph replay + argmax id back) per token.
    const hostRuns: { tokPerS: number; medianStepMs: number }[] = [];
    for (let r = 0; r < 3; r++) {
      fresh();
      next = model.greedyStep(seq, ids);
      const steps: number[] = [];
      const t = performance.now();
      for (let i = 0; i < gen; i++) {
        const s = performance.now();
        next = model.greedyStep(seq, [next]);
        steps.push(performance.now() - s);
      }
      const total = performance.now() - t;
      hostRuns.push({ tokPerS: (gen / total) * 1000, medianStepMs: median(steps) });
      say(`decode (host loop): ${((gen / total) * 1000).toFixed(1)} tok/s`);
    }
    // The same through the backend interface: forward() of one token, its logits row copied back.
    const forwardRuns: number[] = [];
    for (let r = 0; r < 3; r++) {
      fresh();
      next = model.greedyStep(seq, ids);
      const t = performance.now();
      for (let i = 0; i < gen; i++) model.forward([{ sequence: seq, tokens: [next] }]);
      forwardRuns.push((gen / (performance.now() - t)) * 1000);
      say(`decode (forward, logits back): ${forwardRuns[forwardRuns.length - 1].toFixed(1)} tok/s`);
    }
    // Decode with the token fed back on the device: graph replays back to back.
    const devRuns: number[] = [];
    for (let r = 0; r < 3; r++) {
      fresh();
      next = model.greedyStep(seq, ids);
      const t = performance.now();
      model.generate(seq, next, gen);
      devRuns.push(((performance.now() - t) / gen));
      say(`decode (device loop): ${(1000 / devRuns[devRuns.length - 1]).toFixed(1)} tok/s`);
    }
    // The same after a long prompt: attention over 2K positions.
    fresh();
    next = model.greedyStep(seq, promptIds(2048, vocab, 13));
    const tl = performance.now();
    model.generate(seq, next, gen);
    const longCtxStepMs = (performance.now() - tl) / gen;

    const active = model.activeBytes;
    const rooflineMeasured = (copyGBs * 1e9) / active;
    const roofline427 = 4.27e12 / active;
    const decodeHost = median(hostRuns.map((r) => r.tokPerS));
    const decodeDevice = 1000 / median(devRuns);
    const prefill = (prompt / median(prefillMs)) * 1000;
    const result = {
      preset: `16B (DeepSeek-V2-Lite shape), random ${opts.quant ?? 'bf16'} weights generated on the device${opts.pdl === false ? ', no PDL' : ''}`,
      device: model.device,
      promptTokens: prompt,
      generatedTokens: gen,
      weightBytes: model.weightBytes,
      activeBytesPerToken: active,
      copyBandwidthGBs: copyGBs,
      rooflineTokPerS: { atMeasuredCopy: rooflineMeasured, at4_27TBs: roofline427 },
      setupSeconds: setupMs / 1000,
      prefill: { tokens: prompt, medianMs: median(prefillMs), tokPerS: prefill, runsMs: prefillMs },
      prefillLong: long,
      decode: {
        hostLoopTokPerS: decodeHost,
        hostLoopMedianStepMs: median(hostRuns.map((r) => r.medianStepMs)),
        forwardTokPerS: median(forwardRuns),
        deviceLoopTokPerS: decodeDevice,
        deviceLoopStepMs: median(devRuns),
        percentOfRooflineHost: (100 * decodeHost) / roofline427,
        percentOfRooflineDevice: (100 * decodeDevice) / roofline427,
        after2kPromptStepMs: longCtxStepMs,
      },
      decodeProfile: profile.split('\n').filter((l) => l.trim() !== ''),
    };
    return result;
  } finally {
    await model.close();
  }
}

function printTable(r: Record<string, any>): void {
  const f = (x: number, d = 1) => x.toFixed(d);
  console.log(`\nCUDA bridge, ${r.preset}, batch 1 on ${r.device}`);
  console.log(`  weights ${f(r.weightBytes / 1e9, 2)} GB, read per decode step ${f(r.activeBytesPerToken / 1e9, 3)} GB`);
  console.log(`  copy bandwidth ${f(r.copyBandwidthGBs, 0)} GB/s -> roofline ${f(r.rooflineTokPerS.atMeasuredCopy, 0)} tok/s (at 4.27 TB/s: ${f(r.rooflineTokPerS.at4_27TBs, 0)})`);
  console.log(`  prefill ${r.prefill.tokens} tokens: ${f(r.prefill.medianMs, 2)} ms = ${f(r.prefill.tokPerS, 0)} tok/s`);
  for (const l of r.prefillLong) console.log(`  prefill ${l.tokens} tokens: ${f(l.ms, 1)} ms = ${f(l.tokPerS, 0)} tok/s`);
  console.log(`  decode (TS loop, one FFI call per token): ${f(r.decode.hostLoopTokPerS, 1)} tok/s (${f(r.decode.percentOfRooflineHost)}% of roofline), median step ${f(r.decode.hostLoopMedianStepMs, 3)} ms`);
  console.log(`  decode (forward(), logits row back):      ${f(r.decode.forwardTokPerS, 1)} tok/s`);
  console.log(`  decode (device loop, graph replays):       ${f(r.decode.deviceLoopTokPerS, 1)} tok/s (${f(r.decode.percentOfRooflineDevice)}% of roofline), ${f(r.decode.deviceLoopStepMs, 3)} ms/step`);
  console.log(`  decode step after a 2048-token prompt: ${f(r.decode.after2kPromptStepMs, 3)} ms`);
  console.log('  one decode step by stage (uncaptured, events between stages):');
  for (const l of r.decodeProfile) console.log(`    ${l}`);
}

async function main(argv: string[]): Promise<void> {
  const get = (name: string) => {
    const i = argv.indexOf(`--${name}`);
    return i >= 0 ? argv[i + 1] : undefined;
  };
  const quant = get('quant');
  if (quant !== undefined && quant !== 'bf16' && quant !== 'q8') throw new Error(`--quant is "${quant}": expected bf16 or q8`);
  const r = await benchCuda({ prompt: Number(get('prompt') ?? 128), gen: Number(get('gen') ?? 128), quant, pdl: get('pdl') !== '0' });
  printTable(r);
  const out = get('out');
  if (out) writeFileSync(out, JSON.stringify(r, null, 2) + '\n');
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main(process.argv.slice(2)).catch((e) => {
    console.error(`error: ${(e as Error).message}`);
    process.exit(1);
  });
}
