// Grouped matvec for decode: several matrices of one format, each against its own (or a shared)
// input vector, in ONE parallel step. The matrices are listed in a descriptor table in wasm memory
// (grouped_entries writes one from a matrix table the host made at load), GROUPED_DESC_BYTES per entry, as i32:
//   [0] out  [1] w  [2] x (f32 input)  [3] rows  [4] cols  [5..7] written here: quantized x, scales, corrections
// The step's items are all rows of all entries, in table order, so every thread streams one contiguous
// range of weights and the split is balanced whatever the matrices' sizes; each input is quantized
// once (consecutive entries with the same x and cols share it). Every row is computed by the same
// row code as matmul() with tokens = 1, so the outputs are bit-identical to one matmul per entry.
import { FMT_FP8, FMT_Q4, FMT_Q8, GROUPED_DESC_BYTES, MATRIX_DESC_BYTES, MAX_THREADS } from '../constants';
import { dotRow, isQuantized, paddedCols, rowBytes } from './format';
import { argI, argP, scratchBytes, scratchPtr, setI, setP } from '../board';
import {
  ACT_F32, ACT_Q4_I16, ACT_Q4_I8, ACT_Q8_I16, ACT_Q8_SIGNED, THREAD_SCRATCH, actGroupBytes, quantizeActivations, threadScratch,
} from './quantize';
import { q8Rows } from './q8';
import { q4Rows } from './q4';
import { fp8Rows } from './fp8';

/**
 * Writes table entries at desc for matrices of a matrix table (MATRIX_DESC_BYTES each, i32 [ptr, rows,
 * cols, fmt], written by the host once at load) and returns how many it wrote: with starts = 0 one for
 * each of the n matrices; else one for each matrix e that has pairs in moe_group's expert lists
 * (starts[e + 1] > starts[e]), in order. Entry i computes out + i * outStride = W x_i, x_i = x + i * xStride
 * (strides in floats; 0 gives every entry the same input).
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
    i++;
  }
  return i;
}

/** The activation layout a quantized format's matvec (one token) reads. */
@inline function decodeLayout(fmt: i32): i32 {
  if (fmt == FMT_Q4) return ASC_FEATURE_RELAXED_SIMD ? ACT_Q4_I8 : ACT_Q4_I16;
  if (fmt == FMT_Q8) return ASC_FEATURE_RELAXED_SIMD ? ACT_Q8_SIGNED : ACT_Q8_I16;
  return ACT_F32;
}

/** Quantizes matmul_grouped's inputs (steps.ts) into the scratch and writes its arguments on the job
 * board; returns the step's item count (the rows of all entries). */
export function stageGrouped(fmt: i32, desc: usize, n: i32): i32 {
  let items = 0;
  for (let e = 0; e < n; e++) items += load<i32>(desc + <usize>e * GROUPED_DESC_BYTES, 12);
  const layout = decodeLayout(fmt);
  if (isQuantized(fmt)) {
    const reserved = <usize>(MAX_THREADS * THREAD_SCRATCH);
    const base = scratchPtr();
    const bytes = scratchBytes();
    if (base == 0 || bytes < reserved) unreachable();
    const limit = base + bytes;
    let at = base + reserved;
    const gb = <usize>actGroupBytes(layout);
    const tmp = threadScratch(0) + 64;
    for (let e = 0; e < n; e++) {
      const d = desc + <usize>e * GROUPED_DESC_BYTES;
      const x = <usize>load<u32>(d, 8);
      const cols = load<i32>(d, 16);
      if (e > 0 && <usize>load<u32>(d - GROUPED_DESC_BYTES, 8) == x && load<i32>(d - GROUPED_DESC_BYTES, 16) == cols) {
        memory.copy(d + 20, d - GROUPED_DESC_BYTES + 20, 12);
        continue;
      }
      const cp = paddedCols(cols);
      const G = <usize>(cp >> 5);
      const xq = at;
      const xs = xq + G * gb;
      const xc = xs + (G << 2);
      at = xc + (G << 2);
      if (at > limit) unreachable();
      quantizeActivations(layout, x, cols, cp, xq, xs, xc, tmp);
      store<u32>(d, <u32>xq, 20);
      store<u32>(d, <u32>xs, 24);
      store<u32>(d, <u32>xc, 28);
    }
  }
  setI(0, fmt);
  setP(1, desc);
  setI(2, n);
  setI(3, layout);
  return items;
}

export function groupedMatmulTask(begin: i32, end: i32, tid: i32): void {
  const fmt = argI(0);
  const desc = argP(1);
  const n = argI(2);
  const layout = argI(3);
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
    if (!isQuantized(fmt)) {
      const x = <usize>load<u32>(d, 8);
      const stride = rowBytes(fmt, cols);
      for (let r = lo; r < hi; r++) store<f32>(out + (<usize>r << 2), dotRow(fmt, w + <usize>r * stride, x, cols));
      continue;
    }
    const cp = paddedCols(cols);
    const xq = <usize>load<u32>(d, 20);
    const xs = <usize>load<u32>(d, 24);
    const xc = <usize>load<u32>(d, 28);
    const xRow = <usize>(cp >> 5) * <usize>actGroupBytes(layout);
    if (fmt == FMT_Q8) q8Rows(out, w, xq, xs, rows, cp, 1, xRow, lo, hi, fence);
    else if (fmt == FMT_Q4) q4Rows(out, w, xq, xs, xc, rows, cp, 1, xRow, lo, hi, fence);
    else if (fmt == FMT_FP8) fp8Rows(out, w, xq, rows, cp, 1, xRow, lo, hi, fence);
  }
}
