// The model computes what DeepSeek's reference code computes: every prompt logit, every greedy token
// and every decode step's logits, for each fixture checkpoint, with one thread and with two.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { Model } from '../host/model/model.js';
import { FIXTURES, MODEL_FIXTURES, argmax, maxAbsDiff, readExpected } from './helpers.js';

const TOLERANCE = 2e-3;

for (const name of MODEL_FIXTURES) {
  for (const threads of [1, 2]) {
    test(`${name} with ${threads} thread(s): prefill logits, greedy ids and decode logits match the reference`, async () => {
      const dir = `${FIXTURES}models/${name}`;
      const ref = readExpected(`${dir}/expected.safetensors`);
      const model = await Model.load(dir, { threads });
      try {
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

test.run();
