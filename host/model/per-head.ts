import { GROUPED_DESC_BYTES } from '../runtime/constants.js';
import { GROUPED_FEW_TOKENS, GROUPED_MAX, type MatrixTable } from '../runtime/grouped.js';
import type { Runtime } from '../runtime/runtime.js';

/**
 * out_h = W_h x_h for every head h over T tokens, with one matrix per head (all of one format and shape).
 * Token t's input for head h starts at float x + t * xToken + h * xHead, its output at float
 * out + t * outToken + h * outHead. Up to GROUPED_FEW_TOKENS tokens (decode, a batched step, a verify):
 * all heads in one matmul_grouped step (GROUPED_MAX tokens at a time), each head an entry over the T
 * tokens; for one token its table built in wasm from the heads' table. More tokens (prefill): per head
 * one matmul over the T tokens. Either way each head's weights are read once, and for q8 and q4 each
 * token gets what one token alone gets. Inputs are gathered into [T, cols] and outputs scattered from
 * [T, rows] where they are not rows of that width already.
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
    arena.release(mark);
    return;
  }
  const { rows, cols } = ws.matrices[0];
  const per = tokens <= GROUPED_FEW_TOKENS ? Math.min(heads, Math.floor(GROUPED_MAX / tokens)) : 1;
  const gathered = xToken === cols ? 0 : arena.allocF32(per * tokens * cols, 'per-head inputs');
  const results = outToken === rows ? 0 : arena.allocF32(per * tokens * rows, 'per-head outputs');
  if (per === 1) {
    for (let h = 0; h < heads; h++) {
      const xh = x + h * xHead * 4;
      const oh = out + h * outHead * 4;
      if (gathered) op.copyRows(gathered, cols, xh, xToken, cols, tokens);
      op.linear(results || oh, ws.matrices[h], gathered || xh, tokens);
      if (results) op.copyRows(oh, outToken, results, rows, rows, tokens);
    }
    arena.release(mark);
    return;
  }
  const desc = arena.alloc(per * GROUPED_DESC_BYTES, 'grouped matmul table');
  for (let h0 = 0; h0 < heads; h0 += per) {
    const n = Math.min(per, heads - h0);
    for (let i = 0; i < n; i++) {
      const h = h0 + i;
      const xh = gathered ? gathered + i * tokens * cols * 4 : x + h * xHead * 4;
      if (gathered) op.copyRows(xh, cols, x + h * xHead * 4, xToken, cols, tokens);
      const d = (desc + i * GROUPED_DESC_BYTES) / 4;
      rt.heap().i32.set([results ? results + i * tokens * rows * 4 : out + h * outHead * 4, ws.matrices[h].ptr, xh, rows, cols, tokens], d);
    }
    op.matmulGrouped(ws.fmt, desc, n);
    if (results) for (let i = 0; i < n; i++) op.copyRows(out + (h0 + i) * outHead * 4, outToken, results + i * tokens * rows * 4, rows, rows, tokens);
  }
  arena.release(mark);
}
