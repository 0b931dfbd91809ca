// The model computes what DeepSeek's reference code computes: every prompt logit, every greedy token
// and every decode step's logits, for each fixture checkpoint, with one thread and with two, in one
// WebAssembly memory and spread over several (a layer's experts split between two).
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { FIXTURES, MODEL_FIXTURES, argmax, loadOne, maxAbsDiff, readExpected, splitLayers, splitLimit } from './helpers.js';

const TOLERANCE = 2e-3;

for (const name of MODEL_FIXTURES) {
  for (const [threads, spread] of [[1, false], [2, false], [1, true], [2, true]] as const) {
    const where = spread ? ', over several memories' : '';
    test(`${name} with ${threads} thread(s)${where}: prefill logits, greedy ids and decode logits match the reference`, async () => {
      const dir = `${FIXTURES}models/${name}`;
      const ref = readExpected(`${dir}/expected.safetensors`);
      const model = await loadOne(dir, { threads, memoryLimit: spread ? await splitLimit(dir) : undefined });
      try {
        if (spread) {
          assert.ok(model.model.memories.length >= 3, `${model.model.memories.length} memories`);
          assert.ok(splitLayers(model.model.memories).length > 0, 'no layer has its experts in two memories');
        }
        const logits = model.forward(ref.inputIds, { allLogits: true });
        const prefillErr = maxAbsDiff(logits, ref.logits);
        assert.ok(prefillErr < TOLERANCE, `prefill logits differ by ${prefillErr}`);

        const V = ref.vocab;
        const T = ref.inputIds.length;
        let step = logits.slice((T - 1) * V);
        for (let k = 0; k < ref.genIds.length; k++) {
          const err = maxAbsDiff(step, ref.genLogits.subarray(k * V, (k + 1) * V));
          assert.ok(err < TOLERANCE, `decode step ${k} logits differ by ${err}`);
          const next = argmax(step);
          assert.is(next, ref.genIds[k], `greedy token ${k}`);
          step = model.forward([next]).slice();
        }
      } finally {
        await model.close();
      }
    });
  }
}

test('a prompt longer than one pass (passTokens 5) gives the same logits, every position and the last', async () => {
  for (const name of ['v3-tiny', 'v2-lite-tiny']) {
    const dir = `${FIXTURES}models/${name}`;
    const ref = readExpected(`${dir}/expected.safetensors`);
    const V = ref.vocab;
    const T = ref.inputIds.length;
    assert.ok(T > 10, `${name}: the prompt must span several passes (${T} tokens)`);
    const whole = await loadOne(dir, { threads: 2 });
    const passes = await loadOne(dir, { threads: 2, passTokens: 5 });
    try {
      const one = whole.forward(ref.inputIds, { allLogits: true });
      const many = passes.forward(ref.inputIds, { allLogits: true });
      assert.is(many.length, T * V);
      assert.ok(maxAbsDiff(many, ref.logits) < TOLERANCE, `${name}: passes vs reference`);
      assert.ok(maxAbsDiff(many, one) < 1e-4, `${name}: passes vs one pass: ${maxAbsDiff(many, one)}`);
      passes.reset();
      const lastOnly = passes.forward(ref.inputIds).slice();
      assert.ok(maxAbsDiff(lastOnly, one.subarray((T - 1) * V)) < 1e-4, `${name}: last logits in passes`);
      assert.is(passes.position, T);
      const next = passes.forward([ref.genIds[0]]);
      assert.ok(maxAbsDiff(next, ref.genLogits.subarray(V, 2 * V)) < TOLERANCE, `${name}: decode after passes`);
    } finally {
      await whole.close();
      await passes.close();
    }
  }
});

test.run();
