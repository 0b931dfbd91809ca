// Quantization: weights at load (f32 or bf16 rows -> q8 / q4 column panels), fp8 repacking, the
// checkpoint layout <-> panel layout copies, and the per-call activation layouts the kernels read.
// Layouts are documented in docs/quantized-format.md; the rounding is round-half-even on f32 values,
// which test/quant-reference.ts reproduces exactly.
//
// A group of 32 values v gets
//   q8: d = max|v| / 127, q = nearest(v * (127 / max|v|))                  (q in -127..127)
//   q4: m = the value of largest magnitude (its sign kept), d = m / -8,
//       q = clamp(nearest(v * (1 / d)), -8, 7), stored as n = q + 8       (ggml's Q4_0 rule)
// and d = 0, q = 0 when the group is all zeros. A row whose length is not a multiple of 32 ends in a
// partial group: its scale comes from the values that exist, the rest are zeros. Rows are padded with
// zero groups to a multiple of 128 columns.
import { FMT_BF16, FMT_F32, FMT_FP8, FMT_Q4, FMT_Q8, QUANT_GROUP } from '../constants';
import { PANEL, bf16At, paddedCols, panelOffset, panelRowBytes, panelRowScales } from './format';
import { argI, argP, scratchPtr, setI, setP } from '../board';

// ---------------------------------------------------------------- scratch

/** Per-thread bytes at the start of the scratch (set_scratch, board.ts), for up to MAX_THREADS threads:
 * the fence slots (see q8.ts) and a 128-byte group buffer at +64 in the first 256 bytes, then the
 * multi-token tile buffer (format.ts TILE_BUFFER, TILE_MAX x 64 bytes). */
export const THREAD_SCRATCH: i32 = 1024;

/** A thread's slot of the scratch. */
@inline export function threadScratch(tid: i32): usize {
  return scratchPtr() + <usize>tid * <usize>THREAD_SCRATCH;
}

// ---------------------------------------------------------------- weights

/** Address of row r's group g (weights) and of its scale in a q8 / q4 blob of `rows` rows and cp columns. */
@inline function groupAt(fmt: i32, blob: usize, rows: i32, cp: i32, r: i32, g: i32): usize {
  const c0 = (g << 5) & ~(PANEL - 1);
  const pw = min(PANEL, cp - c0);
  const inPanel = (g << 5) - c0;
  const base = blob + panelOffset(fmt, rows, c0);
  const rowBytes = panelRowBytes(fmt, pw);
  return base + <usize>r * rowBytes + panelRowBytes(fmt, inPanel);
}

@inline function scaleAt(fmt: i32, blob: usize, rows: i32, cp: i32, r: i32, g: i32): usize {
  const c0 = (g << 5) & ~(PANEL - 1);
  const pw = min(PANEL, cp - c0);
  const base = blob + panelOffset(fmt, rows, c0);
  const scales = base + <usize>rows * panelRowBytes(fmt, pw);
  return scales + (<usize>(r * panelRowScales(fmt, pw) + (((g << 5) - c0) >> 5)) << 2);
}

@inline function srcAt(srcFmt: i32, row: usize, i: i32): f32 {
  return srcFmt == FMT_BF16 ? bf16At(row + (<usize>i << 1)) : load<f32>(row + (<usize>i << 2));
}

/** Four f32 of a source row from column i (f32 or bf16 source). */
@inline function src4(srcFmt: i32, row: usize, i: i32): v128 {
  if (srcFmt == FMT_BF16) return i32x4.shl(i32x4.extend_low_i16x8_u(v128.load64_zero(row + (<usize>i << 1))), 16);
  return v128.load(row + (<usize>i << 2));
}

/** Quantizes one group (n <= 32 values at column c of a source row) into 32 i32 at tmp; returns d. */
function quantGroup(fmt: i32, srcFmt: i32, row: usize, c: i32, n: i32, tmp: usize): f32 {
  if (n == QUANT_GROUP) {
    for (let k = 0; k < 32; k += 4) v128.store(tmp + (<usize>k << 2), src4(srcFmt, row, c + k));
  } else {
    for (let k = 0; k < 32; k++) store<f32>(tmp + (<usize>k << 2), k < n ? srcAt(srcFmt, row, c + k) : 0);
  }
  let mx = f32x4.splat(0);
  let mn = mx;
  for (let k = 0; k < 32; k += 4) {
    const v = v128.load(tmp + (<usize>k << 2));
    mx = f32x4.max(mx, v);
    mn = f32x4.min(mn, v);
  }
  const hi = max(max(f32x4.extract_lane(mx, 0), f32x4.extract_lane(mx, 1)), max(f32x4.extract_lane(mx, 2), f32x4.extract_lane(mx, 3)));
  const lo = min(min(f32x4.extract_lane(mn, 0), f32x4.extract_lane(mn, 1)), min(f32x4.extract_lane(mn, 2), f32x4.extract_lane(mn, 3)));
  let d: f32 = 0;
  let id: f32 = 0;
  if (fmt == FMT_Q8) {
    const amax = max(hi, -lo);
    if (amax > 0) {
      d = amax / 127;
      id = <f32>127 / amax;
    }
  } else {
    const m = -lo > hi ? lo : hi;
    if (m != 0) {
      d = m / -8;
      id = <f32>1 / d;
    }
  }
  const vid = f32x4.splat(id);
  for (let k = 0; k < 32; k += 4) {
    const p = tmp + (<usize>k << 2);
    let q = i32x4.trunc_sat_f32x4_s(f32x4.nearest(f32x4.mul(v128.load(p), vid)));
    if (fmt == FMT_Q4) q = i32x4.add(i32x4.min_s(i32x4.max_s(q, i32x4.splat(-8)), i32x4.splat(7)), i32x4.splat(8));
    v128.store(p, q);
  }
  return d;
}

/** Stores 32 i32 (tmp) as a q8 group (32 bytes) or a q4 group (16 bytes, nibble k of u16 lane l = n[8k + l]). */
function storeGroup(fmt: i32, dst: usize, tmp: usize): void {
  if (fmt == FMT_Q8) {
    for (let k = 0; k < 32; k += 16) {
      const p = tmp + (<usize>k << 2);
      const a = i16x8.narrow_i32x4_s(v128.load(p), v128.load(p, 16));
      const b = i16x8.narrow_i32x4_s(v128.load(p, 32), v128.load(p, 48));
      v128.store(dst + <usize>k, i8x16.narrow_i16x8_s(a, b));
    }
    return;
  }
  // lanes 0..3 and 4..7: n[l] | n[8 + l] << 4 | n[16 + l] << 8 | n[24 + l] << 12
  const lo = v128.or(
    v128.or(v128.load(tmp), i32x4.shl(v128.load(tmp, 32), 4)),
    v128.or(i32x4.shl(v128.load(tmp, 64), 8), i32x4.shl(v128.load(tmp, 96), 12)),
  );
  const hi = v128.or(
    v128.or(v128.load(tmp, 16), i32x4.shl(v128.load(tmp, 48), 4)),
    v128.or(i32x4.shl(v128.load(tmp, 80), 8), i32x4.shl(v128.load(tmp, 112), 12)),
  );
  v128.store(dst, i16x8.narrow_i32x4_u(lo, hi));
}

/** Writes quantize_rows's arguments (steps.ts) on the job board; returns the step's item count (rows). */
@inline export function stageQuantize(fmt: i32, blob: usize, totalRows: i32, srcFmt: i32, src: usize, rows: i32, cols: i32, rowStart: i32): i32 {
  setI(0, fmt);
  setP(1, blob);
  setI(2, totalRows);
  setI(3, srcFmt);
  setP(4, src);
  setI(5, cols);
  setI(6, rowStart);
  return rows;
}

export function quantizeTask(begin: i32, end: i32, tid: i32): void {
  const fmt = argI(0);
  const blob = argP(1);
  const totalRows = argI(2);
  const srcFmt = argI(3);
  const src = argP(4);
  const cols = argI(5);
  const rowStart = argI(6);
  const tmp = threadScratch(tid) + 64;
  const cp = paddedCols(cols);
  const srcRow = <usize>(srcFmt == FMT_F32 ? cols << 2 : cols << 1);
  const G = cp >> 5;
  for (let i = begin; i < end; i++) {
    const r = rowStart + i;
    const row = src + <usize>i * srcRow;
    for (let g = 0; g < G; g++) {
      const c = g << 5;
      const n = min(QUANT_GROUP, cols - c);
      const d = n > 0 ? quantGroup(fmt, srcFmt, row, c, n, tmp) : zeroGroup(fmt, tmp);
      storeGroup(fmt, groupAt(fmt, blob, totalRows, cp, r, g), tmp);
      store<f32>(scaleAt(fmt, blob, totalRows, cp, r, g), d);
    }
  }
}

function zeroGroup(fmt: i32, tmp: usize): f32 {
  const v = i32x4.splat(fmt == FMT_Q4 ? 8 : 0);
  for (let k = 0; k < 32; k += 4) v128.store(tmp + (<usize>k << 2), v);
  return 0;
}

// ------------------------------------------------ checkpoint layout <-> panels (no re-quantization)

/**
 * Copies a quantized tensor in the checkpoint layout (docs/quantized-format.md: weights [rows,
 * ceil(cols/32)*32] bytes for q8 or half that for q4, row-major; scales [rows, ceil(cols/32)] f32) into
 * rows [rowStart, rowStart + rows) of a blob of totalRows rows; padding groups get zero weights.
 */
export function q_pack(fmt: i32, blob: usize, totalRows: i32, q: usize, s: usize, rows: i32, cols: i32, rowStart: i32): void {
  const cp = paddedCols(cols);
  const gf = (cols + QUANT_GROUP - 1) >> 5;
  const groupBytes = fmt == FMT_Q4 ? 16 : 32;
  const fill: u8 = fmt == FMT_Q4 ? 0x88 : 0;
  for (let i = 0; i < rows; i++) {
    const r = rowStart + i;
    for (let g = 0; g < cp >> 5; g++) {
      const dst = groupAt(fmt, blob, totalRows, cp, r, g);
      const sd = scaleAt(fmt, blob, totalRows, cp, r, g);
      if (g < gf) {
        memory.copy(dst, q + (<usize>(i * gf + g) * <usize>groupBytes), groupBytes);
        store<f32>(sd, load<f32>(s + (<usize>(i * gf + g) << 2)));
      } else {
        memory.fill(dst, fill, groupBytes);
        store<f32>(sd, 0);
      }
    }
  }
}

/** The inverse of q_pack: rows [rowStart, rowStart + rows) of the blob into the checkpoint layout. */
export function q_unpack(fmt: i32, blob: usize, totalRows: i32, q: usize, s: usize, rows: i32, cols: i32, rowStart: i32): void {
  const cp = paddedCols(cols);
  const gf = (cols + QUANT_GROUP - 1) >> 5;
  const groupBytes = fmt == FMT_Q4 ? 16 : 32;
  for (let i = 0; i < rows; i++) {
    const r = rowStart + i;
    for (let g = 0; g < gf; g++) {
      memory.copy(q + (<usize>(i * gf + g) * <usize>groupBytes), groupAt(fmt, blob, totalRows, cp, r, g), groupBytes);
      store<f32>(s + (<usize>(i * gf + g) << 2), load<f32>(scaleAt(fmt, blob, totalRows, cp, r, g)));
    }
  }
}

/**
 * Copies an e4m3 tensor [rows, cols] with its scale_inv [ceil(rows / blockRows), ceil(cols / 128)]
 * into rows [rowStart, rowStart + rows) of an fp8 blob: each row gets its block row's scales; columns
 * are padded with +0 to a multiple of 128.
 */
export function fp8_pack(blob: usize, totalRows: i32, src: usize, scaleInv: usize, rows: i32, cols: i32, rowStart: i32, blockRows: i32): void {
  const cp = paddedCols(cols);
  const scaleCols = (cols + 127) >> 7;
  for (let c0 = 0; c0 < cp; c0 += PANEL) {
    const pw = min(PANEL, cp - c0);
    const nb = pw >> 7;
    const base = blob + panelOffset(FMT_FP8, totalRows, c0);
    const scales = base + <usize>totalRows * <usize>pw;
    const n = max(0, min(pw, cols - c0));
    for (let i = 0; i < rows; i++) {
      const r = rowStart + i;
      const dst = base + <usize>r * <usize>pw;
      memory.copy(dst, src + <usize>i * <usize>cols + <usize>c0, n);
      memory.fill(dst + <usize>n, 0, pw - n);
      const srow = scaleInv + (<usize>((i / blockRows) * scaleCols) << 2);
      for (let b = 0; b < nb; b++) {
        const sc = (c0 >> 7) + b;
        store<f32>(scales + (<usize>(r * nb + b) << 2), sc < scaleCols ? load<f32>(srow + (<usize>sc << 2)) : 0);
      }
    }
  }
}

// ------------------------------------------------------------ activations

/** Activation layouts (bytes per group of 32 in brackets). */
export const ACT_Q8_I16: i32 = 0; // [64] i16, per 16 values [8 evens | 8 odds]; scale / 256
export const ACT_Q8_SIGNED: i32 = 1; // [64] |q| bytes then sign masks (0 / 0xff); scale (relaxed build)
export const ACT_Q4_I16: i32 = 2; // [64] i16 [q0..7 * 256 | q8..15 * 16 | q16..23 | q24..31 * 256]; scale / 256
export const ACT_Q4_I8: i32 = 3; // [32] int8 [q0 q16 q1 q17 .. q7 q23 | q8 q24 .. q15 q31]; scale (relaxed build)
export const ACT_F32: i32 = 4; // [128] f32 * 2^64, per 16 values [0 2 4 6 | 8 10 12 14 | 1 3 5 7 | 9 11 13 15]
export const ACT_Q8_I8: i32 = 5; // [32] int8 q; scale (relaxed build, prefill: more than TILE_MAX tokens)
export const ACT_Q8_PN: i32 = 6; // [64] int8 max(q, 0) then max(-q, 0); scale (relaxed build, 2..TILE_MAX tokens)

export function actGroupBytes(layout: i32): i32 {
  return layout == ACT_F32 ? 128 : layout == ACT_Q4_I8 || layout == ACT_Q8_I8 ? 32 : 64;
}

const TWO_64: f32 = 18446744073709551616.0;

/** Quantizes one token's activations x[cols] into the layout; writes G scales (and, for q4, G
 * corrections -8 * sum q, times 256 for the i16 layout). tmp: 128 bytes. */
export function quantizeActivations(layout: i32, x: usize, cols: i32, cp: i32, dst: usize, scales: usize, corr: usize, tmp: usize): void {
  const G = cp >> 5;
  const gb = <usize>actGroupBytes(layout);
  for (let g = 0; g < G; g++) {
    const c = g << 5;
    const n = min(QUANT_GROUP, cols - c);
    let p = x + (<usize>c << 2);
    if (n < QUANT_GROUP) {
      for (let k = 0; k < 32; k++) store<f32>(tmp + (<usize>k << 2), k < n ? load<f32>(p + (<usize>k << 2)) : 0);
      p = tmp;
    }
    const out = dst + <usize>g * gb;
    if (layout == ACT_F32) {
      const k64 = f32x4.splat(TWO_64);
      for (let k = 0; k < 32; k += 16) {
        const q = p + (<usize>k << 2);
        const a = f32x4.mul(v128.load(q), k64);
        const b = f32x4.mul(v128.load(q, 16), k64);
        const c2 = f32x4.mul(v128.load(q, 32), k64);
        const d = f32x4.mul(v128.load(q, 48), k64);
        const o = out + (<usize>k << 2);
        v128.store(o, i32x4.shuffle(a, b, 0, 2, 4, 6));
        v128.store(o, i32x4.shuffle(c2, d, 0, 2, 4, 6), 16);
        v128.store(o, i32x4.shuffle(a, b, 1, 3, 5, 7), 32);
        v128.store(o, i32x4.shuffle(c2, d, 1, 3, 5, 7), 48);
      }
      continue;
    }
    // q = nearest(x * 127 / amax): eight i32x4 q0..q7 (values 4k .. 4k + 3)
    let amax = f32x4.splat(0);
    for (let k = 0; k < 32; k += 4) amax = f32x4.max(amax, f32x4.abs(v128.load(p + (<usize>k << 2))));
    const m = max(max(f32x4.extract_lane(amax, 0), f32x4.extract_lane(amax, 1)), max(f32x4.extract_lane(amax, 2), f32x4.extract_lane(amax, 3)));
    const d: f32 = m > 0 ? m / 127 : 0;
    const vid = f32x4.splat(m > 0 ? <f32>127 / m : 0);
    const q0 = i32x4.trunc_sat_f32x4_s(f32x4.nearest(f32x4.mul(v128.load(p), vid)));
    const q1 = i32x4.trunc_sat_f32x4_s(f32x4.nearest(f32x4.mul(v128.load(p, 16), vid)));
    const q2 = i32x4.trunc_sat_f32x4_s(f32x4.nearest(f32x4.mul(v128.load(p, 32), vid)));
    const q3 = i32x4.trunc_sat_f32x4_s(f32x4.nearest(f32x4.mul(v128.load(p, 48), vid)));
    const q4 = i32x4.trunc_sat_f32x4_s(f32x4.nearest(f32x4.mul(v128.load(p, 64), vid)));
    const q5 = i32x4.trunc_sat_f32x4_s(f32x4.nearest(f32x4.mul(v128.load(p, 80), vid)));
    const q6 = i32x4.trunc_sat_f32x4_s(f32x4.nearest(f32x4.mul(v128.load(p, 96), vid)));
    const q7 = i32x4.trunc_sat_f32x4_s(f32x4.nearest(f32x4.mul(v128.load(p, 112), vid)));
    const h0 = i16x8.narrow_i32x4_s(q0, q1); // q0..7
    const h1 = i16x8.narrow_i32x4_s(q2, q3); // q8..15
    const h2 = i16x8.narrow_i32x4_s(q4, q5); // q16..23
    const h3 = i16x8.narrow_i32x4_s(q6, q7); // q24..31
    const sc = g << 2;
    if (layout == ACT_Q8_I16) {
      v128.store(out, i8x16.shuffle(h0, h1, 0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29));
      v128.store(out, i8x16.shuffle(h0, h1, 2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31), 16);
      v128.store(out, i8x16.shuffle(h2, h3, 0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29), 32);
      v128.store(out, i8x16.shuffle(h2, h3, 2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31), 48);
      store<f32>(scales + <usize>sc, d * (<f32>1 / 256));
      continue;
    }
    if (layout == ACT_Q8_I8) {
      v128.store(out, i8x16.narrow_i16x8_s(h0, h1));
      v128.store(out, i8x16.narrow_i16x8_s(h2, h3), 16);
      store<f32>(scales + <usize>sc, d);
      continue;
    }
    if (layout == ACT_Q8_PN) {
      const b0 = i8x16.narrow_i16x8_s(h0, h1);
      const b1 = i8x16.narrow_i16x8_s(h2, h3);
      const p0 = i8x16.max_s(b0, i8x16.splat(0));
      const p1 = i8x16.max_s(b1, i8x16.splat(0));
      v128.store(out, p0);
      v128.store(out, p1, 16);
      v128.store(out, i8x16.sub(p0, b0), 32);
      v128.store(out, i8x16.sub(p1, b1), 48);
      store<f32>(scales + <usize>sc, d);
      continue;
    }
    if (layout == ACT_Q8_SIGNED) {
      const b0 = i8x16.narrow_i16x8_s(h0, h1);
      const b1 = i8x16.narrow_i16x8_s(h2, h3);
      v128.store(out, i8x16.abs(b0));
      v128.store(out, i8x16.abs(b1), 16);
      v128.store(out, i8x16.lt_s(b0, i8x16.splat(0)), 32);
      v128.store(out, i8x16.lt_s(b1, i8x16.splat(0)), 48);
      store<f32>(scales + <usize>sc, d);
      continue;
    }
    // q4 layouts: the correction -8 * sum q
    const s4 = i32x4.add(i32x4.add(i32x4.add(q0, q1), i32x4.add(q2, q3)), i32x4.add(i32x4.add(q4, q5), i32x4.add(q6, q7)));
    const sum = i32x4.extract_lane(s4, 0) + i32x4.extract_lane(s4, 1) + i32x4.extract_lane(s4, 2) + i32x4.extract_lane(s4, 3);
    if (layout == ACT_Q4_I16) {
      v128.store(out, i16x8.shl(h0, 8));
      v128.store(out, i16x8.shl(h1, 4), 16);
      v128.store(out, h2, 32);
      v128.store(out, i16x8.shl(h3, 8), 48);
      store<f32>(scales + <usize>sc, d * (<f32>1 / 256));
      store<i32>(corr + <usize>sc, -2048 * sum);
    } else {
      const b0 = i8x16.narrow_i16x8_s(h0, h1); // q0..15
      const b1 = i8x16.narrow_i16x8_s(h2, h3); // q16..31
      v128.store(out, i8x16.shuffle(b0, b1, 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23));
      v128.store(out, i8x16.shuffle(b0, b1, 8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31), 16);
      store<f32>(scales + <usize>sc, d);
      store<i32>(corr + <usize>sc, -8 * sum);
    }
  }
}
