import type { DeepSeekConfig } from '../checkpoint/config.js';
import type { Runtime } from '../runtime/runtime.js';
import { Attention, type AttentionShared, type Segment } from './attention.js';
import { Mlp } from './mlp.js';
import { Moe } from './moe.js';
import type { BlockSchema } from './schema.js';
import type { WeightReader } from './weights.js';

/**
 * One WebAssembly memory of the model (wasm32 holds at most 4 GiB, so a larger model spans several): its
 * runtime, the rotary tables and attention scratch when it holds layers, and each pass's hidden states,
 * normed states and block outputs, allocated there at the start of the pass.
 */
export interface Place {
  readonly rt: Runtime;
  readonly attention: AttentionShared | null;
  x: number;
  h: number;
  y: number;
  mark: number;
}

/** One transformer block: x += attn(norm(x)); x += ffn(norm(x)), the ffn being MoE or a dense MLP. */
export class Block {
  constructor(
    /** The memory of its attention, norms, router, shared experts and KV cache. */
    readonly place: Place,
    readonly attnNorm: number,
    readonly attn: Attention,
    readonly ffnNorm: number,
    readonly ffn: Mlp | Moe,
  ) {}

  static load(w: WeightReader, cfg: DeepSeekConfig, s: BlockSchema, place: Place): Block {
    return new Block(
      place,
      w.vector(s.attnNorm),
      Attention.load(w, cfg, s.attn),
      w.vector(s.ffnNorm),
      'moe' in s.ffn ? Moe.load(w, cfg, s.ffn.moe) : Mlp.load(w, s.ffn.mlp),
    );
  }

  /** x += attn(attn_norm(x)); x += ffn(ffn_norm(x)) over `tokens` rows of x, in its memory; h and y are scratch rows. */
  forward(x: number, h: number, y: number, tokens: number, segments: readonly Segment[], cfg: DeepSeekConfig): void {
    const { rt, attention } = this.place;
    const op = rt.ops;
    const hidden = cfg.hiddenSize;
    op.rmsnorm(h, x, this.attnNorm, hidden, cfg.rmsNormEps, tokens);
    this.attn.forward(rt, h, tokens, segments, attention!, y);
    op.add(x, y, tokens * hidden);
    op.rmsnorm(h, x, this.ffnNorm, hidden, cfg.rmsNormEps, tokens);
    this.ffn.forward(rt, h, tokens, y);
    op.add(x, y, tokens * hidden);
  }
}
