// A memory-bandwidth probe: every thread streams its share of a buffer and folds it into a sum, so
// benchmarks can report kernels as a fraction of what the memory delivers. Each thread reads its
// share as four streams at once, a quarter each: the hardware prefetcher follows one stream per
// 4 KiB page, and one stream per core left a third of the bandwidth unused (one core here: 9.3-9.9
// GB/s with one stream, 12-14 with two, 15-17 with four).
import { argP, setP } from '../board';

/** Writes read_probe's arguments (steps.ts) on the job board; returns the step's item count (64-byte blocks). */
@inline export function stageReadProbe(src: usize, bytes: i32, out: usize): i32 {
  setP(0, src);
  setP(1, out);
  return bytes >>> 6;
}

export function readProbeTask(begin: i32, end: i32): void {
  const src = argP(0);
  const quarter = (end - begin) >> 2;
  const stride = <usize>quarter << 6;
  let a = i32x4.splat(0);
  let b = a;
  let c = a;
  let d = a;
  for (let i = begin; i < begin + quarter; i++) {
    const p = src + (<usize>i << 6);
    a = i32x4.add(a, i32x4.add(v128.load(p), v128.load(p + stride)));
    b = i32x4.add(b, i32x4.add(v128.load(p, 16), v128.load(p + stride, 16)));
    c = i32x4.add(c, i32x4.add(v128.load(p, 32), v128.load(p + stride, 32)));
    d = i32x4.add(d, i32x4.add(v128.load(p, 48), v128.load(p + stride, 48)));
    const q = p + 2 * stride;
    a = i32x4.add(a, i32x4.add(v128.load(q), v128.load(q + stride)));
    b = i32x4.add(b, i32x4.add(v128.load(q, 16), v128.load(q + stride, 16)));
    c = i32x4.add(c, i32x4.add(v128.load(q, 32), v128.load(q + stride, 32)));
    d = i32x4.add(d, i32x4.add(v128.load(q, 48), v128.load(q + stride, 48)));
  }
  for (let i = begin + 4 * quarter; i < end; i++) {
    const p = src + (<usize>i << 6);
    a = i32x4.add(a, v128.load(p));
    b = i32x4.add(b, v128.load(p, 16));
    c = i32x4.add(c, v128.load(p, 32));
    d = i32x4.add(d, v128.load(p, 48));
  }
  const s = i32x4.add(i32x4.add(a, b), i32x4.add(c, d));
  atomic.add<i32>(argP(1), i32x4.extract_lane(s, 0) + i32x4.extract_lane(s, 1) + i32x4.extract_lane(s, 2) + i32x4.extract_lane(s, 3));
}

/** One chain's 16 multiply-adds as q8.ts forms them: plain widens the weights to i16 (shl, and) for two dots. */
@inline function dot16(acc: v128, w: v128, x: v128, hi: v128): v128 {
  if (ASC_FEATURE_RELAXED_SIMD) return i32x4.relaxed_dot_i8x16_i7x16_add_s(w, x, acc);
  return i32x4.add(acc, i32x4.add(i32x4.dot_i16x8_s(i16x8.shl(w, 8), x), i32x4.dot_i16x8_s(v128.and(w, hi), x)));
}

/**
 * The ceiling of the q8 kernels' arithmetic on one core: `iterations` rounds of eight independent chains of
 * what q8.ts spends on 16 weights (plain: two widenings and two i32x4.dot_i16x8_s; relaxed: one
 * i32x4.relaxed_dot_i8x16_i7x16_add_s), the weights changed by one add per round where the kernels load
 * them, so nothing waits for memory and nothing is hoisted out of the loop. 128 multiply-adds per round;
 * returns a sum of every chain so that none is left out.
 */
export function dot_peak(iterations: i32): i32 {
  const x = i8x16.splat(<i8>((iterations >> 3) & 63));
  const hi = i16x8.splat(<i16>0xff00);
  const step = i8x16.splat(1);
  let w0 = i8x16.splat(<i8>iterations);
  let w1 = i8x16.add(w0, step);
  let w2 = i8x16.add(w1, step);
  let w3 = i8x16.add(w2, step);
  let w4 = i8x16.add(w3, step);
  let w5 = i8x16.add(w4, step);
  let w6 = i8x16.add(w5, step);
  let w7 = i8x16.add(w6, step);
  let a0 = i32x4.splat(0);
  let a1 = a0;
  let a2 = a0;
  let a3 = a0;
  let a4 = a0;
  let a5 = a0;
  let a6 = a0;
  let a7 = a0;
  for (let i = 0; i < iterations; i++) {
    w0 = i8x16.add(w0, step);
    w1 = i8x16.add(w1, step);
    w2 = i8x16.add(w2, step);
    w3 = i8x16.add(w3, step);
    w4 = i8x16.add(w4, step);
    w5 = i8x16.add(w5, step);
    w6 = i8x16.add(w6, step);
    w7 = i8x16.add(w7, step);
    a0 = dot16(a0, w0, x, hi);
    a1 = dot16(a1, w1, x, hi);
    a2 = dot16(a2, w2, x, hi);
    a3 = dot16(a3, w3, x, hi);
    a4 = dot16(a4, w4, x, hi);
    a5 = dot16(a5, w5, x, hi);
    a6 = dot16(a6, w6, x, hi);
    a7 = dot16(a7, w7, x, hi);
  }
  const s = i32x4.add(i32x4.add(i32x4.add(a0, a1), i32x4.add(a2, a3)), i32x4.add(i32x4.add(a4, a5), i32x4.add(a6, a7)));
  return i32x4.extract_lane(s, 0) + i32x4.extract_lane(s, 1) + i32x4.extract_lane(s, 2) + i32x4.extract_lane(s, 3);
}
