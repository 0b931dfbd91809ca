import { GROUPED_DESC_BYTES } from '../runtime/constants.js';
import { GROUPED_MAX, type MatrixTable } from '../runtime/grouped.js';
import type { Runtime } from '../runtime/runtime.js';

/**
 * out_h = W_h x_h for every head h over T tokens, with one matrix per head (all of one format and shape).
 * Token t's input for head h starts at float x + t * xToken + h * xHead, its output at float
 * out + t * outToken + h * outHead. One token (decode): all heads in one matmul_grouped step (GROUPED_MAX
 * at a time), its table built in wasm from the heads' table, each row computed as matmul would. More
 * tokens: per head one matmul over the T tokens, so each head's weights are read once, with the inputs
 * gathered into [T, cols] and the outputs scattered from [T, rows] where they are not rows of that width
 * already.
 */
export function perHeadMatmul(
  rt: Runtime, ws: MatrixTable, out: number, outHead: number, outToken: number, x: number, xHead: number, xToken: number, tokens: number,
): void {
  const op = rt.ops;
  const arena = rt.arena;
  const heads = ws.length;
  const mark = arena.mark();
  if (tokens === 1) {
    const desc = arena.alloc(Math.min(heads, GROUPED_MAX) * GROUPED_DESC_BYTES, 'grouped matmul table');
    for (let h0 = 0; h0 < heads; h0 += GROUPED_MAX) {
      const n = op.groupedEntries(desc, ws, h0, Math.min(GROUPED_MAX, heads - h0), 0, out + h0 * outHead * 4, outHead, x + h0 * xHead * 4, xHead);
      op.matmulGrouped(ws.fmt, desc, n);
    }
  } else {
    const { rows, cols } = ws.matrices[0];
    const gathered = xToken === cols ? 0 : arena.allocF32(tokens * cols, 'per-head inputs');
    const results = outToken === rows ? 0 : arena.allocF32(tokens * rows, 'per-head outputs');
    for (let h = 0; h < heads; h++) {
      const xh = x + h * xHead * 4;
      const oh = out + h * outHead * 4;
      if (gathered) op.copyRows(gathered, cols, xh, xToken, cols, tokens);
      op.linear(results || oh, ws.matrices[h], gathered || xh, tokens);
      if (results) op.copyRows(oh, outToken, results, rows, rows, tokens);
    }
  }
  arena.release(mark);
}
