import type { DeepSeekConfig } from '../checkpoint/config.js';
import { fail } from '../errors.js';
import { MatrixTable } from '../runtime/grouped.js';
import type { MlaShape } from '../runtime/ops.js';
import type { Runtime } from '../runtime/runtime.js';
import { perHeadMatmul } from './per-head.js';
import { ROLE_W_UK_T, ROLE_W_UV } from '../runtime/constants.js';
import type { AttentionSchema } from './schema.js';
import type { Matrix, WeightReader } from './weights.js';

/**
 * Multi-head latent attention (MLA). Queries come from a low-rank path (q_a -> norm -> q_b) or one
 * q_proj; keys and values are compressed into one latent c per token (kv_a -> norm) plus a single
 * roped key shared by all heads. Only [c | k_rope] is cached. kv_b_proj is absorbed, as in DeepSeek's
 * inference/model.py (attn_impl "absorb"): its key half moves onto the query (q_lat = W_UK^T q_nope),
 * its value half onto the output (out = W_UV o_lat), so that keys and values are never expanded per
 * head; assembly/blocks/mla.ts attends in the latent space between the two.
 */
/** What every layer's attention shares, made once at load: the rotary tables cos and sin
 * [positions, half] in wasm memory, the softmax scale, and the kernel's per-thread scratch sized for
 * the whole context (so the arena's high-water mark does not creep up with the position). */
export interface AttentionShared {
  cos: number;
  sin: number;
  half: number;
  softmaxScale: number;
  scratch: number;
}

export class Attention {
  private constructor(
    private readonly cfg: DeepSeekConfig,
    readonly q: { a: Matrix; aNorm: number; b: Matrix } | { proj: Matrix },
    readonly kvA: Matrix,
    readonly kvANorm: number,
    /** Per head: W_UK^T [kv_lora_rank, qk_nope_head_dim], the transposed key rows of kv_b_proj. */
    readonly wUK: Matrix[],
    /** Per head: W_UV [v_head_dim, kv_lora_rank], the value rows of kv_b_proj. */
    readonly wUV: Matrix[],
    readonly o: Matrix,
  ) {}

  static load(w: WeightReader, cfg: DeepSeekConfig, s: AttentionSchema): Attention {
    const { numAttentionHeads: heads, qkNopeHeadDim: nope, vHeadDim: v } = cfg;
    const q = 'proj' in s.q ? { proj: w.matrix(s.q.proj) } : { a: w.matrix(s.q.a), aNorm: w.vector(s.q.aNorm), b: w.matrix(s.q.b) };
    const kvA = w.matrix(s.kvA);
    const kvANorm = w.vector(s.kvANorm);
    // kv_b is cut per head into W_UK^T (its first nope rows, transposed) and W_UV (the next v rows).
    const firstRows = Array.from({ length: heads }, (_, h) => h * (nope + v));
    const cut = w.cuts(s.kvB, [
      ...firstRows.map((row, h) => ({ row, rows: nope, transpose: true, role: ROLE_W_UK_T, index: h })),
      ...firstRows.map((row, h) => ({ row: row + nope, rows: v, transpose: false, role: ROLE_W_UV, index: h })),
    ]);
    return new Attention(cfg, q, kvA, kvANorm, cut.slice(0, heads), cut.slice(heads), w.matrix(s.o));
  }

  /** The heads' W_UK^T and W_UV listed in wasm memory, and the latent core's shape: made by prepare(). */
  private prepared?: { wUK: MatrixTable; wUV: MatrixTable; shape: MlaShape };

  /** Lists the heads' matrices in wasm memory for decode's grouped steps. Call once after load, outside
   * any arena mark (the tables live as long as the weights). */
  prepare(rt: Runtime): void {
    const { numAttentionHeads: heads, qkNopeHeadDim: nope, qkRopeHeadDim: ropeDim, kvLoraRank: rank } = this.cfg;
    this.prepared = {
      wUK: new MatrixTable(rt, this.wUK, 'W_UK^T table'),
      wUV: new MatrixTable(rt, this.wUV, 'W_UV table'),
      shape: { heads, nope, ropeDim, rank },
    };
  }

  /**
   * out[T, hidden] = attention(x[T, hidden]) for the tokens of one or more sequences, each segment's tokens at
   * its positions pos0.. in its own cache layer: the projections run once over all T tokens (one pass over
   * their weights), the latents go into each segment's cache first so that each token also attends to itself
   * and the tokens before it, and the latent core runs per segment. Reads as MLA.forward in DeepSeek's
   * inference/model.py with attn_impl "absorb".
   */
  forward(rt: Runtime, x: number, tokens: number, segments: readonly Segment[], shared: AttentionShared, out: number): void {
    const { cfg } = this;
    const { wUK, wUV, shape } = this.prepared ?? fail('Attention.prepare(rt) must run after the weights are loaded');
    const op = rt.ops;
    const arena = rt.arena;
    const { heads, nope, ropeDim, rank } = shape;
    const v = cfg.vHeadDim;
    const eps = cfg.rmsNormEps;
    const qDim = nope + ropeDim;
    const latent = rank + ropeDim;
    const mark = arena.mark();

    // q = wq(x), or wq_b(q_norm(wq_a(x))): [T, heads, nope + rope]
    const q = arena.allocF32(tokens * heads * qDim, 'queries');
    if ('proj' in this.q) {
      op.linear(q, this.q.proj, x, tokens);
    } else {
      const qa = arena.allocF32(tokens * this.q.a.rows, 'query latents');
      op.linear(qa, this.q.a, x, tokens);
      op.rmsnorm(qa, qa, this.q.aNorm, this.q.a.rows, eps, tokens);
      op.linear(q, this.q.b, qa, tokens);
    }
    // kv, k_pe = split(wkv_a(x))
    const kv = arena.allocF32(tokens * latent, 'kv latents');
    op.linear(kv, this.kvA, x, tokens);
    const attn = arena.allocF32(tokens * heads * v, 'attention outputs');
    // A batched decode step (one token per sequence): the per-head matrices run once over all its tokens,
    // each head's weights read once for them; a token's [heads, rank] latents are then its segment's
    // [heads, 1, rank]. Otherwise per segment, over its tokens.
    const batched = segments.length > 1 && segments.every((g) => g.tokens === 1);
    let most = 0;
    for (const g of segments) most = Math.max(most, g.tokens);
    const latents = batched ? tokens : most;
    const qLat = arena.allocF32(heads * latents * rank, 'latent queries');
    const oLat = arena.allocF32(heads * latents * rank, 'latent outputs');
    // q_nope = einsum(q_nope, wkv_b[:, :nope]): q_lat[h, t] = W_UK^T[h] q_nope[t, h]
    if (batched) perHeadMatmul(rt, wUK, qLat, rank, heads * rank, q, qDim, heads * qDim, tokens);
    for (const g of segments) {
      const n = g.tokens;
      const qg = q + g.start * heads * qDim * 4;
      const qLatG = batched ? qLat + g.start * heads * rank * 4 : qLat;
      const oLatG = batched ? oLat + g.start * heads * rank * 4 : oLat;
      // q_nope, q_pe = split(q); q_pe = rope(q_pe)
      op.rope(qg + nope * 4, n, heads, heads * qDim, qDim, shared, g.pos0);
      // the cache rows of these positions get kv_norm(kv) and rope(k_pe)
      const rows = g.cache + g.pos0 * latent * 4;
      const kvg = kv + g.start * latent * 4;
      op.rmsnorm(rows, kvg, this.kvANorm, rank, eps, n, latent, latent);
      op.copyRows(rows + rank * 4, latent, kvg + rank * 4, latent, ropeDim, n);
      op.rope(rows + rank * 4, n, 1, latent, 0, shared, g.pos0);
      // q_lat [heads, n, rank]
      if (!batched) perHeadMatmul(rt, wUK, qLat, n * rank, rank, qg, qDim, heads * qDim, n);
      // scores = (q_lat . kv_cache + q_pe . pe_cache) * scale; x = softmax(scores) . kv_cache: o_lat [heads, n, rank]
      op.mlaAttention(oLatG, qLatG, qg, g.cache, n, g.pos0, shape, shared.softmaxScale, shared.scratch);
      // x = einsum(x, wkv_b[:, -v:]): [n, heads, v], x[t, h] = W_UV[h] o_lat[h, t]
      if (!batched) perHeadMatmul(rt, wUV, attn + g.start * heads * v * 4, v, heads * v, oLat, n * rank, rank, n);
    }
    if (batched) perHeadMatmul(rt, wUV, attn, v, heads * v, oLat, rank, heads * rank, tokens);
    // wo(x)
    op.linear(out, this.o, attn, tokens);
    arena.release(mark);
  }
}

/** One sequence's tokens in a pass: rows [start, start + tokens) of the pass, at positions pos0.., cached in `cache` (this layer's). */
export interface Segment {
  start: number;
  tokens: number;
  pos0: number;
  cache: number;
}
