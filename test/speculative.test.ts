// Speculative decoding is lossless: greedy with any draft (the model itself, the same checkpoint at q4, the
// MTP layer, chained or not) gives the plain greedy ids and logits on every fixture, the embedded model's
// recorded continuations, and the random-MTP fixture where drafts are rejected.
import { readFileSync } from 'node:fs';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { DEFAULT_MODEL_DIR, DeepWasmError, Model, generateIds } from '../host/index.js';
import { ModelDraft, MtpDraft, type Draft } from '../host/generate/drafts.js';
import type { DraftStats } from '../host/generate/speculative.js';
import type { Sequence } from '../host/model/backend.js';
import { FIXTURES, MODEL_FIXTURES, maxAbsDiff, readExpected } from './helpers.js';
import { GREEDY, speculate } from './speculate.js';

const flat = (rows: Float32Array[]): Float32Array => {
  const out = new Float32Array(rows.reduce((n, r) => n + r.length, 0));
  rows.reduce((at, r) => (out.set(r, at), at + r.length), 0);
  return out;
};
const kept = (s: DraftStats): number => s.accepted.reduce((a, b) => a + b, 0);
const tried = (s: DraftStats): number => s.proposed.reduce((a, b) => a + b, 0);

for (const name of [...MODEL_FIXTURES, 'v3-tiny-mtp']) {
  test(`${name}: greedy with a draft model (itself, itself at q4) gives the reference ids and logits within 2e-3`, async () => {
    const dir = `${FIXTURES}models/${name}`;
    const ref = readExpected(`${dir}/expected.safetensors`);
    const model = await Model.load(dir, { threads: 1, maxSequences: 2, mtp: name === 'v3-tiny-mtp' });
    const q4 = await Model.load(dir, { threads: 1, quant: 'q4' });
    try {
      const prompt = Array.from(ref.inputIds);
      const n = ref.genIds.length;
      const drafts: [string, (s: Sequence) => Draft, number][] = [
        ['itself', () => new ModelDraft(model, model.config.vocabSize, GREEDY), 4],
        ['itself at q4', () => new ModelDraft(q4, model.config.vocabSize, GREEDY), 3],
      ];
      if (model.mtp) {
        for (const k of [1, 3]) drafts.push([`its random MTP layer, ${k} a step`, (s) => new MtpDraft(model.mtp!, s, model.config.hiddenSize, model.config.vocabSize, GREEDY), k]);
      }
      for (const [what, draft, k] of drafts) {
        const r = speculate(model, draft, k, prompt, n);
        assert.equal(r.ids, Array.from(ref.genIds), `${what}: ids`);
        const diff = maxAbsDiff(flat(r.rows), ref.genLogits);
        assert.ok(diff < 2e-3, `${what}: logits max |diff| ${diff}`);
        if (what === 'itself') assert.is(kept(r.stats), tried(r.stats), 'the model itself as its draft is always kept');
        if (what.includes('MTP')) assert.ok(kept(r.stats) < tried(r.stats), `${what}: rejections happen (${kept(r.stats)} of ${tried(r.stats)} kept)`);
      }
    } finally {
      await q4.close();
      await model.close();
    }
  });
}

test('embedded model: greedy with its trained MTP layer (1 and 2 a step) gives the recorded continuations', async () => {
  const record = JSON.parse(readFileSync(`${DEFAULT_MODEL_DIR}/expected.json`, 'utf8')) as { prompts: { input_ids: number[]; output_ids: number[] }[] };
  const model = await Model.load(DEFAULT_MODEL_DIR, { threads: 2, mtp: true, contextLength: 128 });
  try {
    for (const draftTokens of [1, 2]) {
      let accepted = 0;
      let proposed = 0;
      for (const p of record.prompts) {
        const r = await generateIds(model, p.input_ids, { maxTokens: p.output_ids.length, eosTokenIds: [], draft: 'mtp', draftTokens });
        assert.equal(r.tokens, p.output_ids);
        accepted += kept(r.draft!);
        proposed += tried(r.draft!);
      }
      assert.ok(accepted > 0 && accepted < proposed, `${draftTokens} a step: ${accepted} of ${proposed} drafts kept`);
    }
  } finally {
    await model.close();
  }
});

test('bad drafts are clear errors', async () => {
  const model = await Model.load(`${FIXTURES}models/v3-tiny`, { threads: 1 });
  const other = await Model.load(`${FIXTURES}models/v2-lite-tiny`, { threads: 1 });
  try {
    for (const [opts, message] of [
      [{ draft: 'mtp' }, "draft 'mtp' needs the model's MTP layer: load the model with mtp: true"],
      [{ draft: other }, "the draft model's vocabulary has"],
      [{ draft: model, draftTokens: 0 }, 'draftTokens must be a whole number from 1 to 16, got 0'],
      [{ draftTokens: 2 }, 'draftTokens needs a draft (draft)'],
      [{ draft: 'eagle' }, `draft must be 'mtp' or a loaded model, got "eagle"`],
    ] as const) {
      try {
        await generateIds(model, [0, 1, 2], { maxTokens: 3, ...(opts as object) });
        assert.unreachable(`expected an error for ${JSON.stringify(Object.keys(opts))}`);
      } catch (e) {
        assert.instance(e, DeepWasmError);
        assert.match((e as Error).message, message);
      }
    }
  } finally {
    await other.close();
    await model.close();
  }
});

test.run();
