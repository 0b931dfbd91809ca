import type { DeepSeekConfig } from '../checkpoint/config.js';
import { fail } from '../errors.js';
import {
  GROUPED_DESC_BYTES, ROUTE_GREEDY, ROUTE_GROUP_LIMITED_GREEDY, ROUTE_NOAUX_TC, SCORE_SIGMOID, SCORE_SOFTMAX,
} from '../runtime/constants.js';
import { GROUPED_MAX, MatrixTable } from '../runtime/grouped.js';
import type { Routing } from '../runtime/ops.js';
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
  /** Every expert (and the shared experts) in one format per projection: decode can group them. */
  private readonly groupable: boolean;

  private constructor(
    private readonly cfg: DeepSeekConfig,
    readonly gate: Matrix,
    readonly bias: number,
    readonly experts: Mlp[],
    readonly shared: Mlp | null,
  ) {
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

  /** The experts' matrices listed in wasm memory (the shared experts last) and the router's settings: made by prepare(). */
  private prepared?: { gateUp: MatrixTable; down: MatrixTable; routing: Routing };

  /** Lists the experts' matrices in wasm memory for decode's grouped steps. Call once after load,
   * outside any arena mark (the tables live as long as the weights). */
  prepare(rt: Runtime): void {
    const { cfg } = this;
    const all = this.shared ? [...this.experts, this.shared] : this.experts;
    this.prepared = {
      gateUp: new MatrixTable(rt, all.map((m) => m.gateUp), 'expert gate/up table'),
      down: new MatrixTable(rt, all.map((m) => m.down), 'expert down table'),
      routing: {
        experts: cfg.nRoutedExperts,
        bias: this.bias,
        method: METHODS[cfg.topkMethod],
        scoring: cfg.scoringFunc === 'sigmoid' ? SCORE_SIGMOID : SCORE_SOFTMAX,
        groups: cfg.nGroup,
        keepGroups: cfg.topkGroup,
        k: cfg.numExpertsPerTok,
        normalize: cfg.normTopkProb,
        scale: cfg.routedScalingFactor,
      },
    };
  }

  /** out[T, hidden] = moe(x[T, hidden]), as MoE.forward in DeepSeek's inference/model.py. */
  forward(rt: Runtime, x: number, tokens: number, out: number): void {
    const { cfg } = this;
    const { routing } = this.prepared ?? fail('Moe.prepare(rt) must run after the weights are loaded');
    const op = rt.ops;
    const arena = rt.arena;
    const E = routing.experts;
    const hidden = cfg.hiddenSize;
    const mark = arena.mark();

    // weights, indices = gate(x)
    const logits = arena.allocF32(tokens * E, 'router logits');
    const chosen = arena.alloc(tokens * routing.k * 4, 'chosen experts');
    const weights = arena.allocF32(tokens * routing.k, 'expert weights');
    const routeScratch = arena.allocF32(2 * E + cfg.nGroup, 'router scratch');
    op.linear(logits, this.gate, x, tokens);
    op.route(chosen, weights, logits, tokens, routing, routeScratch);
    // The pairs by expert: expert e's tokens are rows[starts[e] .. starts[e + 1]), with their weights.
    const pairs = tokens * routing.k;
    const starts = arena.alloc((E + 1) * 4, 'expert starts');
    const rows = arena.alloc(pairs * 4, 'grouped tokens');
    const rowWeights = arena.allocF32(pairs, 'grouped weights');
    op.moeGroup(starts, rows, rowWeights, chosen, weights, tokens, routing);

    if (tokens === 1 && this.groupable) {
      this.decode(rt, x, out, starts, rows, rowWeights);
      arena.release(mark);
      return;
    }

    // y = shared_experts(x); y[idx] += expert(x[idx]) * weights[idx] for every expert given tokens
    const gathered = arena.allocF32(tokens * hidden, 'expert inputs');
    const expertOut = arena.allocF32(tokens * hidden, 'expert outputs');
    if (this.shared) this.shared.forward(rt, x, tokens, out);
    else op.zero(out, tokens * hidden);
    for (let e = 0; e < E; e++) {
      const i32 = rt.heap().i32;
      const first = i32[starts / 4 + e];
      const n = i32[starts / 4 + e + 1] - first;
      if (n === 0) continue;
      op.gatherRows(gathered, x, rows + first * 4, n, hidden);
      this.experts[e].forward(rt, gathered, n, expertOut);
      op.scatterAdd(out, expertOut, rows + first * 4, rowWeights + first * 4, n, hidden);
    }
    arena.release(mark);
  }

  /**
   * One token: the chosen experts (ascending, as the grouped lists have them) and the shared experts
   * run as one grouped gate/up step, one silu_mul, one grouped down step and one weighted sum, instead
   * of three parallel steps per expert; the grouped tables come from the experts' tables in wasm. The
   * sum adds in the same order as the general path, so both give the same bits.
   */
  private decode(rt: Runtime, x: number, out: number, starts: number, rows: number, rowWeights: number): void {
    const { gateUp, down, routing } = this.prepared!;
    const op = rt.ops;
    const arena = rt.arena;
    const { shared } = this;
    const E = routing.experts;
    const k = routing.k;
    const hidden = this.cfg.hiddenSize;
    const inter = this.experts[0].inter;
    const desc = arena.alloc((k + 1) * GROUPED_DESC_BYTES, 'grouped matmul table');
    const gu = arena.allocF32(k * 2 * inter, 'expert gate/up');
    const act = arena.allocF32(k * inter, 'expert activations');
    const ys = arena.allocF32(k * hidden, 'expert outputs');
    const sInter = shared ? shared.inter : 0;
    const sGu = shared ? arena.allocF32(2 * sInter, 'shared gate/up') : 0;
    const sAct = shared ? arena.allocF32(sInter, 'shared activations') : 0;
    // The chosen experts, then the shared ones: one entry each.
    const n = op.groupedEntries(desc, gateUp, 0, E, starts, gu, 2 * inter, x, 0);
    if (shared) op.groupedEntries(desc + n * GROUPED_DESC_BYTES, gateUp, E, 1, 0, sGu, 0, x, 0);
    op.matmulGrouped(gateUp.fmt, desc, n + (shared ? 1 : 0));
    op.siluMul(act, gu, inter, n);
    if (shared) op.siluMul(sAct, sGu, sInter, 1);
    op.groupedEntries(desc, down, 0, E, starts, ys, hidden, act, inter);
    if (shared) op.groupedEntries(desc + n * GROUPED_DESC_BYTES, down, E, 1, 0, out, 0, sAct, 0);
    else op.zero(out, hidden);
    op.matmulGrouped(down.fmt, desc, n + (shared ? 1 : 0));
    // Every pair's token is 0 here: rows holds n zeros, rowWeights the weights in expert order.
    op.scatterAdd(out, ys, rows, rowWeights, n, hidden);
  }
}
