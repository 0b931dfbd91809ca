// Every wasm kernel against a plain float64 TypeScript reference (test/kernel-reference.ts) on seeded
// random inputs of several sizes, odd ones included so that the SIMD loops' tails run; outputs are
// fenced by canaries so a kernel writing one float too far is caught. Then: 1, 2 and 3 threads give
// bit-identical results, down to a whole model's logits.
//
// Tolerances: sums and dot products are compared with the rigorous float32 forward-error bound
// 2 n U sum |a_i b_i| (U = 2^-24; see ERROR BOUNDS in kernel-reference.ts): never flaky, yet a
// wrong, missing or extra term is off by 100x that or more. Kernels that only move bytes or do one
// float32 operation per element (add, scale, embed, gather, scatter_add, copy_rows) must be
// bit-exact, because IEEE float32 arithmetic is: the reference is Math.fround of the same operation.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { perHeadMatmul } from '../host/model/per-head.js';
import type { Matrix } from '../host/model/weights.js';
import {
  FMT_BF16, FMT_F32, GROUPED_DESC_BYTES, MATRIX_DESC_BYTES, ROUTE_GREEDY, ROUTE_GROUP_LIMITED_GREEDY, ROUTE_NOAUX_TC, SCORE_SIGMOID, SCORE_SOFTMAX,
} from '../host/runtime/kernels.js';
import { MatrixTable } from '../host/runtime/grouped.js';
import { Runtime } from '../host/runtime/runtime.js';
import { FIXTURES, loadOne, readExpected } from './helpers.js';
import {
  Rng, U, bf16Matrix, bf16ToF32, f32Bits, matmulRef, mlaNaiveRef, rmsnormRef, ropeRef, routeRef, siluMulRef,
  softmaxRef, toBf16, type MlaCase, type Ref, type RouteCase,
} from './kernel-reference.js';

/** Lengths that cover empty SIMD bodies, exact multiples of 4, 8 and 16, and every tail length. */
const SIZES = [1, 3, 4, 7, 8, 15, 16, 17, 33, 64, 100, 257];
const TOKENS = [1, 2, 3, 4, 5, 9];

/** Canary floats on each side of every output (64 bytes, so the output stays 64-byte aligned). */
const GUARD = 16;
// A finite canary (about 1.23): arithmetic on it changes it, whereas a NaN canary would survive a
// stray y *= a (NaN payloads propagate).
const CANARY = 0x3f9dc0de;
/** Inputs are followed by this NaN: a kernel reading past an input poisons its output. */
const POISON = 0x7fc0beef;
const INPUT_PAD = 16;
const UNWRITTEN = 0x7fd11111; // output slots start as this (quiet) NaN: any slot left unwritten fails

let rt: Runtime;

test.before(async () => {
  rt = await Runtime.create(2);
});

test.after(async () => {
  await rt.close();
});

function put(data: ArrayLike<number>): number {
  const p = rt.arena.allocF32(data.length + INPUT_PAD, 'test input');
  new Uint32Array(rt.memory.buffer, p + data.length * 4, INPUT_PAD).fill(POISON);
  rt.f32(p, data.length).set(data);
  return p;
}

function putU16(data: Uint16Array): number {
  const p = rt.arena.alloc(data.byteLength + INPUT_PAD * 4, 'test bf16 input');
  new Uint16Array(rt.memory.buffer, p + data.byteLength, INPUT_PAD * 2).fill(POISON >>> 16);
  new Uint16Array(rt.memory.buffer, p, data.length).set(data);
  return p;
}

function putI32(data: ArrayLike<number>): number {
  const p = rt.arena.alloc(Math.max(data.length * 4, 4), 'test ids');
  rt.i32(p, data.length).set(data);
  return p;
}

/** An output of n floats between canaries, its body filled with `init` (or the UNWRITTEN NaN). */
class Out {
  readonly ptr: number;
  private readonly base: number;
  constructor(
    readonly n: number,
    init?: ArrayLike<number>,
  ) {
    this.base = rt.arena.allocF32(n + 2 * GUARD, 'test output');
    this.ptr = this.base + GUARD * 4;
    const all = new Uint32Array(rt.memory.buffer, this.base, n + 2 * GUARD);
    all.fill(CANARY);
    if (init) rt.f32(this.ptr, n).set(init);
    else all.fill(UNWRITTEN, GUARD, GUARD + n);
  }
  get(): Float32Array {
    this.checkGuards();
    return rt.f32(this.ptr, this.n).slice();
  }
  bits(): Uint32Array {
    this.checkGuards();
    return new Uint32Array(rt.memory.buffer, this.ptr, this.n).slice();
  }
  private checkGuards(): void {
    const all = new Uint32Array(rt.memory.buffer, this.base, this.n + 2 * GUARD);
    for (let i = 0; i < GUARD; i++) {
      if (all[i] !== CANARY) assert.unreachable(`wrote ${GUARD - i} floats before its output`);
      if (all[GUARD + this.n + i] !== CANARY) assert.unreachable(`wrote float ${this.n + i} of an output of ${this.n}`);
    }
  }
}

/** Runs body with everything it allocates released afterwards. */
function scoped<T>(body: () => T): T {
  const mark = rt.arena.mark();
  try {
    return body();
  } finally {
    rt.arena.release(mark);
  }
}

/** Largest |error| / bound seen per kernel, printed with KERNEL_TEST_VERBOSE=1. */
const worst = new Map<string, number>();

function expectClose(got: ArrayLike<number>, ref: Ref, what: string): void {
  assert.is(got.length, ref.value.length, `${what}: length`);
  const kernel = what.split(' ')[0];
  let w = worst.get(kernel) ?? 0;
  for (let i = 0; i < got.length; i++) {
    const err = Math.abs(got[i] - ref.value[i]);
    if (!(err <= ref.bound[i])) {
      assert.unreachable(`${what}: [${i}] is ${got[i]}, expected ${ref.value[i]} within ${ref.bound[i]} (off by ${err})`);
    }
    if (ref.bound[i] > 0) w = Math.max(w, err / ref.bound[i]);
  }
  worst.set(kernel, w);
}

function expectBits(got: Float32Array, want: ArrayLike<number>, what: string): void {
  assert.is(got.length, want.length, `${what}: length`);
  for (let i = 0; i < got.length; i++) {
    if (f32Bits(got[i]) !== f32Bits(want[i])) assert.unreachable(`${what}: [${i}] is ${got[i]}, expected exactly ${want[i]}`);
  }
}

test('bf16 rounding helper: round to nearest, ties to even', () => {
  assert.is(toBf16(1), 0x3f80);
  assert.is(toBf16(-2), 0xc000);
  const f = new Float32Array(new Uint32Array([0x3f808000, 0x3f818000, 0x3f808001, 0x3f807fff]).buffer);
  assert.is(toBf16(f[0]), 0x3f80, 'tie rounds down to even');
  assert.is(toBf16(f[1]), 0x3f82, 'tie rounds up to even');
  assert.is(toBf16(f[2]), 0x3f81, 'above the tie rounds up');
  assert.is(toBf16(f[3]), 0x3f80, 'below the tie rounds down');
  assert.is(bf16ToF32(0x3f81), 1.0078125);
  assert.is(toBf16(Infinity), 0x7f80);
});

test('matmul f32 and bf16: every size and token count against float64 dot products', () => {
  const rng = new Rng(1);
  let cases = 0;
  for (const fmt of [FMT_F32, FMT_BF16]) {
    for (const rows of [1, 3, 4, 7, 16, 17, 33]) {
      for (const cols of SIZES) {
        for (const tokens of TOKENS) {
          scoped(() => {
            const w32 = rng.normals(rows * cols);
            const x = rng.normals(tokens * cols);
            let wPtr: number;
            let wRef: Float32Array;
            if (fmt === FMT_BF16) {
              const { bits, widened } = bf16Matrix(w32);
              wPtr = putU16(bits);
              wRef = widened;
            } else {
              wPtr = put(w32);
              wRef = w32;
            }
            const xPtr = put(x);
            const out = new Out(tokens * rows);
            rt.kernels.matmul(fmt, out.ptr, wPtr, xPtr, rows, cols, tokens);
            expectClose(out.get(), matmulRef(wRef, x, rows, cols, tokens), `matmul fmt=${fmt} rows=${rows} cols=${cols} T=${tokens}`);
            cases++;
          });
        }
      }
    }
  }
  assert.is(cases, 2 * 7 * SIZES.length * TOKENS.length);
});

test('matmul: large-magnitude and cancelling inputs stay within the float32 bound', () => {
  const rng = new Rng(2);
  for (const fmt of [FMT_F32, FMT_BF16]) {
    scoped(() => {
      const rows = 5;
      const cols = 257;
      const tokens = 5;
      // Pairs of nearly opposite terms: the sum is much smaller than sum |w x|, the hard case for
      // a relative tolerance; the bound is on sum |w x|, which is what rounding actually depends on.
      const w32 = new Float32Array(rows * cols);
      for (let i = 0; i < w32.length; i++) w32[i] = (i % 2 ? -1 : 1) * (1e3 + rng.uniform(0, 1));
      const { bits, widened } = bf16Matrix(w32);
      const x = rng.f32(tokens * cols, 1e2, 1e2 + 1);
      const wPtr = fmt === FMT_BF16 ? putU16(bits) : put(w32);
      const out = new Out(tokens * rows);
      rt.kernels.matmul(fmt, out.ptr, wPtr, put(x), rows, cols, tokens);
      expectClose(out.get(), matmulRef(fmt === FMT_BF16 ? widened : w32, x, rows, cols, tokens), `matmul cancelling fmt=${fmt}`);
    });
  }
});

test('rmsnorm: strided rows, in place, every size', () => {
  const rng = new Rng(3);
  for (const n of SIZES) {
    for (const tokens of [1, 3]) {
      for (const [xPad, outPad] of [[0, 0], [5, 2], [3, 0]]) {
        for (const magnitude of [1, 1e3]) {
          scoped(() => {
            const xStride = n + xPad;
            const outStride = n + outPad;
            const x = rng.normals(tokens * xStride, magnitude);
            const w = rng.f32(n, 0.5, 1.5);
            const eps = 1e-6;
            const out = new Out(tokens * outStride);
            rt.kernels.rmsnorm(out.ptr, outStride, put(x), xStride, put(w), n, tokens, eps);
            const ref = rmsnormRef(x, xStride, w, n, tokens, Math.fround(eps));
            const got = out.get();
            const gotBits = out.bits();
            const what = `rmsnorm n=${n} T=${tokens} strides=${xStride}/${outStride}`;
            const rows = new Float32Array(tokens * n);
            for (let t = 0; t < tokens; t++) rows.set(got.subarray(t * outStride, t * outStride + n), t * n);
            expectClose(rows, ref, what);
            // The gaps between strided rows are not the kernel's to write.
            for (let t = 0; t < tokens; t++) {
              for (let i = n; i < outStride; i++) assert.is(gotBits[t * outStride + i], UNWRITTEN, `${what}: gap written`);
            }
          });
        }
      }
    }
  }
  // In place, as the attention block normalises the latent inside kv_a's output rows.
  scoped(() => {
    const n = 33;
    const stride = 40;
    const tokens = 3;
    const x = rng.normals(tokens * stride);
    const w = rng.f32(n, 0.5, 1.5);
    const xOut = new Out(tokens * stride, x);
    rt.kernels.rmsnorm(xOut.ptr, stride, xOut.ptr, stride, put(w), n, tokens, 1e-5);
    const got = xOut.get();
    const ref = rmsnormRef(x, stride, w, n, tokens, Math.fround(1e-5));
    for (let t = 0; t < tokens; t++) {
      expectClose(got.subarray(t * stride, t * stride + n), { value: ref.value.subarray(t * n, (t + 1) * n), bound: ref.bound.subarray(t * n, (t + 1) * n) }, 'rmsnorm in place');
      expectBits(got.subarray(t * stride + n, (t + 1) * stride), x.subarray(t * stride + n, (t + 1) * stride), 'rmsnorm in place: rest of row');
    }
  });
});

test('rope: interleaved pairs, several positions, vectors and strides', () => {
  const rng = new Rng(4);
  let cases = 0;
  for (const half of [1, 2, 3, 4, 8, 13]) {
    for (const tokens of [1, 3, 5]) {
      for (const vecs of [1, 3]) {
        for (const pos0 of [0, 7]) {
          for (const [vecPad, tokPad] of [[0, 0], [3, 5]]) {
            scoped(() => {
              const vecStride = vecs === 1 && vecPad === 0 ? 0 : 2 * half + vecPad;
              const tokenStride = vecs * Math.max(vecStride, 2 * half) + tokPad;
              const positions = pos0 + tokens + 2;
              const cos = new Float32Array(positions * half);
              const sin = new Float32Array(positions * half);
              for (let p = 0; p < positions; p++) {
                for (let i = 0; i < half; i++) {
                  const angle = p / 10000 ** ((2 * i) / (2 * half));
                  cos[p * half + i] = Math.cos(angle);
                  sin[p * half + i] = Math.sin(angle);
                }
              }
              const x = rng.normals(tokens * tokenStride);
              const buf = new Out(x.length, x);
              rt.kernels.rope(buf.ptr, tokens, vecs, tokenStride, vecStride, put(cos), put(sin), pos0, half);
              // Floats outside the rotated pairs have bound 0: they must come back bit-identical.
              expectClose(
                buf.get(),
                ropeRef(x, tokens, vecs, tokenStride, vecStride, cos, sin, pos0, half),
                `rope half=${half} T=${tokens} vecs=${vecs} pos0=${pos0} strides=${tokenStride}/${vecStride}`,
              );
              cases++;
            });
          }
        }
      }
    }
  }
  assert.is(cases, 6 * 3 * 2 * 2 * 2);
});

test('rope: position p rotates by p times the frequency (pos0 shifts the table row)', () => {
  scoped(() => {
    // One pair, angle 0.5 per position: after rope at position 3, (1, 0) is (cos 1.5, sin 1.5).
    const half = 1;
    const cos = new Float32Array(8).map((_, p) => Math.cos(0.5 * p));
    const sin = new Float32Array(8).map((_, p) => Math.sin(0.5 * p));
    const buf = new Out(4, [1, 0, 1, 0]);
    rt.kernels.rope(buf.ptr, 2, 1, 2, 0, put(cos), put(sin), 3, half);
    const got = buf.get();
    assert.ok(Math.abs(got[0] - Math.cos(1.5)) < 1e-6 && Math.abs(got[1] - Math.sin(1.5)) < 1e-6, `position 3: ${got[0]}, ${got[1]}`);
    assert.ok(Math.abs(got[2] - Math.cos(2.0)) < 1e-6 && Math.abs(got[3] - Math.sin(2.0)) < 1e-6, `position 4: ${got[2]}, ${got[3]}`);
  });
});

test('softmax: every size, ordinary and huge logits (max subtraction), sums to 1', () => {
  const rng = new Rng(5);
  for (const n of SIZES) {
    for (const [offset, spread] of [[0, 3], [1e4, 5], [-1e4, 5], [80, 20], [0, 100]]) {
      scoped(() => {
        const x = new Float32Array(n);
        for (let i = 0; i < n; i++) x[i] = offset + spread * rng.normal();
        const buf = new Out(n, x);
        rt.kernels.softmax(buf.ptr, n);
        const got = buf.get();
        const what = `softmax n=${n} offset=${offset} spread=${spread}`;
        expectClose(got, softmaxRef(x), what);
        let sum = 0;
        for (const p of got) sum += p;
        assert.ok(Math.abs(sum - 1) <= (2 * n + 8) * U, `${what}: sums to ${sum}`);
      });
    }
  }
});

test('silu_mul: every size, with saturating gates', () => {
  const rng = new Rng(6);
  for (const n of SIZES) {
    for (const tokens of [1, 3]) {
      scoped(() => {
        const gu = rng.normals(tokens * 2 * n, 4);
        // At both ends of the gates, so both the four-lane loop and the one-value tail see them.
        const extremes = [-100, -90, -88, -87.5, 0, 30, 88.5, 100];
        for (let i = 0; i < Math.min(extremes.length, n); i++) {
          gu[i] = extremes[i];
          gu[n - 1 - i] = extremes[i];
        }
        const out = new Out(tokens * n);
        rt.kernels.silu_mul(out.ptr, put(gu), n, tokens);
        expectClose(out.get(), siluMulRef(gu, n, tokens), `silu_mul n=${n} T=${tokens}`);
      });
    }
  }
});

test('add and scale: bit-exact on every size, nothing written past n', () => {
  const rng = new Rng(7);
  for (const n of SIZES) {
    scoped(() => {
      const y = rng.normals(n);
      const x = rng.normals(n);
      const buf = new Out(n, y);
      rt.kernels.add(buf.ptr, put(x), n);
      expectBits(buf.get(), y.map((v, i) => Math.fround(v + x[i])), `add n=${n}`);
    });
    scoped(() => {
      const y = rng.normals(n);
      const a = Math.fround(rng.uniform(-3, 3));
      const buf = new Out(n, y);
      rt.kernels.scale(buf.ptr, a, n);
      expectBits(buf.get(), y.map((v) => Math.fround(v * a)), `scale n=${n}`);
    });
  }
});

test('embed f32 and bf16: rows of the table, widened exactly', () => {
  const rng = new Rng(8);
  const vocab = 11;
  for (const dim of [1, 3, 8, 17, 64]) {
    for (const tokens of [1, 5]) {
      const ids = Array.from({ length: tokens }, () => rng.int(vocab));
      if (tokens > 1) ids[1] = ids[0]; // a repeated id
      ids[tokens - 1] = vocab - 1; // the last row of the table
      const table = rng.normals(vocab * dim);
      const { bits, widened } = bf16Matrix(table);
      for (const fmt of [FMT_F32, FMT_BF16]) {
        scoped(() => {
          const out = new Out(tokens * dim);
          rt.kernels.embed(fmt, out.ptr, fmt === FMT_BF16 ? putU16(bits) : put(table), putI32(ids), tokens, dim);
          const src = fmt === FMT_BF16 ? widened : table;
          const want = new Float32Array(tokens * dim);
          ids.forEach((id, t) => want.set(src.subarray(id * dim, (id + 1) * dim), t * dim));
          expectBits(out.get(), want, `embed fmt=${fmt} dim=${dim} T=${tokens}`);
        });
      }
    }
  }
});

test('gather_rows, scatter_add (repeated rows accumulate in order) and copy_rows', () => {
  const rng = new Rng(9);
  for (const dim of [1, 3, 4, 7, 17, 33]) {
    const R = 9;
    const n = 7;
    const rows = Array.from({ length: n }, () => rng.int(R));
    rows[2] = rows[5]; // a row gathered twice / receiving two contributions
    scoped(() => {
      const src = rng.normals(R * dim);
      const out = new Out(n * dim);
      rt.kernels.gather_rows(out.ptr, put(src), putI32(rows), n, dim);
      const want = new Float32Array(n * dim);
      rows.forEach((r, j) => want.set(src.subarray(r * dim, (r + 1) * dim), j * dim));
      expectBits(out.get(), want, `gather_rows dim=${dim}`);
    });
    scoped(() => {
      const dst = rng.normals(R * dim);
      const src = rng.normals(n * dim);
      const weights = rng.f32(n, 0, 1);
      const out = new Out(R * dim, dst);
      rt.kernels.scatter_add(out.ptr, put(src), putI32(rows), put(weights), n, dim);
      const want = Float32Array.from(dst);
      rows.forEach((r, j) => {
        for (let i = 0; i < dim; i++) want[r * dim + i] = Math.fround(want[r * dim + i] + Math.fround(weights[j] * src[j * dim + i]));
      });
      expectBits(out.get(), want, `scatter_add dim=${dim}`);
    });
    scoped(() => {
      const tokens = 4;
      const srcStride = dim + 5;
      const dstStride = dim + 2;
      const src = rng.normals(tokens * srcStride);
      const dst = rng.normals(tokens * dstStride);
      const out = new Out(tokens * dstStride, dst);
      rt.kernels.copy_rows(out.ptr, dstStride, put(src), srcStride, dim, tokens);
      const want = Float32Array.from(dst);
      for (let t = 0; t < tokens; t++) want.set(src.subarray(t * srcStride, t * srcStride + dim), t * dstStride);
      expectBits(out.get(), want, `copy_rows dim=${dim}`);
    });
  }
});

test('moe_group: route\'s pairs by expert, a stable counting sort (expert starts, each pair\'s token and weight)', () => {
  const rng = new Rng(12);
  for (const [tokens, k, experts] of [[1, 1, 1], [1, 6, 64], [5, 2, 8], [9, 3, 4], [40, 8, 256]]) {
    scoped(() => {
      // Distinct experts per token, as route() chooses them.
      const chosen = Array.from({ length: tokens }, () => {
        const pick: number[] = [];
        while (pick.length < k) {
          const e = rng.int(experts);
          if (!pick.includes(e)) pick.push(e);
        }
        return pick;
      }).flat();
      const weights = rng.f32(tokens * k, 0, 1);
      const starts = new Out(experts + 1);
      const rows = new Out(tokens * k);
      const rowWeights = new Out(tokens * k);
      rt.kernels.moe_group(putI32(chosen), put(weights), tokens, k, experts, starts.ptr, rows.ptr, rowWeights.ptr);
      const pairs = chosen.map((e, p) => ({ e, token: Math.floor(p / k), w: weights[p] })).sort((a, b) => a.e - b.e || a.token - b.token);
      const wantStarts = Array.from({ length: experts + 1 }, (_, e) => chosen.filter((c) => c < e).length);
      const what = `moe_group T=${tokens} k=${k} E=${experts}`;
      assert.equal(Array.from(new Int32Array(starts.bits().buffer)), wantStarts, `${what}: starts`);
      assert.equal(Array.from(new Int32Array(rows.bits().buffer)), pairs.map((p) => p.token), `${what}: rows`);
      expectBits(rowWeights.get(), pairs.map((p) => p.w), `${what}: weights`);
    });
  }
});

test('grouped_entries: an entry per matrix (or per expert with pairs), in order, outputs and inputs strided', () => {
  scoped(() => {
    const n = 5;
    const table = rt.arena.alloc(n * MATRIX_DESC_BYTES, 'matrix table');
    const mats = Array.from({ length: n }, (_, e) => [1000 * (e + 1), 3 + e, 40 + e, FMT_BF16]);
    mats.forEach((m, e) => rt.i32(table + e * MATRIX_DESC_BYTES, 4).set(m));
    const desc = rt.arena.alloc(n * GROUPED_DESC_BYTES, 'grouped table');
    const entries = (count: number) => Array.from({ length: count }, (_, i) => Array.from(rt.i32(desc + i * GROUPED_DESC_BYTES, 6)));
    assert.is(rt.kernels.grouped_entries(desc, table, n, 0, 64, 10, 640, 3), n);
    assert.equal(entries(n), mats.map((m, i) => [64 + 40 * i, m[0], 640 + 12 * i, m[1], m[2], 1]), 'every matrix, one token each');
    // Experts 1 and 4 have pairs, the others none.
    const starts = putI32([0, 0, 2, 2, 2, 3]);
    assert.is(rt.kernels.grouped_entries(desc, table, n, starts, 64, 10, 640, 0), 2);
    assert.equal(entries(2), [[64, 2000, 640, 4, 41, 1], [104, 5000, 640, 7, 44, 1]], 'the experts with pairs');
  });
});

test('read_probe: adds the i32 words it reads (wrapping) to out, whichever thread reads which blocks', () => {
  const rng = new Rng(12);
  for (const blocks of [1, 2, 3, 17, 64, 1000]) {
    scoped(() => {
      const words = new Int32Array(blocks * 16).map(() => (rng.next() * 2 ** 32) | 0);
      const src = rt.arena.alloc(words.byteLength, 'probe buffer');
      rt.i32(src, words.length).set(words);
      const out = rt.arena.alloc(64, 'probe sum');
      rt.i32(out, 1)[0] = 0x5a5a5a5a;
      rt.kernels.read_probe(src, blocks * 64, out);
      const want = words.reduce((sum, w) => (sum + w) | 0, 0x5a5a5a5a);
      assert.is(rt.i32(out, 1)[0], want, `blocks=${blocks}`);
    });
  }
});

test('dot_peak: the sum of its 128 multiply-adds a round, as the plain and relaxed tiles form them', async () => {
  // Round i's weight vectors are n + i and n + 1 + i (int8), the four tokens' activations (n >> 3..6) & 63.
  const model = (n: number, relaxed: boolean): number => {
    const i8 = (v: number) => (v << 24) >> 24;
    const xs = [3, 4, 5, 6].map((s) => (n >> s) & 63);
    let sum = 0;
    for (let i = 1; i <= n; i++) {
      for (const w of [i8(n + i), i8(n + 1 + i)]) {
        for (let k = 0; k < 4; k++) {
          // relaxed: 16 lanes of x * |w|; plain: 8 lanes of (256 w)(257 x) for the even half and for the odd half.
          if (relaxed) sum = (sum + 16 * xs[k] * Math.abs(w)) | 0;
          else sum = (sum + Math.imul(2048 * w, 257 * xs[k]) + Math.imul(2048 * w, 257 * xs[(k + 1) % 4])) | 0;
        }
      }
    }
    return sum;
  };
  for (const simd of rt.simd === 'relaxed' ? (['plain', 'relaxed'] as const) : (['plain'] as const)) {
    const r = await Runtime.create(1, { simd });
    try {
      for (const n of [1, 7, 40]) assert.is(r.kernels.dot_peak(n), model(n, simd === 'relaxed'), `${simd}, ${n} rounds`);
    } finally {
      await r.close();
    }
  }
});

const METHOD_CODE = { greedy: ROUTE_GREEDY, group_limited_greedy: ROUTE_GROUP_LIMITED_GREEDY, noaux_tc: ROUTE_NOAUX_TC };

test('route: greedy, group_limited_greedy and noaux_tc; softmax and sigmoid; bias, normalize, scale', () => {
  const rng = new Rng(10);
  const shapes = [
    { experts: 12, groups: 3, keepGroups: 2, k: 3 }, // the v3-odd fixture
    { experts: 64, groups: 8, keepGroups: 3, k: 6 }, // V2-Lite sized
    { experts: 256, groups: 8, keepGroups: 4, k: 8 }, // V3
    { experts: 10, groups: 5, keepGroups: 2, k: 2 }, // two experts per group
    { experts: 16, groups: 1, keepGroups: 1, k: 2 }, // grouped methods with one group
  ];
  const tokens = 6;
  let checked = 0;
  let skipped = 0;
  let biasMattered = 0;
  let groupsMattered = 0;
  for (const shape of shapes) {
    for (const scoring of ['softmax', 'sigmoid'] as const) {
      const logits = rng.normals(tokens * shape.experts, scoring === 'softmax' ? 2 : 1.5);
      const biasValues = rng.f32(shape.experts, -0.3, 0.3);
      for (const method of ['greedy', 'group_limited_greedy', 'noaux_tc'] as const) {
        for (const withBias of [false, true]) {
          for (const normalize of [false, true]) {
            for (const routedScale of [1, 2.5]) {
              const c: RouteCase = { tokens, ...shape, method, scoring, normalize, routedScale };
              const what = `route ${method} ${scoring} E=${shape.experts} bias=${withBias} normalize=${normalize} scale=${routedScale}`;
              const ref = routeRef(logits, withBias ? biasValues : null, c);
              if (withBias) {
                const plain = routeRef(logits, null, c);
                biasMattered += ref.filter((r, t) => !sameSet(r.experts, plain[t].experts)).length;
              }
              if (method !== 'greedy') {
                const greedy = routeRef(logits, withBias ? biasValues : null, { ...c, method: 'greedy' });
                groupsMattered += ref.filter((r, t) => !sameSet(r.experts, greedy[t].experts)).length;
              }
              scoped(() => {
                const experts = rt.arena.alloc(tokens * shape.k * 4, 'experts');
                rt.i32(experts, tokens * shape.k).fill(-1);
                const weights = new Out(tokens * shape.k);
                const scratch = new Out(2 * shape.experts + shape.groups, new Float32Array(2 * shape.experts + shape.groups).fill(NaN));
                rt.kernels.route(
                  put(logits), tokens, shape.experts, withBias ? put(biasValues) : 0, METHOD_CODE[method],
                  scoring === 'sigmoid' ? SCORE_SIGMOID : SCORE_SOFTMAX, shape.groups, shape.keepGroups, shape.k,
                  normalize ? 1 : 0, routedScale, experts, weights.ptr, scratch.ptr,
                );
                scratch.get(); // its canaries
                const chosen = rt.i32(experts, tokens * shape.k).slice();
                const w = weights.get();
                for (let t = 0; t < tokens; t++) {
                  const r = ref[t];
                  if (r.margin < 1e-5) {
                    skipped++; // a near-tie: float32 may legitimately pick the other one
                    continue;
                  }
                  const got = Array.from(chosen.subarray(t * shape.k, (t + 1) * shape.k));
                  assert.ok(sameSet(got, r.experts), `${what} token ${t}: chose [${got}], expected [${r.experts}]`);
                  for (let j = 0; j < shape.k; j++) {
                    const want = r.weights[r.experts.indexOf(got[j])];
                    const err = Math.abs(w[t * shape.k + j] - want);
                    assert.ok(err <= r.relBound * want + 1e-37, `${what} token ${t}: expert ${got[j]} weight ${w[t * shape.k + j]}, expected ${want}`);
                  }
                  checked++;
                }
              });
            }
          }
        }
      }
    }
  }
  if (process.env.KERNEL_TEST_VERBOSE) {
    console.log(`  route: ${checked} token routings checked, ${skipped} near-ties skipped; bias changed ${biasMattered}, groups changed ${groupsMattered}`);
  }
  assert.ok(skipped <= checked / 100, `${skipped} near-tie tokens skipped of ${checked + skipped}`);
  // The cases must actually exercise what they claim to: the bias and the group limit change choices.
  assert.ok(biasMattered > 20, `the bias changed only ${biasMattered} choices`);
  assert.ok(groupsMattered > 20, `group limiting changed only ${groupsMattered} choices`);
});

function sameSet(a: number[], b: number[]): boolean {
  const x = [...a].sort((p, q) => p - q);
  const y = [...b].sort((p, q) => p - q);
  return x.length === y.length && x.every((v, i) => v === y[i]);
}

const MLA_CASES: MlaCase[] = [
  { tokens: 1, heads: 1, nope: 4, ropeDim: 2, vDim: 3, rank: 7, pos0: 0, scale: 0.3 },
  { tokens: 1, heads: 3, nope: 12, ropeDim: 6, vDim: 10, rank: 24, pos0: 9, scale: 0.23 },
  { tokens: 3, heads: 2, nope: 7, ropeDim: 3, vDim: 5, rank: 13, pos0: 0, scale: 0.3 },
  { tokens: 4, heads: 5, nope: 8, ropeDim: 5, vDim: 7, rank: 33, pos0: 6, scale: 0.25 },
  { tokens: 7, heads: 4, nope: 16, ropeDim: 8, vDim: 16, rank: 67, pos0: 2, scale: 0.2 },
  { tokens: 9, heads: 1, nope: 5, ropeDim: 1, vDim: 1, rank: 1, pos0: 0, scale: 0.5 },
  { tokens: 2, heads: 5, nope: 3, ropeDim: 7, vDim: 9, rank: 17, pos0: 30, scale: 0.4 },
  // More heads than one grouped step takes (GROUPED_MAX), for one token and for several.
  { tokens: 1, heads: 70, nope: 3, ropeDim: 2, vDim: 2, rank: 9, pos0: 5, scale: 0.5 },
  { tokens: 3, heads: 70, nope: 3, ropeDim: 2, vDim: 2, rank: 9, pos0: 1, scale: 0.5 },
  // Large enough that every thread is busy at once (a scratch shared between threads would show).
  { tokens: 8, heads: 8, nope: 32, ropeDim: 16, vDim: 32, rank: 128, pos0: 120, scale: 0.15 },
  { tokens: 1, heads: 16, nope: 32, ropeDim: 16, vDim: 32, rank: 128, pos0: 200, scale: 0.15 },
];

/** A [rows, cols] matrix of values exact in fmt (f32, or bf16 when they are bf16 values) in r's memory. */
function putMatrix(r: Runtime, values: Float32Array, rows: number, cols: number, fmt: typeof FMT_F32 | typeof FMT_BF16): Matrix {
  if (fmt === FMT_F32) {
    const ptr = r.arena.allocF32(values.length, 'f32 matrix');
    r.f32(ptr, values.length).set(values);
    return { fmt, ptr, rows, cols, stored: 'F32' };
  }
  const bits = new Uint16Array(values.length);
  for (let i = 0; i < values.length; i++) bits[i] = f32Bits(values[i]) >>> 16;
  const ptr = r.arena.alloc(bits.byteLength, 'bf16 matrix');
  new Uint16Array(r.memory.buffer, ptr, bits.length).set(bits);
  return { fmt, ptr, rows, cols, stored: 'BF16' };
}

/** n floats between canaries in r's memory, the body NaN; check() fails if anything beside it was written. */
function fenced(r: Runtime, n: number, what: string) {
  const base = r.arena.allocF32(n + 2 * GUARD, what);
  const all = () => new Uint32Array(r.memory.buffer, base, n + 2 * GUARD);
  all().fill(CANARY).fill(UNWRITTEN, GUARD, GUARD + n);
  return {
    ptr: base + GUARD * 4,
    check() {
      const a = all();
      for (let i = 0; i < GUARD; i++) {
        if (a[i] !== CANARY || a[GUARD + n + i] !== CANARY) assert.unreachable(`${what}: written outside it`);
      }
    },
  };
}

/**
 * Writes one MLA problem into r's memory and runs the absorbed path as host/model/attention.ts does
 * (kv_b cut into W_UK^T and W_UV per head: the per-head matmuls around the latent core) `repeat` times
 * back to back (so that workers are awake and their shares overlap: a race between threads shows as
 * runs that differ); returns the output and the inputs.
 */
function runMla(r: Runtime, c: MlaCase, fmt: typeof FMT_F32 | typeof FMT_BF16, seed: number, repeat = 8) {
  const rng = new Rng(seed);
  const qDim = c.nope + c.ropeDim;
  const latent = c.rank + c.ropeDim;
  const positions = c.pos0 + c.tokens;
  const q = rng.normals(c.tokens * c.heads * qDim);
  const kv32 = rng.normals(c.heads * (c.nope + c.vDim) * c.rank, 0.5);
  const kv = fmt === FMT_BF16 ? bf16Matrix(kv32).widened : kv32;
  const cache = rng.normals(positions * latent);
  const a = r.arena;
  const wUK: Matrix[] = [];
  const wUV: Matrix[] = [];
  for (let h = 0; h < c.heads; h++) {
    const first = h * (c.nope + c.vDim) * c.rank;
    const ukT = new Float32Array(c.rank * c.nope);
    for (let i = 0; i < c.nope; i++) for (let j = 0; j < c.rank; j++) ukT[j * c.nope + i] = kv[first + i * c.rank + j];
    wUK.push(putMatrix(r, ukT, c.rank, c.nope, fmt));
    wUV.push(putMatrix(r, kv.slice(first + c.nope * c.rank, first + (c.nope + c.vDim) * c.rank), c.vDim, c.rank, fmt));
  }
  const qPtr = a.allocF32(q.length, 'q');
  r.f32(qPtr, q.length).set(q);
  // Rows past the last position are NaN: reading beyond the sequence would poison the output.
  const cachePtr = a.allocF32((positions + 3) * latent, 'cache');
  r.f32(cachePtr, (positions + 3) * latent).fill(NaN).set(cache);
  const scratchFloats = r.threads * r.kernels.mla_scratch_floats(positions);
  const scratch = a.allocF32(scratchFloats, 'scratch');
  r.f32(scratch, scratchFloats).fill(NaN);
  const lat = c.heads * c.tokens * c.rank;
  const qLat = fenced(r, lat, 'q_lat');
  const oLat = fenced(r, lat, 'mla_attention output');
  const n = c.tokens * c.heads * c.vDim;
  const out = fenced(r, n, 'attention output');
  const ukTable = new MatrixTable(r, wUK, 'W_UK^T table');
  const uvTable = new MatrixTable(r, wUV, 'W_UV table');
  let first: Uint32Array | undefined;
  for (let k = 0; k < repeat; k++) {
    perHeadMatmul(r, ukTable, qLat.ptr, c.tokens * c.rank, c.rank, qPtr, qDim, c.heads * qDim, c.tokens);
    r.kernels.mla_attention(oLat.ptr, qLat.ptr, qPtr, cachePtr, scratch, c.tokens, c.heads, c.nope, c.ropeDim, c.rank, c.pos0, c.scale);
    perHeadMatmul(r, uvTable, out.ptr, c.vDim, c.heads * c.vDim, oLat.ptr, c.tokens * c.rank, c.rank, c.tokens);
    const bits = new Uint32Array(r.memory.buffer, out.ptr, n).slice();
    if (!first) first = bits;
    else if (!equalU32(first, bits)) assert.unreachable(`mla with ${r.threads} threads: run ${k} differs from run 0`);
  }
  qLat.check();
  oLat.check();
  out.check();
  return { out: r.f32(out.ptr, n).slice(), q, kv, cache };
}

test('absorbed MLA (per-head W_UK^T, mla_attention, per-head W_UV) equals naive expanded attention: f32 and bf16, causal, several shapes', () => {
  let seed = 100;
  for (const c of MLA_CASES) {
    for (const fmt of [FMT_F32, FMT_BF16] as const) {
      scoped(() => {
        const cs = { ...c, scale: Math.fround(c.scale) };
        const { out, q, kv, cache } = runMla(rt, cs, fmt, seed++);
        expectClose(out, mlaNaiveRef(q, kv, cache, cs), `mla fmt=${fmt} ${JSON.stringify(c)}`);
      });
    }
  }
});

test('mla_attention: token t sees exactly positions 0..pos0+t', () => {
  // One head whose latent is the position (c_s = [s]) and scores of 0 (q_lat and q_rope zero): the
  // latent output is the mean of the positions it sees, (pos0 + t) / 2.
  scoped(() => {
    const tokens = 4;
    const pos0 = 3;
    const positions = pos0 + tokens;
    const q = new Float32Array(tokens * 2); // nope 1, rope 1, all zero -> uniform attention
    const qLat = new Float32Array(tokens);
    const cache = new Float32Array(positions * 2);
    for (let s = 0; s < positions; s++) cache[s * 2] = s;
    const scratch = rt.arena.allocF32(rt.threads * rt.kernels.mla_scratch_floats(positions), 'scratch');
    const out = new Out(tokens);
    rt.kernels.mla_attention(out.ptr, put(qLat), put(q), put(cache), scratch, tokens, 1, 1, 1, 1, pos0, 1);
    const got = out.get();
    for (let t = 0; t < tokens; t++) assert.ok(Math.abs(got[t] - (pos0 + t) / 2) < 1e-6, `token ${t}: ${got[t]}`);
  });
});

// ---- 1 and N threads: bit-identical ----

test('1, 2 and 3 threads give bit-identical matmul (f32, bf16; T = 1, 7; rows 1..300) and absorbed MLA', async () => {
  const runtimes = [await Runtime.create(1), await Runtime.create(2), await Runtime.create(3)];
  try {
    const rng = new Rng(11);
    const maxRows = 300;
    const cols = 67;
    const w32 = rng.normals(maxRows * cols);
    const { bits } = bf16Matrix(w32);
    const x = rng.normals(7 * cols);
    const ptrs = runtimes.map((r) => {
      const w = r.arena.allocF32(w32.length, 'w');
      r.f32(w, w32.length).set(w32);
      const wb = r.arena.alloc(bits.byteLength, 'w bf16');
      new Uint16Array(r.memory.buffer, wb, bits.length).set(bits);
      const xp = r.arena.allocF32(x.length, 'x');
      r.f32(xp, x.length).set(x);
      const out = r.arena.allocF32(7 * maxRows, 'out');
      return { w, wb, xp, out };
    });
    let compared = 0;
    for (const fmt of [FMT_F32, FMT_BF16]) {
      for (const tokens of [1, 7]) {
        for (let rows = 1; rows <= maxRows; rows++) {
          const results = runtimes.map((r, i) => {
            const p = ptrs[i];
            new Uint32Array(r.memory.buffer, p.out, tokens * rows).fill(UNWRITTEN);
            r.kernels.matmul(fmt, p.out, fmt === FMT_BF16 ? p.wb : p.w, p.xp, rows, cols, tokens);
            return new Uint32Array(r.memory.buffer, p.out, tokens * rows);
          });
          for (let i = 1; i < results.length; i++) {
            if (!equalU32(results[0], results[i])) {
              assert.unreachable(`matmul fmt=${fmt} T=${tokens} rows=${rows}: ${runtimes[i].threads} threads differ from 1`);
            }
          }
          assert.ok(!results[0].includes(UNWRITTEN), `matmul fmt=${fmt} T=${tokens} rows=${rows}: unwritten output`);
          compared++;
        }
      }
    }
    assert.is(compared, 2 * 2 * maxRows);
    for (const c of MLA_CASES) {
      for (const fmt of [FMT_F32, FMT_BF16] as const) {
        const outs = runtimes.map((r) => {
          const mark = r.arena.mark();
          const { out } = runMla(r, c, fmt, 7);
          r.arena.release(mark);
          return new Uint32Array(out.buffer);
        });
        for (let i = 1; i < outs.length; i++) {
          assert.ok(equalU32(outs[0], outs[i]), `mla ${JSON.stringify(c)} fmt=${fmt}: ${runtimes[i].threads} threads differ from 1`);
        }
      }
    }
  } finally {
    await Promise.all(runtimes.map((r) => r.close()));
  }
});

test('v3-odd-bf16-sharded: 1 and 2 threads give bit-identical prefill and decode logits', async () => {
  const dir = `${FIXTURES}models/v3-odd-bf16-sharded`;
  const ref = readExpected(`${dir}/expected.safetensors`);
  const models = [await loadOne(dir, { threads: 1 }), await loadOne(dir, { threads: 2 })];
  try {
    assert.is(models[1].model.threads, 2);
    const prefill = models.map((m) => new Uint32Array(m.forward(ref.inputIds, { allLogits: true }).slice().buffer));
    assert.is(prefill[0].length, ref.inputIds.length * ref.vocab);
    assert.ok(equalU32(prefill[0], prefill[1]), 'prefill logits differ between 1 and 2 threads');
    for (let k = 0; k < 3; k++) {
      const step = models.map((m) => new Uint32Array(m.forward([ref.genIds[k]]).slice().buffer));
      assert.ok(equalU32(step[0], step[1]), `decode step ${k} logits differ between 1 and 2 threads`);
    }
  } finally {
    await Promise.all(models.map((m) => m.close()));
  }
});

function equalU32(a: Uint32Array, b: Uint32Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

test('report the tightest margins (KERNEL_TEST_VERBOSE=1)', () => {
  if (process.env.KERNEL_TEST_VERBOSE) {
    for (const [k, v] of worst) console.log(`  ${k}: largest error = ${v.toExponential(2)} of its bound`);
  }
  assert.ok(worst.size >= 6);
});

test.run();
