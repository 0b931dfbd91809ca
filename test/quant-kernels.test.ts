// The quantized formats' kernels against the TypeScript references in test/quant-reference.ts:
// weight quantization bit for bit (q8, q4, from f32 and bf16), the checkpoint layout round trip, the
// q8 / q4 / fp8 matmuls for T = 1..9 tokens on odd sizes (partial groups, several column panels)
// within float32 bounds, bit-identical results for T <= 8 tokens and for T one-token calls, and for 1
// and 2 threads and the plain and relaxed builds. The relaxed build runs where the engine runs relaxed SIMD correctly (Node 22+); elsewhere
// its tests are skipped with a message.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { dequantFp8Blocks, fp8e4m3ToF32 } from '../host/checkpoint/dtypes.js';
import { detectRelaxedSimd } from '../host/runtime/features.js';
import { FMT_BF16, FMT_F32, FMT_FP8, FMT_Q4, FMT_Q8, GROUPED_DESC_BYTES } from '../host/runtime/kernels.js';
import { Runtime } from '../host/runtime/runtime.js';
import { Rng } from './kernel-reference.js';
import { groupsOf, packQ4, quantMatmulRef, quantizeQ4, quantizeQ8, unpackQ4 } from './quant-reference.js';

const relaxed = detectRelaxedSimd();
if (!relaxed.relaxed) console.log(`quant-kernels: relaxed-SIMD build SKIPPED on Node ${process.version}: ${relaxed.reason}`);
const BUILDS: ('plain' | 'relaxed')[] = relaxed.relaxed ? ['plain', 'relaxed'] : ['plain'];

/** Sizes: partial groups, exact groups, one group past a panel (1024 columns), several panels. */
const SHAPES: [number, number][] = [
  [1, 1], [3, 5], [5, 31], [2, 32], [7, 33], [4, 100], [9, 128], [6, 129], [17, 300], [3, 1030], [5, 2100],
];
const TOKENS = [1, 2, 3, 4, 5, 6, 7, 8, 9];

const runtimes = new Map<string, Runtime>();

async function rtFor(build: 'plain' | 'relaxed', threads: number): Promise<Runtime> {
  const key = `${build}/${threads}`;
  let rt = runtimes.get(key);
  if (!rt) {
    rt = await Runtime.create(threads, { simd: build });
    rt.ensureQuantScratch(4096);
    runtimes.set(key, rt);
  }
  return rt;
}

test.after(async () => {
  for (const rt of runtimes.values()) await rt.close();
});

function put(rt: Runtime, bytes: Uint8Array): number {
  const p = rt.arena.alloc(bytes.byteLength + 64, 'test input');
  rt.bytes(p, bytes.byteLength).set(bytes);
  rt.bytes(p + bytes.byteLength, 64).fill(0xff); // NaN f32s past the end: a kernel reading them shows
  return p;
}

const u8 = (a: ArrayBufferView): Uint8Array => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);

function toBf16(x: Float32Array): Uint16Array {
  const bits = new Uint32Array(x.buffer, x.byteOffset, x.length);
  const out = new Uint16Array(x.length);
  for (let i = 0; i < x.length; i++) out[i] = (bits[i] + 0x7fff + ((bits[i] >>> 16) & 1)) >>> 16;
  return out;
}

function fromBf16(b: Uint16Array): Float32Array {
  const out = new Float32Array(b.length);
  new Uint32Array(out.buffer).set(Array.from(b, (v) => v << 16));
  return out;
}

/** Weights with some structure: varied row scales, zeros, a lone outlier. */
function weights(rng: Rng, rows: number, cols: number): Float32Array {
  const w = rng.normals(rows * cols, 0.05);
  for (let r = 0; r < rows; r++) {
    const s = 0.1 + 3 * rng.next();
    for (let c = 0; c < cols; c++) w[r * cols + c] *= s;
  }
  if (w.length > 7) w[7] = 0.9;
  for (let i = 3; i < w.length; i += 97) w[i] = 0;
  return w;
}

/** Quantizes w in wasm; returns the blob pointer and the checkpoint layout read back. */
function quantizeInWasm(rt: Runtime, fmt: number, src: Float32Array | Uint16Array, srcFmt: number, rows: number, cols: number) {
  const k = rt.kernels;
  const blob = rt.arena.alloc(k.weight_bytes(fmt, rows, cols), 'blob');
  const s = put(rt, u8(src));
  k.quantize_rows(fmt, blob, rows, srcFmt, s, rows, cols, 0);
  const G = groupsOf(cols);
  const qBytes = fmt === FMT_Q8 ? rows * G * 32 : rows * G * 16;
  const q = rt.arena.alloc(qBytes, 'q');
  const d = rt.arena.allocF32(rows * G, 'd');
  k.q_unpack(fmt, blob, rows, q, d, rows, cols, 0);
  return { blob, q: rt.bytes(q, qBytes).slice(), d: rt.f32(d, rows * G).slice() };
}

for (const fmt of [FMT_Q8, FMT_Q4]) {
  const name = fmt === FMT_Q8 ? 'q8' : 'q4';
  test(`${name} weight quantization matches the reference bit for bit (f32 and bf16 sources, partial groups)`, async () => {
    const rt = await rtFor('plain', 2);
    const mark = rt.arena.mark();
    const rng = new Rng(11 + fmt);
    for (const [rows, cols] of SHAPES) {
      const w32 = weights(rng, rows, cols);
      const wb = toBf16(w32);
      for (const [src, srcFmt, ref] of [[w32, FMT_F32, w32], [wb, FMT_BF16, fromBf16(wb)]] as const) {
        const got = quantizeInWasm(rt, fmt, src, srcFmt, rows, cols);
        const G = groupsOf(cols);
        if (fmt === FMT_Q8) {
          const want = quantizeQ8(ref, rows, cols);
          assert.equal(new Int8Array(got.q.buffer), want.q, `q8 values ${rows}x${cols} src ${srcFmt}`);
          assert.equal(got.d, want.d, `q8 scales ${rows}x${cols}`);
        } else {
          const want = quantizeQ4(ref, rows, cols);
          assert.equal(unpackQ4(got.q, rows, G), want.n, `q4 nibbles ${rows}x${cols} src ${srcFmt}`);
          assert.equal(got.q, packQ4(want.n, rows, G), `q4 packing ${rows}x${cols}`);
          assert.equal(got.d, want.d, `q4 scales ${rows}x${cols}`);
        }
      }
    }
    rt.arena.release(mark);
  });

  test(`${name} checkpoint layout round trip: q_pack(q_unpack(blob)) is the blob; packing and quantizing at a row offset`, async () => {
    const rt = await rtFor('plain', 1);
    const mark = rt.arena.mark();
    const rng = new Rng(5);
    const k = rt.kernels;
    for (const [rows, cols] of SHAPES) {
      const w = weights(rng, rows, cols);
      const a = quantizeInWasm(rt, fmt, w, FMT_F32, rows, cols);
      // the same rows packed as the second half of a matrix twice as tall
      const blob2 = rt.arena.alloc(k.weight_bytes(fmt, 2 * rows, cols), 'blob2');
      const q = put(rt, a.q);
      const d = put(rt, u8(a.d));
      k.q_pack(fmt, blob2, 2 * rows, q, d, rows, cols, rows);
      const back = rt.arena.alloc(a.q.length, 'back');
      const backD = rt.arena.allocF32(a.d.length, 'backD');
      k.q_unpack(fmt, blob2, 2 * rows, back, backD, rows, cols, rows);
      assert.equal(rt.bytes(back, a.q.length).slice(), a.q, `${rows}x${cols} values`);
      assert.equal(rt.f32(backD, a.d.length).slice(), a.d, `${rows}x${cols} scales`);
      // quantize_rows at a row offset (how gate and up are stacked) writes the same rows
      const blob3 = rt.arena.alloc(k.weight_bytes(fmt, 2 * rows, cols), 'blob3');
      k.quantize_rows(fmt, blob3, 2 * rows, FMT_F32, put(rt, u8(w)), rows, cols, rows);
      k.q_unpack(fmt, blob3, 2 * rows, back, backD, rows, cols, rows);
      assert.equal(rt.bytes(back, a.q.length).slice(), a.q, `${rows}x${cols} values at a row offset`);
      assert.equal(rt.f32(backD, a.d.length).slice(), a.d, `${rows}x${cols} scales at a row offset`);
      const blob1 = rt.arena.alloc(k.weight_bytes(fmt, rows, cols), 'blob1');
      k.q_pack(fmt, blob1, rows, q, d, rows, cols, 0);
      assert.equal(rt.bytes(blob1, k.weight_bytes(fmt, rows, cols)).slice(), rt.bytes(a.blob, k.weight_bytes(fmt, rows, cols)).slice(), `${rows}x${cols} blob`);
    }
    rt.arena.release(mark);
  });
}

interface Run {
  out: Float32Array;
}

/** Runs the wasm matmul with canaries around the output; fails on any write outside it. */
function runMatmul(rt: Runtime, fmt: number, blob: number, x: Float32Array, rows: number, cols: number, tokens: number): Run {
  const n = rows * tokens;
  const guard = 16;
  const base = rt.arena.allocF32(n + 2 * guard, 'out');
  const all = new Uint32Array(rt.memory.buffer, base, n + 2 * guard);
  all.fill(0x3f9dc0de);
  new Uint32Array(rt.memory.buffer, base + guard * 4, n).fill(0x7fd11111);
  rt.kernels.matmul(fmt, base + guard * 4, blob, put(rt, u8(x)), rows, cols, tokens);
  for (let i = 0; i < guard; i++) {
    if (all[i] !== 0x3f9dc0de || all[guard + n + i] !== 0x3f9dc0de) assert.unreachable(`write outside the output (${rows}x${cols}, T=${tokens})`);
  }
  return { out: rt.f32(base + guard * 4, n).slice() };
}

function activations(rng: Rng, tokens: number, cols: number): Float32Array {
  const x = rng.normals(tokens * cols, 1);
  for (let t = 0; t < tokens; t++) x[t * cols + ((t * 7) % cols)] = 8; // an outlier per token
  if (cols > 40) x[33] = 0; // zeros
  return x;
}

function checkClose(got: Float32Array, want: Float64Array, bound: Float64Array, what: string): void {
  for (let i = 0; i < got.length; i++) {
    const err = Math.abs(got[i] - want[i]);
    if (!(err <= bound[i])) assert.unreachable(`${what}: out[${i}] = ${got[i]}, reference ${want[i]}, error ${err} > bound ${bound[i]}`);
  }
}

for (const build of BUILDS) {
  for (const fmt of [FMT_Q8, FMT_Q4]) {
    const name = fmt === FMT_Q8 ? 'q8' : 'q4';
    test(`${name} matmul (${build} build) matches the integer reference for T = 1..9 on odd sizes`, async () => {
      const rt = await rtFor(build, 2);
      const mark = rt.arena.mark();
      const rng = new Rng(100 + fmt);
      for (const [rows, cols] of SHAPES) {
        const w = weights(rng, rows, cols);
        const { blob } = quantizeInWasm(rt, fmt, w, FMT_F32, rows, cols);
        const G = groupsOf(cols);
        const wq = fmt === FMT_Q8 ? quantizeQ8(w, rows, cols) : quantizeQ4(w, rows, cols);
        const qw = 'q' in wq ? wq.q : wq.n;
        for (const tokens of TOKENS) {
          const x = activations(rng, tokens, cols);
          const xq = quantizeQ8(x, tokens, cols);
          const ref = quantMatmulRef(qw, wq.d, xq.q, xq.d, rows, G, tokens, fmt === FMT_Q4 ? 8 : 0);
          checkClose(runMatmul(rt, fmt, blob, x, rows, cols, tokens).out, ref.out, ref.bound, `${name} ${build} ${rows}x${cols} T=${tokens}`);
        }
      }
      rt.arena.release(mark);
    });
  }
}

for (const build of BUILDS) {
  test(`f32, bf16, q8 and q4 matmuls of T = 2..8 tokens (${build} build) are bit-identical to T one-token matmuls: a batched step or a verify gives each token what decode gives it`, async () => {
    const rt = await rtFor(build, 2);
    const mark = rt.arena.mark();
    const rng = new Rng(41);
    for (const fmt of [FMT_F32, FMT_BF16, FMT_Q8, FMT_Q4]) {
      for (const [rows, cols] of SHAPES) {
        const w = weights(rng, rows, cols);
        const blob = fmt === FMT_F32 ? put(rt, u8(w)) : fmt === FMT_BF16 ? put(rt, u8(toBf16(w))) : quantizeInWasm(rt, fmt, w, FMT_F32, rows, cols).blob;
        // More than 8 tokens (a prefill) take the 4-token tiles, in their own float order.
        for (const tokens of TOKENS.slice(1, 8)) {
          const x = activations(rng, tokens, cols);
          const got = new Uint32Array(runMatmul(rt, fmt, blob, x, rows, cols, tokens).out.buffer);
          for (let t = 0; t < tokens; t++) {
            const alone = new Uint32Array(runMatmul(rt, fmt, blob, x.subarray(t * cols, (t + 1) * cols), rows, cols, 1).out.buffer);
            assert.equal(got.subarray(t * rows, (t + 1) * rows), alone, `fmt ${fmt} ${rows}x${cols} T=${tokens} token ${t}`);
          }
        }
      }
    }
    rt.arena.release(mark);
  });
}

test('a prefill longer than one scratch chunk (300 tokens: 256 + 44) matches the reference in every build', async () => {
  const rows = 5;
  const cols = 100;
  const tokens = 300;
  for (const build of BUILDS) {
    const rt = await rtFor(build, 2);
    const mark = rt.arena.mark();
    const rng = new Rng(9);
    const w = weights(rng, rows, cols);
    const x = activations(rng, tokens, cols);
    const xq = quantizeQ8(x, tokens, cols);
    for (const fmt of [FMT_Q8, FMT_Q4]) {
      const { blob } = quantizeInWasm(rt, fmt, w, FMT_F32, rows, cols);
      const wq = fmt === FMT_Q8 ? quantizeQ8(w, rows, cols) : quantizeQ4(w, rows, cols);
      const ref = quantMatmulRef('q' in wq ? wq.q : wq.n, wq.d, xq.q, xq.d, rows, groupsOf(cols), tokens, fmt === FMT_Q4 ? 8 : 0);
      checkClose(runMatmul(rt, fmt, blob, x, rows, cols, tokens).out, ref.out, ref.bound, `fmt ${fmt} ${build} T=${tokens}`);
    }
    rt.arena.release(mark);
  }
});

/** e4m3 bytes of moderate values (no NaN code), and block scales. */
function fp8Matrix(rng: Rng, rows: number, cols: number) {
  const bytes = new Uint8Array(rows * cols);
  for (let i = 0; i < bytes.length; i++) {
    let b = rng.int(256);
    if ((b & 0x7f) === 0x7f) b ^= 1;
    bytes[i] = b;
  }
  const sr = Math.ceil(rows / 128);
  const sc = Math.ceil(cols / 128);
  const scales = new Float32Array(sr * sc);
  for (let i = 0; i < scales.length; i++) scales[i] = 1e-3 * (1 + rng.next());
  return { bytes, scales };
}

for (const build of BUILDS) {
  test(`fp8 matmul (${build} build) matches the dequantized float64 reference for T = 1..9 (partial 128-blocks)`, async () => {
    const rt = await rtFor(build, 2);
    const mark = rt.arena.mark();
    const rng = new Rng(77);
    const k = rt.kernels;
    for (const [rows, cols] of [...SHAPES, [130, 260] as [number, number]]) {
      const { bytes, scales } = fp8Matrix(rng, rows, cols);
      const blob = rt.arena.alloc(k.weight_bytes(FMT_FP8, rows, cols), 'fp8 blob');
      k.fp8_pack(blob, rows, put(rt, bytes), put(rt, u8(scales)), rows, cols, 0, 128);
      const w = new Float32Array(rows * cols);
      dequantFp8Blocks(bytes, scales, rows, cols, w);
      for (const tokens of TOKENS) {
        const x = activations(rng, tokens, cols);
        const want = new Float64Array(rows * tokens);
        const bound = new Float64Array(rows * tokens);
        for (let t = 0; t < tokens; t++) {
          for (let r = 0; r < rows; r++) {
            let s = 0;
            let abs = 0;
            for (let c = 0; c < cols; c++) {
              const p = w[r * cols + c] * x[t * cols + c];
              s += p;
              abs += Math.abs(p);
            }
            want[t * rows + r] = s;
            bound[t * rows + r] = 2 * (cols + 8) * 2 ** -24 * abs + 1e-30;
          }
        }
        checkClose(runMatmul(rt, FMT_FP8, blob, x, rows, cols, tokens).out, want, bound, `fp8 ${build} ${rows}x${cols} T=${tokens}`);
      }
    }
    rt.arena.release(mark);
  });
}

test('fp8 decode covers every e4m3 code (subnormals, zero, negative zero, the largest value 448)', async () => {
  const rt = await rtFor('plain', 1);
  const mark = rt.arena.mark();
  const k = rt.kernels;
  const rows = 255;
  const cols = 128;
  // Row r holds code r (not 0x7f/0xff: NaN) at column 5, zeros elsewhere; x[5] = 1.
  const bytes = new Uint8Array(rows * cols);
  const codes = Array.from({ length: 256 }, (_, i) => i).filter((b) => (b & 0x7f) !== 0x7f);
  codes.forEach((b, r) => (bytes[r * cols + 5] = b));
  const scales = new Float32Array(Math.ceil(rows / 128)).fill(1);
  const blob = rt.arena.alloc(k.weight_bytes(FMT_FP8, rows, cols), 'blob');
  k.fp8_pack(blob, rows, put(rt, bytes), put(rt, u8(scales)), rows, cols, 0, 128);
  const x = new Float32Array(cols);
  x[5] = 1;
  const got = runMatmul(rt, FMT_FP8, blob, x, rows, cols, 1).out;
  const want = new Float32Array(256);
  fp8e4m3ToF32(Uint8Array.from({ length: 256 }, (_, i) => i), want);
  codes.forEach((b, r) => assert.is(got[r], want[b], `code 0x${b.toString(16)}`));
  rt.arena.release(mark);
});

test('1, 2 and 3 threads, and the plain and relaxed builds, give bit-identical q8 and q4 results; fp8 across threads', async () => {
  const rng = new Rng(3);
  const rows = 37;
  const cols = 2100;
  const w = weights(rng, rows, cols);
  for (const fmt of [FMT_Q8, FMT_Q4, FMT_FP8]) {
    for (const tokens of [1, 3, 4, 9]) {
      const x = activations(rng, tokens, cols);
      const fp8 = fmt === FMT_FP8 ? fp8Matrix(rng, rows, cols) : undefined;
      const results: { key: string; out: Float32Array }[] = [];
      for (const build of BUILDS) {
        for (const threads of [1, 2, 3]) {
          const rt = await rtFor(build, threads);
          const mark = rt.arena.mark();
          let blob: number;
          if (fp8) {
            blob = rt.arena.alloc(rt.kernels.weight_bytes(FMT_FP8, rows, cols), 'blob');
            rt.kernels.fp8_pack(blob, rows, put(rt, fp8.bytes), put(rt, u8(fp8.scales)), rows, cols, 0, 128);
          } else {
            blob = quantizeInWasm(rt, fmt, w, FMT_F32, rows, cols).blob;
          }
          results.push({ key: `${build}/${threads}`, out: runMatmul(rt, fmt, blob, x, rows, cols, tokens).out });
          rt.arena.release(mark);
        }
      }
      for (const r of results) {
        // fp8's relaxed build fuses its multiply-adds, so for fp8 only the thread counts of one build must agree.
        const base = fmt === FMT_FP8 ? results.find((b) => b.key.split('/')[0] === r.key.split('/')[0])! : results[0];
        assert.equal(new Uint32Array(r.out.buffer), new Uint32Array(base.out.buffer), `fmt ${fmt} T=${tokens}: ${r.key} vs ${base.key}`);
      }
    }
  }
});

test('matmul_grouped (every format, both builds, 1 and 2 threads, entries of 1-8 tokens) is bit-identical to one matmul per entry (f32, bf16: per token)', async () => {
  const rng = new Rng(21);
  // [rows, cols, input, tokens]: a shared input over consecutive entries (gate/up), distinct inputs (down),
  // partial groups, several panels, an input used again after another one, with another token count, and
  // a few tokens per entry (a batched step's experts and heads: 2, 3, 5, 8).
  const entries: [number, number, number, number][] = [
    [37, 300, 0, 1], [9, 300, 0, 1], [64, 1030, 1, 1], [3, 33, 2, 1], [17, 300, 0, 1], [130, 2100, 3, 1],
    [11, 300, 0, 3], [11, 300, 0, 3], [40, 1030, 1, 2], [5, 33, 2, 5], [70, 2100, 3, 8], [9, 300, 0, 1],
  ];
  const inputs = [300, 1030, 33, 2100].map((cols) => activations(rng, 8, cols));
  const mats = entries.map(([rows, cols]) => ({ w: weights(rng, rows, cols), fp8: fp8Matrix(rng, rows, cols) }));
  for (const fmt of [FMT_F32, FMT_BF16, FMT_Q8, FMT_Q4, FMT_FP8]) {
    for (const build of BUILDS) {
      for (const threads of [1, 2]) {
        const rt = await rtFor(build, threads);
        const k = rt.kernels;
        const mark = rt.arena.mark();
        const xs = inputs.map((x) => put(rt, u8(x)));
        const blobs = entries.map(([rows, cols], e) => {
          if (fmt === FMT_F32) return put(rt, u8(mats[e].w));
          if (fmt === FMT_BF16) return put(rt, u8(toBf16(mats[e].w)));
          if (fmt === FMT_FP8) {
            const blob = rt.arena.alloc(k.weight_bytes(FMT_FP8, rows, cols), 'blob');
            k.fp8_pack(blob, rows, put(rt, mats[e].fp8.bytes), put(rt, u8(mats[e].fp8.scales)), rows, cols, 0, 128);
            return blob;
          }
          return quantizeInWasm(rt, fmt, mats[e].w, FMT_F32, rows, cols).blob;
        });
        const total = entries.reduce((s, [rows, , , tokens]) => s + rows * tokens, 0);
        const guard = 16;
        const base = rt.arena.allocF32(total + 2 * guard, 'grouped out');
        const all = new Uint32Array(rt.memory.buffer, base, total + 2 * guard);
        all.fill(0x3f9dc0de);
        const desc = rt.arena.alloc(entries.length * GROUPED_DESC_BYTES, 'table');
        const i32 = new Int32Array(rt.memory.buffer);
        let at = base + guard * 4;
        const outs: number[] = [];
        entries.forEach(([rows, cols, input, tokens], e) => {
          const d = (desc + e * GROUPED_DESC_BYTES) / 4;
          i32.set([at, blobs[e], xs[input], rows, cols, tokens], d);
          outs.push(at);
          at += rows * tokens * 4;
        });
        k.matmul_grouped(fmt, desc, entries.length);
        for (let i = 0; i < guard; i++) {
          if (all[i] !== 0x3f9dc0de || all[guard + total + i] !== 0x3f9dc0de) assert.unreachable(`write outside the outputs (fmt ${fmt})`);
        }
        entries.forEach(([rows, cols, input, tokens], e) => {
          // f32 and bf16 entries run each token as decode's row code does; the others as matmul over the entry's tokens.
          const perToken = fmt === FMT_F32 || fmt === FMT_BF16;
          const want = new Float32Array(rows * tokens);
          if (perToken) for (let t = 0; t < tokens; t++) want.set(runMatmul(rt, fmt, blobs[e], inputs[input].subarray(t * cols, (t + 1) * cols), rows, cols, 1).out, t * rows);
          else want.set(runMatmul(rt, fmt, blobs[e], inputs[input].subarray(0, tokens * cols), rows, cols, tokens).out);
          const got = rt.f32(outs[e], rows * tokens).slice();
          assert.equal(new Uint32Array(got.buffer), new Uint32Array(want.buffer), `fmt ${fmt} ${build}/${threads} entry ${e} (${rows}x${cols}, T=${tokens})`);
        });
        rt.arena.release(mark);
      }
    }
  }
});

test.run();
