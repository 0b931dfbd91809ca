import { GROUPED_MAX, putEntry } from '../runtime/grouped.js';
import { GROUPED_DESC_BYTES } from '../runtime/kernels.js';
import type { Runtime } from '../runtime/runtime.js';
import type { Matrix } from './weights.js';

/**
 * out_h = W_h x_h for every head h over T tokens, with one matrix per head (all of one format and shape).
 * Token t's input for head h starts at float x + t * xToken + h * xHead, its output at float
 * out + t * outToken + h * outHead. One token (decode): all heads in one matmul_grouped step (GROUPED_MAX
 * at a time), each row computed as matmul would. More tokens: per head one matmul over the T tokens,
 * so each head's weights are read once, with the inputs gathered into [T, cols] and the outputs
 * scattered from [T, rows] where they are not rows of that width already.
 */
export function perHeadMatmul(
  rt: Runtime, ws: Matrix[], out: number, outHead: number, outToken: number, x: number, xHead: number, xToken: number, tokens: number,
): void {
  const k = rt.kernels;
  const arena = rt.arena;
  const mark = arena.mark();
  if (tokens === 1) {
    const desc = arena.alloc(Math.min(ws.length, GROUPED_MAX) * GROUPED_DESC_BYTES, 'grouped matmul table');
    const i32 = rt.heap().i32;
    for (let h0 = 0; h0 < ws.length; h0 += GROUPED_MAX) {
      const n = Math.min(GROUPED_MAX, ws.length - h0);
      for (let i = 0; i < n; i++) {
        const h = h0 + i;
        putEntry(i32, desc, i, out + h * outHead * 4, ws[h].ptr, x + h * xHead * 4, ws[h].rows, ws[h].cols);
      }
      k.matmul_grouped(ws[0].fmt, desc, n);
    }
  } else {
    const { rows, cols } = ws[0];
    const gathered = xToken === cols ? 0 : arena.allocF32(tokens * cols, 'per-head inputs');
    const results = outToken === rows ? 0 : arena.allocF32(tokens * rows, 'per-head outputs');
    for (let h = 0; h < ws.length; h++) {
      const xh = x + h * xHead * 4;
      const oh = out + h * outHead * 4;
      if (gathered) k.copy_rows(gathered, cols, xh, xToken, cols, tokens);
      k.matmul(ws[h].fmt, results || oh, ws[h].ptr, gathered || xh, rows, cols, tokens);
      if (results) k.copy_rows(oh, outToken, results, rows, rows, tokens);
    }
  }
  arena.release(mark);
}
