// The CUDA backend: the same DeepSeek model as host/model/, with the weights, a pool of latent KV caches
// and the whole forward pass on an NVIDIA GPU (kernels-gpu/). A load walks the model schema, declares
// each weight's device format, refuses a model that cannot fit before reading a byte, then hands each
// tensor to the library once. After that a prefill is one call and a decode step of one sequence is
// one CUDA-graph replay that returns the logits (or only the next greedy token).
import { openCheckpoint } from '../../checkpoint/checkpoint.js';
import type { DeepSeekConfig } from '../../checkpoint/config.js';
import { fail } from '../../errors.js';
import type { BatchEntry, LoadOptions, LogitsRows, ModelBackend, MtpHead, Sequence } from '../../model/backend.js';
import { checkMtpCall, mtpLayerOf } from '../../model/mtp.js';
import { ropeTables } from '../../model/rope.js';
import { modelSchema, schemaWeights } from '../../model/schema.js';
import { SequencePool, poolShape } from '../../model/sequences.js';
import { DTYPE_F32, ROLE_ROPE_COS, ROLE_ROPE_SIN } from '../../runtime/constants.js';
import { packConfig, type DecodeTuning } from './config.js';
import { openLibrary, type DwLib, type Handle, type MemoryPlan } from './ffi.js';
import { cudaQuant, deviceFormat, type CudaQuant } from './formats.js';
import { CheckpointUpload } from './upload.js';

export type { DecodeTuning } from './config.js';
export type { CudaQuant } from './formats.js';

export interface CudaLoadOptions extends LoadOptions {
  /** How the decode step runs (benchmarks and tests of the other paths); the defaults are the fastest measured. */
  decode?: DecodeTuning;
}

export interface CudaStatus {
  ok: boolean;
  /** Why not, when !ok; the device, when ok. */
  reason: string;
  device?: string;
}

/** Whether the CUDA backend can run here: library built, koffi present, a device visible. */
export function cudaStatus(library?: string): CudaStatus {
  let lib: DwLib;
  try {
    lib = openLibrary(library);
  } catch (e) {
    return { ok: false, reason: (e as Error).message };
  }
  const { count, info } = lib.deviceInfo();
  if (count <= 0) return { ok: false, reason: info || 'the CUDA driver reports no device' };
  return { ok: true, reason: '', device: info };
}

/** Reads a Hugging Face checkpoint folder onto the GPU. */
export function loadCudaModel(dir: string, opts: CudaLoadOptions = {}): Promise<CudaModel> {
  return CudaModel.load(dir, opts);
}

/** A model of this shape with random weights made on the device (benchmarks): bf16, or opts.quant q8 or f32. */
export function randomCudaModel(cfg: DeepSeekConfig, seed: number, opts: CudaLoadOptions = {}): Promise<CudaModel> {
  return CudaModel.random(cfg, seed, opts);
}

function openDevice(library?: string): DwLib {
  let lib: DwLib;
  try {
    lib = openLibrary(library);
  } catch (e) {
    fail(`CUDA backend unavailable: ${(e as Error).message}`);
  }
  const { count, info } = lib.deviceInfo();
  if (count <= 0) fail(`CUDA backend unavailable: no CUDA device (${info})`);
  return lib;
}

const gib = (bytes: number) => `${(bytes / 2 ** 30).toFixed(2)} GiB`;

/**
 * A DeepSeek-V2/V3 model on one GPU with maxSequences latent KV caches of contextLength tokens each.
 * A batch's entries of up to batchMax tokens run as batched decode steps (one graph replay for up to batchMax tokens
 * of one or several sequences, the weights read once for all of them); longer entries are prefills.
 */
export class CudaModel implements ModelBackend {
  readonly backend = 'cuda' as const;
  private readonly pool: SequencePool;
  /** forward()'s one-row results, one array per batch position; the batched steps' rows, one array per step of a call. */
  private readonly rows: Float32Array[] = [];
  private readonly batchRows: Float32Array[] = [];
  /** A batched step's hidden states, [batchMax, hidden_size], scattered into the entries' buffers. */
  private batchHidden: Float32Array | undefined;
  private closed = false;
  /** The MTP layer (layer num_hidden_layers on the device) when loaded with `mtp`. */
  readonly mtp?: MtpHead;

  private constructor(
    readonly config: DeepSeekConfig,
    readonly contextLength: number,
    readonly maxSequences: number,
    readonly quant: CudaQuant,
    readonly device: string,
    private readonly lib: DwLib,
    private readonly handle: Handle,
    mtp: boolean,
  ) {
    this.pool = new SequencePool(config, contextLength, maxSequences);
    if (mtp) {
      const logits = new Float32Array(config.vocabSize);
      this.mtp = { forward: (sequence, position, tokens, hidden, out) => this.mtpForward(sequence, position, tokens, hidden, out, logits) };
    }
  }

  static async load(dir: string, opts: CudaLoadOptions = {}): Promise<CudaModel> {
    const lib = openDevice(opts.cudaLibrary);
    const ckpt = openCheckpoint(dir);
    try {
      const quant = cudaQuant(ckpt, opts.quant);
      const schema = modelSchema(ckpt.config, { hasLmHead: ckpt.has('lm_head.weight') });
      if (opts.mtp) mtpLayerOf(schema, ckpt.dir);
      const upload = new CheckpointUpload(ckpt, schemaWeights(schema, { mtp: opts.mtp }), quant);
      return await CudaModel.build(lib, ckpt.config, quant, opts, (m) => {
        upload.declare(lib, m.handle);
        m.requireFits();
        upload.load(lib, m.handle, opts.onProgress);
      });
    } finally {
      ckpt.close();
    }
  }

  static async random(cfg: DeepSeekConfig, seed: number, opts: CudaLoadOptions = {}): Promise<CudaModel> {
    const lib = openDevice(opts.cudaLibrary);
    if (opts.quant !== undefined && opts.quant !== 'q8' && opts.quant !== 'bf16' && opts.quant !== 'f32') {
      fail(`random weights are made as bf16, q8 or f32, not ${opts.quant}`);
    }
    const quant: CudaQuant = opts.quant ?? 'stored';
    const schema = modelSchema(cfg, { hasLmHead: true });
    if (opts.mtp) mtpLayerOf(schema, 'random weights');
    return CudaModel.build(lib, cfg, quant, opts, (m) => {
      for (const w of schemaWeights(schema, { mtp: opts.mtp })) {
        if (w.kind !== 'vector') m.check(lib.declare(m.handle, w.layer, w.role, deviceFormat(w, ['BF16'], quant, 0)), 'declare');
      }
      m.requireFits();
      m.check(lib.fillRandom(m.handle, seed), 'fill_random');
    });
  }

  /** Makes the model, runs fill (declare, check the memory, load), uploads the rope tables, finalizes. */
  private static async build(lib: DwLib, cfg: DeepSeekConfig, quant: CudaQuant, opts: CudaLoadOptions, fill: (m: CudaModel) => void): Promise<CudaModel> {
    const pool = poolShape(cfg, opts);
    const mtp = opts.mtp === true;
    const handle = lib.create(packConfig(cfg, pool, opts.decode, mtp));
    if (!handle) fail(`CUDA backend: ${lib.lastError()}`);
    const model = new CudaModel(cfg, pool.contextLength, pool.maxSequences, quant, lib.deviceInfo().info, lib, handle, mtp);
    try {
      fill(model);
      model.uploadRope();
      model.check(lib.finalize(handle), 'finalize');
    } catch (e) {
      await model.close();
      throw e;
    }
    return model;
  }

  private check(rc: number, what: string): number {
    if (rc < 0) fail(`CUDA backend (${what}): ${this.lib.lastError()}`);
    return rc;
  }

  /** Refuses a model that cannot fit in the device's free memory, before any weight is read. */
  private requireFits(): void {
    const plan: MemoryPlan | null = this.lib.memoryPlan(this.h);
    if (!plan) fail(`CUDA backend (memory plan): ${this.lib.lastError()}`);
    const mem = this.lib.deviceMemory();
    if (!mem) fail(`CUDA backend (device memory): ${this.lib.lastError()}`);
    const need = plan.weights + plan.kvCache + plan.scratch;
    if (need <= mem.free) return;
    const fixes = [
      ...(this.quant === 'q8' ? [] : ['--quant q8']),
      'a smaller --context',
      ...(this.maxSequences > 1 ? ['fewer sequences'] : []),
    ];
    fail(
      `the model needs ${gib(need)} on the GPU (weights ${gib(plan.weights)} ${this.quant === 'stored' ? 'as stored' : `in ${this.quant}`}, ` +
        `KV cache ${gib(plan.kvCache)} for ${this.maxSequences} sequence${this.maxSequences > 1 ? 's' : ''} x ${this.contextLength} tokens, ` +
        `scratch ${gib(plan.scratch)}) but ${this.device.split(',')[0]} has ${gib(mem.free)} free of ${gib(mem.total)}; ` +
        `load it with ${fixes.join(', ')}`,
    );
  }

  private uploadRope(): void {
    const t = ropeTables(this.config, this.contextLength);
    for (const [role, data] of [[ROLE_ROPE_COS, t.cos], [ROLE_ROPE_SIN, t.sin]] as const) {
      const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
      this.check(this.lib.load(this.h, -1, role, 0, DTYPE_F32, bytes, data.length, 1, 0, null, 0, 0), 'load rope tables');
    }
  }

  /** Bytes of weights on the device, and those one decode step reads. */
  get weightBytes(): number {
    return this.lib.weightBytes(this.h);
  }
  get activeBytes(): number {
    return this.lib.activeBytes(this.h);
  }
  /** Bytes of one routed expert: a batched step reads this much more for each distinct expert beyond top-k per layer. */
  get expertBytes(): number {
    return this.lib.expertBytes(this.h);
  }

  createSequence(): Sequence {
    return this.pool.create();
  }

  /**
   * The rows come back in arrays this model reuses: entry b's result is overwritten by the next call. Entries of up
   * to batchMax tokens run as batched decode steps of batchMax tokens at most (one graph replay each: one token of
   * each of several sequences, or several consecutive tokens of one, such as a speculative verify); a lone token is
   * the single-sequence step; longer entries are prefills.
   */
  forward(batch: readonly BatchEntry[]): Float32Array[] {
    const slots = this.pool.check(batch);
    const V = this.config.vocabSize;
    const max = this.batchMax;
    const out: Float32Array[] = new Array(batch.length);
    const toks: { b: number; i: number }[] = [];
    batch.forEach((entry, b) => {
      if (entry.tokens.length > max) out[b] = this.run(b, slots[b].slot, slots[b].position, Int32Array.from(entry.tokens), entry.logits ?? 'last', entry.hidden);
      else for (let i = 0; i < entry.tokens.length; i++) toks.push({ b, i });
    });
    if (toks.length === 1) {
      const { b } = toks[0];
      out[b] = this.run(b, slots[b].slot, slots[b].position, Int32Array.from(batch[b].tokens), batch[b].logits ?? 'last', batch[b].hidden);
    }
    for (let c = 0; toks.length > 1 && c * max < toks.length; c++) {
      const chunk = toks.slice(c * max, (c + 1) * max);
      const wants = ({ b, i }: { b: number; i: number }) => {
        const rows = batch[b].logits ?? 'last';
        return rows === 'all' || (rows === 'last' && i === batch[b].tokens.length - 1);
      };
      const H = this.config.hiddenSize;
      const hidden = chunk.some(({ b }) => batch[b].hidden) ? (this.batchHidden ??= new Float32Array(max * H)).subarray(0, chunk.length * H) : null;
      const rows = this.decodeBatch(
        c,
        Int32Array.from(chunk, ({ b }) => slots[b].slot),
        Int32Array.from(chunk, ({ b, i }) => slots[b].position + i),
        Int32Array.from(chunk, ({ b, i }) => batch[b].tokens[i]),
        chunk.some(wants),
        hidden,
      );
      chunk.forEach(({ b, i }, j) => {
        if (hidden) batch[b].hidden?.set(hidden.subarray(j * H, (j + 1) * H), i * H);
        const rows1 = batch[b].logits ?? 'last';
        const row = rows ? rows.subarray(j * V, (j + 1) * V) : null;
        if (rows1 === 'none') out[b] = new Float32Array(0);
        else if (rows1 === 'all') (out[b] ??= new Float32Array(batch[b].tokens.length * V)).set(row!, i * V);
        else if (i === batch[b].tokens.length - 1) out[b] = row!;
      });
    }
    batch.forEach((entry, b) => (slots[b].position += entry.tokens.length));
    return out;
  }

  /** Most tokens one batched decode step takes (forward() runs more as several steps). */
  get batchMax(): number {
    return (this.maxBatch ??= this.lib.decodeBatchMax(this.h));
  }
  private maxBatch: number | undefined;

  /** Distinct routed experts the last batched decode step read, summed over the MoE layers (the bytes model's count). */
  lastStepExperts = 0;

  /** One batched decode step of chunk c of a forward(): tokens[j] at pos[j] of seqs[j]; their logits rows when asked for, their hidden states into `hidden`. */
  private decodeBatch(c: number, seqs: Int32Array, pos: Int32Array, tokens: Int32Array, logits: boolean, hidden: Float32Array | null): Float32Array | null {
    const n = seqs.length;
    while (this.batchRows.length <= c) this.batchRows.push(new Float32Array(this.batchMax * this.config.vocabSize));
    const rows = logits ? this.batchRows[c] : null;
    this.lastStepExperts = this.check(this.lib.decodeBatch(this.h, seqs, pos, tokens, rows ? rows.subarray(0, n * this.config.vocabSize) : null, new Int32Array(n), hidden), 'decode batch');
    return rows;
  }

  /** One entry: a graph-replayed decode step for one token, a prefill for more; hidden states into `hidden` when given. */
  private run(b: number, slot: number, pos: number, ids: Int32Array, rows: LogitsRows, hidden: Float32Array | undefined): Float32Array {
    const n = rows === 'none' ? 0 : rows === 'all' ? ids.length : 1;
    // One row (a decode step, a prompt's last) into this entry's array; all rows into a new one.
    const logits = n === 0 ? null : n === 1 ? this.row(b) : new Float32Array(n * this.config.vocabSize);
    if (ids.length === 1) this.check(this.lib.decode(this.h, slot, pos, ids[0], logits, hidden ?? null), 'decode');
    else this.check(this.lib.prefill(this.h, slot, pos, ids, logits, rows === 'all', hidden ?? null), 'prefill');
    return logits ?? new Float32Array(0);
  }

  private row(b: number): Float32Array {
    while (this.rows.length <= b) this.rows.push(new Float32Array(this.config.vocabSize));
    return this.rows[b];
  }

  /** MtpHead.forward (host/model/backend.ts) on the device; the logits come back in `logits`, one array per model. */
  private mtpForward(sequence: Sequence, position: number, tokens: ArrayLike<number>, hidden: Float32Array, out: Float32Array, logits: Float32Array): Float32Array {
    checkMtpCall(this.config, this.contextLength, position, tokens.length, hidden, out);
    const { slot } = this.pool.own(sequence);
    this.check(this.lib.mtpForward(this.h, slot, position, Int32Array.from(tokens), hidden, out, logits), 'MTP layer');
    return logits;
  }

  truncate(sequence: Sequence, position: number): void {
    this.pool.truncate(sequence, position);
  }

  fork(sequence: Sequence): Sequence {
    return this.pool.fork(sequence, (from, to) => this.check(this.lib.seqCopy(this.h, to.slot, from.slot, from.position), 'fork'));
  }

  free(sequence: Sequence): void {
    this.pool.free(sequence);
  }

  /**
   * Runs tokens after the sequence's (a decode step for one, a prefill for more) without copying any
   * logits back, and returns the greedy next token (the argmax, computed on the device).
   */
  greedyStep(sequence: Sequence, tokens: ArrayLike<number>): number {
    const [s] = this.pool.check([{ sequence, tokens }]);
    const ids = Int32Array.from(tokens);
    const next =
      ids.length === 1
        ? this.check(this.lib.decode(this.h, s.slot, s.position, ids[0], null, null), 'decode')
        : this.check(this.lib.prefill(this.h, s.slot, s.position, ids, null, false, null), 'prefill');
    s.position += ids.length;
    return next;
  }

  /** Greedy decoding on the device: feeds token, then each argmax, n steps; returns the n ids (the last not yet fed). */
  generate(sequence: Sequence, token: number, n: number): Int32Array {
    const [s] = this.pool.check([{ sequence, tokens: new Array<number>(n).fill(token) }]);
    const out = new Int32Array(n);
    this.check(this.lib.generate(this.h, s.slot, s.position, token, out), 'generate');
    s.position += n;
    return out;
  }

  /** One decode step of token at the sequence's position, timed stage by stage on the device (a text table); the position does not advance. */
  profileDecode(sequence: Sequence, token: number): string {
    const [s] = this.pool.check([{ sequence, tokens: [token] }]);
    const table = this.lib.profileDecode(this.h, s.slot, s.position, token);
    if (table === null) fail(`CUDA backend (profile decode): ${this.lib.lastError()}`);
    return table;
  }

  /** One batched decode step of tokens[i] at sequences[i]'s position, timed stage by stage (a text table); positions do not advance. */
  profileDecodeBatch(sequences: readonly Sequence[], tokens: readonly number[]): string {
    const slots = this.pool.check(sequences.map((sequence, i) => ({ sequence, tokens: [tokens[i]] })));
    const table = this.lib.profileDecodeBatch(this.h, Int32Array.from(slots, (s) => s.slot), Int32Array.from(slots, (s) => s.position), Int32Array.from(tokens));
    if (table === null) fail(`CUDA backend (profile batched decode): ${this.lib.lastError()}`);
    return table;
  }

  /** The k largest logits of the most recent run (computed on the device), largest first. */
  topk(k: number): { values: Float32Array; ids: Int32Array } {
    const values = new Float32Array(k);
    const ids = new Int32Array(k);
    this.check(this.lib.topk(this.h, values, ids), 'topk');
    return { values, ids };
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.lib.free(this.handle);
  }

  /** The library's handle, while the model is open (a freed handle would crash in native code). */
  private get h(): Handle {
    if (this.closed) fail('this CUDA model was closed; load it again');
    return this.handle;
  }
}
