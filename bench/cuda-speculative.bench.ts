// Speculative decoding on the CUDA backend, 16B preset (issue 14): what verifying K + 1 tokens costs against
// one decode step, and the decode speed with the model drafting for itself (every draft kept, greedy)
// against plain greedy decoding, both through generateIds as the CLI runs them. Random bf16 weights made
// on the device.
//
//   node dist/bench/cuda-speculative.bench.js [--ks 1,2,3,4,7] [--gen 64] [--out results.json]
//
// Verify: forward() of K + 1 tokens with every logits row back (the prefill path, cuBLAS GEMMs), then
// truncate, median of 15; one decode step: forward() of one token with its row back (the graph replay),
// median of 64. From these the self-draft's speed-up is predicted as (K + 1) / (draft steps + verify),
// where its draft runs K steps a round (a 2-token pass, the accepted token and the last draft, then K - 1
// one-token steps).
import { writeFileSync } from 'node:fs';
import { randomCudaModel } from '../host/backends/cuda/model.js';
import { parseConfig } from '../host/checkpoint/config.js';
import { presetConfig } from '../host/checkpoint/presets.js';
import { generateIds } from '../host/generate/generate.js';

function flag(name: string, fallback: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : fallback;
}
const ks = flag('ks', '1,2,3,4,7').split(',').map(Number);
const gen = Number(flag('gen', '64'));
const outPath = flag('out', '');
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

const cfg = parseConfig(presetConfig('16B')!, 'preset 16B');
const model = await randomCudaModel(cfg, 1234, { contextLength: 1024, maxSequences: 2, passTokens: 512 });
const prompt = Array.from({ length: 128 }, (_, i) => (i * 7919 + 13) % cfg.vocabSize);
const seq = model.createSequence();
model.forward([{ sequence: seq, tokens: prompt, logits: 'none' }]);
const at = seq.position;
const timed = (tokens: number[], reps: number) => {
  const ms: number[] = [];
  for (let r = 0; r < reps + 2; r++) {
    model.truncate(seq, at);
    const t = performance.now();
    model.forward([{ sequence: seq, tokens, logits: 'all' }]);
    if (r >= 2) ms.push(performance.now() - t);
  }
  return median(ms);
};
const stepMs = timed([5], 64);
const twoMs = timed([5, 6], 15);
const verify = ks.map((k) => {
  const ms = timed(Array.from({ length: k + 1 }, (_, i) => 5 + i), 15);
  return { k, tokens: k + 1, ms, decode_steps: ms / stepMs };
});
model.free(seq);
console.log(`  one decode step ${stepMs.toFixed(3)} ms; a 2-token pass ${twoMs.toFixed(3)} ms`);
for (const v of verify) console.log(`  verify ${v.tokens} tokens: ${v.ms.toFixed(3)} ms = ${v.decode_steps.toFixed(2)} decode steps`);

const run = async (draft: boolean, k: number) => {
  await generateIds(model, prompt, { temperature: 0, maxTokens: 8, eosTokenIds: [], ...(draft ? { draft: model, draftTokens: k } : {}) });
  const r = await generateIds(model, prompt, { temperature: 0, maxTokens: gen, eosTokenIds: [], ...(draft ? { draft: model, draftTokens: k } : {}) });
  return { tokens: r.tokens, tokS: ((r.tokens.length - 1) / r.decodeMs) * 1000, stats: r.draft };
};
const plain = await run(false, 0);
console.log(`  plain greedy: ${plain.tokS.toFixed(1)} tok/s`);
const self: { k: number; tok_s: number; speedup: number; predicted_speedup: number; same_ids: boolean; accepted?: number[]; proposed?: number[] }[] = [];
for (const v of verify) {
  const r = await run(true, v.k);
  const same = r.tokens.join() === plain.tokens.join();
  const predicted = (v.k + 1) / (twoMs / stepMs + (v.k - 1) + v.decode_steps);
  self.push({ k: v.k, tok_s: r.tokS, speedup: r.tokS / plain.tokS, predicted_speedup: predicted, same_ids: same, accepted: r.stats?.accepted, proposed: r.stats?.proposed });
  console.log(`  self-draft K = ${v.k}: ${r.tokS.toFixed(1)} tok/s = x${(r.tokS / plain.tokS).toFixed(2)} (predicted x${predicted.toFixed(2)}), ids ${same ? 'equal' : 'DIFFER'}`);
}
console.log('| K | verify K+1 tokens (ms) | in decode steps | self-draft tok/s | speed-up | predicted |');
console.log('|---:|---:|---:|---:|---:|---:|');
verify.forEach((v, i) => console.log(`| ${v.k} | ${v.ms.toFixed(2)} | ${v.decode_steps.toFixed(2)} | ${self[i].tok_s.toFixed(1)} | x${self[i].speedup.toFixed(2)} | x${self[i].predicted_speedup.toFixed(2)} |`));
if (outPath) writeFileSync(outPath, JSON.stringify({ preset: '16B random bf16', device: model.device, step_ms: stepMs, two_token_ms: twoMs, plain_tok_s: plain.tokS, verify, self }, null, 2) + '\n');
await model.close();
