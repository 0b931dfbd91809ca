import type { DeepSeekConfig } from '../checkpoint/config.js';
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

  /** out[T, hidden] = attention(x[T, hidden]) for tokens at positions pos0.., writing their latents
   * into the cache layer first so that each token also attends to itself and the tokens before it. */
  forward(
    rt: Runtime, x: number, tokens: number, pos0: number, cache: number, shared: AttentionShared, out: number,
  ): void {
    const { cfg } = this;
    const k = rt.kernels;
    const arena = rt.arena;
    const { numAttentionHeads: heads, qkNopeHeadDim: nope, qkRopeHeadDim: ropeDim, vHeadDim: v, kvLoraRank: rank } = cfg;
    const qDim = nope + ropeDim;
    const latent = rank + ropeDim;
    const mark = arena.mark();

    const q = arena.allocF32(tokens * heads * qDim, 'queries');
    if ('proj' in this.q) {
      k.matmul(this.q.proj.fmt, q, this.q.proj.ptr, x, this.q.proj.rows, this.q.proj.cols, tokens);
    } else {
      const { a, aNorm, b } = this.q;
      const qa = arena.allocF32(tokens * a.rows, 'query latents');
      k.matmul(a.fmt, qa, a.ptr, x, a.rows, a.cols, tokens);
      k.rmsnorm(qa, a.rows, qa, a.rows, aNorm, a.rows, tokens, cfg.rmsNormEps);
      k.matmul(b.fmt, q, b.ptr, qa, b.rows, b.cols, tokens);
    }
    k.rope(q + nope * 4, tokens, heads, heads * qDim, qDim, shared.cos, shared.sin, pos0, shared.half);

    const kv = arena.allocF32(tokens * latent, 'kv latents');
    k.matmul(this.kvA.fmt, kv, this.kvA.ptr, x, this.kvA.rows, this.kvA.cols, tokens);
    const rows = cache + pos0 * latent * 4;
    k.rmsnorm(rows, latent, kv, latent, this.kvANorm, rank, tokens, cfg.rmsNormEps);
    k.copy_rows(rows + rank * 4, latent, kv + rank * 4, latent, ropeDim, tokens);
    k.rope(rows + rank * 4, tokens, 1, latent, 0, shared.cos, shared.sin, pos0, shared.half);

    // q_lat [heads, T, rank]: q_lat[h, t] = W_UK^T[h] q_nope[t, h].
    const qLat = arena.allocF32(heads * tokens * rank, 'latent queries');
    perHeadMatmul(rt, this.wUK, qLat, tokens * rank, rank, q, qDim, heads * qDim, tokens);
    // o_lat [heads, T, rank]: softmax((q_lat . c + q_rope . k_rope) * scale) over the cache, applied to c.
    const oLat = arena.allocF32(heads * tokens * rank, 'latent outputs');
    k.mla_attention(oLat, qLat, q, cache, shared.scratch, tokens, heads, nope, ropeDim, rank, pos0, shared.softmaxScale);
    // attn [T, heads, v]: attn[t, h] = W_UV[h] o_lat[h, t]; then o_proj.
    const attn = arena.allocF32(tokens * heads * v, 'attention outputs');
    perHeadMatmul(rt, this.wUV, attn, v, heads * v, oLat, tokens * rank, rank, tokens);
    k.matmul(this.o.fmt, out, this.o.ptr, attn, this.o.rows, this.o.cols, tokens);
    arena.release(mark);
  }
}
