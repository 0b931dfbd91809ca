// The host's half of matmul_grouped (assembly/kernels/grouped.ts): writing its descriptor table, and
// how many entries one step may take.
import { GROUPED_DESC_BYTES } from './kernels.js';
import { QUANT_CHUNK_TOKENS } from './runtime.js';

/** Most entries one grouped step takes: each entry may bring its own input, and the quantized scratch
 * holds QUANT_CHUNK_TOKENS inputs of the widest matrix loaded (Runtime.ensureQuantScratch). */
export const GROUPED_MAX = QUANT_CHUNK_TOKENS;

/** Entry i of the table at desc: out = W x, W [rows, cols] at w (i32 is a view of the whole memory). */
export function putEntry(i32: Int32Array, desc: number, i: number, out: number, w: number, x: number, rows: number, cols: number): void {
  const d = (desc + i * GROUPED_DESC_BYTES) / 4;
  i32[d] = out;
  i32[d + 1] = w;
  i32[d + 2] = x;
  i32[d + 3] = rows;
  i32[d + 4] = cols;
}
