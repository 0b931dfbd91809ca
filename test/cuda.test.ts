// The CUDA backend against the reference fixtures: prefill logits at every prompt position within
// 2e-3, the greedy continuation token for token (decode graph, host loop and device loop), chunked
// prefill, and `deepwasm logits --backend cuda` writing the CPU's file format. Where there is no GPU
// (or the library is not built) it prints why and registers no test.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { CudaModel, cudaStatus } from '../host/backends/cuda.js';
import { FIXTURES, MODEL_FIXTURES, argmax, maxAbsDiff, readExpected } from './helpers.js';

const TOL = 2e-3;
const status = cudaStatus();
/** Numbers for the record: written to $DW_RESULTS (JSON) when set. */
const results: Record<string, unknown> = { device: status.device ?? null };

function record(key: string, value: unknown): void {
  results[key] = value;
  console.log(`  ${key}: ${JSON.stringify(value)}`);
  const out = process.env.DW_RESULTS;
  if (out) fs.writeFileSync(out, JSON.stringify(results, null, 2) + '\n');
}

if (!status.ok) {
  console.log(`skipped: no CUDA device (${status.reason})`);
} else {
  console.log(`CUDA device: ${status.device}`);

  for (const name of MODEL_FIXTURES) {
    test(`cuda ${name}: prefill logits and greedy decode match the reference`, async () => {
      const dir = `${FIXTURES}models/${name}`;
      const exp = readExpected(`${dir}/expected.safetensors`);
      const V = exp.vocab;
      const model = await CudaModel.load(dir);
      try {
        const logits = model.forward(exp.inputIds, { allLogits: true });
        const prefillDiff = maxAbsDiff(logits, exp.logits);
        const T = exp.inputIds.length;
        const N = exp.genIds.length;
        // Decode step by step through the graph, feeding the reference tokens.
        const stepDiffs: number[] = [maxAbsDiff(logits.subarray((T - 1) * V), exp.genLogits.subarray(0, V))];
        const ids: number[] = [argmax(logits, (T - 1) * V, V)];
        for (let k = 1; k < N; k++) {
          const step = model.forward([exp.genIds[k - 1]]);
          stepDiffs.push(maxAbsDiff(step, exp.genLogits.subarray(k * V, (k + 1) * V)));
          ids.push(argmax(step));
        }
        // The same continuation with the tokens fed back on the device.
        model.reset();
        const first = model.prefill(exp.inputIds);
        const onDevice = [first, ...model.generate(first, N - 1)];
        record(name, {
          prefillMaxDiff: prefillDiff,
          decodeMaxDiff: Math.max(...stepDiffs),
          genIds: Array.from(exp.genIds).join(','),
          cudaIds: ids.join(','),
          deviceLoopIds: onDevice.join(','),
        });
        assert.ok(prefillDiff <= TOL, `prefill logits differ by ${prefillDiff}`);
        assert.ok(Math.max(...stepDiffs) <= TOL, `decode logits differ by up to ${Math.max(...stepDiffs)} (${stepDiffs.map((d) => d.toExponential(1)).join(' ')})`);
        assert.equal(ids, Array.from(exp.genIds), 'greedy ids (host loop)');
        assert.equal(onDevice, Array.from(exp.genIds), 'greedy ids (device loop)');
      } finally {
        await model.close();
      }
    });
  }

  test('cuda: the one-launch decode (DW_MEGA=1) equals the per-kernel decode', async () => {
    // With DW_MEGA=1 (read when a model is created) decode runs every layer in one launch
    // (mega.cu, experimental); by default one kernel per stage. Both compute the same function, with
    // some sums in other orders: the logits of every step agree far inside the tolerance, and the
    // greedy ids are equal.
    const withEnv = async (value: string, dir: string) => {
      const prev = process.env.DW_MEGA;
      process.env.DW_MEGA = value;
      try {
        return await CudaModel.load(dir);
      } finally {
        if (prev === undefined) delete process.env.DW_MEGA;
        else process.env.DW_MEGA = prev;
      }
    };
    const out: Record<string, unknown> = {};
    for (const name of ['v3-odd-bf16-sharded', 'v3-fp8-blocks', 'v2-lite-tiny']) {
      const dir = `${FIXTURES}models/${name}`;
      const exp = readExpected(`${dir}/expected.safetensors`);
      const N = exp.genIds.length;
      const steps = async (value: string) => {
        const model = await withEnv(value, dir);
        try {
          model.prefill(exp.inputIds);
          const logits: Float32Array[] = [];
          for (let k = 1; k < N; k++) logits.push(model.forward([exp.genIds[k - 1]]));
          const profile = model.profileDecode(exp.genIds[N - 1]);
          return { logits, oneLaunch: profile.includes('one launch') };
        } finally {
          await model.close();
        }
      };
      const mega = await steps('1');
      const kernels = await steps('0');
      let diff = 0;
      for (let k = 0; k < mega.logits.length; k++) diff = Math.max(diff, maxAbsDiff(mega.logits[k], kernels.logits[k]));
      out[name] = { maxDiff: diff, schedules: `${mega.oneLaunch ? 'one launch' : 'per kernel'} / ${kernels.oneLaunch ? 'one launch' : 'per kernel'}` };
      assert.ok(mega.oneLaunch, `${name}: the default decode is not the one-launch schedule`);
      assert.ok(!kernels.oneLaunch, `${name}: DW_MEGA=0 did not select the per-kernel schedule`);
      assert.ok(diff <= 1e-4, `${name}: the schedules differ by ${diff}`);
      assert.equal(mega.logits.map((l) => argmax(l)), kernels.logits.map((l) => argmax(l)), `${name}: greedy ids`);
    }
    record('one-launch-vs-per-kernel', out);
  });

  test('cuda: prefill in chunks of 3 tokens equals one pass; top-k on the device', async () => {
    const dir = `${FIXTURES}models/v3-odd-bf16-sharded`;
    const exp = readExpected(`${dir}/expected.safetensors`);
    const V = exp.vocab;
    const model = await CudaModel.load(dir, { maxPrefill: 3 });
    try {
      const logits = model.forward(exp.inputIds, { allLogits: true });
      const d = maxAbsDiff(logits, exp.logits);
      const T = exp.inputIds.length;
      const last = logits.subarray((T - 1) * V);
      const { values, ids } = model.topk(5);
      record('chunked-prefill', { maxDiff: d, topk: Array.from(ids).join(',') });
      assert.ok(d <= TOL, `chunked prefill differs by ${d}`);
      const sorted = Array.from(last.keys()).sort((a, b) => last[b] - last[a] || a - b).slice(0, 5);
      assert.equal(Array.from(ids), sorted, 'top-5 ids');
      assert.ok(Math.abs(values[0] - last[sorted[0]]) < 1e-6);
    } finally {
      await model.close();
    }
  });

  test('cuda: q8 weights (quantised on the device): the decode kernels agree with the prefill path', async () => {
    // Both paths compute with the same int8 weights (decode: q8 matrix-vector kernels; prefill: the
    // weights widened to f32 for cuBLAS), so they must agree as closely as f32 paths do. How far
    // q8 moves the logits from the f32 reference is recorded, not asserted: top-k routing amplifies
    // quantisation error whenever two experts score almost alike.
    const dir = `${FIXTURES}models/v3-tiny`;
    const exp = readExpected(`${dir}/expected.safetensors`);
    const V = exp.vocab;
    const model = await CudaModel.load(dir, { quant: 'q8' });
    try {
      const all = model.forward(exp.inputIds, { allLogits: true });
      model.reset();
      let stepDiff = 0;
      for (let t = 0; t < exp.inputIds.length; t++) {
        const step = model.forward([exp.inputIds[t]]);
        stepDiff = Math.max(stepDiff, maxAbsDiff(step, all.subarray(t * V, (t + 1) * V)));
      }
      const refDiff = maxAbsDiff(all, exp.logits);
      record('q8-v3-tiny', { decodeVsPrefillMaxDiff: stepDiff, vsF32ReferenceMaxDiff: refDiff });
      assert.ok(stepDiff <= TOL, `q8 decode and prefill differ by ${stepDiff}`);
      assert.ok(Number.isFinite(refDiff));
    } finally {
      await model.close();
    }
  });

  test('cuda: deepwasm logits --backend cuda writes the same file as the CPU path', () => {
    const cli = fileURLToPath(new URL('../host/cli/main.js', import.meta.url));
    const dir = `${FIXTURES}models/v3-tiny`;
    const exp = readExpected(`${dir}/expected.safetensors`);
    const work = fs.mkdtempSync(join(tmpdir(), 'deepwasm-cuda-'));
    const ids = Array.from(exp.inputIds).join(',');
    const N = exp.genIds.length;
    const run = (backend: string) => {
      const out = join(work, `${backend}.safetensors`);
      const r = spawnSync(process.execPath, [cli, 'logits', '--model', dir, '--ids', ids, '--gen', String(N), '--out', out, '--backend', backend],
        { encoding: 'utf8', timeout: 120_000 });
      assert.is(r.status, 0, `deepwasm logits --backend ${backend} failed: ${r.stderr}`);
      return readExpected2(out);
    };
    const gpu = run('cuda');
    const cpu = run('cpu');
    assert.equal(gpu.names, cpu.names, 'tensor names');
    assert.equal(gpu.shapes, cpu.shapes, 'shapes');
    const d = maxAbsDiff(gpu.logits, exp.logits);
    const dg = maxAbsDiff(gpu.genLogits, exp.genLogits);
    record('cli-v3-tiny', { logitsMaxDiff: d, genLogitsMaxDiff: dg });
    assert.ok(d <= TOL && dg <= TOL);
    assert.equal(Array.from(gpu.genIds), Array.from(exp.genIds));
    fs.rmSync(work, { recursive: true, force: true });
  });
}

/** A `deepwasm logits` output: its tensors, names and shapes (no input_ids in it). */
function readExpected2(path: string) {
  const bytes = fs.readFileSync(path);
  const n = Number(bytes.readBigUInt64LE(0));
  const header = JSON.parse(bytes.subarray(8, 8 + n).toString('utf8')) as Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;
  const names = Object.keys(header).filter((k) => k !== '__metadata__').sort();
  const get = (name: string) => {
    const h = header[name];
    const raw = bytes.subarray(8 + n + h.data_offsets[0], 8 + n + h.data_offsets[1]);
    const copy = new Uint8Array(raw);
    return h.dtype === 'I32' ? new Int32Array(copy.buffer) : new Float32Array(copy.buffer);
  };
  return {
    names,
    shapes: names.map((k) => `${k}:${header[k].dtype}[${header[k].shape.join(',')}]`),
    logits: get('logits') as Float32Array,
    genIds: get('gen_ids') as Int32Array,
    genLogits: get('gen_logits') as Float32Array,
  };
}

test.run();
