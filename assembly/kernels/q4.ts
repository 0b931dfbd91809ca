// Q4 matmul: 4-bit weights n = q + 8 (q in -8..7) with one f32 scale per group of 32, int8 activations
// per group of 32. A group's 16 bytes are 8 u16 lanes; nibble k of lane l holds n[8k + l]
// (docs/quantized-format.md). The offset comes out exactly in integers:
//   sum_i q_i x_i = sum_i n_i x_i - 8 sum_i x_i,
// and quantize.ts stores -8 * sum_i x_i per token and group ("corrections") next to the activations.
//
// Plain SIMD masks the nibbles in place: n0 = v & 0x000f, 16 n1 = v & 0x00f0, 256 n2 = v & 0x0f00,
// 256 n3 = (v >> 4) & 0x0f00, all non-negative i16; the activations are stored pre-multiplied by 256,
// 16, 1, 1 for the four nibble positions so that every product is 256 n x, and the scale carries 1/256.
// Relaxed SIMD splits the bytes into low and high nibbles (0..15, a valid 7-bit operand) and runs
// i32x4.relaxed_dot_i8x16_i7x16_add_s against int8 activations stored in the matching byte order. Both
// produce the same integer sums, so plain and relaxed results are bit-identical.
import { Q4, PANEL, hsum, panelOffset, tsum } from './format';
import { put } from './q8';

// ---- plain SIMD: activations i16, per group [x0..7 * 256 | x8..15 * 16 | x16..23 | x24..31] ----

@inline function groupI16(w: usize, x: usize): v128 {
  const v = v128.load(w);
  const d0 = i32x4.dot_i16x8_s(v128.and(v, i16x8.splat(0x000f)), v128.load(x));
  const d1 = i32x4.dot_i16x8_s(v128.and(v, i16x8.splat(0x00f0)), v128.load(x, 16));
  const d2 = i32x4.dot_i16x8_s(v128.and(v, i16x8.splat(0x0f00)), v128.load(x, 32));
  const d3 = i32x4.dot_i16x8_s(v128.and(i16x8.shr_u(v, 4), i16x8.splat(0x0f00)), v128.load(x, 48));
  return i32x4.add(i32x4.add(d0, d1), i32x4.add(d2, d3));
}

// ---- relaxed SIMD: activations int8, per group [x0 x16 x1 x17 .. x7 x23 | x8 x24 .. x15 x31] ----

@inline function groupI8(w: usize, x: usize): v128 {
  if (ASC_FEATURE_RELAXED_SIMD) {
    const m = i8x16.splat(0x0f);
    const v = v128.load(w);
    const d = i32x4.relaxed_dot_i8x16_i7x16_add_s(v128.load(x), v128.and(v, m), i32x4.splat(0));
    return i32x4.relaxed_dot_i8x16_i7x16_add_s(v128.load(x, 16), v128.and(i16x8.shr_u(v, 4), m), d);
  } else {
    unreachable();
    return i32x4.splat(0);
  }
}

/** Activation bytes per group in this build's q4 layout. */
export const Q4_GROUP_BYTES: i32 = ASC_FEATURE_RELAXED_SIMD ? 32 : 64;

/** One row of one panel against one token; xc holds the token's per-group corrections (i32). */
export function q4Row(w: usize, ws: usize, x: usize, xs: usize, xc: usize, gp: i32, fence: usize): f32 {
  let acc = f32x4.splat(0);
  for (let g = 0; g < gp; g += 4) {
    const pw = w + (<usize>g << 4);
    let a: v128, b: v128, c: v128, d: v128;
    if (ASC_FEATURE_RELAXED_SIMD) {
      const px = x + (<usize>g << 5);
      a = groupI8(pw, px);
      v128.store(fence, a);
      b = groupI8(pw + 16, px + 32);
      v128.store(fence, b, 16);
      c = groupI8(pw + 32, px + 64);
      v128.store(fence, c, 32);
      d = groupI8(pw + 48, px + 96);
    } else {
      const px = x + (<usize>g << 6);
      a = groupI16(pw, px);
      v128.store(fence, a);
      b = groupI16(pw + 16, px + 64);
      v128.store(fence, b, 16);
      c = groupI16(pw + 32, px + 128);
      v128.store(fence, c, 32);
      d = groupI16(pw + 48, px + 192);
    }
    const S = i32x4.add(tsum(a, b, c, d), v128.load(xc + (<usize>g << 2)));
    const f = f32x4.mul(v128.load(ws + (<usize>g << 2)), v128.load(xs + (<usize>g << 2)));
    acc = f32x4.add(acc, f32x4.mul(f32x4.convert_i32x4_s(S), f));
  }
  return hsum(acc);
}

/** The integer sum for one token of a tile: nibble vectors n0..n3 already split (plain) or lo/hi (relaxed). */
@inline function tokenSum(n0: v128, n1: v128, n2: v128, n3: v128, x: usize, corr: usize): v128 {
  if (ASC_FEATURE_RELAXED_SIMD) {
    return i32x4.relaxed_dot_i8x16_i7x16_add_s(v128.load(x, 16), n1, i32x4.relaxed_dot_i8x16_i7x16_add_s(v128.load(x), n0, v128.load32_zero(corr)));
  } else {
    return i32x4.add(
      i32x4.add(i32x4.dot_i16x8_s(n0, v128.load(x)), i32x4.dot_i16x8_s(n1, v128.load(x, 16))),
      i32x4.add(i32x4.dot_i16x8_s(n2, v128.load(x, 32)), i32x4.add(i32x4.dot_i16x8_s(n3, v128.load(x, 48)), v128.load32_zero(corr))),
    );
  }
}

/** One row of one panel against four tokens (activations xStride apart, scales and corrections sStride). */
export function q4Tile4(
  w: usize, ws: usize, x: usize, xStride: usize, xs: usize, xc: usize, sStride: usize, gp: i32,
  out: usize, outStride: usize, first: bool, fence: usize,
): void {
  let a0 = f32x4.splat(0);
  let a1 = a0;
  let a2 = a0;
  let a3 = a0;
  for (let g = 0; g < gp; g++) {
    const v = v128.load(w + (<usize>g << 4));
    let n0: v128, n1: v128, n2: v128, n3: v128;
    let px: usize;
    if (ASC_FEATURE_RELAXED_SIMD) {
      const m = i8x16.splat(0x0f);
      n0 = v128.and(v, m);
      n1 = v128.and(i16x8.shr_u(v, 4), m);
      n2 = n0;
      n3 = n1;
      px = x + (<usize>g << 5);
    } else {
      n0 = v128.and(v, i16x8.splat(0x000f));
      n1 = v128.and(v, i16x8.splat(0x00f0));
      n2 = v128.and(v, i16x8.splat(0x0f00));
      n3 = v128.and(i16x8.shr_u(v, 4), i16x8.splat(0x0f00));
      px = x + (<usize>g << 6);
    }
    const sw = v128.load32_splat(ws + (<usize>g << 2));
    const o = <usize>g << 2;
    let d = tokenSum(n0, n1, n2, n3, px, xc + o);
    a0 = f32x4.add(a0, f32x4.mul(f32x4.convert_i32x4_s(d), f32x4.mul(sw, v128.load32_splat(xs + o))));
    v128.store(fence, a0);
    d = tokenSum(n0, n1, n2, n3, px + xStride, xc + sStride + o);
    a1 = f32x4.add(a1, f32x4.mul(f32x4.convert_i32x4_s(d), f32x4.mul(sw, v128.load32_splat(xs + sStride + o))));
    v128.store(fence, a1, 16);
    d = tokenSum(n0, n1, n2, n3, px + 2 * xStride, xc + 2 * sStride + o);
    a2 = f32x4.add(a2, f32x4.mul(f32x4.convert_i32x4_s(d), f32x4.mul(sw, v128.load32_splat(xs + 2 * sStride + o))));
    v128.store(fence, a2, 32);
    d = tokenSum(n0, n1, n2, n3, px + 3 * xStride, xc + 3 * sStride + o);
    a3 = f32x4.add(a3, f32x4.mul(f32x4.convert_i32x4_s(d), f32x4.mul(sw, v128.load32_splat(xs + 3 * sStride + o))));
    v128.store(fence, a3, 48);
  }
  put(out, first, hsum(a0));
  put(out + outStride, first, hsum(a1));
  put(out + 2 * outStride, first, hsum(a2));
  put(out + 3 * outStride, first, hsum(a3));
}

const ROW_BLOCK: i32 = 128;

/** Rows [begin, end) of out[t, r] for tc tokens; activations xRow bytes per token, scales and
 * corrections G per token. */
export function q4Rows(
  out: usize, w: usize, x: usize, xs: usize, xc: usize, rows: i32, cp: i32, tc: i32, xRow: usize,
  begin: i32, end: i32, fence: usize,
): void {
  const G = cp >> 5;
  const sRow = <usize>G << 2;
  const outStride = <usize>rows << 2;
  for (let c0 = 0; c0 < cp; c0 += PANEL) {
    const pw = min(PANEL, cp - c0);
    const gp = pw >> 5;
    const g0 = c0 >> 5;
    const rowBytes = <usize>(pw >> 1);
    const base = w + panelOffset(Q4, rows, c0);
    const scales = base + <usize>rows * rowBytes;
    const first = c0 == 0;
    const xp = x + <usize>g0 * <usize>Q4_GROUP_BYTES;
    const xsp = xs + (<usize>g0 << 2);
    const xcp = xc + (<usize>g0 << 2);
    for (let rb = begin; rb < end; rb += ROW_BLOCK) {
      const re = min(end, rb + ROW_BLOCK);
      let t = 0;
      for (; t + 4 <= tc; t += 4) {
        for (let r = rb; r < re; r++) {
          q4Tile4(
            base + <usize>r * rowBytes, scales + (<usize>(r * gp) << 2), xp + <usize>t * xRow, xRow,
            xsp + <usize>t * sRow, xcp + <usize>t * sRow, sRow, gp, out + <usize>t * outStride + (<usize>r << 2), outStride, first, fence,
          );
        }
      }
      for (; t < tc; t++) {
        for (let r = rb; r < re; r++) {
          const v = q4Row(base + <usize>r * rowBytes, scales + (<usize>(r * gp) << 2), xp + <usize>t * xRow, xsp + <usize>t * sRow, xcp + <usize>t * sRow, gp, fence);
          put(out + <usize>t * outStride + (<usize>r << 2), first, v);
        }
      }
    }
  }
}
