import { openCheckpoint, type Checkpoint } from '../checkpoint/checkpoint.js';
import type { DeepSeekConfig } from '../checkpoint/config.js';
import { fail } from '../errors.js';
import { Runtime } from '../runtime/runtime.js';
import type { AttentionShared, Segment } from './attention.js';
import type { BatchEntry, LoadOptions, LogitsRows, ModelBackend, MtpHead, Sequence } from './backend.js';
import { Block, type Place } from './block.js';
import { Moe, type ExpertTally } from './moe.js';
import { MtpLayer, mtpLayerOf } from './mtp.js';
import {
  RAM_SHARE, defaultMemoryLimit, describeUnits, machineRam, memoryOf, placeUnits, planBytes, planUnits, scratchBytes, type MemoryPlan,
} from './placement.js';
import { ropeTables, softmaxScale } from './rope.js';
import { kvRowBytes, modelSchema, schemaWeights, weightTotals, type ModelSchema, type Weight } from './schema.js';
import { SequencePool, poolShape, type PoolShape, type Slot } from './sequences.js';
import { WeightReader, type Matrix, type Placed, type QuantMode } from './weights.js';

const NO_LOGITS = new Float32Array(0);

/** A batch entry in a pass: its sequence, the tokens it appends and the logits rows it wants. */
interface Part {
  seq: Slot;
  ids: ArrayLike<number>;
  want: LogitsRows;
  /** Receives the tokens' hidden states after the final norm, when asked for. */
  hidden: Float32Array | undefined;
}
const MiB = 1024 * 1024;

/** A memory of the model as `memories` lists it: the bytes of its units (weights and KV cache) and what they are. */
export interface MemoryUse {
  bytes: number;
  units: string;
}

/**
 * A DeepSeek-V2/V3 model in wasm memories: the CPU backend. Its weights and KV caches lie in one memory or
 * several, as placement.ts plans them from the schema; a token's hidden state is copied to the memory of
 * the next unit. The KV-cache pool holds maxSequences sequences of contextLength tokens, each layer's block
 * of [contextLength, kv_lora_rank + qk_rope_head_dim] latents in the layer's memory, allocated once at load.
 */
export class Model implements ModelBackend {
  readonly backend = 'cpu';
  readonly maxSequences: number;
  readonly mtp?: MtpHead;
  private readonly sequences: SequencePool;
  private closed = false;
  /** One cached position of one layer (the latent c and the roped key). */
  private readonly rowBytes: number;
  /** The runtime of each memory; the first is `rt`. */
  readonly runtimes: readonly Runtime[];

  private constructor(
    readonly config: DeepSeekConfig,
    private readonly places: Place[],
    readonly contextLength: number,
    private readonly embed: { place: Place; m: Matrix },
    private readonly blocks: Block[],
    private readonly head: { place: Place; norm: number; m: Matrix },
    /** caches[layer][slot]: the address of a sequence's latents of that layer, in the layer's memory. */
    private readonly caches: number[][],
    /** The last position's logits: one buffer in the head's memory, returned as one view, for every decode step. */
    private readonly logits: Float32Array,
    /** The weight format the matrices were loaded in ('stored': f32/bf16 as in the checkpoint). */
    readonly quant: QuantMode,
    private readonly passTokens: number,
    readonly weightBytes: number,
    readonly activeBytes: number,
    /** Bytes of one routed expert (gate/up and down): what each distinct expert a step chooses adds to its reads. */
    readonly expertBytes: number,
    /** Every weight as loaded (role, layer, index, format, shape, address): what the WASI image lists. */
    readonly placed: readonly Placed[],
    /** Each memory's units, as the plan laid them. */
    readonly memories: readonly MemoryUse[],
    mtpLayer: MtpLayer | null,
  ) {
    if (mtpLayer) {
      this.mtp = { forward: (sequence, position, tokens, hidden, out) => mtpLayer.forward(this.sequences.own(sequence).slot, position, tokens, hidden, out) };
    }
    this.maxSequences = caches[0]?.length ?? 0;
    this.rowBytes = kvRowBytes(config);
    this.sequences = new SequencePool(config, contextLength, this.maxSequences);
    this.runtimes = places.map((p) => p.rt);
  }

  /**
   * Counts, into `tally`, the distinct routed experts each MoE layer runs from now on (null stops): a step
   * reads every chosen expert once whatever the number of its tokens, so this is what batching adds to a
   * step's weight reads (benchmarks' bytes model).
   */
  countExperts(tally: ExpertTally | null): void {
    for (const b of this.blocks) if (b.ffn instanceof Moe) b.ffn.tally = tally;
  }

  /** What the WASI image (pack.ts) needs beside the weights: the attention tables and the first sequence's cache; one memory only. */
  get oneMemory(): { attention: AttentionShared; cache: number } {
    if (this.places.length > 1) fail(`the WASI image holds one WebAssembly memory, but this model spans ${this.places.length}; pack a smaller model or format`);
    return { attention: this.places[0].attention!, cache: this.caches[0][0] };
  }

  /** The runtime of the first memory (the embedding's). */
  get rt(): Runtime {
    return this.places[0].rt;
  }

  static async load(dir: string, opts: LoadOptions = {}): Promise<Model> {
    return Model.fromCheckpoint(openCheckpoint(dir), opts);
  }

  /** Loads the weights of an opened checkpoint (a folder's, or one held in memory); closes it when done. */
  static async fromCheckpoint(ckpt: Checkpoint, opts: LoadOptions = {}): Promise<Model> {
    const runtimes: Runtime[] = [];
    try {
      const shape = poolShape(ckpt.config, opts);
      const create = (): Promise<Runtime> => Runtime.create(opts.threads, { simd: opts.simd, module: opts.wasm });
      runtimes.push(await create());
      const plan = planLoad(ckpt, runtimes[0], opts, shape);
      while (runtimes.length < plan.plan.memories.length) runtimes.push(await create());
      return Model.read(ckpt, runtimes, opts, shape, plan);
    } catch (e) {
      await Promise.all(runtimes.map((rt) => rt.close()));
      throw e;
    } finally {
      ckpt.close();
    }
  }

  private static read(ckpt: Checkpoint, runtimes: Runtime[], opts: LoadOptions, shape: PoolShape, loadPlan: LoadPlan): Model {
    const cfg = ckpt.config;
    const { contextLength, maxSequences, passTokens } = shape;
    const { schema, plan, bytes } = loadPlan;
    const where = memoryOf(plan);
    let read = 0;
    const runtimeOf = (w: Weight): Runtime => runtimes[where.weights.get(w) ?? 0];
    const w = new WeightReader(ckpt, runtimes[0], (n) => opts.onProgress?.((read += n), loadPlan.readBytes), opts.quant, runtimeOf);
    const layerMemories = new Set(where.layers.values());
    const places: Place[] = runtimes.map((rt, i) => ({ rt, attention: layerMemories.has(i) ? attentionShared(rt, cfg, contextLength) : null, x: 0, h: 0, y: 0, mark: 0 }));
    const placeOf = (weight: Weight): Place => places[where.weights.get(weight) ?? 0];

    const embed = { place: placeOf(schema.embed), m: w.matrix(schema.embed) };
    const blocks = schema.blocks.map((b) => Block.load(w, cfg, b, places[where.layers.get(b.layer)!]));
    // The tables of matrices the grouped steps read (written once, outside every step's arena mark).
    schema.blocks.forEach((s, i) => {
      const b = blocks[i];
      b.attn.prepare(b.place.rt);
      if (b.ffn instanceof Moe && 'moe' in s.ffn) {
        const experts = s.ffn.moe.experts;
        b.ffn.prepare(b.place.rt, (e) => runtimeOf(experts[e].gateUp));
      }
    });
    const norm = w.vector(schema.norm);
    const headMatrix = schema.head.tied ? embed.m : w.matrix(schema.head);
    if (schema.head.tied) w.alias(schema.head, embed.m);
    const head = { place: placeOf(schema.norm), norm, m: headMatrix };

    // A sequence's cache is one block per memory, its layers there one after another (so in one memory the
    // whole cache is one [layers, contextLength, latent] block, as the WASI image lays it).
    const cacheBytes = contextLength * kvRowBytes(cfg);
    const caches = blocks.map(() => new Array<number>(maxSequences));
    for (const p of places) {
      const layers = blocks.flatMap((b, i) => (b.place === p ? [i] : []));
      if (layers.length === 0) continue;
      for (let s = 0; s < maxSequences; s++) {
        const base = p.rt.arena.alloc(layers.length * cacheBytes, `KV cache of sequence ${s}, layers ${layers[0]}-${layers[layers.length - 1]}`);
        layers.forEach((layer, j) => (caches[layer][s] = base + j * cacheBytes));
      }
    }
    const logits = head.place.rt.f32(head.place.rt.arena.allocF32(cfg.vocabSize, 'logits'), cfg.vocabSize);
    let mtp: MtpLayer | null = null;
    if (opts.mtp) {
      const layer = mtpLayerOf(schema, ckpt.dir);
      mtp = MtpLayer.load(w, cfg, layer, places[where.layers.get(layer.block.layer)!], runtimeOf, maxSequences, contextLength);
    }
    const memories = plan.memories.map((m) => ({ bytes: m.bytes, units: describeUnits(m.units, cfg) }));
    return new Model(cfg, places, contextLength, embed, blocks, head, caches, logits, w.mode, passTokens, bytes.weights, bytes.active, bytes.expert, w.placed, memories, mtp);
  }

  get threads(): number {
    return this.rt.threads;
  }

  get device(): string {
    const simd = this.rt.simd === 'relaxed' ? 'relaxed SIMD' : 'SIMD128';
    const memories = this.places.length > 1 ? `, ${this.places.length} memories` : '';
    return `CPU (WebAssembly ${simd}, ${this.threads} thread${this.threads === 1 ? '' : 's'}${memories})`;
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
    return this.sequences.fork(sequence, (from, to) =>
      this.blocks.forEach((b, i) => b.place.rt.copyTo(this.caches[i][from.slot], b.place.rt, this.caches[i][to.slot], from.position * this.rowBytes)),
    );
  }

  /**
   * Runs each entry's tokens after its sequence's cached ones. Entries go through the layers together, as
   * many as one pass takes (passTokens tokens), so one pass over the weights serves every sequence of a
   * decode step; a prompt longer than a pass runs alone, in passes. With one entry its 'last' row is a view of
   * wasm memory, valid until the next call (so decoding allocates nothing); with several, and for 'all', the
   * rows are copies.
   */
  forward(batch: readonly BatchEntry[]): Float32Array[] {
    if (this.closed) fail('this model is closed; load it again');
    const seqs = this.sequences.check(batch);
    if (batch.length === 1) return [this.run(seqs[0], batch[0].tokens, batch[0].logits ?? 'last', batch[0].hidden)];
    const out = new Array<Float32Array>(batch.length);
    let group: { part: Part; index: number }[] = [];
    let tokens = 0;
    const flush = (): void => {
      if (group.length === 1) out[group[0].index] = this.run(group[0].part.seq, group[0].part.ids, group[0].part.want, group[0].part.hidden).slice();
      else if (group.length > 1) {
        const rows: Float32Array[] = [];
        this.pass(group.map((g) => g.part), rows);
        group.forEach((g, k) => (out[g.index] = rows[k]));
      }
      group = [];
      tokens = 0;
    };
    batch.forEach((entry, index) => {
      const n = entry.tokens.length;
      if (tokens + n > this.passTokens) flush();
      group.push({ part: { seq: seqs[index], ids: entry.tokens, want: entry.logits ?? 'last', hidden: entry.hidden }, index });
      tokens += n;
    });
    flush();
    return out;
  }

  /** A sequence's tokens through the model, in passes of at most passTokens tokens. */
  private run(seq: Slot, ids: ArrayLike<number>, want: LogitsRows, hidden: Float32Array | undefined): Float32Array {
    const tokens = ids.length;
    const one = this.one;
    const part = (one.parts[0] ??= { seq, ids, want, hidden });
    part.seq = seq;
    if (tokens <= this.passTokens) {
      part.ids = ids;
      part.want = want;
      part.hidden = hidden;
      this.pass(one.parts, one.rows);
      return one.rows[0];
    }
    const vocab = this.config.vocabSize;
    const all = want === 'all' ? new Float32Array(tokens * vocab) : null;
    let logits: Float32Array = NO_LOGITS;
    for (let start = 0; start < tokens; start += this.passTokens) {
      const end = Math.min(tokens, start + this.passTokens);
      // Only the last pass needs the head (236 MB of weights on v3-2k6), unless every position's logits are wanted.
      part.ids = Array.from({ length: end - start }, (_, i) => ids[start + i]);
      part.want = all ? 'all' : end === tokens ? want : 'none';
      part.hidden = hidden?.subarray(start * this.config.hiddenSize, end * this.config.hiddenSize);
      this.pass(one.parts, one.rows);
      logits = one.rows[0];
      all?.set(logits, start * vocab);
    }
    return all ?? logits;
  }

  /** The one-entry pass's list and its result, reused so that decoding allocates nothing. */
  private readonly one: { parts: Part[]; rows: Float32Array[] } = { parts: [], rows: [] };
  /** The segments of a pass, one per entry, reused from pass to pass. */
  private readonly segments: Segment[] = [];

  /**
   * One pass of checked entries through every layer, their tokens side by side; rows[k] gets entry k's
   * logits ('none' leaves out the final norm and the head for it).
   */
  private pass(parts: readonly Part[], rows: Float32Array[]): void {
    const cfg = this.config;
    const hidden = cfg.hiddenSize;
    const segments = this.segments;
    segments.length = parts.length;
    let tokens = 0;
    for (let k = 0; k < parts.length; k++) {
      const g = (segments[k] ??= { start: 0, tokens: 0, pos0: 0, cache: 0 });
      g.start = tokens;
      g.tokens = parts[k].ids.length;
      g.pos0 = parts[k].seq.position;
      tokens += g.tokens;
    }
    const rowBytes = tokens * hidden * 4;
    for (const p of this.places) {
      p.mark = p.rt.arena.mark();
      p.x = p.rt.arena.alloc(rowBytes, 'hidden states');
      p.h = p.rt.arena.alloc(rowBytes, 'normed hidden states');
      p.y = p.rt.arena.alloc(rowBytes, 'block outputs');
    }

    // h = embed(tokens)
    let at = this.embed.place;
    const idPtr = at.rt.arena.alloc(tokens * 4, 'token ids');
    for (let k = 0; k < parts.length; k++) at.rt.heap().i32.set(parts[k].ids, idPtr / 4 + segments[k].start);
    at.rt.kernels.embed(this.embed.m.fmt, at.x, this.embed.m.ptr, idPtr, tokens, hidden);
    // for each layer: h += attn(attn_norm(h)); h += ffn(ffn_norm(h)), in the layer's memory
    for (let i = 0; i < this.blocks.length; i++) {
      const b = this.blocks[i];
      const p = b.place;
      if (p !== at) at.rt.copyTo(at.x, p.rt, p.x, rowBytes);
      at = p;
      for (let k = 0; k < parts.length; k++) segments[k].cache = this.caches[i][parts[k].seq.slot];
      b.forward(p.x, p.h, p.y, tokens, segments, cfg);
    }
    for (let k = 0; k < parts.length; k++) {
      const out = parts[k].hidden;
      if (out) this.normedRows(at, segments[k], out);
    }
    this.logitsRows(parts, at, rows);
    for (const p of this.places) p.rt.arena.release(p.mark);
    for (const part of parts) part.seq.position += part.ids.length;
  }

  /** A segment's hidden states after the final norm (what the head reads; an MTP layer's input), into `out`. */
  private normedRows(at: Place, segment: Segment, out: Float32Array): void {
    const { hiddenSize: hidden, rmsNormEps: eps } = this.config;
    const { place: p, norm } = this.head;
    const bytes = segment.tokens * hidden * 4;
    const mark = p.rt.arena.mark();
    let rows = at.x + segment.start * hidden * 4;
    if (p !== at) {
      const copy = p.rt.arena.alloc(bytes, 'hidden states (copy)');
      at.rt.copyTo(rows, p.rt, copy, bytes);
      rows = copy;
    }
    const normed = p.rt.arena.alloc(bytes, 'normed hidden states');
    p.rt.ops.rmsnorm(normed, rows, norm, hidden, eps, segment.tokens);
    out.set(p.rt.f32(normed, segment.tokens * hidden));
    p.rt.arena.release(mark);
  }

  /**
   * logits = head(norm(h)) at the rows each entry asks for (its last position, every position, or none), from
   * the hidden states in `at`: one matmul over all the rows. A single last row lands in the one logits buffer
   * and is returned as its view; other rows are copies.
   */
  private logitsRows(parts: readonly Part[], at: Place, rows: Float32Array[]): void {
    const { hiddenSize: hidden, vocabSize: vocab, rmsNormEps: eps } = this.config;
    const { place: p, norm, m } = this.head;
    const segments = this.segments;
    const op = p.rt.ops;
    // Entry k's wanted rows: the last `count` of its segment, gathered to rows [first, first + count) of p.h's input.
    let wanted = 0;
    let input = 0;
    for (let k = 0; k < parts.length; k++) {
      const count = parts[k].want === 'all' ? segments[k].tokens : parts[k].want === 'last' ? 1 : 0;
      if (count === 0) continue;
      const from = at.x + (segments[k].start + segments[k].tokens - count) * hidden * 4;
      if (parts.length === 1 && p === at) input = from;
      else {
        input ||= p.y;
        at.rt.copyTo(from, p.rt, p.y + wanted * hidden * 4, count * hidden * 4);
      }
      wanted += count;
    }
    if (wanted > 0) {
      op.rmsnorm(p.h, input, norm, hidden, eps, wanted);
      let all = this.logits.byteOffset;
      if (wanted > 1 || parts.length > 1) all = p.rt.arena.allocF32(wanted * vocab, 'logits');
      op.linear(all, m, p.h, wanted);
      if (all === this.logits.byteOffset) {
        rows[0] = this.logits;
        return;
      }
      let row = 0;
      for (let k = 0; k < parts.length; k++) {
        const count = parts[k].want === 'all' ? segments[k].tokens : parts[k].want === 'last' ? 1 : 0;
        rows[k] = count ? p.rt.f32(all + row * vocab * 4, count * vocab).slice() : NO_LOGITS;
        row += count;
      }
      return;
    }
    for (let k = 0; k < parts.length; k++) rows[k] = NO_LOGITS;
  }

  async close(): Promise<void> {
    this.closed = true;
    await Promise.all(this.places.map((p) => p.rt.close()));
  }
}

/** What a load decided before reading a byte: the schema, the weights' sizes and where each unit goes. */
interface LoadPlan {
  schema: ModelSchema;
  plan: MemoryPlan;
  bytes: { weights: number; active: number; expert: number };
  /** Bytes of the checkpoint the load reads. */
  readBytes: number;
}

/**
 * Sizes every weight from the checkpoint's headers and lays the units over memories of at most
 * opts.memoryLimit bytes (default: a wasm32 memory less the scratch each memory keeps); refuses, before any
 * weight is read, a limit that leaves no room for the scratch, a unit over the limit, and a plan larger than
 * this machine's RAM.
 */
function planLoad(ckpt: Checkpoint, rt: Runtime, opts: LoadOptions, shape: PoolShape): LoadPlan {
  const cfg = ckpt.config;
  const { contextLength, maxSequences, passTokens } = shape;
  const sizes = new WeightReader(ckpt, rt, () => {}, opts.quant);
  const schema = modelSchema(cfg, { hasLmHead: ckpt.has('lm_head.weight') });
  const scratch = scratchBytes(cfg, contextLength, passTokens, rt.threads);
  const most = defaultMemoryLimit(scratch);
  const limit = opts.memoryLimit ?? most;
  if (!(limit > 0) || limit > most) {
    const mib = (n: number): string => (n / MiB).toFixed(n < 10 * MiB ? 2 : 0);
    fail(`a memory limit of ${mib(limit)} MiB (--memory-limit, memoryLimit) is not one a memory can hold: expected more than 0 and at most ${mib(most)} MiB (a wasm32 memory's 4096 MiB less ${Math.ceil(scratch / MiB)} MiB of scratch for ${contextLength} tokens of context)`);
  }
  const mtp = opts.mtp === true && schema.mtp.length > 0;
  const units = planUnits(schema, (x) => sizes.plannedBytes(x), maxSequences * contextLength * kvRowBytes(cfg), { mtp });
  const plan = placeUnits(units, limit);
  const need = planBytes(plan, scratch);
  const ram = machineRam();
  if (ram !== undefined && need > ram * RAM_SHARE) {
    const gib = (n: number): string => `${(n / 2 ** 30).toFixed(1)} GiB`;
    fail(
      `${ckpt.dir}: this load needs about ${gib(need)} of memory (weights as ${sizes.mode}, KV cache for ${maxSequences} x ${contextLength} tokens, ` +
        `scratch for ${plan.memories.length} WebAssembly memor${plan.memories.length === 1 ? 'y' : 'ies'}), more than ${Math.round(RAM_SHARE * 100)}% of this machine's ${gib(ram)}; ` +
        `try ${sizes.mode !== 'q4' ? 'a smaller weight format (--quant q4), ' : ''}a smaller --context, or run it on a GPU (--backend cuda); "deepwasm inspect" shows the plan`,
    );
  }
  return {
    schema,
    plan,
    bytes: weightTotals(schema, (x) => sizes.plannedBytes(x)),
    readBytes: schemaWeights(schema, { mtp }).reduce((n, x) => n + sizes.readBytes(x), 0),
  };
}

/** The rotary tables, the softmax scale and MLA's per-thread scratch for the whole context, in one memory that holds layers. */
function attentionShared(rt: Runtime, cfg: DeepSeekConfig, contextLength: number): AttentionShared {
  const tables = ropeTables(cfg, contextLength);
  const shared: AttentionShared = {
    cos: rt.arena.allocF32(tables.cos.length, 'rope cos'),
    sin: rt.arena.allocF32(tables.sin.length, 'rope sin'),
    half: tables.half,
    softmaxScale: softmaxScale(cfg),
    scratch: rt.arena.allocF32(rt.threads * rt.kernels.mla_scratch_floats(contextLength), 'attention scratch'),
  };
  rt.f32(shared.cos, tables.cos.length).set(tables.cos);
  rt.f32(shared.sin, tables.sin.length).set(tables.sin);
  return shared;
}
