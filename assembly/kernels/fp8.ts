// FP8 matmul: e4m3 weights with DeepSeek's block scales (one f32 per 128 rows x 128 columns, stored
// here per row and 128-column block), dequantized inside the kernel and multiplied with f32
// activations. No activation quantization: the products are as exact as f32 allows.
//
// Decoding is two i16 ops per 8 values. With an e4m3 byte in the top half of an i16 lane,
//   (lane >>s 4) & 0x87f0
// is the bf16 bit pattern of value * 2^-120 (sign kept, exponent and mantissa moved into place, the
// exponent bias 7 instead of 127), subnormals included; widening bf16 to f32 is an interleave with
// zero. The activations are stored times 2^64 (quantize.ts) so that the products, value * x * 2^-56,
// stay normal floats, and each row's sum is multiplied by 2^56 at the end. The 16 bytes of a chunk
// decode into the orders [w0 w2 w4 w6], [w8 .. w14], [w1 w3 w5 w7], [w9 .. w15]; quantize.ts stores the
// activations in that order. The relaxed build uses f32x4.relaxed_madd (fused) for the products.
import { FMT_FP8, FP8_BLOCK } from '../constants';
import { PANEL, hsum, madd, panelOffset, put } from './format';

/** 2^56: undoes the 2^-120 of the decode and the 2^64 of the activations. */
const UNSCALE: f32 = 72057594037927936.0;

@inline function decodeEven(v: v128, mask: v128): v128 {
  return v128.and(i16x8.shr_s(i16x8.shl(v, 8), 4), mask);
}

@inline function decodeOdd(v: v128, mask: v128): v128 {
  return v128.and(i16x8.shr_s(v, 4), mask);
}

@inline function lowF32(z: v128, b: v128): v128 {
  return i16x8.shuffle(z, b, 0, 8, 1, 9, 2, 10, 3, 11);
}

@inline function highF32(z: v128, b: v128): v128 {
  return i16x8.shuffle(z, b, 4, 12, 5, 13, 6, 14, 7, 15);
}

/** One row of one panel (pw columns, a multiple of 128) against one token. */
function fp8Row(w: usize, ws: usize, x: usize, pw: i32, mask: v128): f32 {
  const z = i32x4.splat(0);
  let acc = f32x4.splat(0);
  for (let b = 0; b < pw; b += FP8_BLOCK) {
    let p0 = f32x4.splat(0);
    let p1 = p0;
    let p2 = p0;
    let p3 = p0;
    for (let i = b; i < b + FP8_BLOCK; i += 16) {
      const v = v128.load(w + <usize>i);
      const e = decodeEven(v, mask);
      const o = decodeOdd(v, mask);
      const px = x + (<usize>i << 2);
      p0 = madd(lowF32(z, e), v128.load(px), p0);
      p1 = madd(highF32(z, e), v128.load(px, 16), p1);
      p2 = madd(lowF32(z, o), v128.load(px, 32), p2);
      p3 = madd(highF32(z, o), v128.load(px, 48), p3);
    }
    const s = f32x4.add(f32x4.add(p0, p1), f32x4.add(p2, p3));
    acc = madd(s, v128.load32_splat(ws + (<usize>(b / FP8_BLOCK) << 2)), acc);
  }
  return hsum(acc) * UNSCALE;
}

@inline function chunk4(e0: v128, e1: v128, o0: v128, o1: v128, px: usize): v128 {
  if (ASC_FEATURE_RELAXED_SIMD) {
    return f32x4.relaxed_madd(e0, v128.load(px), f32x4.relaxed_madd(e1, v128.load(px, 16), f32x4.relaxed_madd(o0, v128.load(px, 32), f32x4.mul(o1, v128.load(px, 48)))));
  }
  return f32x4.add(
    f32x4.add(f32x4.mul(e0, v128.load(px)), f32x4.mul(e1, v128.load(px, 16))),
    f32x4.add(f32x4.mul(o0, v128.load(px, 32)), f32x4.mul(o1, v128.load(px, 48))),
  );
}

/** One row of one panel against four tokens; each 16-byte chunk is decoded once. */
function fp8Tile4(w: usize, ws: usize, x: usize, xStride: usize, pw: i32, out: usize, outStride: usize, first: bool, fence: usize, mask: v128): void {
  const z = i32x4.splat(0);
  let a0 = f32x4.splat(0);
  let a1 = a0;
  let a2 = a0;
  let a3 = a0;
  for (let b = 0; b < pw; b += FP8_BLOCK) {
    let p0 = f32x4.splat(0);
    let p1 = p0;
    let p2 = p0;
    let p3 = p0;
    for (let i = b; i < b + FP8_BLOCK; i += 16) {
      const v = v128.load(w + <usize>i);
      const e = decodeEven(v, mask);
      const o = decodeOdd(v, mask);
      const e0 = lowF32(z, e);
      const e1 = highF32(z, e);
      const o0 = lowF32(z, o);
      const o1 = highF32(z, o);
      const px = x + (<usize>i << 2);
      p0 = f32x4.add(p0, chunk4(e0, e1, o0, o1, px));
      v128.store(fence, p0);
      p1 = f32x4.add(p1, chunk4(e0, e1, o0, o1, px + xStride));
      v128.store(fence, p1, 16);
      p2 = f32x4.add(p2, chunk4(e0, e1, o0, o1, px + 2 * xStride));
      v128.store(fence, p2, 32);
      p3 = f32x4.add(p3, chunk4(e0, e1, o0, o1, px + 3 * xStride));
      v128.store(fence, p3, 48);
    }
    const s = v128.load32_splat(ws + (<usize>(b / FP8_BLOCK) << 2));
    a0 = madd(p0, s, a0);
    a1 = madd(p1, s, a1);
    a2 = madd(p2, s, a2);
    a3 = madd(p3, s, a3);
  }
  put(out, first, hsum(a0) * UNSCALE);
  put(out + outStride, first, hsum(a1) * UNSCALE);
  put(out + 2 * outStride, first, hsum(a2) * UNSCALE);
  put(out + 3 * outStride, first, hsum(a3) * UNSCALE);
}

const ROW_BLOCK: i32 = 64;

/** Rows [begin, end) of out[t, r] for tc tokens whose f32 activations (x 2^64, permuted) sit xRow bytes apart. */
export function fp8Rows(
  out: usize, w: usize, x: usize, rows: i32, cp: i32, tc: i32, xRow: usize, begin: i32, end: i32, fence: usize,
): void {
  const outStride = <usize>rows << 2;
  // Through memory into a parameter, so V8 keeps it in a register instead of re-materializing it.
  v128.store(fence, i16x8.splat(<i16>0x87f0), 192);
  const mask = v128.load(fence, 192);
  for (let c0 = 0; c0 < cp; c0 += PANEL) {
    const pw = min(PANEL, cp - c0);
    const nb = pw / FP8_BLOCK;
    const base = w + panelOffset(FMT_FP8, rows, c0);
    const scales = base + <usize>rows * <usize>pw;
    const first = c0 == 0;
    const xp = x + (<usize>c0 << 2);
    for (let rb = begin; rb < end; rb += ROW_BLOCK) {
      const re = min(end, rb + ROW_BLOCK);
      let t = 0;
      for (; t + 4 <= tc; t += 4) {
        for (let r = rb; r < re; r++) {
          fp8Tile4(base + <usize>r * <usize>pw, scales + (<usize>(r * nb) << 2), xp + <usize>t * xRow, xRow, pw, out + <usize>t * outStride + (<usize>r << 2), outStride, first, fence, mask);
        }
      }
      for (; t < tc; t++) {
        for (let r = rb; r < re; r++) {
          put(out + <usize>t * outStride + (<usize>r << 2), first, fp8Row(base + <usize>r * <usize>pw, scales + (<usize>(r * nb) << 2), xp + <usize>t * xRow, pw, mask));
        }
      }
    }
  }
}
