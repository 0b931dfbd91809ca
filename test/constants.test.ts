// The shared numbers have one definition, assembly/constants.ts; tools/gen-constants.mjs writes them into
// host/runtime/constants.ts and kernels-gpu/include/dw_constants.h. Here: the generated files are up to
// date, all three files give every name the same value (a hand edit to any of them fails), and the
// built module behaves as the numbers say: its weight sizes, its groups and blocks, its table strides,
// its routing methods, its board and its thread limit.
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import * as C from '../host/runtime/constants.js';
import { Runtime } from '../host/runtime/runtime.js';

const ROOT = new URL('../../', import.meta.url);
const read = (path: string): string => readFileSync(new URL(path, ROOT), 'utf8');

/** NAME -> value of every line of `text` that `pattern` (name and value groups) matches. */
function definitions(text: string, pattern: RegExp): Map<string, number> {
  const out = new Map<string, number>();
  for (const m of text.matchAll(pattern)) {
    assert.not.ok(out.has(m[1]), `${m[1]} is defined twice`);
    out.set(m[1], Number(m[2]));
  }
  return out;
}

const source = definitions(read('assembly/constants.ts'), /^export const ([A-Z][A-Z0-9_]*): i32 = (-?\d+);$/gm);
const ts = definitions(read('host/runtime/constants.ts'), /^export const ([A-Z][A-Z0-9_]*) = (-?\d+);$/gm);
const c = definitions(read('kernels-gpu/include/dw_constants.h'), /^#define DW_([A-Z][A-Z0-9_]*) (-?\d+)$/gm);

let rt: Runtime;
test.before(async () => {
  rt = await Runtime.create(1);
  rt.ensureQuantScratch(1024);
});
test.after(async () => {
  await rt.close();
});

test('the generated files are what gen-constants.mjs writes from assembly/constants.ts', () => {
  const r = spawnSync(process.execPath, ['tools/gen-constants.mjs', '--check'], { cwd: ROOT, encoding: 'utf8' });
  assert.is(r.status, 0, `gen-constants.mjs --check: ${r.stderr}`);
});

test('every name has one value in the AssemblyScript source, the TypeScript module and the C header', () => {
  assert.ok(source.size >= 40, `only ${source.size} definitions read from assembly/constants.ts`);
  assert.equal([...ts.keys()].sort(), [...source.keys()].sort(), 'names in host/runtime/constants.ts');
  assert.equal([...c.keys()].sort(), [...source.keys()].sort(), 'names in kernels-gpu/include/dw_constants.h');
  for (const [name, value] of source) {
    assert.is(ts.get(name), value, `${name} in host/runtime/constants.ts`);
    assert.is(c.get(name), value, `DW_${name} in kernels-gpu/include/dw_constants.h`);
    assert.is((C as Record<string, unknown>)[name], value, `${name} as the compiled host module exports it`);
  }
});

test('weight_bytes: f32, bf16 row-major; q8, q4 groups of QUANT_GROUP and fp8 blocks of FP8_BLOCK over rows padded to 128', () => {
  const G = C.QUANT_GROUP;
  for (const [rows, cols] of [[1, 1], [3, 31], [5, 129], [2, 1030], [7, 4100]]) {
    const cp = Math.ceil(cols / 128) * 128;
    const groups = cp / G;
    const want: [number, number][] = [
      [C.FMT_F32, rows * cols * 4],
      [C.FMT_BF16, rows * cols * 2],
      [C.FMT_Q8, rows * groups * (G + 4)],
      [C.FMT_Q4, rows * groups * (G / 2 + 4)],
      [C.FMT_FP8, rows * cp + rows * (cp / C.FP8_BLOCK) * 4],
    ];
    for (const [fmt, bytes] of want) assert.is(rt.kernels.weight_bytes(fmt, rows, cols), bytes, `fmt ${fmt}, ${rows} x ${cols}`);
  }
});

test('q8 scales: one per QUANT_GROUP columns (q_unpack writes ceil(cols / QUANT_GROUP) of them per row)', () => {
  const G = C.QUANT_GROUP;
  const cols = 2 * G + 5;
  const groups = Math.ceil(cols / G);
  // Group g's largest value is 127 * (g + 1), so its scale is g + 1: a group boundary anywhere else shows.
  const row = Float32Array.from({ length: cols }, (_, i) => (i % G === 0 ? 127 * (Math.floor(i / G) + 1) : 1));
  const src = rt.arena.allocF32(cols, 'row');
  rt.f32(src, cols).set(row);
  const blob = rt.arena.alloc(rt.kernels.weight_bytes(C.FMT_Q8, 1, cols), 'blob');
  rt.kernels.quantize_rows(C.FMT_Q8, blob, 1, C.FMT_F32, src, 1, cols, 0);
  const q = rt.arena.alloc(groups * G, 'q');
  const s = rt.arena.allocF32(groups + 1, 's');
  rt.f32(s, groups + 1).fill(-1);
  rt.kernels.q_unpack(C.FMT_Q8, blob, 1, q, s, 1, cols, 0);
  assert.equal(Array.from(rt.f32(s, groups + 1)), [...Array.from({ length: groups }, (_, g) => g + 1), -1]);
});

test('fp8: one scale per FP8_BLOCK columns', () => {
  const B = C.FP8_BLOCK;
  const cols = 2 * B;
  const w = rt.arena.alloc(cols, 'e4m3 ones');
  rt.bytes(w, cols).fill(0x38); // 1.0 in e4m3
  const scales = rt.arena.allocF32(2, 'scale_inv');
  rt.f32(scales, 2).set([1, 2]);
  const blob = rt.arena.alloc(rt.kernels.weight_bytes(C.FMT_FP8, 1, cols), 'blob');
  rt.kernels.fp8_pack(blob, 1, w, scales, 1, cols, 0, B);
  const x = rt.arena.allocF32(cols, 'x');
  rt.f32(x, cols).fill(1);
  const out = rt.arena.allocF32(1, 'out');
  rt.kernels.matmul(C.FMT_FP8, out, blob, x, 1, cols, 1);
  assert.is(rt.f32(out, 1)[0], 3 * B, 'block 0 scaled by 1, block 1 by 2');
});

test('GROUPED_DESC_BYTES and MATRIX_DESC_BYTES: the strides matmul_grouped and grouped_entries read', () => {
  const k = rt.kernels;
  const mats = [
    { rows: 3, cols: 5, value: 2 },
    { rows: 4, cols: 7, value: 3 },
  ].map((m) => {
    const ptr = rt.arena.allocF32(m.rows * m.cols, 'w');
    rt.f32(ptr, m.rows * m.cols).fill(m.value);
    return { ...m, ptr };
  });
  const table = rt.arena.alloc(2 * C.MATRIX_DESC_BYTES, 'matrix table');
  mats.forEach((m, i) => rt.i32(table + i * C.MATRIX_DESC_BYTES, 4).set([m.ptr, m.rows, m.cols, C.FMT_F32]));
  const x = rt.arena.allocF32(7, 'x');
  rt.f32(x, 7).fill(1);
  const out = rt.arena.allocF32(8, 'out');
  rt.f32(out, 8).fill(-1);
  const desc = rt.arena.alloc(2 * C.GROUPED_DESC_BYTES, 'grouped table');
  assert.is(k.grouped_entries(desc, table, 2, 0, out, 4, x, 0), 2);
  assert.equal(Array.from(rt.i32(desc + C.GROUPED_DESC_BYTES, 5)), [out + 16, mats[1].ptr, x, 4, 7], 'the second entry');
  k.matmul_grouped(C.FMT_F32, desc, 2);
  assert.equal(Array.from(rt.f32(out, 8)), [10, 10, 10, -1, 21, 21, 21, 21]);
});

test('ROUTE_* and SCORE_*: the routing methods and scoring functions route() runs', () => {
  // Experts {0, 1} and {2, 3} in two groups, one kept, two experts per token. By method: plain top-2 of
  // the scores; the group with the best expert; the group with the best sum of its two best (sigmoid).
  const logits = [0, 3, 2.9, 2.8];
  const chosen = (method: number, scoring: number): number[] => {
    const k = rt.kernels;
    const l = rt.arena.allocF32(4, 'logits');
    rt.f32(l, 4).set(logits);
    const ex = rt.arena.alloc(8, 'experts');
    const w = rt.arena.allocF32(2, 'weights');
    k.route(l, 1, 4, 0, method, scoring, 2, 1, 2, 0, 1, ex, w, rt.arena.allocF32(10, 'scratch'));
    const sig = (v: number) => 1 / (1 + Math.exp(-v));
    const soft = (v: number) => Math.exp(v) / logits.reduce((s, u) => s + Math.exp(u), 0);
    const e = Array.from(rt.i32(ex, 2));
    e.forEach((id, j) => {
      const want = scoring === C.SCORE_SIGMOID ? sig(logits[id]) : soft(logits[id]);
      assert.ok(Math.abs(rt.f32(w, 2)[j] - want) < 1e-6, `weight of expert ${id}`);
    });
    return e;
  };
  assert.equal(chosen(C.ROUTE_GREEDY, C.SCORE_SOFTMAX), [1, 2]);
  assert.equal(chosen(C.ROUTE_GROUP_LIMITED_GREEDY, C.SCORE_SOFTMAX), [1, 0]);
  assert.equal(chosen(C.ROUTE_NOAUX_TC, C.SCORE_SIGMOID), [2, 3]);
});

test('BOARD_EXTRA_BYTES: set_scratch writes only past the board, inside the extra bytes', () => {
  const module = new WebAssembly.Module(readFileSync(new URL('build/deepwasm.wasm', ROOT)));
  const memory = new WebAssembly.Memory({ initial: 32, maximum: 65536, shared: true });
  const k = new WebAssembly.Instance(module, { env: { memory } }).exports as unknown as typeof rt.kernels;
  const boardBytes = k.BOARD_BYTES.value as number;
  const board = Math.ceil(k.heap_base() / 64) * 64;
  k.pool_init(board, 1);
  const before = new Uint8Array(memory.buffer).slice();
  k.set_scratch(0x12345640, 0x7654321);
  const after = new Uint8Array(memory.buffer);
  const changed: number[] = [];
  before.forEach((b, i) => b !== after[i] && changed.push(i - board));
  assert.ok(changed.length > 0, 'set_scratch wrote nothing');
  assert.ok(changed.every((o) => o >= boardBytes && o < boardBytes + C.BOARD_EXTRA_BYTES), `set_scratch wrote at board + ${changed.join(', ')}`);
});

test('MAX_THREADS: the threads the runtime takes and the per-thread slots the quantized scratch reserves', async () => {
  // THREAD_SCRATCH (1024 bytes, assembly/kernels/quantize.ts) per thread, before any token's activations.
  assert.is(rt.kernels.quant_scratch_bytes(32, 0), C.MAX_THREADS * 1024);
  try {
    await Runtime.create(C.MAX_THREADS + 1);
    assert.unreachable('a runtime of MAX_THREADS + 1 threads');
  } catch (e) {
    assert.match((e as Error).message, `from 1 to ${C.MAX_THREADS}`);
  }
});

test.run();
