import type { Runtime } from '../runtime/runtime.js';
import type { MlpSchema } from './schema.js';
import type { Matrix, WeightReader } from './weights.js';

/** SwiGLU feed-forward: down(silu(gate x) * up x). Gate and up are stacked into one matrix so one
 * pass over x produces both. Used for dense layers, each routed expert and the shared experts. */
export class Mlp {
  constructor(
    readonly gateUp: Matrix,
    readonly down: Matrix,
    readonly inter: number,
  ) {}

  static load(w: WeightReader, s: MlpSchema): Mlp {
    return new Mlp(w.matrix(s.gateUp), w.matrix(s.down), s.inter);
  }

  /** out[T, hidden] = mlp(x[T, hidden]) = down(silu(gate(x)) * up(x)). */
  forward(rt: Runtime, x: number, tokens: number, out: number): void {
    const op = rt.ops;
    const mark = rt.arena.mark();
    const gu = rt.arena.allocF32(tokens * 2 * this.inter, 'gate/up activations');
    const act = rt.arena.allocF32(tokens * this.inter, 'mlp activations');
    op.linear(gu, this.gateUp, x, tokens);
    op.siluMul(act, gu, this.inter, tokens);
    op.linear(out, this.down, act, tokens);
    rt.arena.release(mark);
  }
}
