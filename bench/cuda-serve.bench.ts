// Serving throughput of the CUDA backend on the 16B preset (issue 13, point 4, the GPU row): aggregate decode
// tok/s at 1, 2, 4 and 8 concurrent streams beside the bytes model's prediction, and the time to first token
// of a new request while 8 streams decode. Random weights made on the device (bf16, or q8 with --quant q8).
//
//   node dist/bench/cuda-serve.bench.js [--streams 1,2,4,8] [--gen 48] [--prompt 32] [--ttft-prompts 32,128]
//       [--prefill-chunk 128] [--quant q8] [--batch-pdl 0] [--out results.json]
//
// It steps forward(batch) as the server's scheduler does (host/server/scheduler.ts): every step holds one
// token of each decoding stream and the chunks of new prompts (at most prefill-chunk tokens a step), the
// logits rows come back to the host and each stream's token is their argmax there (greedy sampling). HTTP
// and SSE are not in these numbers: a 16B checkpoint with a tokenizer does not exist on the GPU machine, so
// bench/serve-throughput.mjs (the CPU row, which runs the real server) cannot load one there.
//
// Measured as the CPU row (bench/RESULTS.md, "Serving throughput"): the steady state is the steps in which all
// N streams decode one token (no prompt chunk); aggregate tok/s = N x those steps / the wall time from the
// first one's start to the last one's end (the host's argmax between steps included). Bytes model: a step
// reads every non-routed weight once and each distinct routed expert it chose once, so bytes(N) = active -
// moeLayers x k x expert + distinct(N) x expert, with distinct(N) counted on the device (the batched step
// returns it); at the same bandwidth tok/s(N) = N x tok/s(1) x bytes(1) / bytes(N).
import { writeFileSync } from 'node:fs';
import { randomCudaModel, type CudaModel } from '../host/backends/cuda/model.js';
import { isMoeLayer, parseConfig } from '../host/checkpoint/config.js';
import { presetConfig } from '../host/checkpoint/presets.js';
import type { BatchEntry, Sequence } from '../host/model/backend.js';
import { argmax } from '../host/generate/sampler.js';

function flag(name: string, fallback: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : fallback;
}

const streams = flag('streams', '1,2,4,8').split(',').map(Number);
const gen = Number(flag('gen', '48'));
const promptTokens = Number(flag('prompt', '32'));
const ttftPrompts = flag('ttft-prompts', '32,128').split(',').map(Number);
const chunk = Number(flag('prefill-chunk', '128'));
const quant = flag('quant', 'bf16') as 'bf16' | 'q8';
const outPath = flag('out', '');
const batchPdl = flag('batch-pdl', '1') !== '0';

const cfg = parseConfig(presetConfig('16B')!, 'preset 16B');
const most = Math.max(...streams, 8);
let seed = 7;
const promptIds = (n: number) =>
  Array.from({ length: n }, () => {
    seed = (seed * 1103515245 + 12345) % 2 ** 31;
    return 100 + (seed % (cfg.vocabSize - 200));
  });

interface Stream {
  seq: Sequence;
  prompt: number[];
  fed: number;
  /** Tokens generated; the last one is fed at the next step. */
  out: number[];
  want: number;
  arrived: number;
  first?: number;
}
interface Step {
  decodes: number;
  chunks: number;
  start: number;
  end: number;
  experts: number;
}

/** The scheduler's loop over forward(batch): decode tokens of every running stream and prompt chunks up to the budget. */
class Loop {
  readonly steps: Step[] = [];
  readonly live: Stream[] = [];
  constructor(private readonly model: CudaModel, private readonly moeLayers: number) {}

  add(prompt: number[], want: number): Stream {
    const s: Stream = { seq: this.model.createSequence(), prompt, fed: 0, out: [], want, arrived: performance.now() };
    this.live.push(s);
    return s;
  }

  step(): void {
    const entries: BatchEntry[] = [];
    const who: Stream[] = [];
    let budget = chunk;
    let chunks = 0;
    for (const s of this.live) {
      if (s.fed < s.prompt.length) {
        const n = Math.min(chunk, s.prompt.length - s.fed);
        if (n > budget) continue;
        budget -= n;
        chunks++;
        const last = s.fed + n === s.prompt.length;
        entries.push({ sequence: s.seq, tokens: s.prompt.slice(s.fed, s.fed + n), logits: last ? 'last' : 'none' });
        s.fed += n;
        who.push(last ? s : (null as unknown as Stream));
      } else {
        entries.push({ sequence: s.seq, tokens: [s.out[s.out.length - 1]] });
        who.push(s);
      }
    }
    const start = performance.now();
    const rows = this.model.forward(entries);
    const decodes = entries.length - chunks;
    // A lone decode entry runs the single-sequence step, which reads top-k experts per MoE layer.
    const experts = decodes > 1 ? this.model.lastStepExperts : decodes * this.moeLayers * cfg.numExpertsPerTok;
    rows.forEach((r, i) => {
      const s = who[i];
      if (!s) return;
      s.out.push(argmax(r));
      s.first ??= performance.now();
    });
    this.steps.push({ decodes, chunks, start, end: performance.now(), experts });
    for (const s of this.live.filter((x) => x.out.length >= x.want)) this.finish(s);
  }

  finish(s: Stream): void {
    this.model.free(s.seq);
    this.live.splice(this.live.indexOf(s), 1);
  }
}

const t0 = performance.now();
const model = await randomCudaModel(cfg, 1234, { contextLength: 1024, maxSequences: most + 1, passTokens: 512, quant, decode: { batchPdl } });
const moeLayers = Array.from({ length: cfg.numHiddenLayers }, (_, l) => l).filter((l) => isMoeLayer(cfg, l)).length;
const k = cfg.numExpertsPerTok;
const bytesOf = (distinct: number) => model.activeBytes - moeLayers * k * model.expertBytes + distinct * model.expertBytes;
console.log(`  ${model.device}`);
console.log(`  16B ${quant}${batchPdl ? '' : ' (batched graphs without PDL)'}: ready in ${((performance.now() - t0) / 1000).toFixed(1)} s; ${(model.activeBytes / 1e9).toFixed(3)} GB read per decode step at batch 1, expert ${(model.expertBytes / 1e6).toFixed(2)} MB, ${moeLayers} MoE layers x top-${k}; batched steps of up to ${model.batchMax}`);

const loop = new Loop(model, moeLayers);
// Warm-up: every batch size's graph captured, cuBLAS heuristics for the chunk sizes.
for (const n of [...streams, ...ttftPrompts.map(() => 8)]) {
  const ss = Array.from({ length: n }, () => loop.add(promptIds(promptTokens), 3));
  while (ss.some((s) => loop.live.includes(s))) loop.step();
}
for (const p of ttftPrompts) {
  const s = loop.add(promptIds(p), 1);
  while (loop.live.includes(s)) loop.step();
}

// Where a batched step's time goes, at 2 and 8 sequences (events between the stages of one uncaptured step).
for (const n of [2, 8].filter((x) => x <= model.batchMax)) {
  const ss = Array.from({ length: n }, () => loop.add(promptIds(promptTokens), 1 << 20));
  while (ss.some((s) => s.out.length === 0)) loop.step();
  const table = model.profileDecodeBatch(ss.map((s) => s.seq), ss.map((s) => s.out[s.out.length - 1]));
  for (const l of table.split('\n')) if (l.trim()) console.log(`  profile ${n}: ${l}`);
  for (const s of ss) loop.finish(s);
}

const rows: Record<string, number>[] = [];
for (const n of streams) {
  const from = loop.steps.length;
  const ss = Array.from({ length: n }, () => loop.add(promptIds(promptTokens), gen));
  while (ss.some((s) => loop.live.includes(s))) loop.step();
  const full = loop.steps.slice(from).filter((s) => s.decodes === n && s.chunks === 0);
  const wall = (full[full.length - 1].end - full[0].start) / 1000;
  const forwardS = full.reduce((t, s) => t + (s.end - s.start), 0) / 1000;
  const distinct = full.reduce((t, s) => t + s.experts, 0) / full.length;
  rows.push({ streams: n, steps: full.length, tok_s: (n * full.length) / wall, forward_tok_s: (n * full.length) / forwardS, distinct_experts_per_step: distinct, bytes_per_step: bytesOf(distinct) });
  console.log(`  ${n} streams: ${rows[rows.length - 1].tok_s.toFixed(1)} tok/s`);
}
const one = rows.find((r) => r.streams === 1) ?? rows[0];
for (const r of rows) {
  r.predicted_tok_s = ((r.streams * one.tok_s) / one.streams) * (one.bytes_per_step / r.bytes_per_step);
  r.of_prediction = r.tok_s / r.predicted_tok_s;
}

/** Time to first token of a p-token prompt while `busy` streams decode (they run on through it). */
function ttft(p: number, busy: number): number {
  const bg = Array.from({ length: busy }, () => loop.add(promptIds(promptTokens), 1 << 20));
  while (bg.some((s) => s.out.length === 0)) loop.step();
  if (busy > 0) loop.step();
  const s = loop.add(promptIds(p), 1);
  while (loop.live.includes(s)) loop.step();
  for (const b of bg) loop.finish(b);
  return (s.first! - s.arrived) / 1000;
}
const ttfts = ttftPrompts.map((p) => ({ prompt_tokens: p, alone_s: ttft(p, 0), busy_s: ttft(p, 8) }));

const gb = (b: number) => (b / 1e9).toFixed(3);
console.log('| streams | aggregate tok/s | forward-only tok/s | distinct experts / step | GB read / step | predicted tok/s | measured / predicted |');
console.log('|---:|---:|---:|---:|---:|---:|---:|');
for (const r of rows) {
  console.log(`| ${r.streams} | ${r.tok_s.toFixed(1)} | ${r.forward_tok_s.toFixed(1)} | ${r.distinct_experts_per_step.toFixed(1)} of ${moeLayers * k * r.streams} | ${gb(r.bytes_per_step)} | ${r.predicted_tok_s.toFixed(1)} | ${(r.of_prediction * 100).toFixed(0)}% |`);
}
console.log('');
console.log('| prompt tokens | TTFT alone (s) | TTFT with 8 streams decoding (s) |');
console.log('|---:|---:|---:|');
for (const t of ttfts) console.log(`| ${t.prompt_tokens} | ${t.alone_s.toFixed(4)} | ${t.busy_s.toFixed(4)} |`);
const result = { preset: `16B random ${quant}${batchPdl ? '' : ', batched graphs without PDL'}`, device: model.device, gen, prompt_tokens: promptTokens, prefill_chunk: chunk, batch_max: model.batchMax, rows, ttfts };
if (outPath) writeFileSync(outPath, JSON.stringify(result, null, 2) + '\n');
await model.close();
