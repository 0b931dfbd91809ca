// Speculative decoding, measured: node dist/bench/speculative.bench.js [DIR[@QUANT] ...]
//  1. the embedded model: greedy decode tok/s without a draft, with its MTP layer (1-3 a step) and with itself
//     as the draft, and how often each draft position is kept (5 prompts x 128 tokens, median of 3 rounds);
//  2. each DIR (default: the embedded model): the verify cost, the time of one forward() of K + 1 tokens after
//     64 cached ones against one decode step, and the MTP layer's share of a decode step (its last block and
//     head, by active parameters), giving the expected speed-up E(K) / (verify(K) + K * mtp) where E(K) =
//     1 + a1 + a1 a2 + ... from the acceptance a_j measured in part 1, and from DeepSeek's reported 0.85.
import { readFileSync } from 'node:fs';
import { DEFAULT_MODEL_DIR, Model, generateIds, type ModelBackend } from '../host/index.js';
import { activeShare, blockWeights, modelSchema, weightSize, type Weight } from '../host/model/schema.js';
import { parseQuant } from '../host/model/weights.js';
import type { DraftStats } from '../host/generate/speculative.js';

const TOKENS = 128;
const ROUNDS = 3;
const median = (x: number[]): number => [...x].sort((a, b) => a - b)[Math.floor(x.length / 2)];

const record = JSON.parse(readFileSync(`${DEFAULT_MODEL_DIR}/expected.json`, 'utf8')) as { prompts: { input_ids: number[] }[] };
const prompts = [...record.prompts.map((p) => p.input_ids), [0, 1527, 329], [0, 53, 1150, 284]];

async function decodeRate(model: ModelBackend, draft: 'mtp' | ModelBackend | undefined, draftTokens?: number): Promise<{ tokS: number; stats: DraftStats | undefined }> {
  let tokens = 0;
  let ms = 0;
  let stats: DraftStats | undefined;
  for (const p of prompts) {
    const r = await generateIds(model, p, { maxTokens: TOKENS, eosTokenIds: [], draft, draftTokens });
    tokens += r.tokens.length - 1;
    ms += r.decodeMs;
    if (r.draft) {
      stats ??= { proposed: r.draft.proposed.map(() => 0), accepted: r.draft.accepted.map(() => 0) };
      r.draft.proposed.forEach((n, j) => (stats!.proposed[j] += n));
      r.draft.accepted.forEach((n, j) => (stats!.accepted[j] += n));
    }
  }
  return { tokS: (tokens * 1000) / ms, stats };
}

const pct = (s: DraftStats): string => s.proposed.map((p, j) => `${((100 * s.accepted[j]) / Math.max(1, p)).toFixed(0)}%`).join(' ');
/** Conditional acceptance per position, a_j = accepted[j] / proposed[j]. */
const rates = (s: DraftStats): number[] => s.proposed.map((p, j) => s.accepted[j] / Math.max(1, p));

console.log(`# 1. embedded model, greedy, ${prompts.length} prompts x ${TOKENS} tokens, median of ${ROUNDS} rounds (2 threads; a shared VM: expect noise)`);
const model = await Model.load(DEFAULT_MODEL_DIR, { threads: 2, mtp: true, maxSequences: 2, contextLength: 256 });
const runs: [string, 'mtp' | ModelBackend | undefined, number | undefined][] = [
  ['no draft', undefined, undefined],
  ['mtp K=1', 'mtp', 1],
  ['mtp K=2', 'mtp', 2],
  ['mtp K=3', 'mtp', 3],
  ['itself K=4', model, 4],
];
const results = new Map<string, { tokS: number[]; stats?: DraftStats }>();
for (let round = 0; round < ROUNDS; round++) {
  for (const [name, draft, k] of runs) {
    const r = await decodeRate(model, draft, k);
    const entry = results.get(name) ?? { tokS: [] };
    entry.tokS.push(r.tokS);
    entry.stats = r.stats;
    results.set(name, entry);
  }
}
const base = median(results.get('no draft')!.tokS);
const mtpAcceptance = rates(results.get('mtp K=3')!.stats!);
for (const [name, r] of results) {
  const t = median(r.tokS);
  console.log(`${name.padEnd(11)} ${t.toFixed(0).padStart(5)} tok/s  x${(t / base).toFixed(2)}${r.stats ? `  kept by position ${pct(r.stats)}` : ''}`);
}

// The MTP layer's cost as a share of a decode step, timed on the embedded model.
const dim = model.config.hiddenSize;
const seq = model.createSequence();
model.forward([{ sequence: seq, tokens: prompts[0] }]);
const h = new Float32Array(dim);
const time = (fn: () => void, n = 64): number => {
  const t: number[] = [];
  for (let i = 0; i < n; i++) {
    const s = performance.now();
    fn();
    t.push(performance.now() - s);
  }
  return median(t);
};
const at = seq.position;
const step = time(() => {
  model.forward([{ sequence: seq, tokens: [5] }]);
  model.truncate(seq, at);
});
const mtpStep = time(() => model.mtp!.forward(seq, at, [5], h, h));
model.free(seq);
console.log(`MTP layer: ${mtpStep.toFixed(3)} ms against a decode step's ${step.toFixed(3)} ms (${((100 * mtpStep) / step).toFixed(0)}%)`);
await model.close();

console.log('\n# 2. verify cost: forward() of K + 1 tokens after 64 cached, against one decode step (median of 16)');
const targets = process.argv.slice(2);
for (const arg of targets.length ? targets : [DEFAULT_MODEL_DIR]) {
  const [dir, quant] = arg.split('@');
  const m = await Model.load(dir, { threads: 2, contextLength: 128, quant: quant ? parseQuant(quant) : undefined });
  const s = m.createSequence();
  m.forward([{ sequence: s, tokens: Array.from({ length: 64 }, (_, i) => (i * 7919) % m.config.vocabSize), logits: 'none' }]);
  const cost = (k: number): number =>
    time(() => {
      m.forward([{ sequence: s, tokens: Array.from({ length: k + 1 }, (_, i) => i + 3), logits: 'all' }]);
      m.truncate(s, 64);
    }, 16);
  const one = cost(0);
  const schema = modelSchema(m.config);
  const active = (ws: Weight[]): number => ws.reduce((n, w) => n + weightSize(w) * activeShare(m.config, w), 0);
  const all = active([...schema.blocks.flatMap(blockWeights), schema.head]);
  const mtpShare = active([...blockWeights(schema.blocks[schema.blocks.length - 1]), schema.head]) / all;
  console.log(`${arg}: decode step ${one.toFixed(2)} ms; MTP layer ~${(100 * mtpShare).toFixed(0)}% of it (its last block and head, by active parameters)`);
  for (let k = 1; k <= 3; k++) {
    const verify = cost(k) / one;
    const expected = (a: number[]): number => a.slice(0, k).reduce((acc, r) => ({ e: acc.e + acc.p * r, p: acc.p * r }), { e: 1, p: 1 }).e;
    const speed = (a: number[]): string => (expected(a) / (verify + k * mtpShare)).toFixed(2);
    console.log(`  K=${k}: verify ${verify.toFixed(2)}x a decode step; MTP speed-up with the embedded model's acceptance x${speed(mtpAcceptance)}, with 0.85 per position x${speed([0.85, 0.85, 0.85])}`);
  }
  m.free(s);
  await m.close();
}
