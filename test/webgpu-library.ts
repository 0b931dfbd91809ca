// The WebGPU backend through the library, run as a child process by test/webgpu.test.ts (Dawn needs the
// environment test/webgpu-env.ts gives it at start-up). Each check prints one JSON line; the test
// asserts on them.
import { loadWebGpuModel, type WebGpuLoadOptions } from '../host/backends/webgpu/model.js';
import { FIXTURES, argmax, maxAbsDiff, readExpected } from './helpers.js';

const fixture = (name: string) => `${FIXTURES}models/${name}`;

function report(check: string, value: Record<string, unknown>): void {
  console.log(JSON.stringify({ check, ...value }));
}

/** Prompt logits (all rows), then the reference continuation fed a token at a time, on one sequence. */
async function referenceRun(name: string, opts: WebGpuLoadOptions) {
  const exp = readExpected(`${fixture(name)}/expected.safetensors`);
  const m = await loadWebGpuModel(fixture(name), opts);
  try {
    const V = exp.vocab;
    const seq = m.createSequence();
    const prompt = m.forward([{ sequence: seq, tokens: exp.inputIds, logits: 'all' }])[0];
    const diffs = [maxAbsDiff(prompt, exp.logits)];
    let sum = 0;
    const add = (got: Float32Array, want: Float32Array) => {
      for (let i = 0; i < got.length; i++) sum += Math.abs(got[i] - want[i]);
    };
    add(prompt, exp.logits);
    const ids = [argmax(prompt, (exp.inputIds.length - 1) * V, V)];
    let top1 = ids[0] === exp.genIds[0] ? 1 : 0;
    for (let k = 1; k < exp.genIds.length; k++) {
      const row = m.forward([{ sequence: seq, tokens: [exp.genIds[k - 1]] }])[0];
      diffs.push(maxAbsDiff(row, exp.genLogits.subarray(k * V, (k + 1) * V)));
      add(row, exp.genLogits.subarray(k * V, (k + 1) * V));
      ids.push(argmax(row));
      if (ids[k] === exp.genIds[k]) top1++;
    }
    const values = (exp.inputIds.length + exp.genIds.length - 1) * V;
    return { device: m.device, maxDiff: Math.max(...diffs), meanDiff: sum / values, ids, expected: Array.from(exp.genIds), top1: top1 / exp.genIds.length };
  } finally {
    await m.close();
  }
}

const checks: Record<string, () => Promise<void>> = {
  // The plain reductions and weights cut into 16 KiB buffers (the split path: the embedding and head by
  // rows, one or two experts a piece), prompts in passes of 5 tokens, a command buffer per layer.
  async plain() {
    report('plain', await referenceRun('v3-tiny', { subgroups: false, maxBindingBytes: 16384, passTokens: 5, flushLayers: 1 }));
  },
  async quantized() {
    for (const quant of ['q8', 'q4'] as const) {
      const r = await referenceRun('v3-tiny', { quant });
      report(`quant-${quant}`, { maxDiff: r.maxDiff, meanDiff: r.meanDiff, top1: r.top1 });
    }
  },
  // The device thread ends mid-session (as when the device's native code takes it down): the call that was
  // waiting fails with the reason, later calls fail at once, close() returns.
  async exit() {
    const m = await loadWebGpuModel(fixture('v2-lite-tiny'));
    const seq = m.createSequence();
    const before = m.forward([{ sequence: seq, tokens: [3] }])[0].length;
    const message = (f: () => unknown) => {
      try {
        f();
        return 'no error';
      } catch (e) {
        return (e as Error).message;
      }
    };
    const t = performance.now();
    const crashed = message(() => m.crashForTest(7));
    const after = message(() => m.forward([{ sequence: seq, tokens: [4] }]));
    await m.close();
    report('exit', { before, crashed, after, ms: performance.now() - t });
  },
  // Greedy on the device (four bytes back), two sequences in one batch, fork and truncate, against one alone.
  async sequences() {
    const exp = readExpected(`${fixture('v2-lite-tiny')}/expected.safetensors`);
    const m = await loadWebGpuModel(fixture('v2-lite-tiny'), { maxSequences: 3 });
    try {
      const a = m.createSequence();
      const greedy = [m.greedyStep(a, exp.inputIds)];
      while (greedy.length < exp.genIds.length) greedy.push(m.greedyStep(a, [greedy[greedy.length - 1]]));
      m.truncate(a, 0);
      const b = m.createSequence();
      const half = exp.inputIds.subarray(0, 4);
      const [ra, rb] = m.forward([
        { sequence: a, tokens: exp.inputIds },
        { sequence: b, tokens: half },
      ]);
      const c = m.fork(b);
      const [rb2, rc] = m.forward([
        { sequence: b, tokens: exp.inputIds.subarray(4) },
        { sequence: c, tokens: exp.inputIds.subarray(4) },
      ]);
      m.truncate(c, 4);
      const rc2 = m.forward([{ sequence: c, tokens: exp.inputIds.subarray(4) }])[0];
      const V = exp.vocab;
      const last = exp.logits.subarray((exp.inputIds.length - 1) * V);
      report('sequences', {
        greedy,
        expected: Array.from(exp.genIds),
        batchDiff: maxAbsDiff(ra, last),
        halfDiff: maxAbsDiff(rb, exp.logits.subarray(3 * V, 4 * V)),
        resumedDiff: maxAbsDiff(rb2, last),
        forkDiff: maxAbsDiff(rc, last),
        truncatedDiff: maxAbsDiff(rc2, last),
      });
    } finally {
      await m.close();
    }
  },
};

for (const name of process.argv.slice(2)) await checks[name]();
