// Grouped matmul: several matrices of one format, each against its own (or a shared) input of a few
// tokens, in ONE parallel step (decode's per-head and per-expert matvecs; a batched step's or a verify's
// few tokens per expert or head). The matrices are listed in a descriptor table in wasm memory
// (grouped_entries writes one from a matrix table the host made at load), GROUPED_DESC_BYTES per entry, as i32:
//   [0] out [T, rows]  [1] w  [2] x (f32 input [T, cols])  [3] rows  [4] cols  [5] T, the entry's tokens
//   [6] written here: the quantized x (its scales and corrections after it)
// The step's items are all rows of all entries, in table order, so every thread streams one contiguous
// range of weights and the split is balanced whatever the matrices' sizes; each input is quantized
// once (consecutive entries with the same x, cols and T share it). Every row is computed by the same
// row code as matmul() with the entry's tokens, so the outputs are bit-identical to one matmul per entry
// (f32 and bf16: to one one-token matmul per token; q8 and q4: both, q8.ts).
import { FMT_FP8, FMT_Q4, FMT_Q8, GROUPED_DESC_BYTES, MATRIX_DESC_BYTES, MAX_THREADS } from '../constants';
import { TILE_MAX, dotRow, isQuantized, paddedCols, rowBytes } from './format';
import { argI, argP, scratchBytes, scratchPtr, setI, setP } from '../board';
import {
  ACT_F32, ACT_Q4_I16, ACT_Q4_I8, ACT_Q8_I16, ACT_Q8_PN, ACT_Q8_SIGNED, THREAD_SCRATCH, actGroupBytes, quantizeActivations, threadScratch,
} from './quantize';
import { q8Rows } from './q8';
import { q4Rows } from './q4';
import { fp8Rows } from './fp8';

/**
 * Writes table entries at desc for matrices of a matrix table (MATRIX_DESC_BYTES each, i32 [ptr, rows,
 * cols, fmt], written by the host once at load) and returns how many it wrote: with starts = 0 one for
 * each of the n matrices; else one for each matrix e that has pairs in moe_group's expert lists
 * (starts[e + 1] > starts[e]), in order. Entry i computes out + i * outStride = W x_i, x_i = x + i * xStride
 * (strides in floats; 0 gives every entry the same input), one token each.
 */
export function grouped_entries(desc: usize, mats: usize, n: i32, starts: usize, out: usize, outStride: i32, x: usize, xStride: i32): i32 {
  let i = 0;
  for (let e = 0; e < n; e++) {
    if (starts != 0 && load<i32>(starts + (<usize>e << 2), 4) == load<i32>(starts + (<usize>e << 2))) continue;
    const m = mats + <usize>e * MATRIX_DESC_BYTES;
    const d = desc + <usize>i * GROUPED_DESC_BYTES;
    store<u32>(d, <u32>(out + (<usize>i * <usize>outStride << 2)));
    store<u32>(d, load<u32>(m), 4);
    store<u32>(d, <u32>(x + (<usize>i * <usize>xStride << 2)), 8);
    store<i32>(d, load<i32>(m, 4), 12);
    store<i32>(d, load<i32>(m, 8), 16);
    store<i32>(d, 1, 20);
    i++;
  }
  return i;
}

/** The activation layout the entry's tiles read (matmul.ts's for one token and for up to TILE_MAX). */
@inline function layoutFor(fmt: i32, tokens: i32): i32 {
  if (fmt == FMT_Q4) return ASC_FEATURE_RELAXED_SIMD ? ACT_Q4_I8 : ACT_Q4_I16;
  if (fmt == FMT_Q8) return ASC_FEATURE_RELAXED_SIMD ? (tokens == 1 ? ACT_Q8_SIGNED : ACT_Q8_PN) : ACT_Q8_I16;
  return ACT_F32;
}

/** An entry's quantized inputs: T token rows of G groups, then T x G scales, then T x G corrections. */
@inline function scalesAt(xq: usize, tokens: i32, G: i32, layout: i32): usize {
  return xq + <usize>(tokens * G) * <usize>actGroupBytes(layout);
}

/** Quantizes matmul_grouped's inputs (steps.ts) into the scratch and writes its arguments on the job
 * board; returns the step's item count (the rows of all entries). */
export function stageGrouped(fmt: i32, desc: usize, n: i32): i32 {
  let items = 0;
  for (let e = 0; e < n; e++) items += load<i32>(desc + <usize>e * GROUPED_DESC_BYTES, 12);
  if (isQuantized(fmt)) {
    const reserved = <usize>(MAX_THREADS * THREAD_SCRATCH);
    const base = scratchPtr();
    const bytes = scratchBytes();
    if (base == 0 || bytes < reserved) unreachable();
    const limit = base + bytes;
    let at = base + reserved;
    const tmp = threadScratch(0) + 64;
    for (let e = 0; e < n; e++) {
      const d = desc + <usize>e * GROUPED_DESC_BYTES;
      const x = <usize>load<u32>(d, 8);
      const cols = load<i32>(d, 16);
      const tokens = load<i32>(d, 20);
      const prev = d - GROUPED_DESC_BYTES;
      if (e > 0 && <usize>load<u32>(prev, 8) == x && load<i32>(prev, 16) == cols && load<i32>(prev, 20) == tokens) {
        store<u32>(d, load<u32>(prev, 24), 24);
        continue;
      }
      const layout = layoutFor(fmt, tokens);
      const cp = paddedCols(cols);
      const G = cp >> 5;
      const xq = at;
      const xs = scalesAt(xq, tokens, G, layout);
      const xc = xs + (<usize>(tokens * G) << 2);
      at = xc + (<usize>(tokens * G) << 2);
      if (at > limit) unreachable();
      const xRow = <usize>G * <usize>actGroupBytes(layout);
      for (let t = 0; t < tokens; t++) {
        const o = <usize>(t * G) << 2;
        quantizeActivations(layout, x + (<usize>(t * cols) << 2), cols, cp, xq + <usize>t * xRow, xs + o, xc + o, tmp);
      }
      store<u32>(d, <u32>xq, 24);
    }
  }
  setI(0, fmt);
  setP(1, desc);
  setI(2, n);
  return items;
}

export function groupedMatmulTask(begin: i32, end: i32, tid: i32): void {
  const fmt = argI(0);
  const desc = argP(1);
  const n = argI(2);
  const fence = threadScratch(tid);
  let first = 0;
  for (let e = 0; e < n && first < end; e++) {
    const d = desc + <usize>e * GROUPED_DESC_BYTES;
    const rows = load<i32>(d, 12);
    const lo = max(begin, first) - first;
    const hi = min(end, first + rows) - first;
    first += rows;
    if (lo >= hi) continue;
    const out = <usize>load<u32>(d);
    const w = <usize>load<u32>(d, 4);
    const cols = load<i32>(d, 16);
    const tokens = load<i32>(d, 20);
    if (!isQuantized(fmt)) {
      const x = <usize>load<u32>(d, 8);
      const stride = rowBytes(fmt, cols);
      for (let t = 0; t < tokens; t++) {
        const xt = x + (<usize>(t * cols) << 2);
        const ot = out + (<usize>(t * rows) << 2);
        for (let r = lo; r < hi; r++) store<f32>(ot + (<usize>r << 2), dotRow(fmt, w + <usize>r * stride, xt, cols));
      }
      continue;
    }
    const layout = layoutFor(fmt, tokens);
    const cp = paddedCols(cols);
    const G = cp >> 5;
    const xq = <usize>load<u32>(d, 24);
    const xs = scalesAt(xq, tokens, G, layout);
    const xc = xs + (<usize>(tokens * G) << 2);
    const xRow = <usize>G * <usize>actGroupBytes(layout);
    if (fmt == FMT_FP8) {
      fp8Rows(out, w, xq, rows, cp, tokens, xRow, lo, hi, fence);
      continue;
    }
    // q8 and q4 in tiles of at most TILE_MAX tokens (the few-token layout throughout; no tile of one
    // token after the first, whose layout would be decode's).
    for (let t = 0; t < tokens; ) {
      let n = min(TILE_MAX, tokens - t);
      if (tokens - t - n == 1) n--;
      const o = <usize>(t * G) << 2;
      const ot = out + (<usize>(t * rows) << 2);
      const xt = xq + <usize>t * xRow;
      if (fmt == FMT_Q8) q8Rows(ot, w, xt, xs + o, 0, rows, cp, n, xRow, lo, hi, fence);
      else q4Rows(ot, w, xt, xs + o, xc + o, 0, 0, rows, cp, n, xRow, lo, hi, fence);
      t += n;
    }
  }
}
