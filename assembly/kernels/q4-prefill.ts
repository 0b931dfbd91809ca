// The q4 prefill tiles (more than TILE_MAX tokens; see q8-prefill.ts): 128-row blocks x 4-token tiles,
// each group's nibbles split once for four tokens and the four tokens' sums transposed into one vector,
// corrected and scaled by the tile's transposed corrections and scales (matmul.ts); leftover tokens row
// by row. The nibble arithmetic is q4.ts's.
import { hsum, put, put4, tsum } from './format';
import { Q4_GROUP_BYTES, groupI16Of, groupI8Of, nibbleDot, tokenSum } from './q4';

@inline function groupI16(w: usize, x: usize, m0: v128, m1: v128, m2: v128): v128 {
  return groupI16Of(w, v128.load(x), v128.load(x, 16), v128.load(x, 32), v128.load(x, 48), m0, m1, m2);
}

@inline function groupI8(w: usize, x: usize, m: v128): v128 {
  return groupI8Of(w, v128.load(x), v128.load(x, 16), m);
}

/** One row of one panel against one token; xc holds the token's per-group corrections (i32). */
function q4Row(w: usize, ws: usize, x: usize, xs: usize, xc: usize, gp: i32, fence: usize, m0: v128, m1: v128, m2: v128): f32 {
  let acc = f32x4.splat(0);
  for (let g = 0; g < gp; g += 4) {
    const pw = w + (<usize>g << 4);
    let a: v128, b: v128, c: v128, d: v128;
    if (ASC_FEATURE_RELAXED_SIMD) {
      const px = x + (<usize>g << 5);
      a = groupI8(pw, px, m0);
      v128.store(fence, a);
      b = groupI8(pw + 16, px + 32, m0);
      v128.store(fence, b, 16);
      c = groupI8(pw + 32, px + 64, m0);
      v128.store(fence, c, 32);
      d = groupI8(pw + 48, px + 96, m0);
    } else {
      const px = x + (<usize>g << 6);
      a = groupI16(pw, px, m0, m1, m2);
      v128.store(fence, a);
      b = groupI16(pw + 16, px + 64, m0, m1, m2);
      v128.store(fence, b, 16);
      c = groupI16(pw + 32, px + 128, m0, m1, m2);
      v128.store(fence, c, 32);
      d = groupI16(pw + 48, px + 192, m0, m1, m2);
    }
    const S = i32x4.add(tsum(a, b, c, d), v128.load(xc + (<usize>g << 2)));
    const f = f32x4.mul(v128.load(ws + (<usize>g << 2)), v128.load(xs + (<usize>g << 2)));
    acc = f32x4.add(acc, f32x4.mul(f32x4.convert_i32x4_s(S), f));
  }
  return hsum(acc);
}

/**
 * One row of one panel against four tokens (activations xStride apart); xsT / xcT: the tile's scales
 * and corrections, four per group (one per token). The four tokens' sums of a group are transposed into
 * one vector, so one accumulator holds the four outputs.
 */
function q4Tile4(
  w: usize, ws: usize, x: usize, xStride: usize, xsT: usize, xcT: usize, gp: i32,
  out: usize, outStride: usize, first: bool, fence: usize, m0: v128, m1: v128, m2: v128,
): void {
  let acc = f32x4.splat(0);
  for (let g = 0; g < gp; g++) {
    const v = v128.load(w + (<usize>g << 4));
    let n0: v128, n1: v128, n2: v128, n3: v128;
    let px: usize;
    if (ASC_FEATURE_RELAXED_SIMD) {
      n0 = v128.and(v, m0);
      n1 = v128.and(i16x8.shr_u(v, 4), m0);
      n2 = n0;
      n3 = n1;
      px = x + (<usize>g << 5);
    } else {
      n0 = v128.and(v, m0);
      n1 = v128.and(v, m1);
      n2 = v128.and(v, m2);
      n3 = i16x8.shr_u(v, 12);
      px = x + (<usize>g << 6);
    }
    const d0 = tokenSum(n0, n1, n2, n3, px);
    v128.store(fence, d0);
    const d1 = tokenSum(n0, n1, n2, n3, px + xStride);
    v128.store(fence, d1, 16);
    const d2 = tokenSum(n0, n1, n2, n3, px + 2 * xStride);
    v128.store(fence, d2, 32);
    const d3 = tokenSum(n0, n1, n2, n3, px + 3 * xStride);
    const o = <usize>g << 4;
    const S = i32x4.add(tsum(d0, d1, d2, d3), v128.load(xcT + o));
    const f = f32x4.mul(v128.load32_splat(ws + (<usize>g << 2)), v128.load(xsT + o));
    acc = f32x4.add(acc, f32x4.mul(f32x4.convert_i32x4_s(S), f));
  }
  put4(out, outStride, first, acc);
}

/** Rows per block: the block's panel slice (64 KiB of q4) stays in L2 across token tiles. */
const ROW_BLOCK: i32 = 128;

/**
 * Rows [begin, end) of one panel (weights at base, rowBytes per row, scales after them, gp groups) for
 * tc > 4 tokens at xp (xRow bytes per token; scales and corrections at xsp, xcp, G per token; transposed
 * by 4-token tiles at xsT, xcT, this panel's first group g0), written or added (first) to out[t, r].
 * fence: the thread's slot, with q4Rows's masks at +192.
 */
export function q4PrefillRows(
  out: usize, base: usize, scales: usize, rowBytes: usize, gp: i32, g0: i32, G: i32, xp: usize, xsp: usize, xcp: usize,
  xsT: usize, xcT: usize, rows: i32, tc: i32, xRow: usize, begin: i32, end: i32, first: bool, fence: usize,
): void {
  // q4Rows's masks
  const m0 = v128.load(fence, 192);
  const m1 = v128.load(fence, 208);
  const m2 = v128.load(fence, 224);
  const sRow = <usize>G << 2;
  const outStride = <usize>rows << 2;
  for (let rb = begin; rb < end; rb += ROW_BLOCK) {
    const re = min(end, rb + ROW_BLOCK);
    let t = 0;
    for (; t + 4 <= tc; t += 4) {
      for (let r = rb; r < re; r++) {
        const tt = <usize>(t * G + 4 * g0) << 2;
        q4Tile4(
          base + <usize>r * rowBytes, scales + (<usize>(r * gp) << 2), xp + <usize>t * xRow, xRow,
          xsT + tt, xcT + tt, gp, out + <usize>t * outStride + (<usize>r << 2), outStride, first, fence, m0, m1, m2,
        );
      }
    }
    for (; t < tc; t++) {
      for (let r = rb; r < re; r++) {
        const v = q4Row(base + <usize>r * rowBytes, scales + (<usize>(r * gp) << 2), xp + <usize>t * xRow, xsp + <usize>t * sRow, xcp + <usize>t * sRow, gp, fence, m0, m1, m2);
        put(out + <usize>t * outStride + (<usize>r << 2), first, v);
      }
    }
  }
}
