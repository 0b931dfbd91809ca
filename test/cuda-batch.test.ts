// The CUDA backend's batched decode step (forward() with several short entries: one graph replay for all
// their tokens, each weight row and each chosen expert read once): B sequences at different positions,
// greedy, give each sequence's ids and logits as it decodes alone (the single-sequence step), for B from 1
// to past the largest batch one step takes (which forward() splits); consecutive tokens of one sequence in
// one step give the prompt's reference rows. Where there is no GPU (or the library is not built) it prints
// why and registers no test.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { cudaStatus, loadCudaModel, type CudaModel } from '../host/backends/cuda/model.js';
import { isMoeLayer } from '../host/checkpoint/config.js';
import { DeepWasmError } from '../host/errors.js';
import type { Sequence } from '../host/model/backend.js';
import { FIXTURES, MODEL_FIXTURES, argmax, maxAbsDiff, readExpected } from './helpers.js';

const TOL = 2e-3;
const STEPS = 5;
const status = cudaStatus();

/** Prompt i: the fixture's prompt rotated by i and cut to a length of its own, so the sequences sit at different positions. */
function prompts(ids: Int32Array, n: number): number[][] {
  return Array.from({ length: n }, (_, i) => {
    const rot = [...ids.subarray(i % ids.length), ...ids.subarray(0, i % ids.length)];
    return rot.slice(0, Math.max(1, ids.length - (i % 4)));
  });
}

interface Run {
  ids: number[][];
  rows: Float32Array[][];
}

/** Each prompt prefilled, then STEPS greedy tokens, either each sequence alone or all of them in one forward() per step. */
function decode(model: CudaModel, ps: number[][], together: boolean): Run {
  const seqs: Sequence[] = ps.map(() => model.createSequence());
  const ids = ps.map((p, i) => [argmax(model.forward([{ sequence: seqs[i], tokens: p }])[0])]);
  const rows: Float32Array[][] = ps.map(() => []);
  for (let k = 0; k < STEPS; k++) {
    const entries = seqs.map((sequence, i) => ({ sequence, tokens: [ids[i][k]] }));
    // forward() reuses its result arrays: each alone run's row is copied before the next.
    const out = together ? model.forward(entries) : entries.map((e) => model.forward([e])[0].slice());
    out.forEach((r, i) => {
      rows[i].push(r.slice());
      ids[i].push(argmax(r));
    });
  }
  seqs.forEach((s, i) => {
    assert.is(s.position, ps[i].length + STEPS);
    model.free(s);
  });
  return { ids, rows };
}

if (!status.ok) {
  console.log(`skipped: no CUDA device (${status.reason})`);
} else {
  for (const name of MODEL_FIXTURES) {
    test(`cuda ${name}: a batched decode step of B sequences equals each decoded alone`, async () => {
      const dir = `${FIXTURES}models/${name}`;
      const exp = readExpected(`${dir}/expected.safetensors`);
      const probe = await loadCudaModel(dir, { maxSequences: 16 });
      const max = probe.batchMax;
      await probe.close();
      // A batch past the largest step: forward() runs it as a full step and a rest.
      const sizes = [...new Set([1, 2, 3, Math.min(5, max), max, max + 2])];
      const model = await loadCudaModel(dir, { maxSequences: max + 2 });
      try {
        const ps = prompts(exp.inputIds, max + 2);
        const alone = decode(model, ps, false);
        const moeLayers = Array.from({ length: model.config.numHiddenLayers }, (_, l) => l).filter((l) => isMoeLayer(model.config, l)).length;
        for (const B of sizes) {
          const batched = decode(model, ps.slice(0, B), true);
          let worst = 0;
          for (let i = 0; i < B; i++) {
            assert.equal(batched.ids[i], alone.ids[i], `B = ${B}: sequence ${i}'s greedy ids`);
            batched.rows[i].forEach((r, k) => (worst = Math.max(worst, maxAbsDiff(r, alone.rows[i][k]))));
          }
          console.log(`  ${name} B = ${B}: logits within ${worst.toExponential(2)} of each alone; distinct experts of the last step ${model.lastStepExperts}`);
          assert.ok(worst <= TOL, `B = ${B}: logits differ from each alone by ${worst}`);
          if (B > 1 && B <= max) {
            // Every MoE layer reads at least top-k experts and at most one per (token, slot).
            const k = model.config.numExpertsPerTok;
            assert.ok(model.lastStepExperts >= moeLayers * k && model.lastStepExperts <= moeLayers * Math.min(B * k, model.config.nRoutedExperts), `distinct experts ${model.lastStepExperts}`);
          }
        }
        // Several consecutive tokens of one sequence in one batched step (a speculative verify, a short prompt
        // chunk), beside another sequence's decode token: the prompt's reference rows, and the other as alone.
        const V = exp.vocab, T = exp.inputIds.length;
        for (const L of [2, Math.min(5, max), max]) {
          const a = model.createSequence(), b = model.createSequence();
          model.forward([{ sequence: a, tokens: exp.inputIds.subarray(0, T - L), logits: 'none' }]);
          model.forward([{ sequence: b, tokens: ps[1], logits: 'none' }]);
          const [rows, other] = model.forward([{ sequence: a, tokens: exp.inputIds.subarray(T - L), logits: 'all' }, { sequence: b, tokens: [alone.ids[1][0]] }]);
          const d = maxAbsDiff(rows, exp.logits.subarray((T - L) * V));
          const o = maxAbsDiff(other, alone.rows[1][0]);
          console.log(`  ${name}: ${L} tokens of one sequence in one step: prompt rows within ${d.toExponential(2)}, the other sequence within ${o.toExponential(2)}`);
          assert.ok(d <= TOL && o <= TOL, `${L} tokens of one sequence in one step: ${d}, ${o}`);
          assert.is(a.position, T);
          model.free(a);
          model.free(b);
        }
        // A sequence twice in one batch is refused by the pool before anything runs.
        const s = model.createSequence();
        model.forward([{ sequence: s, tokens: [1, 2] }]);
        assert.throws(() => model.forward([{ sequence: s, tokens: [3] }, { sequence: s, tokens: [4] }]), (e: Error) => e instanceof DeepWasmError && /twice/.test(e.message));
        assert.is(s.position, 2);
      } finally {
        await model.close();
      }
    });
  }
}

test.run();
