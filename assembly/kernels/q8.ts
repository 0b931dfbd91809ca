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
// weights; for several tokens the weights give |w| once per tile and the sign moves onto each token's
// activations. All paths form the same integer group sums and the same float steps, so the relaxed
// build's q8 results are bit-identical to the plain one's.
//
// V8 issues a basic block's loads in program order and sinks the arithmetic to its uses, so a block of
// four groups would load 24 vectors up front and spill them. A store of each group's partial result
// to a per-thread "fence" slot pins the arithmetic between the loads (measured 14 -> 18 GB/s decode,
// 10 -> 12 GMAC/s prefill on one core).
import { FMT_Q8 } from '../constants';
import { PANEL, hsum, panelOffset, tsum, tsumHalf, tsumJoin } from './format';

// ---- plain SIMD: weights widened by shift/mask, activations i16 [8 evens | 8 odds] per 16 values ----

/** Lanes of the result sum to 256 * (32 int8 weights at w) . (32 i16 activations at x). */
@inline function groupI16(w: usize, x: usize, hi: v128): v128 {
  return groupI16Of(w, v128.load(x), v128.load(x, 16), v128.load(x, 32), v128.load(x, 48), hi);
}

/** groupI16 with the group's four activation vectors already loaded. */
@inline function groupI16Of(w: usize, x0: v128, x1: v128, x2: v128, x3: v128, hi: v128): v128 {
  const a = v128.load(w);
  const b = v128.load(w, 16);
  const d0 = i32x4.dot_i16x8_s(i16x8.shl(a, 8), x0);
  const d1 = i32x4.dot_i16x8_s(v128.and(a, hi), x1);
  const d2 = i32x4.dot_i16x8_s(i16x8.shl(b, 8), x2);
  const d3 = i32x4.dot_i16x8_s(v128.and(b, hi), x3);
  return i32x4.add(i32x4.add(d0, d1), i32x4.add(d2, d3));
}

/** One row of one panel against one token: gp groups (a multiple of 4). */
function q8RowI16(w: usize, ws: usize, x: usize, xs: usize, gp: i32, fence: usize, hi: v128): f32 {
  let acc = f32x4.splat(0);
  for (let g = 0; g < gp; g += 4) {
    const pw = w + (<usize>g << 5);
    const px = x + (<usize>g << 6);
    const a = groupI16(pw, px, hi);
    v128.store(fence, a);
    const b = groupI16(pw + 32, px + 64, hi);
    v128.store(fence, b, 16);
    const c = groupI16(pw + 64, px + 128, hi);
    v128.store(fence, c, 32);
    const d = groupI16(pw + 96, px + 192, hi);
    const f = f32x4.mul(v128.load(ws + (<usize>g << 2)), v128.load(xs + (<usize>g << 2)));
    acc = f32x4.add(acc, f32x4.mul(f32x4.convert_i32x4_s(tsum(a, b, c, d)), f));
  }
  return hsum(acc);
}

/**
 * One row of one panel against four tokens (activation rows xStride bytes apart); the weights are
 * widened once for all four. The four tokens' sums of a group are transposed into one vector and
 * scaled by sw * [sx_t0, sx_t1, sx_t2, sx_t3] (xsT: the tile's scales, four per group), so one
 * accumulator holds the four outputs. Writes or adds out[t * outStride].
 */
function q8Tile4I16(
  w: usize, ws: usize, x: usize, xStride: usize, xsT: usize, gp: i32,
  out: usize, outStride: usize, first: bool, fence: usize, hi: v128,
): void {
  let acc = f32x4.splat(0);
  for (let g = 0; g < gp; g++) {
    const pw = w + (<usize>g << 5);
    const a = v128.load(pw);
    const b = v128.load(pw, 16);
    const w0 = i16x8.shl(a, 8);
    const w1 = v128.and(a, hi);
    const w2 = i16x8.shl(b, 8);
    const w3 = v128.and(b, hi);
    let px = x + (<usize>g << 6);
    const d0 = dot4(w0, w1, w2, w3, px);
    v128.store(fence, d0);
    px += xStride;
    const d1 = dot4(w0, w1, w2, w3, px);
    v128.store(fence, d1, 16);
    px += xStride;
    const d2 = dot4(w0, w1, w2, w3, px);
    v128.store(fence, d2, 32);
    px += xStride;
    const d3 = dot4(w0, w1, w2, w3, px);
    const f = f32x4.mul(v128.load32_splat(ws + (<usize>g << 2)), v128.load(xsT + (<usize>g << 4)));
    acc = f32x4.add(acc, f32x4.mul(f32x4.convert_i32x4_s(tsum(d0, d1, d2, d3)), f));
  }
  put4(out, outStride, first, acc);
}

@inline function dot4(w0: v128, w1: v128, w2: v128, w3: v128, x: usize): v128 {
  return i32x4.add(
    i32x4.add(i32x4.dot_i16x8_s(w0, v128.load(x)), i32x4.dot_i16x8_s(w1, v128.load(x, 16))),
    i32x4.add(i32x4.dot_i16x8_s(w2, v128.load(x, 32)), i32x4.dot_i16x8_s(w3, v128.load(x, 48))),
  );
}

/** Writes or adds the four lanes of v to out[t * stride]. */
@inline export function put4(out: usize, stride: usize, first: bool, v: v128): void {
  put(out, first, f32x4.extract_lane(v, 0));
  put(out + stride, first, f32x4.extract_lane(v, 1));
  put(out + 2 * stride, first, f32x4.extract_lane(v, 2));
  put(out + 3 * stride, first, f32x4.extract_lane(v, 3));
}

@inline export function put(p: usize, first: bool, v: f32): void {
  store<f32>(p, first ? v : load<f32>(p) + v);
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

// ---- relaxed SIMD, several tokens: activations plain int8 [q0..q31] per group ----
// The relaxed dot's second operand must be 0..127, and a tile reuses each weight vector for four
// tokens: the weights give |w| and their sign mask once, and each token's activations take the sign
// (two ops per vector, against the plain path's four loads and four i16 dots per group and token).

/** Lanes sum to (32 int8 weights, as |w| in u0, u1 and sign masks s0, s1) . (32 int8 activations at x). */
@inline function groupI8(u0: v128, u1: v128, s0: v128, s1: v128, x: usize): v128 {
  if (ASC_FEATURE_RELAXED_SIMD) {
    const x0 = i8x16.sub(v128.xor(v128.load(x), s0), s0);
    const x1 = i8x16.sub(v128.xor(v128.load(x, 16), s1), s1);
    return i32x4.relaxed_dot_i8x16_i7x16_add_s(x1, u1, i32x4.relaxed_dot_i8x16_i7x16_add_s(x0, u0, i32x4.splat(0)));
  } else {
    unreachable();
    return i32x4.splat(0);
  }
}

/** q8RowI16 for the int8 layout (relaxed build): the same float arithmetic on the same integer sums. */
function q8RowI8(w: usize, ws: usize, x: usize, xs: usize, gp: i32, fence: usize): f32 {
  let acc = f32x4.splat(0);
  for (let g = 0; g < gp; g += 4) {
    const pw = w + (<usize>g << 5);
    const px = x + (<usize>g << 5);
    let va = v128.load(pw);
    let vb = v128.load(pw, 16);
    const a = groupI8(i8x16.abs(va), i8x16.abs(vb), i8x16.lt_s(va, i8x16.splat(0)), i8x16.lt_s(vb, i8x16.splat(0)), px);
    v128.store(fence, a);
    va = v128.load(pw, 32);
    vb = v128.load(pw, 48);
    const b = groupI8(i8x16.abs(va), i8x16.abs(vb), i8x16.lt_s(va, i8x16.splat(0)), i8x16.lt_s(vb, i8x16.splat(0)), px + 32);
    v128.store(fence, b, 16);
    va = v128.load(pw, 64);
    vb = v128.load(pw, 80);
    const c = groupI8(i8x16.abs(va), i8x16.abs(vb), i8x16.lt_s(va, i8x16.splat(0)), i8x16.lt_s(vb, i8x16.splat(0)), px + 64);
    v128.store(fence, c, 32);
    va = v128.load(pw, 96);
    vb = v128.load(pw, 112);
    const d = groupI8(i8x16.abs(va), i8x16.abs(vb), i8x16.lt_s(va, i8x16.splat(0)), i8x16.lt_s(vb, i8x16.splat(0)), px + 96);
    const f = f32x4.mul(v128.load(ws + (<usize>g << 2)), v128.load(xs + (<usize>g << 2)));
    acc = f32x4.add(acc, f32x4.mul(f32x4.convert_i32x4_s(tsum(a, b, c, d)), f));
  }
  return hsum(acc);
}

/** q8Tile4I16 for the int8 layout (relaxed build): same float arithmetic, same integer sums. */
function q8Tile4I8(
  w: usize, ws: usize, x: usize, xStride: usize, xsT: usize, gp: i32, out: usize, outStride: usize, first: bool, fence: usize,
): void {
  let acc = f32x4.splat(0);
  for (let g = 0; g < gp; g++) {
    const pw = w + (<usize>g << 5);
    const va = v128.load(pw);
    const vb = v128.load(pw, 16);
    const u0 = i8x16.abs(va);
    const u1 = i8x16.abs(vb);
    const s0 = i8x16.lt_s(va, i8x16.splat(0));
    const s1 = i8x16.lt_s(vb, i8x16.splat(0));
    let px = x + (<usize>g << 5);
    const d0 = groupI8(u0, u1, s0, s1, px);
    v128.store(fence, d0);
    px += xStride;
    const d1 = groupI8(u0, u1, s0, s1, px);
    v128.store(fence, d1, 16);
    px += xStride;
    const d2 = groupI8(u0, u1, s0, s1, px);
    v128.store(fence, d2, 32);
    px += xStride;
    const d3 = groupI8(u0, u1, s0, s1, px);
    const f = f32x4.mul(v128.load32_splat(ws + (<usize>g << 2)), v128.load(xsT + (<usize>g << 4)));
    acc = f32x4.add(acc, f32x4.mul(f32x4.convert_i32x4_s(tsum(d0, d1, d2, d3)), f));
  }
  put4(out, outStride, first, acc);
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

// ---- the parallel step ----

/** Rows per block in prefill: the block's panel slice (64 KiB of q8) stays in L2 across token tiles. */
const ROW_BLOCK: i32 = 64;

/**
 * Rows [begin, end) of out[t, r] for the tc tokens whose activations quantize.ts wrote at x (xRow bytes
 * per token: for one token the build's decode layout, for several the i16 layout) with scales at xs
 * (G per token) and, for each tile of four tokens, transposed at xsT (G x 4 per tile).
 */
export function q8Rows(
  out: usize, w: usize, x: usize, xs: usize, xsT: usize, rows: i32, cp: i32, tc: i32, xRow: usize,
  begin: i32, end: i32, fence: usize,
): void {
  const G = cp >> 5;
  const sRow = <usize>G << 2;
  const outStride = <usize>rows << 2;
  // The mask goes through memory into a parameter: V8 keeps a parameter in a register, whereas it
  // re-materializes a constant vector inside loops (3 instructions per use).
  v128.store(fence, i16x8.splat(<i16>0xff00), 192);
  const hi = v128.load(fence, 192);
  for (let c0 = 0; c0 < cp; c0 += PANEL) {
    const pw = min(PANEL, cp - c0);
    const gp = pw >> 5;
    const g0 = c0 >> 5;
    const base = w + panelOffset(FMT_Q8, rows, c0);
    const scales = base + <usize>rows * <usize>pw;
    const first = c0 == 0;
    const xp = x + (<usize>g0 << (tc > 1 && ASC_FEATURE_RELAXED_SIMD ? 5 : 6));
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
    for (let rb = begin; rb < end; rb += ROW_BLOCK) {
      const re = min(end, rb + ROW_BLOCK);
      let t = 0;
      for (; t + 4 <= tc; t += 4) {
        for (let r = rb; r < re; r++) {
          const wr = base + <usize>r * <usize>pw;
          const sr = scales + (<usize>(r * gp) << 2);
          const xt = xp + <usize>t * xRow;
          const st = xsT + (<usize>(t * G + 4 * g0) << 2);
          const o = out + <usize>t * outStride + (<usize>r << 2);
          if (ASC_FEATURE_RELAXED_SIMD) q8Tile4I8(wr, sr, xt, xRow, st, gp, o, outStride, first, fence);
          else q8Tile4I16(wr, sr, xt, xRow, st, gp, o, outStride, first, fence, hi);
        }
      }
      for (; t < tc; t++) {
        for (let r = rb; r < re; r++) {
          const wr = base + <usize>r * <usize>pw;
          const sr = scales + (<usize>(r * gp) << 2);
          const xt = xp + <usize>t * xRow;
          const st = xsp + <usize>t * sRow;
          const v = ASC_FEATURE_RELAXED_SIMD ? q8RowI8(wr, sr, xt, st, gp, fence) : q8RowI16(wr, sr, xt, st, gp, fence, hi);
          put(out + <usize>t * outStride + (<usize>r << 2), first, v);
        }
      }
    }
  }
}
