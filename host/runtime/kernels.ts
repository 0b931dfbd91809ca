// The typed face of the wasm module's exports. Arguments are numbers (pointers are byte offsets into
// the shared memory); we call instance.exports directly instead of @assemblyscript/loader, whose
// helpers allocate inside the module and so would race between threads on a shared memory.

import { FMT_BF16, FMT_F32, FMT_FP8, FMT_Q4, FMT_Q8 } from './constants.js';

// The numbers the kernels take, from their one definition (assembly/constants.ts).
export {
  FMT_BF16, FMT_F32, FMT_FP8, FMT_Q4, FMT_Q8, GROUPED_DESC_BYTES, MATRIX_DESC_BYTES, ROUTE_GREEDY, ROUTE_GROUP_LIMITED_GREEDY,
  ROUTE_NOAUX_TC, SCORE_SIGMOID, SCORE_SOFTMAX,
} from './constants.js';

export type WeightFormat = typeof FMT_F32 | typeof FMT_BF16 | typeof FMT_Q8 | typeof FMT_Q4 | typeof FMT_FP8;

/** The formats the loader's --quant names. */
export const FORMAT_NAMES: Record<WeightFormat, 'f32' | 'bf16' | 'q8' | 'q4' | 'fp8'> = {
  [FMT_F32]: 'f32',
  [FMT_BF16]: 'bf16',
  [FMT_Q8]: 'q8',
  [FMT_Q4]: 'q4',
  [FMT_FP8]: 'fp8',
};

export interface Kernels {
  heap_base(): number;
  BOARD_BYTES: WebAssembly.Global;
  pool_init(board: number, threads: number): void;
  pool_stop(): void;
  worker_loop(board: number, tid: number, seenGeneration: number): void;
  matmul(fmt: number, out: number, w: number, x: number, rows: number, cols: number, tokens: number): void;
  /**
   * Matmuls of several matrices of one format, each over a few tokens, in one parallel step: n entries of
   * GROUPED_DESC_BYTES at desc, as i32 [out, w, x, rows, cols, tokens, (2 slots the kernel uses)];
   * out_e [tokens, rows] = x_e [tokens, cols] W_e^T, bit-identical to matmul(fmt, out_e, w_e, x_e, rows_e,
   * cols_e, tokens_e) (f32 and bf16: to a one-token matmul per token). Inputs are quantized once per run
   * of equal x; all entries' tokens together may be at most GROUPED_MAX (host/runtime/grouped.ts).
   */
  matmul_grouped(fmt: number, desc: number, n: number): void;
  /**
   * Writes matmul_grouped entries at desc for the matrices of a matrix table (n descriptors of
   * MATRIX_DESC_BYTES at mats: i32 [ptr, rows, cols, fmt]): all of them when starts is 0, else those with
   * pairs in moe_group's starts [n + 1]. Entry i computes out + i * outStride = W x_i, x_i = x + i * xStride
   * (strides in floats), one token. Returns the number of entries written.
   */
  grouped_entries(desc: number, mats: number, n: number, starts: number, out: number, outStride: number, x: number, xStride: number): number;
  /** Bytes of a rows x cols matrix in format fmt as the kernels read it (quantized: column panels). */
  weight_bytes(fmt: number, rows: number, cols: number): number;
  /** Scratch bytes quantized matmuls over `cols` columns need to take `tokens` tokens per pass. */
  quant_scratch_bytes(cols: number, tokens: number): number;
  /** Registers the quantized kernels' scratch (64-byte aligned) on this thread's instance. */
  set_scratch(ptr: number, bytes: number): void;
  /** Quantizes rows x cols values (srcFmt F32 or BF16) into rows [rowStart, rowStart + rows) of a q8/q4 blob. */
  quantize_rows(fmt: number, blob: number, totalRows: number, srcFmt: number, src: number, rows: number, cols: number, rowStart: number): void;
  /** Copies checkpoint-layout q8/q4 weights and scales into rows [rowStart, ...) of a blob. */
  q_pack(fmt: number, blob: number, totalRows: number, q: number, scales: number, rows: number, cols: number, rowStart: number): void;
  /** The inverse of q_pack. */
  q_unpack(fmt: number, blob: number, totalRows: number, q: number, scales: number, rows: number, cols: number, rowStart: number): void;
  /** Copies e4m3 weights and their block scale_inv into rows [rowStart, ...) of an fp8 blob. */
  fp8_pack(blob: number, totalRows: number, src: number, scaleInv: number, rows: number, cols: number, rowStart: number, blockRows: number): void;
  /** 1 in the relaxed-SIMD build. */
  relaxed_simd(): number;
  rmsnorm(out: number, outStride: number, x: number, xStride: number, w: number, n: number, tokens: number, eps: number): void;
  rope(x: number, tokens: number, vecs: number, tokenStride: number, vecStride: number, cos: number, sin: number, pos0: number, half: number): void;
  softmax(x: number, n: number): void;
  silu_mul(out: number, gateUp: number, n: number, tokens: number): void;
  add(y: number, x: number, n: number): void;
  scale(y: number, a: number, n: number): void;
  embed(fmt: number, out: number, table: number, ids: number, tokens: number, dim: number): void;
  gather_rows(dst: number, src: number, rows: number, n: number, dim: number): void;
  scatter_add(dst: number, src: number, rows: number, weights: number, n: number, dim: number): void;
  copy_rows(dst: number, dstStride: number, src: number, srcStride: number, n: number, tokens: number): void;
  route(
    logits: number, tokens: number, experts: number, bias: number, method: number, scoring: number,
    groups: number, keepGroups: number, k: number, normalize: number, routedScale: number,
    outExperts: number, outWeights: number, scratch: number,
  ): void;
  /**
   * MLA's latent core (assembly/blocks/mla.ts): oLat[h, t] = sum_s softmax_s((qLat[h, t] . c_s + q_rope[t, h] . k_rope_s)
   * * scale) c_s over positions s <= pos0 + t. oLat, qLat [heads, T, rank]; q [T, heads, nope + ropeDim];
   * cache [pos0 + T, rank + ropeDim]; scratch: threads * mla_scratch_floats(positions) floats.
   */
  mla_attention(
    oLat: number, qLat: number, q: number, cache: number, scratch: number,
    tokens: number, heads: number, nope: number, ropeDim: number, rank: number, pos0: number, softmaxScale: number,
  ): void;
  mla_scratch_floats(positions: number): number;
  /**
   * Groups route()'s pairs by expert (a stable counting sort): starts [experts + 1] i32, then each pair's
   * token in rows [tokens * k] i32 and its weight in rowWeights [tokens * k] f32, expert by expert.
   */
  moe_group(chosen: number, weights: number, tokens: number, k: number, experts: number, starts: number, rows: number, rowWeights: number): void;
  read_probe(src: number, bytes: number, out: number): void;
  /** One core's ceiling of the q8 prefill tile's arithmetic: `iterations` rounds of DOT_PEAK_MACS multiply-adds from registers (kernels/probe.ts). */
  dot_peak(iterations: number): number;
}

export function instantiate(module: WebAssembly.Module, memory: WebAssembly.Memory): Kernels {
  const instance = new WebAssembly.Instance(module, { env: { memory } });
  return instance.exports as unknown as Kernels;
}
