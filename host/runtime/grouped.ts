// The host's half of matmul_grouped (assembly/kernels/grouped.ts): how many entries one step may take,
// and the matrix tables grouped_entries builds its entries from.
import { MATRIX_DESC_BYTES } from './constants.js';
import type { MatrixView } from './ops.js';
import { QUANT_CHUNK_TOKENS, type Runtime } from './runtime.js';

/** Most tokens, over all its entries, one grouped step takes: each entry may bring its own inputs, and the
 * quantized scratch holds QUANT_CHUNK_TOKENS inputs of the widest matrix loaded (Runtime.ensureQuantScratch). */
export const GROUPED_MAX = QUANT_CHUNK_TOKENS;

/** Most tokens per entry the model gives a grouped step (per-head matrices over a batched step's or a
 * verify's tokens); more (prefill) go through one matmul per matrix. One q8/q4 tile (assembly/kernels/format.ts TILE_MAX). */
export const GROUPED_FEW_TOKENS = 8;

/**
 * Matrices of one format (a layer's experts, an attention's heads) described in wasm memory, written
 * once at load: MATRIX_DESC_BYTES each, i32 [ptr, rows, cols, fmt]. A decode step then builds its
 * matmul_grouped table with grouped_entries in wasm instead of writing it from here.
 */
export class MatrixTable {
  /** Where the descriptors are. */
  readonly ptr: number;
  readonly fmt: number;

  constructor(rt: Runtime, readonly matrices: readonly MatrixView[], what: string) {
    this.fmt = matrices[0].fmt;
    this.ptr = rt.arena.alloc(matrices.length * MATRIX_DESC_BYTES, what);
    const i32 = rt.heap().i32;
    matrices.forEach((m, i) => {
      const d = (this.ptr + i * MATRIX_DESC_BYTES) / 4;
      i32[d] = m.ptr;
      i32[d + 1] = m.rows;
      i32[d + 2] = m.cols;
      i32[d + 3] = m.fmt;
    });
  }

  get length(): number {
    return this.matrices.length;
  }

  /** The address of matrix i's descriptor: where a table of the matrices from i on starts. */
  at(i: number): number {
    return this.ptr + i * MATRIX_DESC_BYTES;
  }
}
