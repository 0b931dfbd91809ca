// Sequences on the CPU backend: several KV caches from one pool, interleaved, forked and truncated, each
// giving the same bits as a sequence run alone; batched, going through the layers together within 1e-5 of
// alone with the same greedy tokens, and a batched decode step with each sequence's bits alone; and the
// batch checks, which reject a bad batch before any of it runs.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import type { LoadOptions, Sequence } from '../host/model/backend.js';
import type { Checkpoint } from '../host/checkpoint/checkpoint.js';
import { parseConfig } from '../host/checkpoint/config.js';
import { presetConfig } from '../host/checkpoint/presets.js';
import type { TensorEntry } from '../host/checkpoint/safetensors.js';
import { Model } from '../host/model/model.js';
import { modelSchema, schemaWeights } from '../host/model/schema.js';
import { FIXTURES, argmax, maxAbsDiff, readExpected } from './helpers.js';

const DIR = `${FIXTURES}models/v3-tiny`;
const ref = readExpected(`${DIR}/expected.safetensors`);
const prompt = Array.from(ref.inputIds);
const next = Array.from(ref.genIds);
let model: Model;

test.before(async () => {
  model = await Model.load(DIR, { threads: 2, maxSequences: 3, contextLength: 64 });
});
test.after(async () => {
  await model.close();
});

const bits = (a: Float32Array): number[] => Array.from(new Uint32Array(a.slice().buffer));
const run = (s: Sequence, tokens: number[]): number[] => bits(model.forward([{ sequence: s, tokens }])[0]);

/** Prompt, then the reference continuation one token at a time: every step's logits. */
function alone(ids: number[]): number[][] {
  const s = model.createSequence();
  try {
    return [run(s, ids), ...next.slice(0, 4).map((t) => run(s, [t]))];
  } finally {
    model.free(s);
  }
}

test('two sequences interleaved step by step give the bits each gives alone', () => {
  const other = prompt.slice(0, 3).reverse();
  const want = [alone(prompt), alone(other)];
  const [a, b] = [model.createSequence(), model.createSequence()];
  const got: number[][][] = [[run(a, prompt)], [run(b, other)]];
  for (const t of next.slice(0, 4)) {
    got[0].push(run(a, [t]));
    got[1].push(run(b, [t]));
  }
  assert.equal(got, want);
  assert.is(a.position, prompt.length + 4);
  model.free(a);
  model.free(b);
});

/** Every row of a within tol (relative to b's largest logit) of b, with the same argmax per row of `vocab`. */
function close(a: Float32Array, b: Float32Array, what: string, tol = 1e-5): void {
  assert.is(a.length, b.length, `${what}: length`);
  const scale = Math.max(1, ...Array.from(b, Math.abs));
  assert.ok(maxAbsDiff(a, b) <= tol * scale, `${what}: differs by ${maxAbsDiff(a, b)} (largest logit ${scale})`);
  for (let r = 0; r < a.length; r += ref.vocab) assert.is(argmax(a, r, ref.vocab), argmax(b, r, ref.vocab), `${what}: argmax of row ${r / ref.vocab}`);
}

const logitsOf = (s: Sequence, tokens: number[], logits: 'last' | 'all' = 'last'): Float32Array => model.forward([{ sequence: s, tokens, logits }])[0].slice();

test('one batch of several sequences goes through the layers together: rows within 1e-5 of separate calls, and copies', () => {
  const [a, b, c] = [model.createSequence(), model.createSequence(), model.createSequence()];
  try {
    const rows = model.forward([
      { sequence: a, tokens: prompt },
      { sequence: b, tokens: prompt.slice(0, 2), logits: 'all' },
    ]);
    assert.is(rows[1].length, 2 * ref.vocab);
    assert.is.not(rows[0].buffer, model.rt.memory.buffer);
    close(rows[0], ref.logits.subarray((prompt.length - 1) * ref.vocab, prompt.length * ref.vocab).slice(), 'against the reference', 2e-3);
    model.truncate(a, 0);
    close(rows[0], logitsOf(a, prompt), 'batched vs alone');
    close(rows[1], logitsOf(c, prompt.slice(0, 2), 'all'), 'batched "all" vs alone');
    const none = model.forward([{ sequence: c, tokens: [next[0]], logits: 'none' }, { sequence: b, tokens: [next[0]] }]);
    assert.is(none[0].length, 0);
    assert.is(none[1].length, ref.vocab);
    assert.is(c.position, 3);
  } finally {
    for (const s of [a, b, c]) model.free(s);
  }
});

test('three sequences decoding in one batch per step, after prefilling together, give each one\'s greedy tokens alone', () => {
  const prompts = [prompt, prompt.slice(0, 3).reverse(), prompt.slice(2, 7)];
  const STEPS = 8;
  const greedyAlone = prompts.map((p) => {
    const s = model.createSequence();
    try {
      const ids: number[] = [];
      let l = logitsOf(s, p);
      for (let k = 0; k < STEPS; k++) {
        ids.push(argmax(l));
        l = logitsOf(s, [ids[k]]);
      }
      return ids;
    } finally {
      model.free(s);
    }
  });
  const seqs = prompts.map(() => model.createSequence());
  try {
    let rows = model.forward(prompts.map((p, k) => ({ sequence: seqs[k], tokens: p })));
    const together: number[][] = prompts.map(() => []);
    for (let step = 0; step < STEPS; step++) {
      rows.forEach((r, k) => together[k].push(argmax(r)));
      rows = model.forward(seqs.map((s, k) => ({ sequence: s, tokens: [together[k][step]] })));
    }
    assert.equal(together, greedyAlone);
    assert.equal(seqs.map((s) => s.position), prompts.map((p) => p.length + STEPS));
  } finally {
    for (const s of seqs) model.free(s);
  }
});

test('a batched decode step of up to 8 sequences gives each the bits it gets alone (weights as stored, q8, q4)', async () => {
  for (const quant of [undefined, 'q8', 'q4'] as const) {
    const m = await Model.load(DIR, { threads: 2, maxSequences: 8, contextLength: 64, quant });
    try {
      const prompts = Array.from({ length: 8 }, (_, k) => prompt.slice(k % 3, 3 + k));
      // Over 8 tokens the bf16 matmuls (the router's, the stored weights) take 4-token tiles in their own order (assembly/kernels/matmul.ts).
      for (const n of [5, 8]) {
        const stepAlone = prompts.slice(0, n).map((p, k) => {
          const s = m.createSequence();
          try {
            m.forward([{ sequence: s, tokens: p }]);
            return bits(m.forward([{ sequence: s, tokens: [next[k % next.length]] }])[0]);
          } finally {
            m.free(s);
          }
        });
        const seqs = prompts.slice(0, n).map(() => m.createSequence());
        try {
          seqs.forEach((s, k) => m.forward([{ sequence: s, tokens: prompts[k] }]));
          const rows = m.forward(seqs.map((s, k) => ({ sequence: s, tokens: [next[k % next.length]] })));
          rows.forEach((r, k) => assert.equal(bits(r), stepAlone[k], `${quant ?? 'stored'}, ${n} sequences, sequence ${k}`));
        } finally {
          for (const s of seqs) m.free(s);
        }
      }
    } finally {
      await m.close();
    }
  }
});

test('fork copies the cache: the fork and the original go on as one sequence would, apart', () => {
  const want = alone(prompt);
  const a = model.createSequence();
  run(a, prompt);
  const f = model.fork(a);
  assert.is(f.position, prompt.length);
  assert.equal(run(f, [next[0]]), want[1]);
  assert.equal(run(a, [next[0]]), want[1], 'the original is unchanged by the fork');
  assert.equal(run(f, [next[1]]), want[2]);
  model.free(a);
  model.free(f);
});

test('truncate forgets the tail: running the same tokens again gives the same bits', () => {
  const a = model.createSequence();
  const first = [run(a, prompt), run(a, [next[0]]), run(a, [next[1]])];
  model.truncate(a, prompt.length);
  assert.is(a.position, prompt.length);
  assert.equal([run(a, [next[0]]), run(a, [next[1]])], first.slice(1));
  model.truncate(a, 0);
  assert.equal(run(a, prompt), first[0]);
  model.free(a);
});

test('bad batches and sequences are refused before anything runs, each with a clear message', () => {
  const a = model.createSequence();
  const b = model.createSequence();
  const c = model.createSequence();
  assert.throws(() => model.createSequence(), /all 3 sequences of this model are in use; free one/);
  assert.throws(() => model.forward([{ sequence: a, tokens: [1] }, { sequence: a, tokens: [2] }]), /sequence 0 appears twice in one batch/);
  assert.throws(() => model.forward([{ sequence: a, tokens: [1] }, { sequence: b, tokens: [1, ref.vocab] }]), /token id \d+ at index 1 of batch entry 1 is outside the vocabulary/);
  assert.is(a.position, 0, 'the good entry before the bad one did not run');
  assert.throws(() => model.forward([{ sequence: c, tokens: new Array(65).fill(1) }]), /65 tokens exceed the context length \(64\)/);
  assert.throws(() => model.forward([]), /at least one/);
  assert.throws(() => model.truncate(a, 1), /cannot truncate sequence 0 to 1: it holds 0 tokens/);
  model.free(b);
  assert.throws(() => model.forward([{ sequence: b, tokens: [1] }]), /sequence 1 was freed/);
  assert.throws(() => model.free(b), /was freed/);
  const reused = model.createSequence();
  assert.is(reused.slot, 1);
  for (const s of [a, c, reused]) model.free(s);
});

test('a load that cannot fit is refused before any weight is read: a layer with its KV cache over one memory, a plan over the RAM', async () => {
  let read = 0;
  const refused = (opts: LoadOptions, message: RegExp): Promise<void> =>
    Model.load(DIR, { threads: 1, contextLength: 256, onProgress: (n) => (read = n), ...opts }).then(
      () => assert.unreachable('it loaded'),
      (e: Error) => assert.match(e.message, message),
    );
  // One layer's cache for 200000 x 256 tokens is 8.2 GB: no memory holds it.
  await refused({ maxSequences: 200_000 }, /^layer 0 with its KV cache takes \d+ MiB, more than the memory limit of \d+ MiB; raise --memory-limit/);
  await refused({ memoryLimit: 2 ** 33 }, /^a memory limit of 8192 MiB \(--memory-limit, memoryLimit\) is not one a memory can hold: expected more than 0 and at most \d+ MiB \(a wasm32 memory's 4096 MiB less \d+ MiB of scratch/);
  assert.is(read, 0);
});

test('a plan larger than the machine is refused from the headers alone: DeepSeek-V2 (236B) in bf16', async () => {
  // The checkpoint's headers without its bytes: the refusal must come before any tensor is read.
  const config = parseConfig(presetConfig('236B'), '236B');
  const tensors = new Map<string, TensorEntry>();
  for (const w of schemaWeights(modelSchema(config))) {
    for (const t of w.parts) tensors.set(t.name, { name: t.name, dtype: 'BF16', shape: [...t.shape], path: 'none.safetensors', offset: 0, nbytes: t.shape.reduce((a, b) => a * b, 2) });
  }
  const totalBytes = [...tensors.values()].reduce((n, e) => n + e.nbytes, 0);
  const ckpt: Checkpoint = { dir: '236B', config, tensors, totalBytes, get: (n) => tensors.get(n)!, has: (n) => tensors.has(n), close: () => {} };
  await Model.fromCheckpoint(ckpt, { threads: 1, quant: 'bf16', contextLength: 256 }).then(
    () => assert.unreachable('it loaded'),
    (e: Error) => assert.match(e.message, /^236B: this load needs about 4\d\d\.\d GiB of memory \(weights as bf16, KV cache for 1 x 256 tokens, scratch for 1\d\d WebAssembly memories\), more than 90% of this machine's [\d.]+ GiB; try a smaller weight format \(--quant q4\)/),
  );
});

test.run();
