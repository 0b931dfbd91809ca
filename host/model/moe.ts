import type { DeepSeekConfig } from '../checkpoint/config.js';
import { GROUPED_MAX, putEntry } from '../runtime/grouped.js';
import {
  GROUPED_DESC_BYTES, ROUTE_GREEDY, ROUTE_GROUP_LIMITED_GREEDY, ROUTE_NOAUX_TC, SCORE_SIGMOID, SCORE_SOFTMAX,
} from '../runtime/kernels.js';
import type { Runtime } from '../runtime/runtime.js';
import { Mlp } from './mlp.js';
import type { MoeSchema } from './schema.js';
import type { Matrix, WeightReader } from './weights.js';

const METHODS = { greedy: ROUTE_GREEDY, group_limited_greedy: ROUTE_GROUP_LIMITED_GREEDY, noaux_tc: ROUTE_NOAUX_TC };

/**
 * DeepSeekMoE: a router picks k of E routed experts per token (see assembly/kernels/route.ts), the
 * chosen experts' outputs are summed with the router's weights, and the shared experts are added
 * for every token. Tokens are grouped by expert so each active expert runs once, as a matmul over
 * its tokens, rather than once per token. For one token (decode) all chosen experts run together:
 * one grouped matmul step for every gate/up, one for every down (see decode()).
 */
export class Moe {
  /** Where each expert's tokens start in the grouped lists, and a cursor per expert: reused every step. */
  private readonly starts: Int32Array;
  private readonly cursor: Int32Array;
  /** Every expert (and the shared experts) in one format per projection: decode can group them. */
  private readonly groupable: boolean;

  private constructor(
    private readonly cfg: DeepSeekConfig,
    readonly gate: Matrix,
    readonly bias: number,
    readonly experts: Mlp[],
    readonly shared: Mlp | null,
  ) {
    this.starts = new Int32Array(cfg.nRoutedExperts + 1);
    this.cursor = new Int32Array(cfg.nRoutedExperts);
    const all = shared ? [...experts, shared] : experts;
    this.groupable =
      experts.length > 0 &&
      cfg.numExpertsPerTok + 1 <= GROUPED_MAX &&
      all.every((m) => m.gateUp.fmt === experts[0].gateUp.fmt && m.down.fmt === experts[0].down.fmt);
  }

  static load(w: WeightReader, cfg: DeepSeekConfig, s: MoeSchema): Moe {
    const gate = w.matrix(s.router);
    const bias = s.bias ? w.vector(s.bias) : 0;
    const experts = s.experts.map((e) => Mlp.load(w, e));
    return new Moe(cfg, gate, bias, experts, s.shared ? Mlp.load(w, s.shared) : null);
  }

  /** out[T, hidden] = moe(x[T, hidden]). */
  forward(rt: Runtime, x: number, tokens: number, out: number): void {
    const { cfg } = this;
    const k = rt.kernels;
    const arena = rt.arena;
    const E = cfg.nRoutedExperts;
    const topK = cfg.numExpertsPerTok;
    const hidden = cfg.hiddenSize;
    const mark = arena.mark();

    const logits = arena.allocF32(tokens * E, 'router logits');
    const chosen = arena.alloc(tokens * topK * 4, 'chosen experts');
    const weights = arena.allocF32(tokens * topK, 'expert weights');
    const routeScratch = arena.allocF32(2 * E + cfg.nGroup, 'router scratch');
    k.matmul(this.gate.fmt, logits, this.gate.ptr, x, E, hidden, tokens);
    k.route(
      logits, tokens, E, this.bias, METHODS[cfg.topkMethod], cfg.scoringFunc === 'sigmoid' ? SCORE_SIGMOID : SCORE_SOFTMAX,
      cfg.nGroup, cfg.topkGroup, topK, cfg.normTopkProb ? 1 : 0, cfg.routedScalingFactor, chosen, weights, routeScratch,
    );

    // Counting sort of the (token, expert) pairs by expert.
    const pairs = tokens * topK;
    const rows = arena.alloc(pairs * 4, 'grouped tokens');
    const rowWeights = arena.allocF32(pairs, 'grouped weights');
    const heap = rt.heap();
    const chosenAt = chosen / 4;
    const { starts, cursor } = this;
    starts.fill(0);
    for (let p = 0; p < pairs; p++) starts[heap.i32[chosenAt + p] + 1]++;
    for (let e = 0; e < E; e++) {
      starts[e + 1] += starts[e];
      cursor[e] = starts[e];
    }
    for (let p = 0; p < pairs; p++) {
      const at = cursor[heap.i32[chosenAt + p]]++;
      heap.i32[rows / 4 + at] = (p / topK) | 0;
      heap.f32[rowWeights / 4 + at] = heap.f32[weights / 4 + p];
    }

    if (tokens === 1 && this.groupable) {
      this.decode(rt, x, out, rows, rowWeights);
      arena.release(mark);
      return;
    }

    const gathered = arena.allocF32(tokens * hidden, 'expert inputs');
    const expertOut = arena.allocF32(tokens * hidden, 'expert outputs');
    if (this.shared) this.shared.forward(rt, x, tokens, out);
    else rt.heap().f32.fill(0, out / 4, out / 4 + tokens * hidden);
    for (let e = 0; e < E; e++) {
      const n = starts[e + 1] - starts[e];
      if (n === 0) continue;
      k.gather_rows(gathered, x, rows + starts[e] * 4, n, hidden);
      this.experts[e].forward(rt, gathered, n, expertOut);
      k.scatter_add(out, expertOut, rows + starts[e] * 4, rowWeights + starts[e] * 4, n, hidden);
    }
    arena.release(mark);
  }

  /**
   * One token: the chosen experts (ascending, as the grouped lists have them) and the shared experts
   * run as one grouped gate/up step, one silu_mul, one grouped down step and one weighted sum, instead
   * of three parallel steps per expert. The sum adds in the same order as the general path, so both
   * give the same bits.
   */
  private decode(rt: Runtime, x: number, out: number, rows: number, rowWeights: number): void {
    const k = rt.kernels;
    const arena = rt.arena;
    const { cfg, starts, shared } = this;
    const E = cfg.nRoutedExperts;
    const hidden = cfg.hiddenSize;
    const inter = this.experts[0].inter;
    const n = starts[E];
    const entries = n + (shared ? 1 : 0);
    const desc = arena.alloc(entries * GROUPED_DESC_BYTES, 'grouped matmul table');
    const gu = arena.allocF32(n * 2 * inter, 'expert gate/up');
    const act = arena.allocF32(n * inter, 'expert activations');
    const ys = arena.allocF32(n * hidden, 'expert outputs');
    const sInter = shared ? shared.inter : 0;
    const sGu = shared ? arena.allocF32(2 * sInter, 'shared gate/up') : 0;
    const sAct = shared ? arena.allocF32(sInter, 'shared activations') : 0;
    const i32 = rt.heap().i32;
    let i = 0;
    for (let e = 0; e < E; e++) {
      if (starts[e + 1] === starts[e]) continue;
      const m = this.experts[e].gateUp;
      putEntry(i32, desc, i, gu + i * 2 * inter * 4, m.ptr, x, m.rows, m.cols);
      i++;
    }
    if (shared) putEntry(i32, desc, n, sGu, shared.gateUp.ptr, x, shared.gateUp.rows, shared.gateUp.cols);
    k.matmul_grouped(this.experts[0].gateUp.fmt, desc, entries);
    k.silu_mul(act, gu, inter, n);
    if (shared) k.silu_mul(sAct, sGu, sInter, 1);
    i = 0;
    for (let e = 0; e < E; e++) {
      if (starts[e + 1] === starts[e]) continue;
      const m = this.experts[e].down;
      putEntry(i32, desc, i, ys + i * hidden * 4, m.ptr, act + i * inter * 4, m.rows, m.cols);
      i++;
    }
    if (shared) putEntry(i32, desc, n, out, shared.down.ptr, sAct, shared.down.rows, shared.down.cols);
    else rt.heap().f32.fill(0, out / 4, out / 4 + hidden);
    k.matmul_grouped(this.experts[0].down.fmt, desc, entries);
    // Every pair's token is 0 here: rows holds n zeros, rowWeights the weights in expert order.
    k.scatter_add(out, ys, rows, rowWeights, n, hidden);
  }
}
