// The kernels as the model code calls them: named views for weights and shapes, arguments in the order
// DeepSeek's inference/model.py reads (output first, then the weight, then the input), the raw kernels'
// argument lists behind them. Decoding calls these hundreds of times a token, so none of them makes an
// object: views are made once at load and passed as they are, everything else is a number.
import type { MatrixTable } from './grouped.js';
import type { Runtime } from './runtime.js';

/** A weight matrix [rows, cols] in wasm memory in format fmt (FMT_*); host/model/weights.ts's Matrix is one. */
export interface MatrixView {
  readonly fmt: number;
  readonly ptr: number;
  readonly rows: number;
  readonly cols: number;
}

/** Rotary tables cos and sin [positions, half] f32 in wasm memory (host/model/rope.ts). */
export interface RopeTables {
  readonly cos: number;
  readonly sin: number;
  readonly half: number;
}

/** The shape of MLA's latent attention: heads, q's nope and rope parts per head, the latent rank. */
export interface MlaShape {
  readonly heads: number;
  readonly nope: number;
  readonly ropeDim: number;
  readonly rank: number;
}

/** How a layer's router picks experts (assembly/kernels/route.ts). */
export interface Routing {
  readonly experts: number;
  /** e_score_correction_bias [experts] f32, or 0. */
  readonly bias: number;
  /** ROUTE_* */
  readonly method: number;
  /** SCORE_* */
  readonly scoring: number;
  readonly groups: number;
  readonly keepGroups: number;
  /** Experts per token. */
  readonly k: number;
  readonly normalize: boolean;
  readonly scale: number;
}

/**
 * The kernels of one runtime. Each call goes to rt.kernels as it is at the time of the call, so a
 * profiler that swaps the kernels (host/runtime/kernel-profile.ts) sees these calls too.
 */
export class Ops {
  constructor(private readonly rt: Runtime) {}

  /** out[T, W.rows] = x[T, W.cols] W^T: a linear layer without bias, over T tokens. */
  linear(out: number, W: MatrixView, x: number, tokens: number): void {
    this.rt.kernels.matmul(W.fmt, out, W.ptr, x, W.rows, W.cols, tokens);
  }

  /** out = x / sqrt(mean(x^2) + eps) * weight over the first n floats of each of T rows (strides in floats). */
  rmsnorm(out: number, x: number, weight: number, n: number, eps: number, tokens: number, outStride = n, xStride = n): void {
    this.rt.kernels.rmsnorm(out, outStride, x, xStride, weight, n, tokens, eps);
  }

  /** Rotates the interleaved pairs of `vecs` vectors per token, vecStride floats apart (tokens tokenStride
   * floats apart), by the angles of positions pos0, pos0 + 1, ... */
  rope(x: number, tokens: number, vecs: number, tokenStride: number, vecStride: number, tables: RopeTables, pos0: number): void {
    this.rt.kernels.rope(x, tokens, vecs, tokenStride, vecStride, tables.cos, tables.sin, pos0, tables.half);
  }

  /** Copies n floats of each of T rows between strided buffers (strides in floats). */
  copyRows(dst: number, dstStride: number, src: number, srcStride: number, n: number, tokens: number): void {
    this.rt.kernels.copy_rows(dst, dstStride, src, srcStride, n, tokens);
  }

  /** out[T, inter] = silu(gate) * up, from gateUp [T, 2 * inter]: gate and up out of one stacked matrix. */
  siluMul(out: number, gateUp: number, inter: number, tokens: number): void {
    this.rt.kernels.silu_mul(out, gateUp, inter, tokens);
  }

  /** y += x over n floats. */
  add(y: number, x: number, n: number): void {
    this.rt.kernels.add(y, x, n);
  }

  /** y = 0 over n floats. */
  zero(y: number, n: number): void {
    this.rt.heap().f32.fill(0, y / 4, y / 4 + n);
  }

  /**
   * MLA's latent core (assembly/blocks/mla.ts): oLat[h, t] = sum_s softmax_s((qLat[h, t] . c_s + q_rope[t, h] .
   * k_rope_s) * softmaxScale) c_s over the positions s <= pos0 + t of the cache [positions, rank + ropeDim].
   * oLat, qLat [heads, T, rank]; q [T, heads, nope + ropeDim]; scratch: threads * mla_scratch_floats floats.
   */
  mlaAttention(oLat: number, qLat: number, q: number, cache: number, tokens: number, pos0: number, shape: MlaShape, softmaxScale: number, scratch: number): void {
    const { heads, nope, ropeDim, rank } = shape;
    this.rt.kernels.mla_attention(oLat, qLat, q, cache, scratch, tokens, heads, nope, ropeDim, rank, pos0, softmaxScale);
  }

  /** chosen [T, k] i32 and weights [T, k] f32: the experts logits [T, experts] pick. scratch: 2 * experts + groups floats. */
  route(chosen: number, weights: number, logits: number, tokens: number, r: Routing, scratch: number): void {
    this.rt.kernels.route(
      logits, tokens, r.experts, r.bias, r.method, r.scoring, r.groups, r.keepGroups, r.k, r.normalize ? 1 : 0, r.scale, chosen, weights, scratch,
    );
  }

  /** route's pairs grouped by expert: starts [experts + 1], then each pair's token (rows) and weight (rowWeights). */
  moeGroup(starts: number, rows: number, rowWeights: number, chosen: number, weights: number, tokens: number, r: Routing): void {
    this.rt.kernels.moe_group(chosen, weights, tokens, r.k, r.experts, starts, rows, rowWeights);
  }

  /** dst[j] = src[rows[j]] for n rows of dim floats. */
  gatherRows(dst: number, src: number, rows: number, n: number, dim: number): void {
    this.rt.kernels.gather_rows(dst, src, rows, n, dim);
  }

  /** dst[rows[j]] += weights[j] * src[j] for n rows of dim floats, in order. */
  scatterAdd(dst: number, src: number, rows: number, weights: number, n: number, dim: number): void {
    this.rt.kernels.scatter_add(dst, src, rows, weights, n, dim);
  }

  /**
   * Entries of a matmul_grouped table at desc for the matrices [first, first + n) of a table: all of
   * them (starts 0), or those with pairs in moe_group's starts. Entry i: out + i * outStride = W x_i with
   * x_i = x + i * xStride (strides in floats; 0: one input for all). Returns the number of entries.
   */
  groupedEntries(desc: number, table: MatrixTable, first: number, n: number, starts: number, out: number, outStride: number, x: number, xStride: number): number {
    return this.rt.kernels.grouped_entries(desc, table.at(first), n, starts, out, outStride, x, xStride);
  }

  /** Runs the n entries of the table at desc, all of format fmt, in one parallel step. */
  matmulGrouped(fmt: number, desc: number, n: number): void {
    this.rt.kernels.matmul_grouped(fmt, desc, n);
  }
}
