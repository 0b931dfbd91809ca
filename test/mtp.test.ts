// The MTP layer against a PyTorch reference (tools/train_mtp.py: transformers' decoder layer between the MTP's
// own norms and projections): the random layer of test/fixtures/models/v3-tiny-mtp and the embedded model's
// trained one, every position within 2e-3, one position at a time (its own cache) and several at once.
import { fileURLToPath } from 'node:url';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { DEFAULT_MODEL_DIR, DeepWasmError, Model } from '../host/index.js';
import { maxAbsDiff, mtpRows, readTensors } from './helpers.js';

const fixture = (p: string): string => fileURLToPath(new URL(`../../test/fixtures/${p}`, import.meta.url));
const V3_TINY_MTP = fixture('models/v3-tiny-mtp');

for (const [name, dir, file] of [
  ['random MTP layer (v3-tiny-mtp, f32)', V3_TINY_MTP, `${V3_TINY_MTP}/mtp-expected.safetensors`],
  ['trained MTP layer of the embedded model (bf16)', DEFAULT_MODEL_DIR, fixture('mtp/tiny-expected.safetensors')],
] as const) {
  test(`${name}: every position's logits within 2e-3 of PyTorch, alone and in one call`, async () => {
    const model = await Model.load(dir, { threads: 2, mtp: true, contextLength: 256 });
    try {
      const ref = readTensors(file);
      const vocab = model.config.vocabSize;
      const dim = model.config.hiddenSize;
      for (let k = 0; ref.has(`input_ids_${k}`) || (k === 0 && ref.has('input_ids')); k++) {
        const ids = Array.from(ref.get(k === 0 && ref.has('input_ids') ? 'input_ids' : `input_ids_${k}`)!);
        const want = ref.get(ref.has('mtp_logits') ? 'mtp_logits' : `mtp_logits_${k}`) as Float32Array;
        const { rows, hidden } = mtpRows(model, ids);
        const diff = maxAbsDiff(rows, want);
        assert.ok(diff < 2e-3, `input ${k}: max |diff| ${diff}`);
        const seq = model.createSequence();
        const together = model.mtp!.forward(seq, 0, ids.slice(1), hidden.subarray(0, (ids.length - 1) * dim), new Float32Array(dim));
        model.free(seq);
        assert.ok(maxAbsDiff(together, want.subarray(want.length - vocab)) < 2e-3, `input ${k}: all positions in one call`);
        if (ref.has('mtp_logits')) break;
      }
    } finally {
      await model.close();
    }
  });
}

test('the MTP layer planned into a memory of its own: over several memories it gives one memory\'s logits', async () => {
  const ref = readTensors(fixture('mtp/tiny-expected.safetensors'));
  const ids = Array.from(ref.get('input_ids_0')!);
  const one = await Model.load(DEFAULT_MODEL_DIR, { threads: 1, mtp: true, contextLength: 128 });
  const many = await Model.load(DEFAULT_MODEL_DIR, { threads: 1, mtp: true, contextLength: 128, memoryLimit: 6 * 1024 * 1024 });
  try {
    assert.ok(many.memories.length >= 3, `${many.memories.length} memories`);
    assert.match(many.memories[many.memories.length - 1].units, /^MTP layer 4 \(experts \d+-15\)$/, 'the MTP layer is planned after the head');
    assert.ok(maxAbsDiff(mtpRows(many, ids).rows, mtpRows(one, ids).rows) < 1e-6);
  } finally {
    await many.close();
    await one.close();
  }
});

test('a model without an MTP layer refuses mtp: true in one line', async () => {
  try {
    await Model.load(fixture('models/v3-tiny'), { threads: 1, mtp: true });
    assert.unreachable('expected an error');
  } catch (e) {
    assert.instance(e, DeepWasmError);
    assert.match((e as Error).message, 'has no MTP layer (num_nextn_predict_layers is 0 in config.json)');
  }
});

test.run();
