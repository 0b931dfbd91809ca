import type { DeepSeekConfig } from '../checkpoint/config.js';
import type { Runtime } from '../runtime/runtime.js';
import type { Matrix, WeightReader } from './weights.js';

/**
 * Multi-head latent attention (MLA). Queries come from a low-rank path (q_a -> norm -> q_b) or one
 * q_proj; keys and values are compressed into one latent c per token (kv_a -> norm) plus a single
 * roped key shared by all heads. Only [c | k_rope] is cached; assembly/blocks/mla.ts absorbs
 * kv_b_proj into the query and the output instead of expanding keys and values per head.
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
    readonly kvB: Matrix,
    readonly o: Matrix,
  ) {}

  static load(w: WeightReader, cfg: DeepSeekConfig, prefix: string): Attention {
    const { hiddenSize: hidden, numAttentionHeads: heads, qkNopeHeadDim: nope, qkRopeHeadDim: rope, vHeadDim: v } = cfg;
    const rank = cfg.kvLoraRank;
    const qRows = heads * (nope + rope);
    const qWhy = 'num_attention_heads * (qk_nope_head_dim + qk_rope_head_dim)';
    const q =
      cfg.qLoraRank === null
        ? { proj: w.matrix([{ name: `${prefix}.q_proj.weight`, rows: qRows, why: `${qWhy} x hidden_size` }], hidden) }
        : {
            a: w.matrix([{ name: `${prefix}.q_a_proj.weight`, rows: cfg.qLoraRank, why: 'q_lora_rank x hidden_size' }], hidden),
            aNorm: w.vector(`${prefix}.q_a_layernorm.weight`, cfg.qLoraRank, 'q_lora_rank'),
            b: w.matrix([{ name: `${prefix}.q_b_proj.weight`, rows: qRows, why: `${qWhy} x q_lora_rank` }], cfg.qLoraRank),
          };
    const kvA = w.matrix(
      [{ name: `${prefix}.kv_a_proj_with_mqa.weight`, rows: rank + rope, why: '(kv_lora_rank + qk_rope_head_dim) x hidden_size' }],
      hidden,
    );
    const kvANorm = w.vector(`${prefix}.kv_a_layernorm.weight`, rank, 'kv_lora_rank');
    const kvB = w.matrix(
      [{ name: `${prefix}.kv_b_proj.weight`, rows: heads * (nope + v), why: 'num_attention_heads * (qk_nope_head_dim + v_head_dim) x kv_lora_rank' }],
      rank,
    );
    const o = w.matrix([{ name: `${prefix}.o_proj.weight`, rows: hidden, why: 'hidden_size x num_attention_heads * v_head_dim' }], heads * v);
    return new Attention(cfg, q, kvA, kvANorm, kvB, o);
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

    const attn = arena.allocF32(tokens * heads * v, 'attention outputs');
    k.mla_attention(this.kvB.fmt, attn, q, this.kvB.ptr, cache, shared.scratch, tokens, heads, nope, ropeDim, v, rank, pos0, shared.softmaxScale);
    k.matmul(this.o.fmt, out, this.o.ptr, attn, this.o.rows, this.o.cols, tokens);
    arena.release(mark);
  }
}
