// Decoding must not allocate: not in the wasm arena (its high-water mark stays put token after token)
// and not on the JS heap (nothing retained, and no per-token copies such as a fresh logits array).
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PerformanceObserver } from 'node:perf_hooks';
import * as v8 from 'node:v8';
import { runInNewContext } from 'node:vm';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { synthCheckpoint } from '../host/model/synth.js';
import { argmax } from '../host/generate/sampler.js';
import type { LoadOptions } from '../host/model/backend.js';
import { FIXTURES, OneSequence, loadOne, splitLimit } from './helpers.js';

const TOKENS = 100;
const PROMPT = [1, 2, 3, 4, 5, 6, 7, 8];
/** Prompt + TOKENS runs before measuring. */
const WARMUP_WINDOWS = 10;
/** Measured runs; the least of them counts. */
const WINDOWS = 3;
const KiB = 1024;
/** Retained JS heap growth allowed over all 100 tokens (GC bookkeeping, feedback vectors). */
const RETAINED_LIMIT = 16 * KiB;
/** JS bytes allocated per token, garbage included: V8 boxes a few doubles and typed-array views. */
const PER_TOKEN_LIMIT = 8 * KiB;

/** A full collection on demand, without the test runner having to start node with --expose-gc. */
function collector(): () => void {
  const exposed = (globalThis as { gc?: () => void }).gc;
  if (exposed) return exposed;
  v8.setFlagsFromString('--expose-gc');
  // The flag takes effect for contexts created afterwards: a new context's global has gc().
  return runInNewContext('gc') as () => void;
}
const gc = collector();
/** The JS heap plus ArrayBuffer backing stores, which live outside it (a fresh Float32Array(vocab) per token
 * would add only its ~100-byte header to heapUsed). */
const heapUsed = (): number => {
  const m = process.memoryUsage();
  return m.heapUsed + m.arrayBuffers;
};


interface Measured {
  /** Per memory of the model. */
  arenaBefore: number[];
  arenaAfter: number[];
  usedBefore: number[];
  usedAfter: number[];
  retained: number;
  /** Bytes allocated on the JS heap during the 100 tokens, or null when a GC ran inside the window. */
  allocated: number | null;
  logitsIsView: boolean;
  vocab: number;
}

/** Start times of every GC since the file loaded (entries arrive asynchronously, a little after the GC). */
const gcTimes: number[] = [];
new PerformanceObserver((list) => {
  for (const e of list.getEntries()) gcTimes.push(e.startTime);
}).observe({ entryTypes: ['gc'] });

/** Prefills PROMPT from position 0, then decodes TOKENS greedy tokens; the heap is measured around the decode. */
async function decodeWindow(model: OneSequence, prompt: number[]): Promise<{ logits: Float32Array; retained: number; allocated: number | null }> {
  const ids = [0];
  model.reset();
  let logits = model.forward(prompt);
  gc();
  gc();
  const retainedBefore = heapUsed();
  const start = performance.now();
  const heapStart = heapUsed();
  for (let k = 0; k < TOKENS; k++) {
    ids[0] = argmax(logits);
    logits = model.forward(ids);
  }
  const heapEnd = heapUsed();
  const end = performance.now();
  // GC entries arrive asynchronously.
  await new Promise((resolve) => setTimeout(resolve, 20));
  const gcInWindow = gcTimes.some((t) => t >= start && t <= end);
  gc();
  gc();
  return { logits, retained: heapUsed() - retainedBefore, allocated: gcInWindow ? null : heapEnd - heapStart };
}

async function measure(dir: string, opts: LoadOptions = {}): Promise<Measured> {
  const model = await loadOne(dir, { threads: 2, contextLength: PROMPT.length + TOKENS, ...opts });
  try {
    const vocab = model.config.vocabSize;
    const prompt = PROMPT.map((i) => i % vocab);
    // Warm-up: V8 keeps optimising the decode path for several hundred tokens (code and feedback it
    // retains); the steady state is what a long generation sees.
    for (let i = 0; i < WARMUP_WINDOWS; i++) await decodeWindow(model, prompt);
    const arenas = model.model.runtimes.map((rt) => rt.arena);
    const arenaBefore = arenas.map((a) => a.highWater);
    const usedBefore = arenas.map((a) => a.used);
    // The least of a few windows: a leak shows in every one, while a late JIT recompilation (code
    // and feedback V8 keeps) or a GC inside the window, which hides the bytes allocated, is a one-off.
    const ws = [];
    for (let i = 0; i < WINDOWS; i++) ws.push(await decodeWindow(model, prompt));
    const counted = ws.map((w) => w.allocated).filter((a): a is number => a !== null);
    return {
      arenaBefore,
      arenaAfter: arenas.map((a) => a.highWater),
      usedBefore,
      usedAfter: arenas.map((a) => a.used),
      retained: Math.min(...ws.map((w) => w.retained)),
      allocated: counted.length > 0 ? Math.min(...counted) : null,
      logitsIsView: ws.every((w) => model.model.runtimes.some((rt) => w.logits.buffer === rt.memory.buffer)),
      vocab,
    };
  } finally {
    await model.close();
  }
}

function check(m: Measured, what: string): void {
  assert.equal(m.arenaAfter, m.arenaBefore, `${what}: arena high-water marks moved from ${m.arenaBefore} to ${m.arenaAfter} over ${TOKENS} tokens`);
  assert.equal(m.usedAfter, m.usedBefore, `${what}: arena tops moved from ${m.usedBefore} to ${m.usedAfter}: a forward step left memory allocated`);
  assert.ok(m.logitsIsView, `${what}: decode logits should be a view of wasm memory, not a copy`);
  assert.ok(m.retained < RETAINED_LIMIT, `${what}: JS heap grew by ${m.retained} bytes over ${TOKENS} tokens (limit ${RETAINED_LIMIT})`);
  if (m.allocated !== null) {
    const perToken = m.allocated / TOKENS;
    assert.ok(perToken < PER_TOKEN_LIMIT, `${what}: ${perToken.toFixed(0)} JS bytes allocated per decoded token (limit ${PER_TOKEN_LIMIT})`);
  }
}

test('v3-tiny: 100 decoded tokens allocate nothing in the arena and retain nothing on the JS heap', async () => {
  check(await measure(join(FIXTURES, 'models', 'v3-tiny')), 'v3-tiny');
});

test('v3-tiny over several memories: nothing allocated in any of them, nothing retained, copies between them included', async () => {
  const dir = join(FIXTURES, 'models', 'v3-tiny');
  const m = await measure(dir, { memoryLimit: await splitLimit(dir) });
  assert.ok(m.arenaBefore.length >= 3, `${m.arenaBefore.length} memories`);
  check(m, 'v3-tiny over several memories');
});

test('synthetic model with a 32K vocabulary: no per-token copy of the 128 KiB logits', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'deepwasm-noalloc-'));
  try {
    await synthCheckpoint({
      source: 'no-alloc test config',
      out: dir,
      seed: 7,
      dtype: 'bf16',
      config: {
        model_type: 'deepseek_v3',
        vocab_size: 32768,
        hidden_size: 64,
        intermediate_size: 128,
        moe_intermediate_size: 32,
        num_hidden_layers: 2,
        first_k_dense_replace: 1,
        num_attention_heads: 4,
        q_lora_rank: 32,
        kv_lora_rank: 32,
        qk_nope_head_dim: 16,
        qk_rope_head_dim: 8,
        v_head_dim: 16,
        n_routed_experts: 8,
        n_shared_experts: 1,
        num_experts_per_tok: 2,
        n_group: 4,
        topk_group: 2,
      },
    });
    const m = await measure(dir);
    // A copy of the logits per token (vocab * 4 bytes) would break the per-token limit many times over.
    assert.ok(m.vocab * 4 > 8 * PER_TOKEN_LIMIT);
    assert.ok(m.allocated !== null, 'every window had a GC inside: bytes allocated per token were not measured');
    check(m, 'synthetic 32K vocab');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

// Decode from a one-token prompt, where no prefill has set the mark high: scratch whose size follows
// the position (attention's, once) would make the mark creep up token by token.
test('v3-tiny from a one-token prompt: the arena high-water mark stays flat while positions grow', async () => {
  const model = await loadOne(join(FIXTURES, 'models', 'v3-tiny'), { threads: 2, contextLength: 256 });
  try {
    let logits = model.forward([1]);
    const ids = [0];
    const marks: number[] = [];
    for (let k = 0; k < 250; k++) {
      ids[0] = argmax(logits);
      logits = model.forward(ids);
      marks.push(model.model.rt.arena.highWater);
    }
    assert.is(marks[marks.length - 1], marks[0], `arena high-water mark rose by ${marks[marks.length - 1] - marks[0]} bytes over 250 tokens`);
  } finally {
    await model.close();
  }
});

test.run();
