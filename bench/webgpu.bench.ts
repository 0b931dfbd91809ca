// Benchmark of the WebGPU backend on the 16B preset (DeepSeek-V2-Lite's shape: 27 layers, 64 experts top-6,
// 2 shared, no q_lora), batch 1, beside bench/cuda.bench.ts: random bf16 weights made on the device
// (random.ts), then for each prompt length a timed prefill and a timed greedy decode (the argmax's four
// bytes read back per token, as the backend's greedyStep does), and where a decode step's device time goes
// (GpuEngine.profile). With --model DIR it also loads that checkpoint through the backend (WebGpuModel, its
// worker and shared memory, as `--backend webgpu` does) and times the load and a decode.
//
//   node dist/bench/webgpu.bench.js [--out results.json] [--gen 64] [--prompts 128,512] [--config FILE] [--model DIR]
//
// --config takes another shape than the preset's (a quick run on a small device, e.g. a fixture's config on SwiftShader).
import { readFileSync, writeFileSync } from 'node:fs';
import { pathToFileURL } from 'node:url';
import { WebGpuModel } from '../host/backends/webgpu/model.js';
import { GpuEngine, type ProfileRow } from '../host/backends/webgpu/engine.js';
import { parseConfig } from '../host/checkpoint/config.js';
import { presetConfig } from '../host/checkpoint/presets.js';

/** Layers per command buffer also timed (GpuEngine.flushLayers; 0: one per step). */
const FLUSH_VARIANTS = [0, 2, 6, 9];

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

/** The same prompt ids as bench/cuda.bench.ts (its LCG, seed 7). */
function promptIds(n: number, vocab: number, seed: number): number[] {
  const ids: number[] = [];
  let s = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    ids.push(s % vocab);
  }
  return ids;
}

interface PromptResult {
  prompt: number;
  prefillMs: number;
  prefillTokPerS: number;
  decodeTokPerS: number;
  decodeStepMs: number;
  /** Decode with FLUSH_VARIANTS' command buffer sizes, timed right after. */
  flushes: { layers: number; tokPerS: number }[];
  profile: ProfileRow[];
}

async function benchRandom(gen: number, prompts: number[], configFile?: string): Promise<Record<string, unknown>> {
  const cfg = configFile ? parseConfig(JSON.parse(readFileSync(configFile, 'utf8')), configFile) : parseConfig(presetConfig('16B')!, 'preset 16B');
  const t0 = performance.now();
  const engine = await GpuEngine.random(cfg, { contextLength: 4096, maxSequences: 1, passTokens: 512 }, 1234);
  const setupS = (performance.now() - t0) / 1000;
  const say = (l: string) => console.log(`  ${l}`);
  say(`${engine.info.device}: random bf16 weights made in ${setupS.toFixed(1)} s, ${(engine.info.weightBytes / 1e9).toFixed(2)} GB, ${(engine.info.activeBytes / 1e9).toFixed(3)} GB read per decode step`);
  const step = (position: number, tokens: number[]) => engine.greedy({ slot: 0, position, tokens, rows: 'last' });
  const flush = engine.flushLayers;
  // Warm-up: every pipeline and bind group once.
  let next = await step(0, promptIds(128, cfg.vocabSize, 7));
  for (let i = 0; i < 4; i++) next = await step(128 + i, [next]);
  const out: PromptResult[] = [];
  for (const prompt of prompts) {
    const ids = promptIds(prompt, cfg.vocabSize, 7);
    const pre: number[] = [];
    for (let r = 0; r < 3; r++) {
      const t = performance.now();
      next = await step(0, ids);
      pre.push(performance.now() - t);
    }
    const t = performance.now();
    for (let i = 0; i < gen; i++) next = await step(prompt + i, [next]);
    const decodeMs = performance.now() - t;
    // The same decode with other command buffer sizes (layers per buffer; 0: the whole step in one), beside it.
    const flushes: { layers: number; tokPerS: number }[] = [];
    for (const layers of FLUSH_VARIANTS) {
      engine.flushLayers = layers;
      const t1 = performance.now();
      for (let i = 0; i < gen; i++) next = await step(prompt + i, [next]);
      flushes.push({ layers, tokPerS: (gen / (performance.now() - t1)) * 1000 });
    }
    engine.flushLayers = flush;
    const profile = await engine.profile({ slot: 0, position: prompt, tokens: [next], rows: 'last' });
    const r: PromptResult = {
      prompt,
      prefillMs: median(pre),
      prefillTokPerS: (prompt / median(pre)) * 1000,
      decodeTokPerS: (gen / decodeMs) * 1000,
      decodeStepMs: decodeMs / gen,
      flushes,
      profile,
    };
    out.push(r);
    say(`prompt ${prompt}: prefill ${r.prefillMs.toFixed(1)} ms = ${r.prefillTokPerS.toFixed(1)} tok/s; decode ${gen} tokens ${r.decodeTokPerS.toFixed(1)} tok/s (${r.decodeStepMs.toFixed(3)} ms/step, a command buffer per ${flush} layers)`);
    say(`  decode with a command buffer per N layers (0: per step): ${flushes.map((f) => `${f.layers}: ${f.tokPerS.toFixed(1)}`).join(', ')} tok/s`);
    say(`  profile after ${prompt} tokens (each family alone, submit to done, median of 5; less "(no dispatch)" is its share):`);
    for (const p of profile) say(`    ${p.tag.padEnd(20)} ${String(p.dispatches).padStart(4)} dispatches ${p.ms.toFixed(3).padStart(8)} ms`);
  }
  engine.close();
  return {
    preset: `${configFile ?? '16B (DeepSeek-V2-Lite shape)'}, random bf16 weights generated on the device`,
    device: engine.info.device,
    weightBytes: engine.info.weightBytes,
    activeBytesPerToken: engine.info.activeBytes,
    setupSeconds: setupS,
    generatedTokens: gen,
    prompts: out,
  };
}

async function benchCheckpoint(dir: string, gen: number): Promise<Record<string, unknown>> {
  const t0 = performance.now();
  const model = await WebGpuModel.load(dir, { passTokens: 512 });
  const loadS = (performance.now() - t0) / 1000;
  const seq = model.createSequence();
  const ids = promptIds(128, model.config.vocabSize, 7);
  let next = model.greedyStep(seq, ids);
  for (let i = 0; i < 4; i++) next = model.greedyStep(seq, [next]);
  model.truncate(seq, 0);
  next = model.greedyStep(seq, ids);
  const t = performance.now();
  for (let i = 0; i < gen; i++) next = model.greedyStep(seq, [next]);
  const decodeTokPerS = (gen / (performance.now() - t)) * 1000;
  const r = { dir, layers: model.config.numHiddenLayers, weightBytes: model.weightBytes, loadSeconds: loadS, loadGBs: model.weightBytes / 1e9 / loadS, decodeTokPerS };
  console.log(`  checkpoint ${dir} (${r.layers} layers): ${(r.weightBytes / 1e9).toFixed(2)} GB loaded in ${loadS.toFixed(1)} s = ${r.loadGBs.toFixed(2)} GB/s; decode after 128 tokens ${decodeTokPerS.toFixed(1)} tok/s (worker, greedyStep)`);
  await model.close();
  return r;
}

async function main(argv: string[]): Promise<void> {
  const get = (name: string) => {
    const i = argv.indexOf(`--${name}`);
    return i >= 0 ? argv[i + 1] : undefined;
  };
  const gen = Number(get('gen') ?? 64);
  const prompts = (get('prompts') ?? '128,512').split(',').map(Number);
  if (!Number.isInteger(gen) || gen < 1) throw new Error(`--gen is "${get('gen')}": expected a whole number of at least 1`);
  if (prompts.some((p) => !Number.isInteger(p) || p < 1 || p + gen > 4096)) throw new Error(`--prompts is "${get('prompts')}": expected lengths from 1 to ${4096 - gen}`);
  console.log(`WebGPU backend, ${get('config') ?? '16B shape'}, batch 1`);
  const result: Record<string, unknown> = { random: await benchRandom(gen, prompts, get('config')) };
  const dir = get('model');
  if (dir) result.checkpoint = await benchCheckpoint(dir, gen);
  const out = get('out');
  if (out) writeFileSync(out, JSON.stringify(result, null, 2));
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) {
  main(process.argv.slice(2)).catch((e) => {
    console.error(e instanceof Error ? e.message : e);
    process.exit(1);
  });
}
