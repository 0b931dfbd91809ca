import type { DeepSeekConfig } from '../checkpoint/config.js';
import {
  ROUTE_GREEDY, ROUTE_GROUP_LIMITED_GREEDY, ROUTE_NOAUX_TC, SCORE_SIGMOID, SCORE_SOFTMAX,
} from '../runtime/kernels.js';
import type { Runtime } from '../runtime/runtime.js';
import { Mlp } from './mlp.js';
import type { Matrix, WeightReader } from './weights.js';

const METHODS = { greedy: ROUTE_GREEDY, group_limited_greedy: ROUTE_GROUP_LIMITED_GREEDY, noaux_tc: ROUTE_NOAUX_TC };

/**
 * DeepSeekMoE: a router picks k of E routed experts per token (see assembly/kernels/route.ts), the
 * chosen experts' outputs are summed with the router's weights, and the shared experts are added
 * for every token. Tokens are grouped by expert so each active expert runs once, as a matmul over
 * its tokens, rather than once per token.
 */
export class Moe {
  /** Where each expert's tokens start in the grouped lists, and a cursor per expert: reused every step. */
  private readonly starts: Int32Array;
  private readonly cursor: Int32Array;

  private constructor(
    private readonly cfg: DeepSeekConfig,
    readonly gate: Matrix,
    readonly bias: number,
    readonly experts: Mlp[],
    readonly shared: Mlp | null,
  ) {
    this.starts = new Int32Array(cfg.nRoutedExperts + 1);
    this.cursor = new Int32Array(cfg.nRoutedExperts);
  }

  static load(w: WeightReader, cfg: DeepSeekConfig, prefix: string): Moe {
    const { hiddenSize: hidden, nRoutedExperts: n, moeIntermediateSize: inter } = cfg;
    const gate = w.matrix([{ name: `${prefix}.gate.weight`, rows: n, why: 'n_routed_experts x hidden_size' }], hidden);
    const biasName = `${prefix}.gate.e_score_correction_bias`;
    const bias = w.has(biasName) ? w.vector(biasName, n, 'n_routed_experts') : 0;
    const experts: Mlp[] = [];
    for (let e = 0; e < n; e++) experts.push(Mlp.load(w, `${prefix}.experts.${e}`, hidden, inter, 'moe_intermediate_size'));
    const shared =
      cfg.nSharedExperts > 0
        ? Mlp.load(w, `${prefix}.shared_experts`, hidden, inter * cfg.nSharedExperts, 'moe_intermediate_size * n_shared_experts')
        : null;
    return new Moe(cfg, gate, bias, experts, shared);
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
}
