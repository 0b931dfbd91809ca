// Q8 matmul: out[t, r] = sum_g sw[r, g] * sx[t, g] * (qw[r, g, :] . qx[t, g, :]), int8 weights and
// int8 activations in groups of 32, integer dot products inside a group, one float multiply-add per
// group. Layouts: docs/quantized-format.md (weights: column panels, scales after the panel's weights)
// and quantize.ts (activations).
//
// Plain SIMD (every build) widens weights to i16 with one op per 8 values: shl(v, 8) gives 256 * the
// even bytes, and(v, 0xff00) gives 256 * the odd bytes, both exact in i16; the activations are stored
// as i16 with evens and odds apart, and their scale carries the 1/256. The relaxed build uses
// i32x4.relaxed_dot_i8x16_i7x16_add_s (one vpdpbusd with AVX-VNNI), whose second operand must be
// 0..127: for one token the activations are stored as |q| and a sign mask and the sign moves onto the
// weights; for 2..TILE_MAX tokens as max(q, 0) and max(-q, 0) against w and -w (dotPN); for a prefill
// see q8-prefill.ts. All paths form the same integer group sums and the same float steps, so the
// relaxed build's q8 results are bit-identical to the plain one's.
//
// V8 issues a basic block's loads in program order and sinks the arithmetic to its uses, so a block of
// four groups would load 24 vectors up front and spill them. A store of each group's partial result
// to a per-thread "fence" slot pins the arithmetic between the loads (measured 14 -> 18 GB/s decode,
// 10 -> 12 GMAC/s prefill on one core).
import { FMT_Q8 } from '../constants';
import { AHEAD_BYTES, PANEL, TILE_BUFFER, TILE_MAX, hsum, panelOffset, put, touch, tsumHalf, tsumJoin } from './format';
import { q8PrefillRows } from './q8-prefill';

// ---- plain SIMD: weights widened by shift/mask, activations i16 [8 evens | 8 odds] per 16 values ----

/** Lanes sum to 256 * (32 int8 weights at w) . (32 i16 activations x0..x3, already loaded). */
@inline export function groupI16Of(w: usize, x0: v128, x1: v128, x2: v128, x3: v128, hi: v128): v128 {
  const a = v128.load(w);
  const b = v128.load(w, 16);
  const d0 = i32x4.dot_i16x8_s(i16x8.shl(a, 8), x0);
  const d1 = i32x4.dot_i16x8_s(v128.and(a, hi), x1);
  const d2 = i32x4.dot_i16x8_s(i16x8.shl(b, 8), x2);
  const d3 = i32x4.dot_i16x8_s(v128.and(b, hi), x3);
  return i32x4.add(i32x4.add(d0, d1), i32x4.add(d2, d3));
}

// ---- relaxed SIMD (compiled only into the relaxed build): activations [|q| 32 bytes | sign masks 32] ----

/** Lanes sum to (32 int8 weights at w) . (32 activations: |q| in q0, q1 and sign masks in s0, s1). */
@inline function groupSignedOf(w: usize, q0: v128, q1: v128, s0: v128, s1: v128): v128 {
  if (ASC_FEATURE_RELAXED_SIMD) {
    const w0 = i8x16.sub(v128.xor(v128.load(w), s0), s0);
    const w1 = i8x16.sub(v128.xor(v128.load(w, 16), s1), s1);
    return i32x4.relaxed_dot_i8x16_i7x16_add_s(w1, q1, i32x4.relaxed_dot_i8x16_i7x16_add_s(w0, q0, i32x4.splat(0)));
  } else {
    unreachable();
    return i32x4.splat(0);
  }
}

// ---- decode: one token, rows from four pages at once ----

/** One group of one row against activations already loaded (64 bytes in either layout). */
@inline function groupOf(w: usize, x0: v128, x1: v128, x2: v128, x3: v128, hi: v128): v128 {
  return ASC_FEATURE_RELAXED_SIMD ? groupSignedOf(w, x0, x1, x2, x3) : groupI16Of(w, x0, x1, x2, x3, hi);
}

/**
 * The integer sums of four groups of two rows (weights at wa and wb, activations at px), each row's
 * four group sums in one vector, stored at fence + slot and fence + slot + 16.
 */
@inline function pairSums(wa: usize, wb: usize, px: usize, hi: v128, fence: usize, slot: usize): void {
  let x0 = v128.load(px);
  let x1 = v128.load(px, 16);
  let x2 = v128.load(px, 32);
  let x3 = v128.load(px, 48);
  const a0 = groupOf(wa, x0, x1, x2, x3, hi);
  v128.store(fence, a0);
  const b0 = groupOf(wb, x0, x1, x2, x3, hi);
  v128.store(fence, b0, 16);
  x0 = v128.load(px, 64);
  x1 = v128.load(px, 80);
  x2 = v128.load(px, 96);
  x3 = v128.load(px, 112);
  const a1 = groupOf(wa + 32, x0, x1, x2, x3, hi);
  v128.store(fence, a1, 32);
  const b1 = groupOf(wb + 32, x0, x1, x2, x3, hi);
  v128.store(fence, b1, 48);
  const ua = tsumHalf(a0, a1);
  const ub = tsumHalf(b0, b1);
  x0 = v128.load(px, 128);
  x1 = v128.load(px, 144);
  x2 = v128.load(px, 160);
  x3 = v128.load(px, 176);
  const a2 = groupOf(wa + 64, x0, x1, x2, x3, hi);
  v128.store(fence, a2, 64);
  const b2 = groupOf(wb + 64, x0, x1, x2, x3, hi);
  v128.store(fence, b2, 80);
  x0 = v128.load(px, 192);
  x1 = v128.load(px, 208);
  x2 = v128.load(px, 224);
  x3 = v128.load(px, 240);
  const a3 = groupOf(wa + 96, x0, x1, x2, x3, hi);
  v128.store(fence, a3, 96);
  const b3 = groupOf(wb + 96, x0, x1, x2, x3, hi);
  v128.store(fence + slot, tsumJoin(ua, tsumHalf(a2, a3)));
  v128.store(fence + slot, tsumJoin(ub, tsumHalf(b2, b3)), 16);
}

@inline function scaled(acc: v128, sums: usize, ws: usize, sx: v128): v128 {
  return f32x4.add(acc, f32x4.mul(f32x4.convert_i32x4_s(v128.load(sums)), f32x4.mul(v128.load(ws), sx)));
}

/**
 * Rows r, r + step, r + 2 step, r + 3 step (count 4), r and r + step (count 2) or r alone (count 1,
 * step 0: the pair's second row is r again, computed and not written) of one panel against one token,
 * written or added to out. One token's activations are in the signed layout in the relaxed build and
 * in the i16 layout in the plain one, a compile-time choice: with it a run-time flag, V8 kept both
 * paths in the loop. Streams from several 4 KiB pages at once keep more cache misses in flight (the hardware prefetcher follows one stream per page): from DRAM
 * one core streamed 66% of a one-stream read probe row by row, 83% two rows 4+ KiB apart at a time,
 * and only 52% two neighbouring 1 KiB rows (bench/RESULTS.md). The activations are loaded once for
 * a pair of rows. Every row's arithmetic is the same whichever rows it runs with, so results are
 * bit-identical for any split.
 */
function q8DecodeRows(
  w: usize, ws: usize, pw: i32, gp: i32, x: usize, xs: usize, out: usize, r: i32, step: i32, count: i32,
  first: bool, fence: usize, hi: v128,
): void {
  const dw = <usize>step * <usize>pw;
  const ds = <usize>(step * gp) << 2;
  const w0 = w + <usize>r * <usize>pw;
  const s0 = ws + (<usize>(r * gp) << 2);
  let acc0 = f32x4.splat(0);
  let acc1 = acc0;
  let acc2 = acc0;
  let acc3 = acc0;
  for (let g = 0; g < gp; g += 4) {
    const o = <usize>g << 5;
    const px = x + (<usize>g << 6);
    const so = <usize>g << 2;
    const sx = v128.load(xs + so);
    pairSums(w0 + o, w0 + dw + o, px, hi, fence, 128);
    acc0 = scaled(acc0, fence + 128, s0 + so, sx);
    acc1 = scaled(acc1, fence + 144, s0 + ds + so, sx);
    if (count == 4) {
      pairSums(w0 + 2 * dw + o, w0 + 3 * dw + o, px, hi, fence, 160);
      acc2 = scaled(acc2, fence + 160, s0 + 2 * ds + so, sx);
      acc3 = scaled(acc3, fence + 176, s0 + 3 * ds + so, sx);
    }
  }
  const o = out + (<usize>r << 2);
  const d = <usize>step << 2;
  put(o, first, hsum(acc0));
  if (count > 1) put(o + d, first, hsum(acc1));
  if (count == 4) {
    put(o + 2 * d, first, hsum(acc2));
    put(o + 3 * d, first, hsum(acc3));
  }
}

// ---- several tokens: one row against a tile of up to TILE_MAX tokens ----
// Each group's weights are loaded and prepared once for the tile's tokens. Every token gets the
// one-token path's float steps in its order (four groups' integer sums in one vector, scaled by
// sw * sx of those groups, added into a 4-lane accumulator, the lanes summed at the end of the panel),
// so a token's result is bit-identical whether it ran alone (decode), in a batched step or in a
// prefill. A token's state between groups lives in its 64 bytes of the thread's tile buffer: [the
// last group's sums | tsumHalf of the two before | the accumulator]; the store per token and group is
// also the fence (see above).

/** The integer sums of one group for one token, weights widened (plain): 4 i16 dots. */
@inline export function dotI16(w0: v128, w1: v128, w2: v128, w3: v128, x: usize): v128 {
  return i32x4.add(
    i32x4.add(i32x4.dot_i16x8_s(w0, v128.load(x)), i32x4.dot_i16x8_s(w1, v128.load(x, 16))),
    i32x4.add(i32x4.dot_i16x8_s(w2, v128.load(x, 32)), i32x4.dot_i16x8_s(w3, v128.load(x, 48))),
  );
}

/**
 * The integer sums of one group for one token in the relaxed several-token layout (quantize.ts
 * ACT_Q8_PN: x+ = max(q, 0) and x- = max(-q, 0), both valid 7-bit operands): w . x+ + (-w) . x-, four
 * relaxed dots and no other arithmetic per token; the tile negates the weights once for all its tokens.
 * (Moving the sign onto each token's activations cost four more instructions per token and group:
 * the tile ran at a third of the relaxed dot's rate, bench/RESULTS.md.)
 */
@inline function dotPN(w0: v128, w1: v128, n0: v128, n1: v128, x: usize): v128 {
  if (ASC_FEATURE_RELAXED_SIMD) {
    const p = i32x4.relaxed_dot_i8x16_i7x16_add_s(w1, v128.load(x, 16), i32x4.relaxed_dot_i8x16_i7x16_add_s(w0, v128.load(x), i32x4.splat(0)));
    return i32x4.relaxed_dot_i8x16_i7x16_add_s(n1, v128.load(x, 48), i32x4.relaxed_dot_i8x16_i7x16_add_s(n0, v128.load(x, 32), p));
  } else {
    unreachable();
    return i32x4.splat(0);
  }
}

/**
 * Group k (0..3, a constant after inlining) of a step of four, for every token of the tile, the group's
 * weights at pw prepared once (hi: see q8Rows). Groups 0 and 2 keep their sums, 1 folds them with
 * group 0's, 3 completes the four groups' sums and adds them, scaled by sw * sx (the token's scales at
 * xs), into the token's accumulator.
 */
@inline function groupSums(
  pw: usize, hi: v128, x: usize, xStride: usize, buf: usize, end: usize, k: i32, sw: v128, xs: usize, sStride: usize,
): void {
  const a = v128.load(pw);
  const b = v128.load(pw, 16);
  let w0: v128, w1: v128, w2: v128, w3: v128;
  if (ASC_FEATURE_RELAXED_SIMD) {
    w0 = a;
    w1 = b;
    w2 = i8x16.neg(a);
    w3 = i8x16.neg(b);
  } else {
    w0 = i16x8.shl(a, 8);
    w1 = v128.and(a, hi);
    w2 = i16x8.shl(b, 8);
    w3 = v128.and(b, hi);
  }
  let p = x;
  let ps = xs;
  for (let s = buf; s < end; s += 64) {
    const d = ASC_FEATURE_RELAXED_SIMD ? dotPN(w0, w1, w2, w3, p) : dotI16(w0, w1, w2, w3, p);
    if (k == 1) {
      v128.store(s, tsumHalf(v128.load(s), d), 16);
    } else if (k == 3) {
      const S = tsumJoin(v128.load(s, 16), tsumHalf(v128.load(s), d));
      v128.store(s, f32x4.add(v128.load(s, 32), f32x4.mul(f32x4.convert_i32x4_s(S), f32x4.mul(sw, v128.load(ps)))), 32);
      ps += sStride;
    } else {
      v128.store(s, d);
    }
    p += xStride;
  }
}

/**
 * One row of one panel against n <= TILE_MAX tokens (activation rows xStride bytes apart, their scales
 * sStride apart), written or added to out[t * outStride]; buf: the thread's tile buffer.
 */
function q8Tile(
  w: usize, ws: usize, x: usize, xStride: usize, xs: usize, sStride: usize, gp: i32, n: i32,
  out: usize, outStride: usize, first: bool, buf: usize, hi: v128,
): void {
  const end = buf + (<usize>n << 6);
  for (let s = buf; s < end; s += 64) v128.store(s, f32x4.splat(0), 32);
  const none = f32x4.splat(0);
  for (let g = 0; g < gp; g += 4) {
    const pw = w + (<usize>g << 5);
    const px = x + (<usize>g << 6);
    groupSums(pw, hi, px, xStride, buf, end, 0, none, 0, 0);
    groupSums(pw + 32, hi, px + 64, xStride, buf, end, 1, none, 0, 0);
    groupSums(pw + 64, hi, px + 128, xStride, buf, end, 2, none, 0, 0);
    groupSums(pw + 96, hi, px + 192, xStride, buf, end, 3, v128.load(ws + (<usize>g << 2)), xs + (<usize>g << 2), sStride);
  }
  let o = out;
  for (let s = buf; s < end; s += 64) {
    put(o, first, hsum(v128.load(s, 32)));
    o += outStride;
  }
}

// ---- the parallel step ----

/**
 * Rows [begin, end) of out[t, r] for the tc tokens whose activations quantize.ts wrote at x (xRow bytes
 * per token, in the build's layout for one token, for up to TILE_MAX or for more: matmul.ts) with scales
 * at xs (G per token) and, for more than TILE_MAX, transposed by 4-token tiles at xsT (q8-prefill.ts).
 * fence: the thread's scratch slot, its tile buffer at TILE_BUFFER.
 */
export function q8Rows(
  out: usize, w: usize, x: usize, xs: usize, xsT: usize, rows: i32, cp: i32, tc: i32, xRow: usize, begin: i32, end: i32, fence: usize,
): void {
  const G = cp >> 5;
  const sRow = <usize>G << 2;
  const outStride = <usize>rows << 2;
  // The mask goes through memory into a parameter: V8 keeps a parameter in a register, whereas it
  // re-materializes a constant vector inside loops (3 instructions per use).
  v128.store(fence, i16x8.splat(<i16>0xff00), 192);
  const hi = v128.load(fence, 192);
  const buf = fence + TILE_BUFFER;
  let sink = 0;
  for (let c0 = 0; c0 < cp; c0 += PANEL) {
    const pw = min(PANEL, cp - c0);
    const gp = pw >> 5;
    const g0 = c0 >> 5;
    const base = w + panelOffset(FMT_Q8, rows, c0);
    const scales = base + <usize>rows * <usize>pw;
    const first = c0 == 0;
    const ahead = <i32>(AHEAD_BYTES / <usize>pw);
    // 64 activation bytes per group in every layout but the relaxed prefill's (32: q8-prefill.ts)
    const xp = x + (<usize>g0 << (tc > TILE_MAX && ASC_FEATURE_RELAXED_SIMD ? 5 : 6));
    const xsp = xs + (<usize>g0 << 2);
    if (tc == 1) {
      // A quarter of the rows apart: four rows in four different pages. The last rows go in pairs of
      // neighbours, and a lone last row pairs with itself (computed twice, written once).
      const q = (end - begin) >> 2;
      for (let r = begin; r < begin + q; r++) q8DecodeRows(base, scales, pw, gp, xp, xsp, out, r, q, 4, first, fence, hi);
      for (let r = begin + 4 * q; r < end; r += 2) {
        const two = r + 1 < end;
        q8DecodeRows(base, scales, pw, gp, xp, xsp, out, r, two ? 1 : 0, two ? 2 : 1, first, fence, hi);
      }
      continue;
    }
    if (tc <= TILE_MAX) {
      // One tile: the rows in decode's order, a quarter of the range apart (four streams in four pages);
      // each row's cache lines read a page ahead.
      const q = (end - begin + 3) >> 2;
      for (let i = 0; i < q; i++) {
        for (let r = begin + i; r < end; r += q) {
          const wr = base + <usize>r * <usize>pw;
          if (r + ahead < end) sink ^= touch(wr + AHEAD_BYTES, <usize>pw);
          q8Tile(wr, scales + (<usize>(r * gp) << 2), xp, xRow, xsp, sRow, gp, tc, out + (<usize>r << 2), outStride, first, buf, hi);
        }
      }
      continue;
    }
    q8PrefillRows(out, base, scales, pw, gp, g0, G, xp, xsp, xsT, rows, tc, xRow, begin, end, first, fence);
  }
  store<i32>(fence, sink, 240);
}
