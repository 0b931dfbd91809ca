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
import { FMT_Q4 } from '../constants';
import { AHEAD_BYTES, PANEL, TILE_BUFFER, TILE_MAX, hsum, panelOffset, put, touch, tsumHalf, tsumJoin } from './format';
import { q4PrefillRows } from './q4-prefill';

// ---- plain SIMD: activations i16, per group [x0..7 * 256 | x8..15 * 16 | x16..23 | x24..31 * 256] ----

/** groupI16 with the group's four activation vectors already loaded. */
@inline export function groupI16Of(w: usize, x0: v128, x1: v128, x2: v128, x3: v128, m0: v128, m1: v128, m2: v128): v128 {
  const v = v128.load(w);
  const d0 = i32x4.dot_i16x8_s(v128.and(v, m0), x0);
  const d1 = i32x4.dot_i16x8_s(v128.and(v, m1), x1);
  const d2 = i32x4.dot_i16x8_s(v128.and(v, m2), x2);
  const d3 = i32x4.dot_i16x8_s(i16x8.shr_u(v, 12), x3);
  return i32x4.add(i32x4.add(d0, d1), i32x4.add(d2, d3));
}

// ---- relaxed SIMD: activations int8, per group [x0 x16 x1 x17 .. x7 x23 | x8 x24 .. x15 x31] ----

/** groupI8 with the group's two activation vectors already loaded; m: 0x0f in every byte. */
@inline export function groupI8Of(w: usize, x0: v128, x1: v128, m: v128): v128 {
  if (ASC_FEATURE_RELAXED_SIMD) {
    const v = v128.load(w);
    return nibbleDotOf(v128.and(v, m), v128.and(i16x8.shr_u(v, 4), m), x0, x1);
  } else {
    unreachable();
    return i32x4.splat(0);
  }
}

/**
 * sum over 32 products of nibbles (lo, hi: 0..15 per byte, a valid 7-bit operand) and int8 activations
 * at x, as i32x4 lanes. Node 24's V8 lowers i32x4.relaxed_dot_i8x16_i7x16_add_s to one vpdpbusd on CPUs
 * with AVX-VNNI (this Xeon): q4 decode streamed 13-15 GB/s with it against 12-14 with the i16x8 form and
 * a widening add (bench/RESULTS.md). Node 22's V8, and CPUs without AVX-VNNI (AMD Zen 4), get five
 * instructions instead, where the i16x8 form was the faster one.
 */
@inline export function nibbleDot(lo: v128, hi: v128, x: usize): v128 {
  return nibbleDotOf(lo, hi, v128.load(x), v128.load(x, 16));
}

@inline function nibbleDotOf(lo: v128, hi: v128, x0: v128, x1: v128): v128 {
  if (ASC_FEATURE_RELAXED_SIMD) {
    return i32x4.relaxed_dot_i8x16_i7x16_add_s(x1, hi, i32x4.relaxed_dot_i8x16_i7x16_add_s(x0, lo, i32x4.splat(0)));
  } else {
    unreachable();
    return i32x4.splat(0);
  }
}

/** Activation bytes per group in this build's q4 layout. */
export const Q4_GROUP_BYTES: i32 = ASC_FEATURE_RELAXED_SIMD ? 32 : 64;

// ---- decode: one token, rows from four pages at once (see q8DecodeRows) ----

/** One group of one row against its activations, already loaded (x2, x3 unused by the relaxed layout). */
@inline function groupOf(w: usize, x0: v128, x1: v128, x2: v128, x3: v128, m0: v128, m1: v128, m2: v128): v128 {
  return ASC_FEATURE_RELAXED_SIMD ? groupI8Of(w, x0, x1, m0) : groupI16Of(w, x0, x1, x2, x3, m0, m1, m2);
}

/** Where group k of the four whose activations start at px begins. */
@inline function actAt(px: usize, k: i32): usize {
  return px + <usize>(k * Q4_GROUP_BYTES);
}

/**
 * The integer sums (before corrections) of four groups of two rows (weights at wa and wb, activations
 * at px), each row's four group sums in one vector, stored at fence + slot and fence + slot + 16.
 */
@inline function pairSums(wa: usize, wb: usize, px: usize, m0: v128, m1: v128, m2: v128, fence: usize, slot: usize): void {
  let p = actAt(px, 0);
  let x0 = v128.load(p);
  let x1 = v128.load(p, 16);
  let x2 = ASC_FEATURE_RELAXED_SIMD ? x0 : v128.load(p, 32);
  let x3 = ASC_FEATURE_RELAXED_SIMD ? x1 : v128.load(p, 48);
  const a0 = groupOf(wa, x0, x1, x2, x3, m0, m1, m2);
  v128.store(fence, a0);
  const b0 = groupOf(wb, x0, x1, x2, x3, m0, m1, m2);
  v128.store(fence, b0, 16);
  p = actAt(px, 1);
  x0 = v128.load(p);
  x1 = v128.load(p, 16);
  x2 = ASC_FEATURE_RELAXED_SIMD ? x0 : v128.load(p, 32);
  x3 = ASC_FEATURE_RELAXED_SIMD ? x1 : v128.load(p, 48);
  const a1 = groupOf(wa + 16, x0, x1, x2, x3, m0, m1, m2);
  v128.store(fence, a1, 32);
  const b1 = groupOf(wb + 16, x0, x1, x2, x3, m0, m1, m2);
  v128.store(fence, b1, 48);
  const ua = tsumHalf(a0, a1);
  const ub = tsumHalf(b0, b1);
  p = actAt(px, 2);
  x0 = v128.load(p);
  x1 = v128.load(p, 16);
  x2 = ASC_FEATURE_RELAXED_SIMD ? x0 : v128.load(p, 32);
  x3 = ASC_FEATURE_RELAXED_SIMD ? x1 : v128.load(p, 48);
  const a2 = groupOf(wa + 32, x0, x1, x2, x3, m0, m1, m2);
  v128.store(fence, a2, 64);
  const b2 = groupOf(wb + 32, x0, x1, x2, x3, m0, m1, m2);
  v128.store(fence, b2, 80);
  p = actAt(px, 3);
  x0 = v128.load(p);
  x1 = v128.load(p, 16);
  x2 = ASC_FEATURE_RELAXED_SIMD ? x0 : v128.load(p, 32);
  x3 = ASC_FEATURE_RELAXED_SIMD ? x1 : v128.load(p, 48);
  const a3 = groupOf(wa + 48, x0, x1, x2, x3, m0, m1, m2);
  v128.store(fence, a3, 96);
  const b3 = groupOf(wb + 48, x0, x1, x2, x3, m0, m1, m2);
  v128.store(fence + slot, tsumJoin(ua, tsumHalf(a2, a3)));
  v128.store(fence + slot, tsumJoin(ub, tsumHalf(b2, b3)), 16);
}

@inline function scaled(acc: v128, sums: usize, corr: v128, ws: usize, sx: v128): v128 {
  const S = i32x4.add(v128.load(sums), corr);
  return f32x4.add(acc, f32x4.mul(f32x4.convert_i32x4_s(S), f32x4.mul(v128.load(ws), sx)));
}

/**
 * Rows r, r + step, r + 2 step, r + 3 step (count 4), r and r + step (count 2) or r alone (count 1,
 * step 0) of one panel against one token, written or added to out; every row with the arithmetic of q4Tile for one token.
 * Same reasons and measurements as q8DecodeRows.
 */
function q4DecodeRows(
  w: usize, ws: usize, rowBytes: usize, gp: i32, x: usize, xs: usize, xc: usize, out: usize, r: i32, step: i32, count: i32,
  first: bool, fence: usize, m0: v128, m1: v128, m2: v128,
): void {
  const dw = <usize>step * rowBytes;
  const ds = <usize>(step * gp) << 2;
  const w0 = w + <usize>r * rowBytes;
  const s0 = ws + (<usize>(r * gp) << 2);
  let acc0 = f32x4.splat(0);
  let acc1 = acc0;
  let acc2 = acc0;
  let acc3 = acc0;
  for (let g = 0; g < gp; g += 4) {
    const o = <usize>g << 4;
    const px = x + <usize>(g * Q4_GROUP_BYTES);
    const so = <usize>g << 2;
    const sx = v128.load(xs + so);
    const corr = v128.load(xc + so);
    pairSums(w0 + o, w0 + dw + o, px, m0, m1, m2, fence, 128);
    acc0 = scaled(acc0, fence + 128, corr, s0 + so, sx);
    acc1 = scaled(acc1, fence + 144, corr, s0 + ds + so, sx);
    if (count == 4) {
      pairSums(w0 + 2 * dw + o, w0 + 3 * dw + o, px, m0, m1, m2, fence, 160);
      acc2 = scaled(acc2, fence + 160, corr, s0 + 2 * ds + so, sx);
      acc3 = scaled(acc3, fence + 176, corr, s0 + 3 * ds + so, sx);
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

// ---- several tokens: one row against a tile of up to TILE_MAX tokens (see q8Tile: the same float
// steps per token as the one-token path, so results are bit-identical to it; the same tile buffer) ----

/** The integer sums of one group for one token: nibble vectors n0..n3 already split (plain) or lo/hi in n0, n1 (relaxed). */
@inline export function tokenSum(n0: v128, n1: v128, n2: v128, n3: v128, x: usize): v128 {
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
 * Group k (0..3, a constant after inlining) of a step of four for every token of the tile (see q8.ts
 * groupSums), the group's nibbles at pw split once; group 3 adds the tokens' corrections (at xc) and
 * their scaled sums into their accumulators.
 */
@inline function groupSums(
  pw: usize, m0: v128, m1: v128, m2: v128, x: usize, xStride: usize, buf: usize, end: usize, k: i32,
  sw: v128, xs: usize, xc: usize, sStride: usize,
): void {
  const v = v128.load(pw);
  let n0: v128, n1: v128, n2: v128, n3: v128;
  if (ASC_FEATURE_RELAXED_SIMD) {
    n0 = v128.and(v, m0);
    n1 = v128.and(i16x8.shr_u(v, 4), m0);
    n2 = n0;
    n3 = n1;
  } else {
    n0 = v128.and(v, m0);
    n1 = v128.and(v, m1);
    n2 = v128.and(v, m2);
    n3 = i16x8.shr_u(v, 12);
  }
  let p = x;
  let o: usize = 0;
  for (let s = buf; s < end; s += 64) {
    const d = tokenSum(n0, n1, n2, n3, p);
    if (k == 1) {
      v128.store(s, tsumHalf(v128.load(s), d), 16);
    } else if (k == 3) {
      const S = i32x4.add(tsumJoin(v128.load(s, 16), tsumHalf(v128.load(s), d)), v128.load(xc + o));
      v128.store(s, f32x4.add(v128.load(s, 32), f32x4.mul(f32x4.convert_i32x4_s(S), f32x4.mul(sw, v128.load(xs + o)))), 32);
      o += sStride;
    } else {
      v128.store(s, d);
    }
    p += xStride;
  }
}

/** One row of one panel against n <= TILE_MAX tokens (see q8Tile); xc: the tokens' corrections, sStride apart like their scales. */
function q4Tile(
  w: usize, ws: usize, x: usize, xStride: usize, xs: usize, xc: usize, sStride: usize, gp: i32, n: i32,
  out: usize, outStride: usize, first: bool, buf: usize, m0: v128, m1: v128, m2: v128,
): void {
  const end = buf + (<usize>n << 6);
  for (let s = buf; s < end; s += 64) v128.store(s, f32x4.splat(0), 32);
  const none = f32x4.splat(0);
  for (let g = 0; g < gp; g += 4) {
    const pw = w + (<usize>g << 4);
    const px = x + <usize>(g * Q4_GROUP_BYTES);
    groupSums(pw, m0, m1, m2, px, xStride, buf, end, 0, none, 0, 0, 0);
    groupSums(pw + 16, m0, m1, m2, px + Q4_GROUP_BYTES, xStride, buf, end, 1, none, 0, 0, 0);
    groupSums(pw + 32, m0, m1, m2, px + 2 * Q4_GROUP_BYTES, xStride, buf, end, 2, none, 0, 0, 0);
    const so = <usize>g << 2;
    groupSums(pw + 48, m0, m1, m2, px + 3 * Q4_GROUP_BYTES, xStride, buf, end, 3, v128.load(ws + so), xs + so, xc + so, sStride);
  }
  let o = out;
  for (let s = buf; s < end; s += 64) {
    put(o, first, hsum(v128.load(s, 32)));
    o += outStride;
  }
}

/** Rows [begin, end) of out[t, r] for tc tokens; activations xRow bytes per token, scales and
 * corrections G per token (transposed by 4-token tiles at xsT, xcT for more than TILE_MAX: q4-prefill.ts);
 * fence: the thread's scratch slot, its tile buffer at TILE_BUFFER. */
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
  // The relaxed build splits bytes into nibbles with 0x0f in every byte; the plain one masks u16 lanes.
  v128.store(slot, ASC_FEATURE_RELAXED_SIMD ? i8x16.splat(0x0f) : i16x8.splat(0x000f));
  v128.store(slot, i16x8.splat(0x00f0), 16);
  v128.store(slot, i16x8.splat(0x0f00), 32);
  const m0 = v128.load(slot);
  const m1 = v128.load(slot, 16);
  const m2 = v128.load(slot, 32);
  const buf = fence + TILE_BUFFER;
  let sink = 0;
  for (let c0 = 0; c0 < cp; c0 += PANEL) {
    const pw = min(PANEL, cp - c0);
    const gp = pw >> 5;
    const g0 = c0 >> 5;
    const rowBytes = <usize>(pw >> 1);
    const base = w + panelOffset(FMT_Q4, rows, c0);
    const scales = base + <usize>rows * rowBytes;
    const first = c0 == 0;
    const ahead = <i32>(AHEAD_BYTES / rowBytes);
    const xp = x + <usize>g0 * <usize>Q4_GROUP_BYTES;
    const xsp = xs + (<usize>g0 << 2);
    const xcp = xc + (<usize>g0 << 2);
    if (tc == 1) {
      const q = (end - begin) >> 2;
      for (let r = begin; r < begin + q; r++) q4DecodeRows(base, scales, rowBytes, gp, xp, xsp, xcp, out, r, q, 4, first, fence, m0, m1, m2);
      for (let r = begin + 4 * q; r < end; r += 2) {
        const two = r + 1 < end;
        q4DecodeRows(base, scales, rowBytes, gp, xp, xsp, xcp, out, r, two ? 1 : 0, two ? 2 : 1, first, fence, m0, m1, m2);
      }
      continue;
    }
    if (tc <= TILE_MAX) {
      // One tile: the rows in decode's order, a quarter of the range apart (four streams in four pages);
      // each row's cache lines read a page ahead.
      const q = (end - begin + 3) >> 2;
      for (let i = 0; i < q; i++) {
        for (let r = begin + i; r < end; r += q) {
          const wr = base + <usize>r * rowBytes;
          if (r + ahead < end) sink ^= touch(wr + AHEAD_BYTES, rowBytes);
          q4Tile(wr, scales + (<usize>(r * gp) << 2), xp, xRow, xsp, xcp, sRow, gp, tc, out + (<usize>r << 2), outStride, first, buf, m0, m1, m2);
        }
      }
      continue;
    }
    q4PrefillRows(out, base, scales, rowBytes, gp, g0, G, xp, xsp, xcp, xsT, xcT, rows, tc, xRow, begin, end, first, fence);
  }
  store<i32>(fence, sink, 240);
}
