// The runtime's promises: instantiating the module again (every worker does) cannot clobber the
// host's memory, the module carries no allocator or start function, the arena aligns, marks, grows
// and refuses past 4 GiB with a DeepWasmError, and the pool validates its thread count and stops.
import { readFileSync } from 'node:fs';
import { Worker } from 'node:worker_threads';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { DeepWasmError } from '../host/errors.js';
import { Arena, MAX_MEMORY_BYTES } from '../host/runtime/arena.js';
import { FMT_F32, type Kernels } from '../host/runtime/kernels.js';
import { Runtime } from '../host/runtime/runtime.js';
import { Rng, matmulRef } from './kernel-reference.js';

const WASM = readFileSync(new URL('../../build/deepwasm.wasm', import.meta.url));
const WAT = readFileSync(new URL('../../build/deepwasm.wat', import.meta.url), 'utf8');
const MiB = 1 << 20;
const GiB = 1 << 30;

/** What index.ts exports, as host/runtime/kernels.ts types it: update both together. */
const EXPORTED_FUNCTIONS = [
  'heap_base', 'pool_init', 'pool_stop', 'worker_loop',
  'matmul', 'matmul_grouped', 'grouped_entries', 'moe_group', 'rmsnorm', 'rope', 'softmax', 'silu_mul', 'add', 'scale', 'embed',
  'gather_rows', 'scatter_add', 'copy_rows', 'route', 'mla_attention', 'mla_scratch_floats', 'read_probe', 'dot_peak',
  'weight_bytes', 'quant_scratch_bytes', 'set_scratch', 'quantize_rows', 'q_pack', 'q_unpack', 'fp8_pack', 'relaxed_simd',
].sort();

// ---- a minimal reader of the binary's sections (WebAssembly core spec §5.5) ----

class Reader {
  constructor(
    readonly b: Uint8Array,
    public at = 0,
  ) {}
  byte(): number {
    return this.b[this.at++];
  }
  u32(): number {
    let result = 0;
    for (let shift = 0; ; shift += 7) {
      const x = this.byte();
      result += (x & 0x7f) * 2 ** shift;
      if (!(x & 0x80)) return result;
    }
  }
  s32(): number {
    let result = 0;
    let shift = 0;
    let x: number;
    do {
      x = this.byte();
      result |= (x & 0x7f) << shift;
      shift += 7;
    } while (x & 0x80);
    return shift < 32 && x & 0x40 ? result | (-1 << shift) : result;
  }
  bytes(n: number): Uint8Array {
    const r = this.b.subarray(this.at, this.at + n);
    this.at += n;
    return r;
  }
  name(): string {
    return new TextDecoder().decode(this.bytes(this.u32()));
  }
}

function sections(wasm: Uint8Array): Map<number, Uint8Array[]> {
  const r = new Reader(wasm, 8);
  assert.equal(Array.from(wasm.subarray(0, 4)), [0, 0x61, 0x73, 0x6d], 'wasm magic');
  const out = new Map<number, Uint8Array[]>();
  while (r.at < wasm.length) {
    const id = r.byte();
    const body = r.bytes(r.u32());
    out.set(id, [...(out.get(id) ?? []), body]);
  }
  return out;
}

interface Segment {
  offset: number;
  bytes: Uint8Array;
}

/** The data section's segments; each must be active with a constant offset (what asc emits). */
function dataSegments(wasm: Uint8Array): Segment[] {
  const body = sections(wasm).get(11)?.[0];
  if (!body) return [];
  const r = new Reader(body);
  const segments: Segment[] = [];
  for (let n = r.u32(); n > 0; n--) {
    const flags = r.u32();
    assert.ok(flags === 0 || flags === 2, `data segment ${segments.length} is passive (flags ${flags}): memory.init could write it anywhere`);
    if (flags === 2) assert.is(r.u32(), 0, 'memory index');
    assert.is(r.byte(), 0x41, 'data segment offset is an i32.const');
    const offset = r.s32();
    assert.is(r.byte(), 0x0b, 'end of the offset expression');
    segments.push({ offset, bytes: Uint8Array.from(r.bytes(r.u32())) });
  }
  return segments;
}

/** Limits of the imported memory: flags bit 0 = has a maximum, bit 1 = shared. */
function memoryImport(wasm: Uint8Array): { module: string; name: string; flags: number; min: number; max: number } {
  const r = new Reader(sections(wasm).get(2)![0]);
  for (let n = r.u32(); n > 0; n--) {
    const module = r.name();
    const name = r.name();
    const kind = r.byte();
    if (kind === 2) {
      const flags = r.byte();
      const min = r.u32();
      const max = flags & 1 ? r.u32() : -1;
      return { module, name, flags, min, max };
    }
    assert.unreachable(`the module imports a ${kind === 0 ? 'function' : `kind ${kind}`}: ${module}.${name}`);
  }
  return assert.unreachable('no memory import') as never;
}

function sharedMemory(pages = 32): WebAssembly.Memory {
  return new WebAssembly.Memory({ initial: pages, maximum: 65536, shared: true });
}

function instantiate(module: WebAssembly.Module, memory: WebAssembly.Memory): Kernels {
  return new WebAssembly.Instance(module, { env: { memory } }).exports as unknown as Kernels;
}

/** Instantiates the module in a new worker thread over `memory`, as the runtime's workers do. */
function instantiateInWorker(module: WebAssembly.Module, memory: WebAssembly.Memory): Promise<number> {
  const code = `
    const { parentPort, workerData } = require('node:worker_threads');
    const instance = new WebAssembly.Instance(workerData.module, { env: { memory: workerData.memory } });
    parentPort.postMessage(instance.exports.heap_base());`;
  const worker = new Worker(code, { eval: true, workerData: { module, memory } });
  return new Promise((resolve, reject) => {
    worker.once('message', (heap: number) => worker.terminate().then(() => resolve(heap)));
    worker.once('error', reject);
  });
}

function fillPattern(bytes: Uint8Array, seed: number): void {
  let s = seed >>> 0 || 1;
  for (let i = 0; i < bytes.length; i++) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    bytes[i] = s >>> 24;
  }
}

function firstDifference(a: Uint8Array, b: Uint8Array): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return a.length === b.length ? -1 : n;
}

async function rejection(p: Promise<unknown>): Promise<unknown> {
  try {
    await p;
  } catch (e) {
    return e;
  }
  return assert.unreachable('expected a rejection');
}

// ---- (a) instantiation cannot clobber host memory ----

test('data segments all lie below heap_base, and the binary has no start function', () => {
  const module = new WebAssembly.Module(WASM);
  const heap = instantiate(module, sharedMemory()).heap_base();
  const segments = dataSegments(WASM);
  assert.ok(heap > 0 && heap < 1 * MiB, `heap_base ${heap}`);
  for (const s of segments) {
    assert.ok(s.offset >= 0 && s.offset + s.bytes.length <= heap, `segment [${s.offset}, ${s.offset + s.bytes.length}) reaches past heap_base ${heap}`);
  }
  assert.not.ok(sections(WASM).has(8), 'a start section runs code (and could write memory) at every instantiation');
});

test('instantiating re-applies the data segments, and only below heap_base', async () => {
  const module = await WebAssembly.compile(WASM);
  const memory = sharedMemory();
  const heap = instantiate(module, memory).heap_base();
  const segments = dataSegments(WASM);
  const mem = () => new Uint8Array(memory.buffer);
  for (const s of segments) assert.is(firstDifference(mem().subarray(s.offset, s.offset + s.bytes.length), s.bytes), -1, `segment at ${s.offset} in memory`);

  // Everything from heap_base on is the host's: fill it, starting with its very first byte. Also
  // scribble over the static data, to see instantiation write it back.
  const hostBytes = mem().subarray(heap);
  fillPattern(hostBytes, 1);
  const before = hostBytes.slice();
  mem().fill(0xa5, 0, heap);
  instantiate(module, memory);
  assert.is(await instantiateInWorker(module, memory), heap, 'heap_base seen in a worker');
  for (const s of segments) {
    assert.is(firstDifference(mem().subarray(s.offset, s.offset + s.bytes.length), s.bytes), -1, `segment at ${s.offset} re-applied`);
  }
  assert.is(firstDifference(mem().subarray(heap), before), -1, 'a host byte changed: first differing offset after heap_base');
});

for (const threads of [1, 2]) {
  test(`new instances over a live ${threads}-thread runtime's memory change none of its bytes; the pool still works after`, async () => {
    const rt = await Runtime.create(threads);
    try {
      const module = await WebAssembly.compile(WASM);
      const heap = rt.kernels.heap_base();
      const segments = dataSegments(WASM);
      // A large region (past the initial 2 MiB, so the memory grows), patterned like host data.
      const big = rt.arena.alloc(24 * MiB + 13, 'patterned region');
      fillPattern(rt.bytes(big, 24 * MiB + 13), 2);
      // Everything the host owns, job board included, byte for byte.
      const snapshot = new Uint8Array(rt.memory.buffer).slice(heap);
      for (let i = 0; i < 3; i++) instantiate(module, rt.memory);
      await Promise.all([instantiateInWorker(module, rt.memory), instantiateInWorker(module, rt.memory)]);
      const now = new Uint8Array(rt.memory.buffer).subarray(heap);
      assert.is(now.length, snapshot.length, 'memory size');
      assert.is(firstDifference(now, snapshot), -1, 'a host byte changed: first differing offset after heap_base');

      // The pool still computes correctly, on inputs placed in the grown memory.
      const rng = new Rng(3);
      const rows = 37;
      const cols = 29;
      const tokens = 5;
      const w = rng.normals(rows * cols);
      const x = rng.normals(tokens * cols);
      const wPtr = rt.arena.allocF32(w.length, 'w');
      const xPtr = rt.arena.allocF32(x.length, 'x');
      const out = rt.arena.allocF32(tokens * rows, 'out');
      rt.f32(wPtr, w.length).set(w);
      rt.f32(xPtr, x.length).set(x);
      rt.kernels.matmul(FMT_F32, out, wPtr, xPtr, rows, cols, tokens);
      const ref = matmulRef(w, x, rows, cols, tokens);
      const got = rt.f32(out, tokens * rows);
      for (let i = 0; i < got.length; i++) assert.ok(Math.abs(got[i] - ref.value[i]) <= ref.bound[i], `matmul [${i}]`);
      rt.kernels.softmax(out, tokens * rows);

      // Kernels never write the static data: re-applying it restores bytes that never changed.
      for (const s of segments) {
        assert.is(firstDifference(rt.bytes(s.offset, s.bytes.length), s.bytes), -1, `static data at ${s.offset} untouched by the kernels`);
      }
    } finally {
      await rt.close();
    }
  });
}

// ---- (b) the built module: no allocator, no runtime, the expected exports, a shared memory ----

test('the .wat has no allocator, no runtime, no start function', () => {
  for (const word of ['__alloc', '__new', '__collect', '__renew', '__pin', '~lib/rt/', '(start']) {
    assert.not.ok(WAT.includes(word), `build/deepwasm.wat contains ${word}`);
  }
  // The only per-instance state is the job board's address, which every thread sets itself.
  const mutable = [...WAT.matchAll(/\(global (\S+) \(mut /g)].map((m) => m[1]);
  assert.equal(mutable, ['$assembly/board/board'], 'mutable globals are per-instance state, which a worker would not share');
});

test('exports are exactly the kernel list, in the .wat and in the .wasm', () => {
  const watExports = [...WAT.matchAll(/\(export "([^"]+)" \((func|global|memory) /g)];
  const watFunctions = watExports.filter((m) => m[2] === 'func').map((m) => m[1]).sort();
  assert.equal(watFunctions, EXPORTED_FUNCTIONS);
  assert.equal(watExports.filter((m) => m[2] !== 'func').map((m) => m[1]).sort(), ['BOARD_BYTES', 'memory']);
  // The .wat is the same build as the .wasm.
  const module = new WebAssembly.Module(WASM);
  const binFunctions = WebAssembly.Module.exports(module).filter((e) => e.kind === 'function').map((e) => e.name).sort();
  assert.equal(binFunctions, EXPORTED_FUNCTIONS);
  assert.equal(WebAssembly.Module.imports(module), [{ module: 'env', name: 'memory', kind: 'memory' }]);
});

test('the memory is imported, shared, with a 4 GiB maximum', () => {
  const m = /\(import "env" "memory" \(memory \$\d+ (\d+) (\d+) shared\)\)/.exec(WAT);
  assert.ok(m, 'the .wat imports env.memory as a shared memory');
  const imp = memoryImport(WASM);
  assert.is(`${imp.module}.${imp.name}`, 'env.memory');
  assert.is(imp.flags & 2, 2, 'shared flag in the binary');
  assert.is(imp.max, 65536, 'maximum pages');
  assert.is(Number(m![2]), imp.max);
  // A non-shared memory must be refused: the module cannot silently run without threads.
  const module = new WebAssembly.Module(WASM);
  assert.throws(() => instantiate(module, new WebAssembly.Memory({ initial: 32, maximum: 65536 })));
});

// ---- (c) the arena ----

test('arena: 64-byte aligned, disjoint, in order from the aligned base', () => {
  const arena = new Arena(sharedMemory(1), 1000);
  let end = 1024;
  for (const bytes of [1, 3, 64, 65, 100, 4096, 7, 63, 129]) {
    const p = arena.alloc(bytes, 'x');
    assert.is(p % 64, 0, `alignment of ${bytes} bytes`);
    assert.is(p, end, `allocation of ${bytes} bytes starts where the last ended`);
    end = Math.ceil((p + bytes) / 64) * 64;
    assert.is(arena.used, end);
  }
  const f = arena.allocF32(3, 'floats');
  assert.is(f % 64, 0);
  assert.is(arena.used - f, 64, '3 floats take one 64-byte line');
});

test('arena: mark and release reuse the same bytes; highWater keeps the peak', () => {
  const arena = new Arena(sharedMemory(1), 3328);
  arena.alloc(100, 'weights');
  const mark = arena.mark();
  const first = arena.alloc(5000, 'step 1');
  const peak = arena.used;
  arena.release(mark);
  assert.is(arena.used, mark);
  assert.is(arena.highWater, peak, 'highWater survives a release');
  for (let step = 0; step < 10; step++) {
    const m = arena.mark();
    assert.is(arena.alloc(5000, 'step'), first, `step ${step} reuses the same address`);
    arena.release(m);
  }
  assert.is(arena.highWater, peak, 'flat high-water mark over identical steps');
  arena.alloc(10000, 'bigger');
  assert.is(arena.highWater, arena.used, 'highWater follows a new peak');
  assert.ok(arena.highWater > peak);
});

test('arena: grows the memory by whole pages as needed, and the new bytes are usable', () => {
  const memory = sharedMemory(1);
  const arena = new Arena(memory, 64);
  const bytes = 3 * MiB + 5;
  const p = arena.alloc(bytes, 'big');
  const end = p + bytes;
  assert.is(memory.buffer.byteLength, Math.ceil(end / 65536) * 65536, 'grown to the pages needed, no more');
  const view = new Uint8Array(memory.buffer);
  view[end - 1] = 7;
  assert.is(view[end - 1], 7);
  arena.alloc(10, 'small'); // fits in the last page
  assert.is(memory.buffer.byteLength, Math.ceil(end / 65536) * 65536);
});

test('arena: past 4 GiB is a DeepWasmError naming the allocation, and nothing changes', () => {
  const memory = sharedMemory(1);
  const arena = new Arena(memory, 64);
  arena.alloc(1000, 'weights');
  const used = arena.used;
  const size = memory.buffer.byteLength;
  for (const bytes of [5 * GiB, MAX_MEMORY_BYTES - used + 1]) {
    assert.throws(
      () => arena.alloc(bytes, 'the KV cache'),
      (e: unknown) => e instanceof DeepWasmError && /the KV cache/.test(e.message) && /4096 MiB/.test(e.message),
    );
    assert.is(arena.used, used, 'a refused allocation takes nothing');
    assert.is(memory.buffer.byteLength, size, 'a refused allocation grows nothing');
  }
  assert.throws(() => arena.allocF32(1.25 * GiB, 'floats'), (e: unknown) => e instanceof DeepWasmError);
  assert.is(arena.alloc(64, 'after'), used, 'still usable');
});

test('arena: addresses past 2 GiB stay positive and aligned (no 32-bit sign trouble)', () => {
  // A memory that already spans 4 GiB, so no growth is needed: only the address arithmetic is tested.
  const fake = { buffer: { byteLength: MAX_MEMORY_BYTES }, grow: () => assert.unreachable('grow') } as unknown as WebAssembly.Memory;
  const arena = new Arena(fake, (2 ** 31 + 5) | 0); // a heap base read back from wasm as a negative i32
  const p = arena.alloc(100, 'x');
  assert.is(p, 2 ** 31 + 64);
  const q = arena.alloc(2 ** 31 - 256, 'y');
  assert.is(q, 2 ** 31 + 192);
  assert.ok(q % 64 === 0 && arena.used <= MAX_MEMORY_BYTES);
  assert.throws(() => arena.alloc(128, 'z'), (e: unknown) => e instanceof DeepWasmError);
});

test("the runtime's arena starts at heap_base after the job board and survives a refused allocation", async () => {
  const rt = await Runtime.create(1);
  try {
    const heap = rt.kernels.heap_base();
    const p = rt.arena.alloc(10, 'x');
    assert.is(p % 64, 0);
    assert.ok(p >= heap + (rt.kernels.BOARD_BYTES.value as number), 'above the job board, which is above heap_base');
    assert.throws(() => rt.arena.alloc(5 * GiB, 'too much'), (e: unknown) => e instanceof DeepWasmError);
    const y = rt.arena.allocF32(4, 'y');
    rt.f32(y, 4).set([1, 2, 3, 4]);
    rt.kernels.scale(y, 2, 4);
    assert.equal(Array.from(rt.f32(y, 4)), [2, 4, 6, 8]);
  } finally {
    await rt.close();
  }
});

// ---- (d) threads: validation and shutdown ----

test('Runtime.create refuses thread counts that are not whole numbers from 1 to 256', async () => {
  for (const threads of [0, 1.5, -1, 257, Number.NaN]) {
    const e = await rejection(Runtime.create(threads));
    assert.instance(e, DeepWasmError, `threads = ${threads}`);
    assert.match((e as Error).message, /threads/);
  }
});

test('close() stops every worker thread (they exit with code 0) and can be called twice', async () => {
  const rt = await Runtime.create(3);
  const workers = (rt as unknown as { workers: Worker[] }).workers.slice();
  assert.is(workers.length, 2, 'threads - 1 workers');
  const codes: number[] = [];
  for (const w of workers) w.on('exit', (code) => codes.push(code));
  // The pool works before it is stopped.
  const y = rt.arena.allocF32(1, 'y');
  rt.f32(y, 1)[0] = 3;
  rt.kernels.scale(y, 2, 1);
  assert.is(rt.f32(y, 1)[0], 6);
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error('close() did not return within 5 s: a worker did not stop')), 5000);
  });
  try {
    await Promise.race([rt.close(), timeout]);
  } finally {
    clearTimeout(timer);
  }
  assert.equal(codes, [0, 0], 'every worker left worker_loop and exited normally');
  for (const w of workers) assert.is(w.threadId, -1, 'the thread is gone');
  await rt.close();
  const one = await Runtime.create(1);
  await one.close();
});

test.run();
