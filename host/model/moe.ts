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

/** Distinct routed experts run, summed over MoE layers and steps (Model.countExperts). */
export interface ExpertTally {
  experts: number;
}

const METHODS = { greedy: ROUTE_GREEDY, group_limited_greedy: ROUTE_GROUP_LIMITED_GREEDY, noaux_tc: ROUTE_NOAUX_TC };

/**
 * DeepSeekMoE: a router picks k of E routed experts per token (see assembly/kernels/route.ts), the
 * chosen experts' outputs are summed with the router's weights, and the shared experts are added
 * for every token. Tokens are grouped by expert so each active expert runs once, as a matmul over
 * its tokens, rather than once per token. For one token (decode) all chosen experts run together:
 * one grouped matmul step for every gate/up, one for every down per memory (see decodePart()).
 */
export class Moe {
  /** Every expert (and the shared experts) in one format per projection: decode can group them. */
  private readonly groupable: boolean;
  /** Where forward() counts the distinct experts it runs, when set. */
  tally: ExpertTally | null = null;

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

  /** The experts' memories, their matrices listed there, and the router's settings: made by prepare(). */
  private prepared?: { parts: MoePart[]; routing: Routing };

  /**
   * Lists the experts' matrices in the memories that hold them, for decode's grouped steps: `home` is the
   * layer's memory (the router and the shared experts), `memoryOf` gives each routed expert's. Call once
   * after load, outside any arena mark (the tables live as long as the weights).
   */
  prepare(home: Runtime, memoryOf: (expert: number) => Runtime = () => home): void {
    const { cfg } = this;
    const parts: MoePart[] = [];
    for (let e = 0; e < this.experts.length; e++) {
      const rt = memoryOf(e);
      const last = parts[parts.length - 1];
      if (last?.rt === rt) last.end = e + 1;
      else parts.push({ rt, first: e, end: e + 1, gateUp: null!, down: null! });
    }
    // The shared experts run in the layer's memory, in the grouped steps of the experts there.
    if (this.shared && !parts.some((p) => p.rt === home)) parts.push({ rt: home, first: this.experts.length, end: this.experts.length, gateUp: null!, down: null! });
    for (const p of parts) {
      const mine = this.experts.slice(p.first, p.end);
      if (this.shared && p.rt === home) mine.push(this.shared);
      p.gateUp = new MatrixTable(p.rt, mine.map((m) => m.gateUp), 'expert gate/up table');
      p.down = new MatrixTable(p.rt, mine.map((m) => m.down), 'expert down table');
    }
    this.home = home;
    this.prepared = {
      parts,
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

  private home?: Runtime;

  /**
   * out[T, hidden] = moe(x[T, hidden]), as MoE.forward in DeepSeek's inference/model.py. x and out are in
   * the layer's memory; experts in other memories get x copied there and send their rows back, which are
   * added in the layer's memory in expert order, so placement does not change a bit of the result.
   */
  forward(rt: Runtime, x: number, tokens: number, out: number): void {
    const { cfg } = this;
    const { parts, routing } = this.prepared ?? fail('Moe.prepare(rt) must run after the weights are loaded');
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
    if (this.tally) this.tally.experts += distinctExperts(rt.heap().i32, starts / 4, E);

    // ys [pairs, hidden]: each pair's expert output, in pair order (by expert); then out = shared(x) + sum of weighted ys rows.
    const ys = arena.allocF32(pairs * hidden, 'expert outputs');
    if (tokens === 1 && this.groupable) {
      for (const part of parts) this.decodePart(part, x, out, starts, ys);
      if (!this.shared) op.zero(out, hidden);
    } else {
      if (this.shared) this.shared.forward(rt, x, tokens, out);
      else op.zero(out, tokens * hidden);
      // Few pairs (a batched decode step) run as grouped matvecs; decided for the whole layer, so that every
      // placement of its experts computes each pair the same way.
      const grouped = this.groupable && pairs <= GROUPED_MAX;
      for (const part of parts) this.expertsPart(part, x, tokens, starts, rows, ys, grouped);
    }
    op.scatterAdd(out, ys, rows, rowWeights, pairs, hidden);
    arena.release(mark);
  }

  /**
   * Some tokens through the part's experts, each expert once as a matmul over its tokens (with `grouped`,
   * each pair as a grouped matvec): ys rows [starts[first], starts[end]) (in the layer's memory). In another memory the inputs and the pairs' token
   * rows are copied there first and the outputs copied back.
   */
  private expertsPart(part: MoePart, x: number, tokens: number, starts: number, rows: number, ys: number, grouped: boolean): void {
    const home = this.home!;
    const hidden = this.cfg.hiddenSize;
    const i32 = home.heap().i32;
    const o = i32[starts / 4 + part.first];
    const m = i32[starts / 4 + part.end] - o;
    if (m === 0) return;
    const rt = part.rt;
    const arena = rt.arena;
    const mark = arena.mark();
    const away = rt !== home;
    const px = away ? arena.allocF32(tokens * hidden, 'expert inputs (copy)') : x;
    const pRows = away ? arena.alloc(m * 4, 'grouped tokens (copy)') : rows + o * 4;
    const pYs = away ? arena.allocF32(m * hidden, 'expert outputs (to copy back)') : ys + o * hidden * 4;
    if (away) {
      home.copyTo(x, rt, px, tokens * hidden * 4);
      home.copyTo(rows + o * 4, rt, pRows, m * 4);
    }
    if (grouped) this.pairsGrouped(part, px, pRows, m, starts, o, pYs);
    else {
      const gathered = arena.allocF32(tokens * hidden, 'expert inputs');
      for (let e = part.first; e < part.end; e++) {
        const first = i32[starts / 4 + e] - o;
        const n = i32[starts / 4 + e + 1] - o - first;
        if (n === 0) continue;
        rt.ops.gatherRows(gathered, px, pRows + first * 4, n, hidden);
        this.experts[e].forward(rt, gathered, n, pYs + first * hidden * 4);
      }
    }
    if (away) rt.copyTo(pYs, home, ys + o * hidden * 4, m * hidden * 4);
    arena.release(mark);
  }

  /**
   * The part's m pairs (a few tokens each with their own experts: a batched decode step, a verify) as two
   * grouped steps, one gate/up and one down, each expert an entry against its tokens' rows, instead of
   * three parallel steps per expert: with a few tokens per expert, the steps' dispatch costs more than the
   * work. An expert's tokens run as one multi-token tile, so its weights are read once for them, and each
   * pair gets what a one-token matvec gives it (assembly/kernels/q8.ts). Works in the part's memory (x,
   * rows and ys there); pair i's output is ys row i, as expertsPart lays them.
   */
  private pairsGrouped(part: MoePart, x: number, rows: number, m: number, starts: number, o: number, ys: number): void {
    const rt = part.rt;
    const op = rt.ops;
    const hidden = this.cfg.hiddenSize;
    const inter = this.experts[0].inter;
    const home = this.home!.heap().i32;
    const gathered = rt.arena.allocF32(m * hidden, 'expert inputs');
    const gu = rt.arena.allocF32(m * 2 * inter, 'expert gate/up');
    const act = rt.arena.allocF32(m * inter, 'expert activations');
    const desc = rt.arena.alloc((part.end - part.first) * GROUPED_DESC_BYTES, 'grouped matmul table');
    op.gatherRows(gathered, x, rows, m, hidden);
    const entries = (pick: (mlp: Mlp) => Matrix, out: number, outRow: number, input: number, inRow: number): number => {
      const i32 = rt.heap().i32;
      let n = 0;
      for (let e = part.first; e < part.end; e++) {
        const first = home[starts / 4 + e] - o;
        const tokens = home[starts / 4 + e + 1] - o - first;
        if (tokens === 0) continue;
        const w = pick(this.experts[e]);
        const d = (desc + n++ * GROUPED_DESC_BYTES) / 4;
        i32[d] = out + first * outRow * 4;
        i32[d + 1] = w.ptr;
        i32[d + 2] = input + first * inRow * 4;
        i32[d + 3] = w.rows;
        i32[d + 4] = w.cols;
        i32[d + 5] = tokens;
      }
      return n;
    };
    const n = entries((e) => e.gateUp, gu, 2 * inter, gathered, hidden);
    op.matmulGrouped(this.experts[0].gateUp.fmt, desc, n);
    op.siluMul(act, gu, inter, m);
    entries((e) => e.down, ys, hidden, act, inter);
    op.matmulGrouped(this.experts[0].down.fmt, desc, n);
  }

  /**
   * One token through the part's chosen experts (ascending, as the grouped lists have them), and in the
   * layer's memory the shared experts too: one grouped gate/up step, one silu_mul, one grouped down step,
   * instead of three parallel steps per expert. The shared experts' output goes to out; the chosen ones'
   * rows to ys. The grouped tables come from the part's tables in wasm.
   */
  private decodePart(part: MoePart, x: number, out: number, starts: number, ys: number): void {
    const home = this.home!;
    const { shared } = this;
    const hidden = this.cfg.hiddenSize;
    const inter = this.experts[0].inter;
    const i32 = home.heap().i32;
    const o = i32[starts / 4 + part.first];
    const m = i32[starts / 4 + part.end] - o;
    const rt = part.rt;
    const away = rt !== home;
    const withShared = shared !== null && !away;
    if (m === 0 && !withShared) return;
    const op = rt.ops;
    const arena = rt.arena;
    const mark = arena.mark();
    const count = part.end - part.first;
    const px = away ? arena.allocF32(hidden, 'expert input (copy)') : x;
    const pStarts = away ? arena.alloc((count + 1) * 4, 'expert starts (copy)') : starts + part.first * 4;
    const pYs = away ? arena.allocF32(m * hidden, 'expert outputs (to copy back)') : ys + o * hidden * 4;
    if (away) {
      home.copyTo(x, rt, px, hidden * 4);
      home.copyTo(starts + part.first * 4, rt, pStarts, (count + 1) * 4);
    }
    const desc = arena.alloc((m + 1) * GROUPED_DESC_BYTES, 'grouped matmul table');
    const gu = arena.allocF32(m * 2 * inter, 'expert gate/up');
    const act = arena.allocF32(m * inter, 'expert activations');
    const sInter = withShared ? shared.inter : 0;
    const sGu = withShared ? arena.allocF32(2 * sInter, 'shared gate/up') : 0;
    const sAct = withShared ? arena.allocF32(sInter, 'shared activations') : 0;
    // The chosen experts, then the shared ones: one entry each.
    const n = op.groupedEntries(desc, part.gateUp, 0, count, pStarts, gu, 2 * inter, px, 0);
    if (withShared) op.groupedEntries(desc + n * GROUPED_DESC_BYTES, part.gateUp, count, 1, 0, sGu, 0, px, 0);
    op.matmulGrouped(part.gateUp.fmt, desc, n + (withShared ? 1 : 0));
    op.siluMul(act, gu, inter, n);
    if (withShared) op.siluMul(sAct, sGu, sInter, 1);
    op.groupedEntries(desc, part.down, 0, count, pStarts, pYs, hidden, act, inter);
    if (withShared) op.groupedEntries(desc + n * GROUPED_DESC_BYTES, part.down, count, 1, 0, out, 0, sAct, 0);
    op.matmulGrouped(part.down.fmt, desc, n + (withShared ? 1 : 0));
    if (away) rt.copyTo(pYs, home, ys + o * hidden * 4, m * hidden * 4);
    arena.release(mark);
  }
}

/** A run of a layer's routed experts held in one memory: experts [first, end), with their matrix tables there
 * (in the layer's memory the shared experts follow them). */
interface MoePart {
  rt: Runtime;
  first: number;
  end: number;
  gateUp: MatrixTable;
  down: MatrixTable;
}

/** Experts with at least one token in a grouping's starts (E + 1 offsets from `at`). */
function distinctExperts(i32: Int32Array, at: number, experts: number): number {
  let n = 0;
  for (let e = 0; e < experts; e++) if (i32[at + e + 1] > i32[at + e]) n++;
  return n;
}
