// Weight formats and the row primitives every kernel builds on, so that a new format (q8, q4, fp8) is
// one more case here, not a new kernel family.

import { FMT_BF16, FMT_F32, FMT_FP8, FMT_Q4, FMT_Q8, FP8_BLOCK, QUANT_GROUP } from '../constants';

/**
 * Quantized matrices are stored in column panels of PANEL columns (the last one narrower): panel by
 * panel, all rows of the panel. A matvec then streams the weights in order while the panel's slice of
 * the activations (2 KiB) stays in L1; with whole rows the activations of a wide matrix fall out of
 * L1 under the weight stream and the kernel runs at half speed (measured: 21 -> 10 GB/s on one core
 * when the quantized activations grow from 4 to 8 KiB).
 */
export const PANEL: i32 = 1024;

/**
 * Most tokens a quantized matmul's multi-token tile takes (q8.ts, q4.ts): each weight group is loaded
 * and prepared once for them. The tile's tokens keep their state in the thread's tile buffer, 64 bytes
 * each, at TILE_BUFFER in the thread's scratch slot (quantize.ts THREAD_SCRATCH).
 */
export const TILE_MAX: i32 = 8;
export const TILE_BUFFER: usize = 256;

/** Is fmt one of the grouped or block-scaled formats that go through quantized activations/panels? */
@inline export function isQuantized(fmt: i32): bool {
  return fmt >= FMT_Q8;
}

/** Columns a quantized row is padded to (zeros): whole groups of four, so kernels take 4 groups a step. */
@inline export function paddedCols(cols: i32): i32 {
  return (cols + 127) & ~127;
}

/** Bytes per padded column of a quantized format, in 32nds of a byte (weights and their scales). */
@inline function panelBytesPer32Cols(fmt: i32): i32 {
  // q8: 32 bytes + one f32 scale; q4: 16 bytes + one f32 scale; fp8: 32 bytes + 1/4 of an f32 scale.
  return fmt == FMT_Q8 ? 36 : fmt == FMT_Q4 ? 20 : 33;
}

/** Byte offset of the panel starting at column c0 in a blob of `rows` rows. */
@inline export function panelOffset(fmt: i32, rows: i32, c0: i32): usize {
  // c0 is a multiple of 128, so c0 / 32 is exact; multiplying last keeps the product below 4 GiB.
  return <usize>rows * <usize>(c0 >> 5) * <usize>panelBytesPer32Cols(fmt);
}

/** Bytes one row of a panel `width` columns wide takes for its weights (not its scales). */
@inline export function panelRowBytes(fmt: i32, width: i32): usize {
  return fmt == FMT_Q4 ? <usize>(width >> 1) : <usize>width;
}

/** Scales one row of a panel holds: one per group (q8, q4) or one per 128-column block (fp8). */
@inline export function panelRowScales(fmt: i32, width: i32): i32 {
  return fmt == FMT_FP8 ? (width + FP8_BLOCK - 1) / FP8_BLOCK : width / QUANT_GROUP;
}

/** Bytes of a whole matrix in format fmt, as the kernels read it. */
export function weightBytes(fmt: i32, rows: i32, cols: i32): usize {
  if (fmt == FMT_F32) return <usize>rows * <usize>cols * 4;
  if (fmt == FMT_BF16) return <usize>rows * <usize>cols * 2;
  return panelOffset(fmt, rows, paddedCols(cols));
}

/** Bytes of one row of `cols` weights (f32 and bf16 only: the row-major formats). */
@inline export function rowBytes(fmt: i32, cols: i32): usize {
  return fmt == FMT_BF16 ? <usize>cols << 1 : <usize>cols << 2;
}

/**
 * How far ahead of the row it computes a multi-token tile reads the weights' cache lines (touch): the
 * tile spends several times decode's arithmetic on each row, so the hardware prefetcher, which follows
 * one stream within a 4 KiB page, fell behind and 2..8-token matmuls ran at 2-4 GB/s from DRAM; reading
 * a page ahead took them to about half the time (kernels bench --few, bench/RESULTS.md, session 7).
 */
export const AHEAD_BYTES: usize = 4096;

/** Reads one byte per 64 of [p, p + bytes), folded into the result: the cache lines' misses start early (wasm has no prefetch). */
@inline export function touch(p: usize, bytes: usize): i32 {
  let s = 0;
  for (let o: usize = 0; o < bytes; o += 64) s ^= <i32>load<u8>(p + o);
  return s;
}

/** Writes v at p (the first panel of a row) or adds it to what is there. */
@inline export function put(p: usize, first: bool, v: f32): void {
  store<f32>(p, first ? v : load<f32>(p) + v);
}

/** Writes or adds the four lanes of v to out[t * stride] (a 4-token prefill tile's outputs). */
@inline export function put4(out: usize, stride: usize, first: bool, v: v128): void {
  put(out, first, f32x4.extract_lane(v, 0));
  put(out + stride, first, f32x4.extract_lane(v, 1));
  put(out + 2 * stride, first, f32x4.extract_lane(v, 2));
  put(out + 3 * stride, first, f32x4.extract_lane(v, 3));
}

@inline export function hsum(v: v128): f32 {
  return (
    f32x4.extract_lane(v, 0) + f32x4.extract_lane(v, 1) + (f32x4.extract_lane(v, 2) + f32x4.extract_lane(v, 3))
  );
}

/** [sum of a's lanes, b's, c's, d's] for four i32x4 (a 4x4 transpose folded into adds: 9 ops). */
@inline export function tsum(a: v128, b: v128, c: v128, d: v128): v128 {
  return tsumJoin(tsumHalf(a, b), tsumHalf(c, d));
}

/** The first half of tsum: lanes [a0+a2, b0+b2, a1+a3, b1+b3], so a and b need not stay live. */
@inline export function tsumHalf(a: v128, b: v128): v128 {
  return i32x4.add(i32x4.shuffle(a, b, 0, 4, 1, 5), i32x4.shuffle(a, b, 2, 6, 3, 7));
}

/** tsum from its two halves. */
@inline export function tsumJoin(u: v128, v: v128): v128 {
  return i32x4.add(i32x4.shuffle(u, v, 0, 1, 4, 5), i32x4.shuffle(u, v, 2, 3, 6, 7));
}

// bf16 is the top half of an f32: widening is a zero-extend and a shift.
@inline export function bf16Low(v: v128): v128 {
  return i32x4.shl(i32x4.extend_low_i16x8_u(v), 16);
}

@inline export function bf16High(v: v128): v128 {
  return i32x4.shl(i32x4.extend_high_i16x8_u(v), 16);
}

@inline export function bf16At(p: usize): f32 {
  return reinterpret<f32>(<u32>load<u16>(p) << 16);
}

/** a * b + c; fused (f32x4.relaxed_madd, one vfmadd on x86) in the relaxed build, so results there differ
 * from the plain build's in the last bit, but not between threads of one build. */
@inline export function madd(a: v128, b: v128, c: v128): v128 {
  if (ASC_FEATURE_RELAXED_SIMD) return f32x4.relaxed_madd(a, b, c);
  return f32x4.add(f32x4.mul(a, b), c);
}

/** a . b over n f32 values; four accumulators hide the add latency. */
export function dotF32(a: usize, b: usize, n: i32): f32 {
  let s0 = f32x4.splat(0);
  let s1 = s0;
  let s2 = s0;
  let s3 = s0;
  let i = 0;
  for (; i + 16 <= n; i += 16) {
    const pa = a + (<usize>i << 2);
    const pb = b + (<usize>i << 2);
    s0 = f32x4.add(s0, f32x4.mul(v128.load(pa), v128.load(pb)));
    s1 = f32x4.add(s1, f32x4.mul(v128.load(pa, 16), v128.load(pb, 16)));
    s2 = f32x4.add(s2, f32x4.mul(v128.load(pa, 32), v128.load(pb, 32)));
    s3 = f32x4.add(s3, f32x4.mul(v128.load(pa, 48), v128.load(pb, 48)));
  }
  for (; i + 4 <= n; i += 4) {
    s0 = f32x4.add(s0, f32x4.mul(v128.load(a + (<usize>i << 2)), v128.load(b + (<usize>i << 2))));
  }
  let s = hsum(f32x4.add(f32x4.add(s0, s1), f32x4.add(s2, s3)));
  for (; i < n; i++) s += load<f32>(a + (<usize>i << 2)) * load<f32>(b + (<usize>i << 2));
  return s;
}

/** w . x with bf16 weights and f32 activations. */
export function dotBF16(w: usize, x: usize, n: i32): f32 {
  let s0 = f32x4.splat(0);
  let s1 = s0;
  let s2 = s0;
  let s3 = s0;
  let i = 0;
  for (; i + 16 <= n; i += 16) {
    const pw = w + (<usize>i << 1);
    const px = x + (<usize>i << 2);
    const v0 = v128.load(pw);
    const v1 = v128.load(pw, 16);
    s0 = f32x4.add(s0, f32x4.mul(bf16Low(v0), v128.load(px)));
    s1 = f32x4.add(s1, f32x4.mul(bf16High(v0), v128.load(px, 16)));
    s2 = f32x4.add(s2, f32x4.mul(bf16Low(v1), v128.load(px, 32)));
    s3 = f32x4.add(s3, f32x4.mul(bf16High(v1), v128.load(px, 48)));
  }
  for (; i + 8 <= n; i += 8) {
    const v = v128.load(w + (<usize>i << 1));
    const px = x + (<usize>i << 2);
    s0 = f32x4.add(s0, f32x4.mul(bf16Low(v), v128.load(px)));
    s1 = f32x4.add(s1, f32x4.mul(bf16High(v), v128.load(px, 16)));
  }
  let s = hsum(f32x4.add(f32x4.add(s0, s1), f32x4.add(s2, s3)));
  for (; i < n; i++) s += bf16At(w + (<usize>i << 1)) * load<f32>(x + (<usize>i << 2));
  return s;
}

@inline export function dotRow(fmt: i32, w: usize, x: usize, n: i32): f32 {
  return fmt == FMT_BF16 ? dotBF16(w, x, n) : dotF32(w, x, n);
}
