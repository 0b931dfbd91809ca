// Grouped matvec for decode: several matrices of one format, each against its own (or a shared)
// input vector, in ONE parallel step. The host lists the matrices in a descriptor table in wasm
// memory, GROUPED_DESC_BYTES per entry, as i32:
//   [0] out  [1] w  [2] x (f32 input)  [3] rows  [4] cols  [5..7] written here: quantized x, scales, corrections
// The step's items are all rows of all entries, in table order, so every thread streams one contiguous
// range of weights and the split is balanced whatever the matrices' sizes; each input is quantized
// once (consecutive entries with the same x and cols share it). Every row is computed by the same
// row code as matmul() with tokens = 1, so the outputs are bit-identical to one matmul per entry.
import { FP8, Q4, Q8, dotRow, isQuantized, paddedCols, rowBytes } from './format';
import { argI, argP, parallel, setI, setP } from '../pool';
import { OP_MATMUL_GROUPED } from '../ops';
import {
  ACT_F32, ACT_Q4_I16, ACT_Q4_I8, ACT_Q8_I16, ACT_Q8_SIGNED, MAX_THREADS, THREAD_SCRATCH, actGroupBytes, quantizeActivations,
  scratchBytes, scratchPtr, threadScratch,
} from './quantize';
import { q8Rows } from './q8';
import { q4Rows } from './q4';
import { fp8Rows } from './fp8';

export const GROUPED_DESC_BYTES: i32 = 32;

/** The activation layout a quantized format's matvec (one token) reads. */
@inline function decodeLayout(fmt: i32): i32 {
  if (fmt == Q4) return ASC_FEATURE_RELAXED_SIMD ? ACT_Q4_I8 : ACT_Q4_I16;
  if (fmt == Q8) return ASC_FEATURE_RELAXED_SIMD ? ACT_Q8_SIGNED : ACT_Q8_I16;
  return ACT_F32;
}

/** out_e = W_e x_e for the n entries of the table at desc (one token each). */
export function matmul_grouped(fmt: i32, desc: usize, n: i32): void {
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
  parallel(OP_MATMUL_GROUPED, items);
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
    if (fmt == Q8) q8Rows(out, w, xq, xs, xs, rows, cp, 1, xRow, lo, hi, fence);
    else if (fmt == Q4) q4Rows(out, w, xq, xs, xc, xs, xc, rows, cp, 1, xRow, lo, hi, fence);
    else if (fmt == FP8) fp8Rows(out, w, xq, rows, cp, 1, xRow, lo, hi, fence);
  }
}
