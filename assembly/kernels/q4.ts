// Q4 matmul: 4-bit weights n = q + 8 (q in -8..7) with one f32 scale per group of 32, int8 activations
// per group of 32. A group's 16 bytes are 8 u16 lanes; nibble k of lane l holds n[8k + l]
// (docs/quantized-format.md). The offset comes out exactly in integers:
//   sum_i q_i x_i = sum_i n_i x_i - 8 sum_i x_i,
// and quantize.ts stores -8 * sum_i x_i per token and group ("corrections") next to the activations.
//
// Plain SIMD masks the nibbles in place: n0 = v & 0x000f, 16 n1 = v & 0x00f0, 256 n2 = v & 0x0f00,
// n3 = v >>u 12, all non-negative i16; the activations are stored pre-multiplied by 256, 16, 1, 256 for
// the four nibble positions so that every product is 256 n x, and the scale carries 1/256.
// Relaxed SIMD splits the bytes into low and high nibbles (0..15, a valid 7-bit operand) and runs
// i16x8.relaxed_dot_i8x16_i7x16_s against int8 activations stored in the matching byte order. Both
// produce the same integer sums, so plain and relaxed results are bit-identical.
import { Q4, PANEL, hsum, panelOffset, tsum } from './format';
import { put, put4 } from './q8';

// ---- plain SIMD: activations i16, per group [x0..7 * 256 | x8..15 * 16 | x16..23 | x24..31 * 256] ----

@inline function groupI16(w: usize, x: usize, m0: v128, m1: v128, m2: v128): v128 {
  const v = v128.load(w);
  const d0 = i32x4.dot_i16x8_s(v128.and(v, m0), v128.load(x));
  const d1 = i32x4.dot_i16x8_s(v128.and(v, m1), v128.load(x, 16));
  const d2 = i32x4.dot_i16x8_s(v128.and(v, m2), v128.load(x, 32));
  const d3 = i32x4.dot_i16x8_s(i16x8.shr_u(v, 12), v128.load(x, 48));
  return i32x4.add(i32x4.add(d0, d1), i32x4.add(d2, d3));
}

// ---- relaxed SIMD: activations int8, per group [x0 x16 x1 x17 .. x7 x23 | x8 x24 .. x15 x31] ----

@inline function groupI8(w: usize, x: usize): v128 {
  if (ASC_FEATURE_RELAXED_SIMD) {
    const m = i8x16.splat(0x0f);
    const v = v128.load(w);
    return nibbleDot(v128.and(v, m), v128.and(i16x8.shr_u(v, 4), m), x);
  } else {
    unreachable();
    return i32x4.splat(0);
  }
}

/**
 * sum over 32 products of nibbles (lo, hi: 0..15 per byte) and int8 activations at x, as i32x4 lanes.
 * i16x8.relaxed_dot_i8x16_i7x16_s is one vpmaddubsw on x86; a pair sum is at most 2 * 15 * 127, so the
 * two dots add in i16 without overflow and widen once. (V8 lowers the i32x4 ..._add_s form to five
 * instructions on CPUs without AVX-VNNI, such as this AMD Zen 4.)
 */
@inline function nibbleDot(lo: v128, hi: v128, x: usize): v128 {
  if (ASC_FEATURE_RELAXED_SIMD) {
    return i32x4.extadd_pairwise_i16x8_s(i16x8.add(i16x8.relaxed_dot_i8x16_i7x16_s(v128.load(x), lo), i16x8.relaxed_dot_i8x16_i7x16_s(v128.load(x, 16), hi)));
  } else {
    unreachable();
    return i32x4.splat(0);
  }
}

/** Activation bytes per group in this build's q4 layout. */
export const Q4_GROUP_BYTES: i32 = ASC_FEATURE_RELAXED_SIMD ? 32 : 64;

/** One row of one panel against one token; xc holds the token's per-group corrections (i32). */
export function q4Row(w: usize, ws: usize, x: usize, xs: usize, xc: usize, gp: i32, fence: usize, m0: v128, m1: v128, m2: v128): f32 {
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

/** The integer sum for one token of a tile: nibble vectors n0..n3 already split (plain) or lo/hi (relaxed). */
@inline function tokenSum(n0: v128, n1: v128, n2: v128, n3: v128, x: usize): v128 {
  if (ASC_FEATURE_RELAXED_SIMD) {
    return nibbleDot(n0, n1, x);
  } else {
    return i32x4.add(
      i32x4.add(i32x4.dot_i16x8_s(n0, v128.load(x)), i32x4.dot_i16x8_s(n1, v128.load(x, 16))),
      i32x4.add(i32x4.dot_i16x8_s(n2, v128.load(x, 32)), i32x4.dot_i16x8_s(n3, v128.load(x, 48))),
    );
  }
}

/**
 * One row of one panel against four tokens (activations xStride apart); xsT / xcT: the tile's scales
 * and corrections, four per group (one per token). The four tokens' sums of a group are transposed into
 * one vector, so one accumulator holds the four outputs.
 */
export function q4Tile4(
  w: usize, ws: usize, x: usize, xStride: usize, xsT: usize, xcT: usize, gp: i32,
  out: usize, outStride: usize, first: bool, fence: usize, m0: v128, m1: v128, m2: v128,
): void {
  let acc = f32x4.splat(0);
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

const ROW_BLOCK: i32 = 128;

/** Rows [begin, end) of out[t, r] for tc tokens; activations xRow bytes per token, scales and
 * corrections G per token. */
export function q4Rows(
  out: usize, w: usize, x: usize, xs: usize, xc: usize, xsT: usize, xcT: usize, rows: i32, cp: i32, tc: i32, xRow: usize,
  begin: i32, end: i32, fence: usize,
): void {
  const G = cp >> 5;
  const sRow = <usize>G << 2;
  const outStride = <usize>rows << 2;
  // The nibble masks go through memory (the thread's scratch slot) into parameters: V8 re-materializes
  // a constant vector at every use inside a loop (3 instructions), but keeps a parameter in a register.
  const slot = fence + 192;
  v128.store(slot, i16x8.splat(0x000f));
  v128.store(slot, i16x8.splat(0x00f0), 16);
  v128.store(slot, i16x8.splat(0x0f00), 32);
  const m0 = v128.load(slot);
  const m1 = v128.load(slot, 16);
  const m2 = v128.load(slot, 32);
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
}
