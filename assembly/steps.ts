// The exported kernels that run as parallel steps: each stages its step with its kernel's own code
// (arguments on the job board, inputs in the kernel's layout) and runs it on every thread. They sit
// above the pool, which runs the tasks, which call the kernels; nothing below imports them.
import { OP_MATMUL, OP_MATMUL_GROUPED, OP_MATMUL_QUANT, OP_MLA, OP_QUANTIZE, OP_READ_PROBE, OP_SILU_MUL } from './ops';
import { parallel } from './pool';
import { isQuantized } from './kernels/format';
import { quantChunk, stageMatmul, stageQuantChunk } from './kernels/matmul';
import { stageGrouped } from './kernels/grouped';
import { stageQuantize } from './kernels/quantize';
import { stageSiluMul } from './kernels/activation';
import { stageReadProbe } from './kernels/probe';
import { stageMla } from './blocks/mla';

/** out[t, r] = W[r, :] . x[t, :] for T tokens, W [rows, cols] in format fmt; quantized formats take the
 * tokens in chunks that fit the scratch (set_scratch). */
export function matmul(fmt: i32, out: usize, w: usize, x: usize, rows: i32, cols: i32, tokens: i32): void {
  if (!isQuantized(fmt)) {
    parallel(OP_MATMUL, stageMatmul(fmt, out, w, x, rows, cols, tokens));
    return;
  }
  const chunk = quantChunk(cols, tokens);
  for (let t0 = 0; t0 < tokens; t0 += chunk) parallel(OP_MATMUL_QUANT, stageQuantChunk(fmt, out, w, x, rows, cols, tokens, t0, chunk));
}

/** out_e = W_e x_e for the n entries of the table at desc (one token each; kernels/grouped.ts). */
export function matmul_grouped(fmt: i32, desc: usize, n: i32): void {
  parallel(OP_MATMUL_GROUPED, stageGrouped(fmt, desc, n));
}

/**
 * Quantizes `rows` rows of `cols` values (f32 or bf16, row-major at src) into rows
 * [rowStart, rowStart + rows) of a q8 or q4 blob of totalRows rows. Needs the scratch (set_scratch) for
 * its per-thread group buffers.
 */
export function quantize_rows(fmt: i32, blob: usize, totalRows: i32, srcFmt: i32, src: usize, rows: i32, cols: i32, rowStart: i32): void {
  parallel(OP_QUANTIZE, stageQuantize(fmt, blob, totalRows, srcFmt, src, rows, cols, rowStart));
}

/** out[t, i] = silu(gu[t, i]) * gu[t, n + i]: the gate and up projections are fused row-wise, so
 * each token's row holds n gate values then n up values. */
export function silu_mul(out: usize, gu: usize, n: i32, tokens: i32): void {
  parallel(OP_SILU_MUL, stageSiluMul(out, gu, n, tokens));
}

/**
 * MLA's latent core (blocks/mla.ts). oLat, qLat [heads, T, rank]; q [T, heads, nope + ropeDim] (only its
 * rotated rope part is read); cache [pos0 + T, rank + ropeDim]. Token t sits at position pos0 + t and
 * sees positions 0..pos0 + t. scratch: threads * mla_scratch_floats(positions) floats, positions >= pos0 + T.
 */
export function mla_attention(
  oLat: usize, qLat: usize, q: usize, cache: usize, scratch: usize,
  tokens: i32, heads: i32, nope: i32, ropeDim: i32, rank: i32, pos0: i32, softmaxScale: f32,
): void {
  parallel(OP_MLA, stageMla(oLat, qLat, q, cache, scratch, tokens, heads, nope, ropeDim, rank, pos0, softmaxScale));
}

/** Reads `bytes` bytes (a multiple of 64) at src on all threads and adds their i32 words (wrapping) to the i32 at out. */
export function read_probe(src: usize, bytes: i32, out: usize): void {
  parallel(OP_READ_PROBE, stageReadProbe(src, bytes, out));
}
