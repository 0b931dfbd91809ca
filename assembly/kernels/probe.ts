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

/** Lanes sum to the 16 products of one token with widened weights (e: 256 x evens, o: 256 x odds), as q8.ts's plain tile. */
@inline function dotI16(acc: v128, e: v128, o: v128, xe: v128, xo: v128): v128 {
  return i32x4.add(acc, i32x4.add(i32x4.dot_i16x8_s(e, xe), i32x4.dot_i16x8_s(o, xo)));
}

/**
 * The ceiling of the q8 prefill tile's arithmetic on one core: `iterations` rounds in which two weight vectors
 * (changed by one add each where the kernel loads them) meet four tokens' activations as q8.ts's 4-token tile
 * meets them: plain widens each weight vector once (shl, and) for two i32x4.dot_i16x8_s per token; relaxed takes
 * |w| once for one i32x4.relaxed_dot_i8x16_i7x16_add_s per token (the sign rides on the activations). Values
 * stay in registers, so nothing waits for memory. DOT_PEAK_MACS (128) multiply-adds per round; returns a sum of every
 * accumulator so that none is left out.
 */
export function dot_peak(iterations: i32): i32 {
  const x0 = i8x16.splat(<i8>((iterations >> 3) & 63));
  const x1 = i8x16.splat(<i8>((iterations >> 4) & 63));
  const x2 = i8x16.splat(<i8>((iterations >> 5) & 63));
  const x3 = i8x16.splat(<i8>((iterations >> 6) & 63));
  const hi = i16x8.splat(<i16>0xff00);
  const step = i8x16.splat(1);
  let w0 = i8x16.splat(<i8>iterations);
  let w1 = i8x16.add(w0, step);
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
    if (ASC_FEATURE_RELAXED_SIMD) {
      const u0 = i8x16.abs(w0);
      const u1 = i8x16.abs(w1);
      a0 = i32x4.relaxed_dot_i8x16_i7x16_add_s(x0, u0, a0);
      a1 = i32x4.relaxed_dot_i8x16_i7x16_add_s(x1, u0, a1);
      a2 = i32x4.relaxed_dot_i8x16_i7x16_add_s(x2, u0, a2);
      a3 = i32x4.relaxed_dot_i8x16_i7x16_add_s(x3, u0, a3);
      a4 = i32x4.relaxed_dot_i8x16_i7x16_add_s(x0, u1, a4);
      a5 = i32x4.relaxed_dot_i8x16_i7x16_add_s(x1, u1, a5);
      a6 = i32x4.relaxed_dot_i8x16_i7x16_add_s(x2, u1, a6);
      a7 = i32x4.relaxed_dot_i8x16_i7x16_add_s(x3, u1, a7);
    } else {
      const e0 = i16x8.shl(w0, 8);
      const o0 = v128.and(w0, hi);
      const e1 = i16x8.shl(w1, 8);
      const o1 = v128.and(w1, hi);
      a0 = dotI16(a0, e0, o0, x0, x1);
      a1 = dotI16(a1, e0, o0, x1, x2);
      a2 = dotI16(a2, e0, o0, x2, x3);
      a3 = dotI16(a3, e0, o0, x3, x0);
      a4 = dotI16(a4, e1, o1, x0, x1);
      a5 = dotI16(a5, e1, o1, x1, x2);
      a6 = dotI16(a6, e1, o1, x2, x3);
      a7 = dotI16(a7, e1, o1, x3, x0);
    }
  }
  const s = i32x4.add(i32x4.add(i32x4.add(a0, a1), i32x4.add(a2, a3)), i32x4.add(i32x4.add(a4, a5), i32x4.add(a6, a7)));
  return i32x4.extract_lane(s, 0) + i32x4.extract_lane(s, 1) + i32x4.extract_lane(s, 2) + i32x4.extract_lane(s, 3);
}
