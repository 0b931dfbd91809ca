// Speculative decoding with the main model on the GPU: greedy with a draft model (the model itself, and the
// same checkpoint at q8, whose drafts are sometimes rejected), both on the CUDA backend, and with the random MTP
// layer of v3-tiny-mtp on the device (K = 1 and chained K = 3, drafts rejected), gives the plain greedy ids of the
// same model, and the verifying passes' logits (forward of K + 1 tokens with every row, then truncate) stay
// within the fixtures' tolerance of the reference. Where there is no GPU (or the library is not built) it prints
// why and registers no test.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { cudaStatus, loadCudaModel } from '../host/backends/cuda/model.js';
import { ModelDraft, MtpDraft } from '../host/generate/drafts.js';
import { generateIds } from '../host/generate/generate.js';
import { FIXTURES, MODEL_FIXTURES, maxAbsDiff, readExpected } from './helpers.js';
import { GREEDY, speculate } from './speculate.js';

const TOL = 2e-3;
const status = cudaStatus();

if (!status.ok) {
  console.log(`skipped: no CUDA device (${status.reason})`);
} else {
  for (const name of MODEL_FIXTURES) {
    test(`cuda ${name}: greedy with a draft model (itself, itself at q8) gives the plain greedy ids`, async () => {
      const dir = `${FIXTURES}models/${name}`;
      const ref = readExpected(`${dir}/expected.safetensors`);
      const model = await loadCudaModel(dir, { maxSequences: 2 });
      const q8 = await loadCudaModel(dir, { quant: 'q8' });
      try {
        const prompt = Array.from(ref.inputIds);
        const n = ref.genIds.length;
        const plain = await generateIds(model, prompt, { temperature: 0, maxTokens: n, eosTokenIds: [] });
        assert.equal(plain.tokens, Array.from(ref.genIds), 'plain greedy on cuda');
        for (const [what, draft, k] of [['itself', model, 4], ['itself at q8', q8, 3]] as const) {
          const run = speculate(model, () => new ModelDraft(draft, model.config.vocabSize, GREEDY), k, prompt, n);
          const diff = maxAbsDiff(new Float32Array(run.rows.flatMap((r) => Array.from(r))), ref.genLogits);
          const kept = run.stats.accepted.reduce((a, b) => a + b, 0), tried = run.stats.proposed.reduce((a, b) => a + b, 0);
          console.log(`  ${name}, draft ${what}, K = ${k}: ${kept} of ${tried} drafts kept, logits within ${diff.toExponential(2)}`);
          assert.equal(run.ids, plain.tokens, `draft ${what}: greedy ids`);
          assert.ok(diff <= TOL, `draft ${what}: logits differ from the reference by ${diff}`);
          if (draft === model) assert.is(kept, tried, 'the model drafting for itself is always right');
          // The library's path: generateIds with the draft.
          const lib = await generateIds(model, prompt, { temperature: 0, maxTokens: n, eosTokenIds: [], draft, draftTokens: k });
          assert.equal(lib.tokens, plain.tokens, `draft ${what}: generateIds`);
        }
      } finally {
        await q8.close();
        await model.close();
      }
    });
  }

  test("cuda v3-tiny-mtp: greedy with draft 'mtp' (1 and 3 a step) gives the plain greedy ids", async () => {
    const dir = `${FIXTURES}models/v3-tiny-mtp`;
    const ref = readExpected(`${dir}/expected.safetensors`);
    const model = await loadCudaModel(dir, { mtp: true });
    try {
      const prompt = Array.from(ref.inputIds);
      const n = ref.genIds.length;
      const plain = await generateIds(model, prompt, { temperature: 0, maxTokens: n, eosTokenIds: [] });
      assert.equal(plain.tokens, Array.from(ref.genIds), 'plain greedy on cuda');
      for (const k of [1, 3]) {
        const run = speculate(model, (s) => new MtpDraft(model.mtp!, s, model.config.hiddenSize, model.config.vocabSize, GREEDY), k, prompt, n);
        const diff = maxAbsDiff(new Float32Array(run.rows.flatMap((r) => Array.from(r))), ref.genLogits);
        const kept = run.stats.accepted.reduce((a, b) => a + b, 0), tried = run.stats.proposed.reduce((a, b) => a + b, 0);
        console.log(`  v3-tiny-mtp, draft mtp, K = ${k}: ${kept} of ${tried} drafts kept, logits within ${diff.toExponential(2)}`);
        assert.equal(run.ids, plain.tokens, `K = ${k}: greedy ids`);
        assert.ok(diff <= TOL, `K = ${k}: logits differ from the reference by ${diff}`);
        assert.ok(kept < tried, `K = ${k}: the random layer's drafts are rejected at times (${kept} of ${tried} kept)`);
        const lib = await generateIds(model, prompt, { temperature: 0, maxTokens: n, eosTokenIds: [], draft: 'mtp', draftTokens: k });
        assert.equal(lib.tokens, plain.tokens, `K = ${k}: generateIds with draft 'mtp'`);
      }
    } finally {
      await model.close();
    }
  });
}

test.run();
