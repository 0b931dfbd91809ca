import { openCheckpoint, type Checkpoint } from '../checkpoint/checkpoint.js';
import type { DeepSeekConfig } from '../checkpoint/config.js';
import { fail } from '../errors.js';
import { MAX_MEMORY_BYTES } from '../runtime/arena.js';
import { Runtime } from '../runtime/runtime.js';
import { Attention, type AttentionShared } from './attention.js';
import type { BatchEntry, LoadOptions, LogitsRows, ModelBackend, Sequence } from './backend.js';
import { Mlp } from './mlp.js';
import { Moe } from './moe.js';
import { scratchBytes } from './placement.js';
import { ropeTables, softmaxScale } from './rope.js';
import { kvRowBytes, modelSchema, schemaWeights, weightTotals, type BlockSchema } from './schema.js';
import { SequencePool, poolShape, type Slot } from './sequences.js';
import { WeightReader, type Matrix, type Placed, type QuantMode } from './weights.js';

/** One transformer block: x += attn(norm(x)); x += ffn(norm(x)), the ffn being MoE or a dense MLP. */
class Block {
  constructor(
    readonly attnNorm: number,
    readonly attn: Attention,
    readonly ffnNorm: number,
    readonly ffn: Mlp | Moe,
  ) {}

  static load(w: WeightReader, cfg: DeepSeekConfig, s: BlockSchema): Block {
    return new Block(
      w.vector(s.attnNorm),
      Attention.load(w, cfg, s.attn),
      w.vector(s.ffnNorm),
      'moe' in s.ffn ? Moe.load(w, cfg, s.ffn.moe) : Mlp.load(w, s.ffn.mlp),
    );
  }
}

const NO_LOGITS = new Float32Array(0);
const MiB = 1024 * 1024;

/**
 * A DeepSeek-V2/V3 model in wasm memory: the CPU backend. Its KV-cache pool holds maxSequences
 * sequences of contextLength tokens, each a [layers, contextLength, kv_lora_rank + qk_rope_head_dim]
 * block of latents, allocated once at load.
 */
export class Model implements ModelBackend {
  readonly backend = 'cpu';
  readonly maxSequences: number;
  private readonly sequences: SequencePool;
  private closed = false;
  /** One cached position of one layer (the latent c and the roped key), and one layer of a sequence's cache. */
  private readonly rowBytes: number;
  private readonly layerBytes: number;

  private constructor(
    readonly config: DeepSeekConfig,
    readonly rt: Runtime,
    readonly contextLength: number,
    private readonly embed: Matrix,
    private readonly blocks: Block[],
    private readonly norm: number,
    private readonly head: Matrix,
    /** Each slot's cache: layer i's latents start i * contextLength * latent floats in. */
    private readonly caches: number[],
    private readonly attention: AttentionShared,
    /** The last position's logits: one buffer, returned as one view, for every decode step. */
    private readonly logits: Float32Array,
    /** The weight format the matrices were loaded in ('stored': f32/bf16 as in the checkpoint). */
    readonly quant: QuantMode,
    private readonly passTokens: number,
    readonly weightBytes: number,
    readonly activeBytes: number,
    /** Every weight as loaded (role, layer, index, format, shape, address): what the WASI image lists. */
    readonly placed: readonly Placed[],
  ) {
    this.maxSequences = caches.length;
    this.rowBytes = kvRowBytes(config);
    this.layerBytes = contextLength * this.rowBytes;
    this.sequences = new SequencePool(config, contextLength, caches.length);
  }

  static async load(dir: string, opts: LoadOptions = {}): Promise<Model> {
    return Model.fromCheckpoint(openCheckpoint(dir), opts);
  }

  /** Loads the weights of an opened checkpoint (a folder's, or one held in memory); closes it when done. */
  static async fromCheckpoint(ckpt: Checkpoint, opts: LoadOptions = {}): Promise<Model> {
    try {
      const { contextLength, maxSequences, passTokens } = poolShape(ckpt.config, opts);
      const rt = await Runtime.create(opts.threads, { simd: opts.simd, module: opts.wasm });
      try {
        return Model.read(ckpt, rt, opts, contextLength, maxSequences, passTokens);
      } catch (e) {
        await rt.close();
        throw e;
      }
    } finally {
      ckpt.close();
    }
  }

  private static read(ckpt: Checkpoint, rt: Runtime, opts: LoadOptions, contextLength: number, maxSequences: number, passTokens: number): Model {
    const cfg = ckpt.config;
    let read = 0;
    let total = 0;
    const w = new WeightReader(ckpt, rt, (bytes) => opts.onProgress?.((read += bytes), total), opts.quant);
    const schema = modelSchema(cfg, { hasLmHead: ckpt.has('lm_head.weight') });
    const cacheFloats = (cfg.numHiddenLayers * contextLength * kvRowBytes(cfg)) / 4;
    const weights = schemaWeights(schema);
    total = weights.reduce((n, x) => n + w.readBytes(x), 0);
    const bytes = weightTotals(schema, (x) => w.plannedBytes(x));
    checkFits(cfg, w, bytes.weights, maxSequences * cacheFloats * 4, contextLength, maxSequences, passTokens, rt.threads);

    const embed = w.matrix(schema.embed);
    const blocks = schema.blocks.map((b) => Block.load(w, cfg, b));
    // The tables of matrices the grouped steps read (written once, outside every step's arena mark).
    for (const b of blocks) {
      b.attn.prepare(rt);
      if (b.ffn instanceof Moe) b.ffn.prepare(rt);
    }
    const norm = w.vector(schema.norm);
    const head = schema.head.tied ? embed : w.matrix(schema.head);
    if (schema.head.tied) w.alias(schema.head, embed);

    const caches = Array.from({ length: maxSequences }, (_, s) => rt.arena.allocF32(cacheFloats, `KV cache of sequence ${s}`));
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
    return new Model(cfg, rt, contextLength, embed, blocks, norm, head, caches, attention, logits, w.mode, passTokens, bytes.weights, bytes.active, w.placed);
  }

  get threads(): number {
    return this.rt.threads;
  }

  get device(): string {
    const simd = this.rt.simd === 'relaxed' ? 'relaxed SIMD' : 'SIMD128';
    return `CPU (WebAssembly ${simd}, ${this.threads} thread${this.threads === 1 ? '' : 's'})`;
  }

  createSequence(): Sequence {
    return this.sequences.create();
  }

  truncate(sequence: Sequence, position: number): void {
    this.sequences.truncate(sequence, position);
  }

  free(sequence: Sequence): void {
    this.sequences.free(sequence);
  }

  /** A new sequence with a copy of this one's cached latents (rows [0, position) of every layer). */
  fork(sequence: Sequence): Sequence {
    const { from, to } = this.sequences.fork(sequence);
    const { rowBytes, layerBytes } = this;
    const heap = new Uint8Array(this.rt.memory.buffer);
    for (let i = 0; i < this.blocks.length; i++) {
      const src = this.caches[from.slot] + i * layerBytes;
      heap.copyWithin(this.caches[to.slot] + i * layerBytes, src, src + from.position * rowBytes);
    }
    return to;
  }

  /**
   * Runs each entry's tokens after its sequence's cached ones, one sequence after another. With one entry
   * its 'last' row is a view of wasm memory, valid until the next call (so decoding allocates nothing);
   * with several, and for 'all', the rows are copies.
   */
  forward(batch: readonly BatchEntry[]): Float32Array[] {
    if (this.closed) fail('this model is closed; load it again');
    const seqs = this.sequences.check(batch);
    return batch.map((entry, b) => {
      const rows = this.run(seqs[b], entry.tokens, entry.logits ?? 'last');
      return batch.length > 1 && rows === this.logits ? rows.slice() : rows;
    });
  }

  /** A sequence's tokens through the model, in passes of at most passTokens tokens. */
  private run(seq: Slot, ids: ArrayLike<number>, want: LogitsRows): Float32Array {
    const tokens = ids.length;
    if (tokens <= this.passTokens) return this.pass(seq, ids, want);
    const vocab = this.config.vocabSize;
    const all = want === 'all' ? new Float32Array(tokens * vocab) : null;
    let logits: Float32Array = NO_LOGITS;
    for (let start = 0; start < tokens; start += this.passTokens) {
      const end = Math.min(tokens, start + this.passTokens);
      const part = Array.from({ length: end - start }, (_, i) => ids[start + i]);
      // Only the last pass needs the head (236 MB of weights on v3-2k6), unless every position's logits are wanted.
      logits = this.pass(seq, part, all ? 'all' : end === tokens ? want : 'none');
      all?.set(logits, start * vocab);
    }
    return all ?? logits;
  }

  /** One pass of checked ids through every layer; 'none' leaves out the final norm and the head. */
  private pass(seq: Slot, ids: ArrayLike<number>, want: LogitsRows): Float32Array {
    const cfg = this.config;
    const { rt } = this;
    const k = rt.kernels;
    const op = rt.ops;
    const eps = cfg.rmsNormEps;
    const tokens = ids.length;
    const pos0 = seq.position;
    const hidden = cfg.hiddenSize;
    const vocab = cfg.vocabSize;
    const { layerBytes } = this;
    const cache = this.caches[seq.slot];
    const mark = rt.arena.mark();

    const idPtr = rt.arena.alloc(tokens * 4, 'token ids');
    rt.heap().i32.set(ids, idPtr / 4);
    const x = rt.arena.allocF32(tokens * hidden, 'hidden states');
    const h = rt.arena.allocF32(tokens * hidden, 'normed hidden states');
    const y = rt.arena.allocF32(tokens * hidden, 'block outputs');
    // h = embed(tokens); for each layer: h += attn(attn_norm(h)); h += ffn(ffn_norm(h))
    k.embed(this.embed.fmt, x, this.embed.ptr, idPtr, tokens, hidden);
    for (let i = 0; i < this.blocks.length; i++) {
      const b = this.blocks[i];
      op.rmsnorm(h, x, b.attnNorm, hidden, eps, tokens);
      b.attn.forward(rt, h, tokens, pos0, cache + i * layerBytes, this.attention, y);
      op.add(x, y, tokens * hidden);
      op.rmsnorm(h, x, b.ffnNorm, hidden, eps, tokens);
      b.ffn.forward(rt, h, tokens, y);
      op.add(x, y, tokens * hidden);
    }

    // logits = head(norm(h)) at the last position, or at every position
    let result: Float32Array = NO_LOGITS;
    if (want !== 'none') {
      const rows = want === 'all' ? tokens : 1;
      const last = x + (tokens - rows) * hidden * 4;
      op.rmsnorm(h, last, this.norm, hidden, eps, rows);
      if (rows === 1) {
        op.linear(this.logits.byteOffset, this.head, h, 1);
        result = this.logits;
      } else {
        const all = rt.arena.allocF32(rows * vocab, 'logits');
        op.linear(all, this.head, h, rows);
        result = rt.f32(all, rows * vocab).slice();
      }
    }
    rt.arena.release(mark);
    seq.position += tokens;
    return result;
  }

  async close(): Promise<void> {
    this.closed = true;
    await this.rt.close();
  }
}

/**
 * Refuses a load whose weights, KV-cache pool and scratch cannot fit in one wasm32 memory, before any
 * weight is read. The scratch is a bound on one pass's temporaries (passTokens tokens), not an exact sum.
 */
function checkFits(
  cfg: DeepSeekConfig, w: WeightReader, weightBytes: number, cacheBytes: number, contextLength: number, maxSequences: number,
  passTokens: number, threads: number,
): void {
  const scratch = scratchBytes(cfg, contextLength, passTokens, threads);
  const need = weightBytes + cacheBytes + scratch;
  if (need <= MAX_MEMORY_BYTES) return;
  const mib = (n: number): string => `${Math.ceil(n / MiB)} MiB`;
  const fixes = [w.mode !== 'q4' ? 'a smaller weight format (--quant q4)' : null, cacheBytes > MAX_MEMORY_BYTES / 8 ? 'a smaller --context' : null]
    .filter((f) => f !== null)
    .join(' or ');
  fail(
    `${w.dir}: this load needs about ${mib(need)} of WebAssembly memory (weights ${mib(weightBytes)} as ${w.mode}, ` +
      `KV cache ${mib(cacheBytes)} for ${maxSequences} x ${contextLength} tokens, scratch ${mib(scratch)}), but one wasm32 memory ` +
      `holds at most ${mib(MAX_MEMORY_BYTES)}; ${fixes ? `try ${fixes}, or ` : ''}run it on a GPU (--backend cuda)`,
  );
}
