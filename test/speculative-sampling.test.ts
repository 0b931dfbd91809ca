// Speculative sampling keeps plain sampling's distribution: the joint distribution of four sampled tokens
// (top-3, so 81 outcomes; the last three from steps of up to 2 drafts) with a draft (the random MTP layer, whose drafts are all rejected; the same
// checkpoint at q4, mostly kept) against the exact one computed from the model's own logits: a seeded chi-square test.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { Model, generateIds } from '../host/index.js';
import { resolveSampling, type SamplingOptions } from '../host/generate/options.js';
import { Sampler } from '../host/generate/sampler.js';
import { FIXTURES, readExpected } from './helpers.js';

const DIR = `${FIXTURES}models/v3-tiny-mtp`;
const SAMPLING: SamplingOptions = { temperature: 1, topK: 3 };
const RUNS = 1500;

/** Plain sampling's probability of every (t1, t2, t3, t4) after the prompt, from the model's logits. */
function exact(model: Model, prompt: number[]): Map<string, number> {
  const probs = (ids: number[]): Float32Array => {
    const seq = model.createSequence();
    try {
      const logits = model.forward([{ sequence: seq, tokens: ids }])[0].slice();
      return new Sampler(model.config.vocabSize, resolveSampling({ ...SAMPLING, seed: 0 })).probabilities(logits);
    } finally {
      model.free(seq);
    }
  };
  const out = new Map<string, number>();
  const support = (p: Float32Array): number[] => Array.from(p.keys()).filter((i) => p[i] > 0);
  const p1 = probs(prompt);
  for (const a of support(p1)) {
    const p2 = probs([...prompt, a]);
    for (const b of support(p2)) {
      const p3 = probs([...prompt, a, b]);
      for (const c of support(p3)) {
        const p4 = probs([...prompt, a, b, c]);
        for (const d of support(p4)) out.set(`${a},${b},${c},${d}`, p1[a] * p2[b] * p3[c] * p4[d]);
      }
    }
  }
  return out;
}

/** Pearson's chi-square of the counts against the probabilities (bins expecting < 5 pooled) and its 0.1% critical value. */
function chiSquare(counts: Map<string, number>, p: Map<string, number>, n: number): { chi2: number; critical: number } {
  let chi2 = 0;
  let bins = 0;
  let poolE = 0;
  let poolO = 0;
  for (const [key, prob] of p) {
    const e = prob * n;
    const o = counts.get(key) ?? 0;
    if (e < 5) {
      poolE += e;
      poolO += o;
      continue;
    }
    chi2 += (o - e) ** 2 / e;
    bins++;
  }
  if (poolE > 0) {
    chi2 += (poolO - poolE) ** 2 / poolE;
    bins++;
  }
  const dof = bins - 1;
  // Wilson-Hilferty: the chi-square quantile from the normal one (z = 3.09 for 0.1%).
  const critical = dof * (1 - 2 / (9 * dof) + 3.09 * Math.sqrt(2 / (9 * dof))) ** 3;
  return { chi2, critical };
}

test('sampling with a draft (MTP, q4 model) follows plain sampling: chi-square of 1500 seeded runs below the 0.1% bound', async () => {
  const model = await Model.load(DIR, { threads: 1, mtp: true });
  const q4 = await Model.load(DIR, { threads: 1, quant: 'q4' });
  try {
    const prompt = Array.from(readExpected(`${DIR}/expected.safetensors`).inputIds).slice(0, 6);
    const p = exact(model, prompt);
    let total = 0;
    for (const v of p.values()) total += v;
    assert.ok(Math.abs(total - 1) < 1e-4 && p.size > 27, `the exact distribution has ${p.size} outcomes summing to ${total}`);
    for (const [name, draft] of [['MTP', 'mtp'], ['q4 model', q4]] as const) {
      const counts = new Map<string, number>();
      let accepted = 0;
      let proposed = 0;
      for (let seed = 0; seed < RUNS; seed++) {
        const r = await generateIds(model, prompt, { ...SAMPLING, seed, maxTokens: 4, eosTokenIds: [], draft, draftTokens: 2 });
        const key = r.tokens.join(',');
        counts.set(key, (counts.get(key) ?? 0) + 1);
        accepted += r.draft!.accepted.reduce((a, b) => a + b, 0);
        proposed += r.draft!.proposed.reduce((a, b) => a + b, 0);
      }
      // The random MTP layer's top 3 miss the model's, so its drafts are all rejected (the residual draw); the
      // q4 model's are mostly kept, sometimes not (p / q < 1 where the formats differ).
      assert.ok(accepted < proposed && (name === 'MTP' || accepted > 0), `${name}: ${accepted} of ${proposed} drafts kept`);
      for (const key of counts.keys()) assert.ok(p.has(key), `${name}: ${key} cannot come out of plain sampling`);
      const { chi2, critical } = chiSquare(counts, p, RUNS);
      assert.ok(chi2 < critical, `${name}: chi-square ${chi2.toFixed(1)} >= ${critical.toFixed(1)}`);
    }
  } finally {
    await q4.close();
    await model.close();
  }
});

test.run();
