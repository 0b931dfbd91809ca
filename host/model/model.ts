import { openCheckpoint, type Checkpoint } from '../checkpoint/checkpoint.js';
import { isMoeLayer, type DeepSeekConfig } from '../checkpoint/config.js';
import { fail } from '../errors.js';
import type { SimdChoice } from '../runtime/features.js';
import { Runtime } from '../runtime/runtime.js';
import { Attention, type AttentionShared } from './attention.js';
import { Mlp } from './mlp.js';
import { Moe } from './moe.js';
import { ropeTables, softmaxScale } from './rope.js';
import { WeightReader, type Matrix, type QuantMode, type QuantName } from './weights.js';

/** One transformer block: x += attn(norm(x)); x += ffn(norm(x)), the ffn being MoE or a dense MLP. */
class Block {
  constructor(
    readonly attnNorm: number,
    readonly attn: Attention,
    readonly ffnNorm: number,
    readonly ffn: Mlp | Moe,
  ) {}
}

export interface LoadOptions {
  /** Threads taking part in each kernel, this one included (default: all cores). */
  threads?: number;
  /** Most tokens a sequence may hold (prompt and generated); default min(max_position_embeddings, 4096). */
  contextLength?: number;
  /** Called as weight bytes are read, with the total to read. */
  onProgress?: (bytesRead: number, totalBytes: number) => void;
  /**
   * Weight format of the matrices (docs/quantized-format.md). Default: as stored when the checkpoint
   * is at most 1 GiB, q8 above that for bf16/f32 checkpoints; FP8 checkpoints stay fp8 and
   * `deepwasm convert` output loads in its own format.
   */
  quant?: QuantName;
  /** 'plain' forces the SIMD128 build, 'relaxed' the relaxed-SIMD one; default DEEPWASM_SIMD or auto-detect. */
  simd?: SimdChoice;
  /** The compiled core to run (either build), instead of reading build/*.wasm from disk; `simd` is then unused. */
  wasm?: WebAssembly.Module;
  /**
   * Most tokens one pass through the layers takes (default 256): a longer prompt runs in passes of
   * this many, so its temporaries stay bounded (MLA's per-head buffers alone take heads x tokens x
   * kv_lora_rank floats twice: 128 MiB for 4096 tokens of a 16-head model). 256 keeps every reuse of the
   * weights inside a pass (4-token tiles, 64-token quantization chunks).
   */
  passTokens?: number;
}

export interface ForwardOptions {
  /** Logits for every position (the prompt's, as the reference fixtures hold) instead of the last. */
  allLogits?: boolean;
}

/**
 * A DeepSeek-V2/V3 model in wasm memory with its latent KV cache. forward() appends tokens to the
 * sequence (prefill when given many, decode when given one) and returns next-token logits; the
 * returned array is a view of wasm memory, valid until the next call.
 */
export class Model {
  /** Tokens already in the cache: the position of the next token. */
  position = 0;

  private constructor(
    readonly config: DeepSeekConfig,
    readonly rt: Runtime,
    readonly contextLength: number,
    private readonly embed: Matrix,
    private readonly blocks: Block[],
    private readonly norm: number,
    private readonly head: Matrix,
    private readonly cache: number[],
    private readonly attention: AttentionShared,
    /** The last position's logits: one buffer, returned as one view, for every decode step. */
    private readonly logits: Float32Array,
    /** The weight format the matrices were loaded in ('stored': f32/bf16 as in the checkpoint). */
    readonly quant: QuantMode,
    private readonly passTokens: number,
  ) {}

  static async load(dir: string, opts: LoadOptions = {}): Promise<Model> {
    return Model.fromCheckpoint(openCheckpoint(dir), opts);
  }

  /** Loads the weights of an opened checkpoint (a folder's, or one held in memory); closes it when done. */
  static async fromCheckpoint(ckpt: Checkpoint, opts: LoadOptions = {}): Promise<Model> {
    const cfg = ckpt.config;
    const contextLength = opts.contextLength ?? Math.min(cfg.maxPositionEmbeddings, 4096);
    const passTokens = opts.passTokens ?? 256;
    if (!Number.isInteger(passTokens) || passTokens < 1) fail(`passTokens must be a whole number of at least 1, got ${passTokens}`);
    if (!Number.isInteger(contextLength) || contextLength < 1 || contextLength > cfg.maxPositionEmbeddings) {
      fail(`context length must be a whole number from 1 to max_position_embeddings (${cfg.maxPositionEmbeddings}), got ${contextLength}`);
    }
    const rt = await Runtime.create(opts.threads, { simd: opts.simd, module: opts.wasm });
    try {
      let read = 0;
      const w = new WeightReader(ckpt, rt, (bytes) => opts.onProgress?.((read += bytes), ckpt.totalBytes), opts.quant);
      const hidden = cfg.hiddenSize;
      const embed = w.matrix([{ name: 'model.embed_tokens.weight', rows: cfg.vocabSize, why: 'vocab_size x hidden_size' }], hidden);
      const blocks: Block[] = [];
      for (let i = 0; i < cfg.numHiddenLayers; i++) {
        const p = `model.layers.${i}`;
        blocks.push(
          new Block(
            w.vector(`${p}.input_layernorm.weight`, hidden, 'hidden_size'),
            Attention.load(w, cfg, `${p}.self_attn`),
            w.vector(`${p}.post_attention_layernorm.weight`, hidden, 'hidden_size'),
            isMoeLayer(cfg, i) ? Moe.load(w, cfg, `${p}.mlp`) : Mlp.load(w, `${p}.mlp`, hidden, cfg.intermediateSize, 'intermediate_size'),
          ),
        );
      }
      for (const b of blocks) {
        b.attn.prepare(rt);
        if (b.ffn instanceof Moe) b.ffn.prepare(rt);
      }
      const norm = w.vector('model.norm.weight', hidden, 'hidden_size');
      const head =
        cfg.tieWordEmbeddings && !w.has('lm_head.weight')
          ? embed
          : w.matrix([{ name: 'lm_head.weight', rows: cfg.vocabSize, why: 'vocab_size x hidden_size' }], hidden);

      const latent = cfg.kvLoraRank + cfg.qkRopeHeadDim;
      const cache = blocks.map((_, i) => rt.arena.allocF32(contextLength * latent, `KV cache of layer ${i}`));
      const tables = ropeTables(cfg, contextLength);
      const attention: AttentionShared = {
        cos: rt.arena.allocF32(tables.cos.length, 'rope cos'),
        sin: rt.arena.allocF32(tables.sin.length, 'rope sin'),
        half: tables.half,
        softmaxScale: softmaxScale(cfg),
        scratch: rt.arena.allocF32(rt.threads * rt.kernels.mla_scratch_floats(contextLength), 'attention scratch'),
      };
      rt.f32(attention.cos, tables.cos.length).set(tables.cos);
      rt.f32(attention.sin, tables.sin.length).set(tables.sin);
      const logits = rt.f32(rt.arena.allocF32(cfg.vocabSize, 'logits'), cfg.vocabSize);
      return new Model(cfg, rt, contextLength, embed, blocks, norm, head, cache, attention, logits, w.mode, passTokens);
    } catch (e) {
      await rt.close();
      throw e;
    } finally {
      ckpt.close();
    }
  }

  get threads(): number {
    return this.rt.threads;
  }

  /** Forgets the sequence; the cache is overwritten from position 0. */
  reset(): void {
    this.position = 0;
  }

  /** Runs ids through the model after the tokens already cached; returns [1 or T, vocab] logits. */
  forward(ids: ArrayLike<number>, opts?: ForwardOptions): Float32Array {
    this.check(ids);
    const tokens = ids.length;
    if (tokens <= this.passTokens) return this.pass(ids, opts?.allLogits ? 'all' : 'last');
    const vocab = this.config.vocabSize;
    const all = opts?.allLogits ? new Float32Array(tokens * vocab) : null;
    let logits = this.logits;
    for (let start = 0; start < tokens; start += this.passTokens) {
      const end = Math.min(tokens, start + this.passTokens);
      const part = Array.from({ length: end - start }, (_, i) => ids[start + i]);
      // Only the last pass needs the head (236 MB of weights on v3-2k6), unless every position's logits are wanted.
      logits = this.pass(part, all ? 'all' : end === tokens ? 'last' : 'none');
      all?.set(logits, start * vocab);
    }
    return all ?? logits;
  }

  /** One pass of checked ids through every layer; 'none' leaves out the final norm and the head. */
  private pass(ids: ArrayLike<number>, want: 'none' | 'last' | 'all'): Float32Array {
    const cfg = this.config;
    const { rt } = this;
    const k = rt.kernels;
    const tokens = ids.length;
    const pos0 = this.position;
    const hidden = cfg.hiddenSize;
    const vocab = cfg.vocabSize;
    const mark = rt.arena.mark();

    const idPtr = rt.arena.alloc(tokens * 4, 'token ids');
    rt.heap().i32.set(ids, idPtr / 4);
    const x = rt.arena.allocF32(tokens * hidden, 'hidden states');
    const h = rt.arena.allocF32(tokens * hidden, 'normed hidden states');
    const y = rt.arena.allocF32(tokens * hidden, 'block outputs');
    k.embed(this.embed.fmt, x, this.embed.ptr, idPtr, tokens, hidden);
    for (let i = 0; i < this.blocks.length; i++) {
      const b = this.blocks[i];
      k.rmsnorm(h, hidden, x, hidden, b.attnNorm, hidden, tokens, cfg.rmsNormEps);
      b.attn.forward(rt, h, tokens, pos0, this.cache[i], this.attention, y);
      k.add(x, y, tokens * hidden);
      k.rmsnorm(h, hidden, x, hidden, b.ffnNorm, hidden, tokens, cfg.rmsNormEps);
      b.ffn.forward(rt, h, tokens, y);
      k.add(x, y, tokens * hidden);
    }

    let result = this.logits;
    if (want !== 'none') {
      const rows = want === 'all' ? tokens : 1;
      const last = x + (tokens - rows) * hidden * 4;
      k.rmsnorm(h, hidden, last, hidden, this.norm, hidden, rows, cfg.rmsNormEps);
      if (rows === 1) {
        k.matmul(this.head.fmt, this.logits.byteOffset, this.head.ptr, h, vocab, hidden, 1);
      } else {
        const all = rt.arena.allocF32(rows * vocab, 'logits');
        k.matmul(this.head.fmt, all, this.head.ptr, h, vocab, hidden, rows);
        result = rt.f32(all, rows * vocab).slice();
      }
    }
    rt.arena.release(mark);
    this.position += tokens;
    return result;
  }

  private check(ids: ArrayLike<number>): void {
    const vocab = this.config.vocabSize;
    if (ids.length === 0) fail('no tokens to run: the prompt is empty');
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i];
      if (!Number.isInteger(id) || id < 0 || id >= vocab) {
        fail(`token id ${id} at index ${i} is outside the vocabulary (expected 0 to ${vocab - 1}, vocab_size in config.json)`);
      }
    }
    const end = this.position + ids.length;
    if (end > this.config.maxPositionEmbeddings) {
      fail(`${end} tokens exceed max_position_embeddings (${this.config.maxPositionEmbeddings}) in config.json`);
    }
    if (end > this.contextLength) {
      fail(`${end} tokens exceed the context length (${this.contextLength}); load the model with a larger context (--context)`);
    }
  }

  async close(): Promise<void> {
    await this.rt.close();
  }
}
