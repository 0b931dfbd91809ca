#!/usr/bin/env node
// Batched decode steps against one-sequence steps, paired in one process (issue 13 point 4 without the
// server): a shared machine moves absolute tok/s by tens of percent from minute to minute, so every round
// times one step of one sequence and one step of N sequences back to back, and the ratio of the two is
// the number to read. Run by hand after `npm run build`; its output goes into bench/RESULTS.md.
//
//   node bench/batch-step.mjs [--model DIR] [--streams 2,4,8] [--verify 2,3,4] [--rounds 24] [--prompt-tokens 32] [--threads 2]
//
// Each of the N sequences is prefilled with its own prompt, then every round decodes one token for
// sequence 0 alone and one token for each of the N together (the same token ids each round, so positions
// advance by one per step). Aggregate tok/s(N) = N / median step(N); the bytes model as in
// bench/serve-throughput.mjs: a step reads every non-routed weight once and each distinct routed expert it
// chose once, so at batch 1's bandwidth tok/s(N) = N x tok/s(1) x bytes(1) / bytes(N), with the distinct
// experts counted in the run (Model.countExperts).
// Verify (issue 14): one sequence's forward() of K + 1 tokens (all logits, then truncated back, as a
// speculative verify does) against its one-token step, paired the same way.
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const { loadModel } = await import(join(ROOT, 'dist/host/index.js'));

const flags = {};
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i += 2) {
  if (!argv[i].startsWith('--') || argv[i + 1] === undefined) throw new Error(`usage: batch-step.mjs [--model DIR] [--streams 2,4,8] [--verify 2,3,4] [--rounds 24] [--prompt-tokens 32] [--threads 2]; got ${argv[i]}`);
  flags[argv[i].slice(2)] = argv[i + 1];
}
const dir = flags.model ?? '/work/big/v3-2k6-q8';
const streams = (flags.streams ?? '2,4,8').split(',').map(Number);
const verify = (flags.verify ?? '2,3,4').split(',').filter(Boolean).map(Number);
const rounds = Number(flags.rounds ?? 24);
const promptTokens = Number(flags['prompt-tokens'] ?? 32);
const threads = flags.threads === undefined ? undefined : Number(flags.threads);
const most = Math.max(...streams);

const text = await loadModel(dir, { maxSequences: most + 1, contextLength: promptTokens + 2 * rounds + Math.max(8, ...verify), threads });
const model = text.model;
const cfg = model.config;
const tally = { experts: 0 };
model.countExperts(tally);
const routedPerToken = (cfg.numHiddenLayers - cfg.firstKDenseReplace) * cfg.numExpertsPerTok;
const bytesOf = (distinct) => model.activeBytes - routedPerToken * model.expertBytes + distinct * model.expertBytes;
const median = (v) => [...v].sort((a, b) => a - b)[v.length >> 1];

let seed = 11;
const ids = (n) =>
  Array.from({ length: n }, () => {
    seed = (seed * 1103515245 + 12345) % 2 ** 31;
    return 100 + (seed % (cfg.vocabSize - 200));
  });

/** ms of one forward() of these one-token entries, and the distinct experts it ran. */
function step(seqs, tokens) {
  const experts = tally.experts;
  const t0 = performance.now();
  model.forward(seqs.map((sequence, k) => ({ sequence, tokens: [tokens[k]] })));
  return { ms: performance.now() - t0, experts: tally.experts - experts };
}

console.error(`${dir}: ${model.device}; ${(model.activeBytes / 1e9).toFixed(3)} GB active per token; ${rounds} paired rounds per row`);
const rows = [];
for (const n of streams) {
  const seqs = Array.from({ length: n }, () => model.createSequence());
  const alone = model.createSequence();
  for (const s of [alone, ...seqs]) model.forward([{ sequence: s, tokens: ids(promptTokens) }]);
  const next = ids(n);
  const one = [];
  const many = [];
  let distinct = 0;
  step([alone], next);
  step(seqs, next);
  for (let r = 0; r < rounds; r++) {
    one.push(step([alone], next).ms);
    const m = step(seqs, next);
    many.push(m.ms);
    distinct += m.experts;
  }
  for (const s of [alone, ...seqs]) model.free(s);
  distinct /= rounds;
  const t1 = median(one);
  const tn = median(many);
  const measured = (n * t1) / tn;
  const predicted = (n * bytesOf(routedPerToken)) / bytesOf(distinct);
  rows.push({ streams: n, step_1_ms: t1, step_n_ms: tn, tok_s_1: 1000 / t1, tok_s_n: (1000 * n) / tn, gain: measured, distinct_experts: distinct, predicted_gain: predicted, of_prediction: measured / predicted });
}
console.log('| streams | step, 1 sequence (ms) | step, N sequences (ms) | tok/s 1 -> N | N-stream gain | distinct experts / step | bytes-model gain | measured / predicted |');
console.log('|---:|---:|---:|---:|---:|---:|---:|---:|');
for (const r of rows) {
  console.log(
    `| ${r.streams} | ${r.step_1_ms.toFixed(1)} | ${r.step_n_ms.toFixed(1)} | ${r.tok_s_1.toFixed(1)} -> ${r.tok_s_n.toFixed(1)} | ${r.gain.toFixed(2)}x | ${r.distinct_experts.toFixed(1)} of ${r.streams * routedPerToken} | ${r.predicted_gain.toFixed(2)}x | **${(100 * r.of_prediction).toFixed(0)}%** |`,
  );
}
const verifies = [];
if (verify.length) {
  const s = model.createSequence();
  model.forward([{ sequence: s, tokens: ids(promptTokens), logits: 'none' }]);
  const at = s.position;
  const timed = (tokens, logits) => {
    const t0 = performance.now();
    model.forward([{ sequence: s, tokens, logits }]);
    const ms = performance.now() - t0;
    model.truncate(s, at);
    return ms;
  };
  for (const k1 of verify) {
    const tokens = ids(k1);
    const one = [];
    const many = [];
    timed(tokens.slice(0, 1), 'last');
    timed(tokens, 'all');
    for (let r = 0; r < rounds; r++) {
      one.push(timed(tokens.slice(0, 1), 'last'));
      many.push(timed(tokens, 'all'));
    }
    verifies.push({ tokens: k1, step_ms: median(one), verify_ms: median(many), ratio: median(many) / median(one) });
  }
  model.free(s);
  console.log('\n| verify: K + 1 tokens | one-token step (ms) | forward of K + 1 (ms) | verify / step |');
  console.log('|---:|---:|---:|---:|');
  for (const v of verifies) console.log(`| ${v.tokens} | ${v.step_ms.toFixed(1)} | ${v.verify_ms.toFixed(1)} | **${v.ratio.toFixed(2)}x** |`);
}
console.log(JSON.stringify({ model: dir, device: model.device, rounds, rows, verifies }));
await text.close?.();
process.exit(0);
