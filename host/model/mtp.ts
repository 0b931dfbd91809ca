// DeepSeek-V3's multi-token-prediction layer (report section 2.2), run as a draft model inside the model. At
// position i it takes the main model's last hidden state h_i AFTER the final norm, the head's input (the
// report leaves it open; vLLM's DeepseekV2Model returns model.norm's output and its MTP proposer feeds those
// states to hnorm, as SGLang does: what DeepSeek's released MTP weights are run with) and the next token t_{i+1}:
//   h'_i = eh_proj([enorm(embed(t_{i+1})); hnorm(h_i)])   (embedding first, as the released weights expect)
//   o_i = block(h'_i) with the layer's own latent cache, logits = head(norm(o_i)), a guess at t_{i+2}.
import type { DeepSeekConfig } from '../checkpoint/config.js';
import { fail } from '../errors.js';
import { Block, type Place } from './block.js';
import type { Segment } from './attention.js';
import { Moe } from './moe.js';
import { kvRowBytes, type ModelSchema, type MtpSchema, type Weight } from './schema.js';
import type { Runtime } from '../runtime/runtime.js';
import type { Matrix, WeightReader } from './weights.js';

export class MtpLayer {
  private readonly segment: Segment[] = [{ start: 0, tokens: 0, pos0: 0, cache: 0 }];

  private constructor(
    private readonly cfg: DeepSeekConfig,
    private readonly place: Place,
    private readonly embed: Matrix,
    private readonly enorm: number,
    private readonly hnorm: number,
    private readonly ehProj: Matrix,
    private readonly block: Block,
    private readonly headNorm: number,
    private readonly head: Matrix,
    /** caches[slot]: the address of a sequence's MTP latents, [contextLength, kv_lora_rank + qk_rope_head_dim]. */
    private readonly caches: number[],
    private readonly contextLength: number,
    /** The last position's logits, one buffer reused by every call. */
    private readonly logits: Float32Array,
  ) {}

  static load(w: WeightReader, cfg: DeepSeekConfig, s: MtpSchema, place: Place, runtimeOf: (w: Weight) => Runtime, maxSequences: number, contextLength: number): MtpLayer {
    const rt = place.rt;
    const embed = w.matrix(s.embed);
    const enorm = w.vector(s.enorm);
    const hnorm = w.vector(s.hnorm);
    const ehProj = w.matrix(s.ehProj);
    const block = Block.load(w, cfg, s.block, place);
    block.attn.prepare(rt);
    if (block.ffn instanceof Moe && 'moe' in s.block.ffn) {
      const experts = s.block.ffn.moe.experts;
      block.ffn.prepare(rt, (e) => runtimeOf(experts[e].gateUp));
    }
    const headNorm = w.vector(s.headNorm);
    const head = w.matrix(s.head);
    const caches = Array.from({ length: maxSequences }, (_, slot) => rt.arena.alloc(contextLength * kvRowBytes(cfg), `MTP KV cache of sequence ${slot}`));
    const logits = rt.f32(rt.arena.allocF32(cfg.vocabSize, 'MTP logits'), cfg.vocabSize);
    return new MtpLayer(cfg, place, embed, enorm, hnorm, ehProj, block, headNorm, head, caches, contextLength, logits);
  }

  /** MTP positions [position, position + tokens.length) of a sequence's slot; see MtpHead in backend.ts. */
  forward(slot: number, position: number, tokens: ArrayLike<number>, hidden: Float32Array, out: Float32Array): Float32Array {
    const { hiddenSize: dim, rmsNormEps: eps } = this.cfg;
    const n = tokens.length;
    checkMtpCall(this.cfg, this.contextLength, position, n, hidden, out);
    const { rt } = this.place;
    const op = rt.ops;
    const mark = rt.arena.mark();
    try {
      const x = rt.arena.alloc(n * dim * 4, 'MTP states');
      const h = rt.arena.alloc(n * dim * 4, 'MTP normed states');
      const y = rt.arena.alloc(n * dim * 4, 'MTP block outputs');
      const joined = rt.arena.alloc(n * 2 * dim * 4, 'MTP [enorm(e); hnorm(h)]');
      const ids = rt.arena.alloc(n * 4, 'MTP token ids');
      rt.heap().i32.set(tokens, ids / 4);
      rt.kernels.embed(this.embed.fmt, x, this.embed.ptr, ids, n, dim);
      op.rmsnorm(joined, x, this.enorm, dim, eps, n, 2 * dim, dim);
      rt.heap().f32.set(hidden, y / 4);
      op.rmsnorm(joined + dim * 4, y, this.hnorm, dim, eps, n, 2 * dim, dim);
      op.linear(x, this.ehProj, joined, n);
      const seg = this.segment[0];
      seg.tokens = n;
      seg.pos0 = position;
      seg.cache = this.caches[slot];
      this.block.forward(x, h, y, n, this.segment, this.cfg);
      const last = x + (n - 1) * dim * 4;
      out.set(rt.f32(last, dim));
      op.rmsnorm(h, last, this.headNorm, dim, eps, 1);
      op.linear(this.logits.byteOffset, this.head, h, 1);
      return this.logits;
    } finally {
      rt.arena.release(mark);
    }
  }
}

/** The checks of MtpHead.forward's arguments, on every backend: a hidden state per token, an output state, positions in the context. */
export function checkMtpCall(cfg: DeepSeekConfig, contextLength: number, position: number, n: number, hidden: Float32Array, out: Float32Array): void {
  const dim = cfg.hiddenSize;
  if (n === 0 || hidden.length !== n * dim) fail(`the MTP layer needs one hidden state (${dim} floats) per token; got ${hidden.length} floats for ${n} tokens`);
  if (out.length !== dim) fail(`the MTP layer's output state holds ${dim} floats, got a buffer of ${out.length}`);
  if (!Number.isInteger(position) || position < 0 || position + n > contextLength) {
    fail(`MTP positions ${position} to ${position + n - 1} are outside the context (${contextLength})`);
  }
}

/** The MTP layer a load with `mtp` runs (the first; DeepSeek-V3 has one), or an error naming the checkpoint that has none. */
export function mtpLayerOf(schema: ModelSchema, dir: string): MtpSchema {
  if (schema.mtp.length === 0) fail(`${dir}: this checkpoint has no MTP layer (num_nextn_predict_layers is 0 in config.json); draft with another model (--draft DIR)`);
  return schema.mtp[0];
}
