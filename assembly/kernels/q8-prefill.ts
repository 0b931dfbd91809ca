// The q8 prefill tiles: a chunk of more than TILE_MAX tokens (format.ts) goes in 64-row blocks x 4-token
// tiles, each weight group widened once for four tokens and the four tokens' sums of a group transposed
// into one vector, scaled by sw * [sx_t0 .. sx_t3] (the tile's scales, transposed by matmul.ts), so one
// accumulator holds the four outputs; leftover tokens go row by row. Their float order is their own (not
// decode's, as q8.ts's few-token tiles keep): here it ran 6-17% faster than the few-token tile at 64
// tokens (bench/RESULTS.md, session 7). Plain SIMD widens the weights as q8.ts does, against the i16
// activation layout; the relaxed build takes |w| and the weights' sign once per tile and moves the sign
// onto each token's int8 activations (quantize.ts ACT_Q8_I8). Fence stores: see q8.ts.
import { hsum, put, put4, tsum } from './format';
import { dotI16, groupI16Of } from './q8';

// ---- plain SIMD ----

/** Lanes of the result sum to 256 * (32 int8 weights at w) . (32 i16 activations at x). */
@inline function groupI16(w: usize, x: usize, hi: v128): v128 {
  return groupI16Of(w, v128.load(x), v128.load(x, 16), v128.load(x, 32), v128.load(x, 48), hi);
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
    const d0 = dotI16(w0, w1, w2, w3, px);
    v128.store(fence, d0);
    px += xStride;
    const d1 = dotI16(w0, w1, w2, w3, px);
    v128.store(fence, d1, 16);
    px += xStride;
    const d2 = dotI16(w0, w1, w2, w3, px);
    v128.store(fence, d2, 32);
    px += xStride;
    const d3 = dotI16(w0, w1, w2, w3, px);
    const f = f32x4.mul(v128.load32_splat(ws + (<usize>g << 2)), v128.load(xsT + (<usize>g << 4)));
    acc = f32x4.add(acc, f32x4.mul(f32x4.convert_i32x4_s(tsum(d0, d1, d2, d3)), f));
  }
  put4(out, outStride, first, acc);
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

/** Rows per block: the block's panel slice (64 KiB of q8) stays in L2 across token tiles. */
const ROW_BLOCK: i32 = 64;

/**
 * Rows [begin, end) of one panel (weights at base, scales after them, pw columns, gp groups) for tc > 4
 * tokens at xp (xRow bytes per token; scales at xsp, G per token; transposed by 4-token tiles at xsT,
 * G x 4 per tile, this panel's first group g0), written or added (first) to out[t, r]. fence: the
 * thread's slot, with q8Rows's mask at +192.
 */
export function q8PrefillRows(
  out: usize, base: usize, scales: usize, pw: i32, gp: i32, g0: i32, G: i32, xp: usize, xsp: usize, xsT: usize,
  rows: i32, tc: i32, xRow: usize, begin: i32, end: i32, first: bool, fence: usize,
): void {
  const hi = v128.load(fence, 192); // q8Rows's mask
  const sRow = <usize>G << 2;
  const outStride = <usize>rows << 2;
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
