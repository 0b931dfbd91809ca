// Accuracy of each weight format on the four reference fixtures, against the float32 reference logits
// (transformers, in expected.safetensors): the prompt's logits from one prefill, then the decode steps
// fed the reference's greedy tokens (so both runs see the same sequence). Reported and asserted:
// top-1 agreement (argmax of our logits = argmax of the reference's) and max / mean absolute logit
// error. The fixtures are tiny random-weight models (hidden 64-256) that amplify noise: bf16 weights
// alone move v3-tiny's logits by up to 1.7. The bounds are the measured values with some room
// (measured 2026-11-26 after kv_b moved into per-head q8 matrices; plain build on Node 20 / relaxed build
// on Node 24, which fuses the attention core's multiply-adds, so a few values differ in the last digits):
//
//   fixture              format  top-1         max err   mean err
//   v3-tiny              q8      33/35 (94%)   0.31      0.041
//   v3-tiny              q4      12/35 (34%)   4.45      0.452
//   v2-lite-tiny         q8      27/29 (93%)   0.09      0.014
//   v2-lite-tiny         q4      13/29 (45%)   1.16      0.170
//   v3-odd-bf16-sharded  q8      23/25 (92%)   0.11      0.018
//   v3-odd-bf16-sharded  q4      11/25 (44%)   1.82      0.205
//   v3-fp8-blocks        q8      22-23/23      0.14      0.023
//   v3-fp8-blocks        q4      11-12/23      2.40      0.235
//   v3-fp8-blocks        fp8     23/23         1e-5      1e-6
//
// q4 (4 bits, ggml's Q4_0 rule) is much coarser than q8 on these models: its weight error is 16x q8's.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import type { QuantName } from '../host/model/weights.js';
import { FIXTURES, argmax, loadOne, readExpected } from './helpers.js';

interface Bound {
  top1: number; // at least this fraction
  max: number;
  mean: number;
}

const BOUNDS: Record<string, Partial<Record<QuantName, Bound>>> = {
  'v3-tiny': {
    bf16: { top1: 0.9, max: 2.5, mean: 0.04 },
    q8: { top1: 0.85, max: 2.5, mean: 0.08 },
    q4: { top1: 0.2, max: 6.5, mean: 0.65 },
  },
  'v2-lite-tiny': {
    bf16: { top1: 0.95, max: 0.06, mean: 0.008 },
    q8: { top1: 0.9, max: 0.3, mean: 0.025 },
    q4: { top1: 0.3, max: 1.8, mean: 0.26 },
  },
  'v3-odd-bf16-sharded': {
    q8: { top1: 0.8, max: 0.7, mean: 0.035 },
    q4: { top1: 0.25, max: 2.8, mean: 0.3 },
  },
  'v3-fp8-blocks': {
    bf16: { top1: 0.95, max: 0.06, mean: 0.008 },
    q8: { top1: 0.9, max: 0.2, mean: 0.035 },
    q4: { top1: 0.35, max: 3.6, mean: 0.35 },
    fp8: { top1: 1, max: 1e-3, mean: 1e-4 },
  },
};

interface Measured {
  top1: number;
  positions: number;
  max: number;
  mean: number;
  logits: Float32Array;
}

async function measure(name: string, quant: QuantName, threads: number): Promise<Measured> {
  const ref = readExpected(`${FIXTURES}models/${name}/expected.safetensors`);
  const model = await loadOne(`${FIXTURES}models/${name}`, { threads, quant });
  try {
    assert.is(model.model.quant, quant);
    const V = ref.vocab;
    const T = ref.inputIds.length;
    let max = 0;
    let sum = 0;
    let agree = 0;
    let positions = 0;
    const all: Float32Array[] = [];
    const score = (got: Float32Array, want: Float32Array) => {
      for (let i = 0; i < V; i++) {
        const e = Math.abs(got[i] - want[i]);
        max = Math.max(max, e);
        sum += e;
      }
      if (argmax(got) === argmax(want)) agree++;
      positions++;
      all.push(got.slice());
    };
    const prefill = model.forward(ref.inputIds, { allLogits: true });
    for (let t = 0; t < T; t++) score(prefill.subarray(t * V, (t + 1) * V), ref.logits.subarray(t * V, (t + 1) * V));
    for (let k = 1; k < ref.genIds.length; k++) score(model.forward([ref.genIds[k - 1]]), ref.genLogits.subarray(k * V, (k + 1) * V));
    const logits = new Float32Array(all.length * V);
    all.forEach((l, i) => logits.set(l, i * V));
    return { top1: agree, positions, max, mean: sum / (positions * V), logits };
  } finally {
    await model.close();
  }
}

for (const [name, formats] of Object.entries(BOUNDS)) {
  for (const [quant, bound] of Object.entries(formats) as [QuantName, Bound][]) {
    test(`${name} as ${quant}: top-1 agreement and logit error against the f32 reference within bounds`, async () => {
      const m = await measure(name, quant, 2);
      const line = `${name} ${quant}: top-1 ${m.top1}/${m.positions}, max ${m.max.toFixed(4)}, mean ${m.mean.toFixed(4)}`;
      if (process.env.DEEPWASM_ACCURACY_REPORT) console.log(line);
      assert.ok(m.top1 >= bound.top1 * m.positions, `${line}: top-1 below ${bound.top1}`);
      assert.ok(m.max <= bound.max, `${line}: max error above ${bound.max}`);
      assert.ok(m.mean <= bound.mean, `${line}: mean error above ${bound.mean}`);
    });
  }
}

test('quantized models give bit-identical logits with 1 and 2 threads (q8, q4 on v3-odd-bf16-sharded; fp8)', async () => {
  for (const [name, quant] of [['v3-odd-bf16-sharded', 'q8'], ['v3-odd-bf16-sharded', 'q4'], ['v3-fp8-blocks', 'fp8']] as const) {
    const one = await measure(name, quant, 1);
    const two = await measure(name, quant, 2);
    assert.equal(new Uint32Array(one.logits.buffer), new Uint32Array(two.logits.buffer), `${name} ${quant}`);
  }
});

test('the default format: fixtures below 1 GiB load as stored; the FP8 fixture stays fp8', async () => {
  for (const [name, want] of [['v3-tiny', 'stored'], ['v3-fp8-blocks', 'fp8']] as const) {
    const model = await loadOne(`${FIXTURES}models/${name}`, { threads: 1 });
    assert.is(model.model.quant, want, name);
    await model.close();
  }
});

test('--quant fp8 on a checkpoint without FP8 weights is refused with a clear message', async () => {
  try {
    await loadOne(`${FIXTURES}models/v3-tiny`, { threads: 1, quant: 'fp8' });
    assert.unreachable('loaded');
  } catch (e) {
    assert.match((e as Error).message, /no F8_E4M3 tensors; use q8, q4, bf16 or f32/);
  }
});

test.run();
