/// <reference types="@webgpu/types" />
// The DeepSeek model on a WebGPU device: the weights uploaded once from the schema, a latent KV cache per
// layer for the pool's sequences, and forward passes recorded kernel by kernel into a command buffer per
// few layers, read back once per call (the logits rows asked for, or the greedy token's four bytes). It
// reads like host/model/model.ts: embed, then per block x += attn(norm(x)); x += ffn(norm(x)), then norm
// and head (the norms taken inside the products that read them).
import type { Checkpoint } from '../../checkpoint/checkpoint.js';
import type { DeepSeekConfig } from '../../checkpoint/config.js';
import { fail } from '../../errors.js';
import type { LogitsRows } from '../../model/backend.js';
import { ropeTables, softmaxScale } from '../../model/rope.js';
import { activeShare, modelSchema, schemaWeights, type MlpSchema, type ModelSchema, type Weight } from '../../model/schema.js';
import type { QuantName } from '../../model/weights.js';
import { ROUTE_GREEDY, ROUTE_GROUP_LIMITED_GREEDY, ROUTE_NOAUX_TC, SCORE_SIGMOID, SCORE_SOFTMAX } from '../../runtime/constants.js';
import { Kernels, Recorder, rowsGrid, type Compiled } from './dispatch.js';
import { vec4Rows, type GpuFormat } from './formats.js';
import { MAP_READ, USAGE, requestGpu, type Gpu } from './gpu.js';
import { ARGMAX_PARTS, argmax, argmaxParts } from './kernels/argmax.js';
import type { KernelDef } from './kernels/kernel.js';
import { cacheRows } from './kernels/cache.js';
import { ABSORB_COLUMNS, absorbKernel, attendKernel, MAX_LATENT, mergeKernel, SPLIT } from './kernels/attention.js';
import { embed } from './kernels/embed.js';
import { MATVEC_ROWS, matmulKernel, type MatvecInput } from './kernels/matmul.js';
import { routeKernel } from './kernels/route.js';
import { RandomWeights } from './random.js';
import { Uploader, type GpuMatrix, type GpuQuant, type WeightSink } from './upload.js';

export interface EngineOptions {
  contextLength: number;
  maxSequences: number;
  passTokens: number;
  quant?: QuantName;
  /** false: the plain reductions even where the adapter has subgroups. */
  subgroups?: boolean;
  /** Most bytes of one weight buffer, below the device's maxStorageBufferBindingSize (tests). */
  maxBindingBytes?: number;
  /** Layers per command buffer of a step (default FLUSH_LAYERS; tests take 1 so that every step flushes). */
  flushLayers?: number;
}

export interface EngineInfo {
  device: string;
  quant: GpuQuant;
  subgroups: boolean;
  weightBytes: number;
  activeBytes: number;
}

/** One batch entry as the engine runs it: the sequence's slot and position, its tokens and the rows wanted. */
export interface StepEntry {
  slot: number;
  position: number;
  tokens: ArrayLike<number>;
  rows: LogitsRows;
}

interface Mlp {
  gateUp: GpuMatrix;
  down: GpuMatrix;
  inter: number;
}

interface Layer {
  attnNorm: GPUBuffer;
  /** q_proj (or q_a) and kv_a stacked by rows: both read the normed x, so one product makes both. */
  qkvA: GpuMatrix;
  /** Rows of qkvA before kv_a's. */
  qRows: number;
  /** q_lora's second half, when there is one. */
  qB: { aNorm: GPUBuffer; b: GpuMatrix } | null;
  kvANorm: GPUBuffer;
  kvB: GpuMatrix;
  o: GpuMatrix;
  ffnNorm: GPUBuffer;
  ffn: { mlp: Mlp } | { router: GpuMatrix; bias: GPUBuffer | null; experts: Mlp; shared: Mlp | null };
  /** [maxSequences, contextLength, kv_lora_rank + qk_rope_head_dim] f32. */
  cache: GPUBuffer;
}

/** Most floats of attention partials one dispatch keeps (tokens x heads x blocks x (rank + 2)): longer passes attend in chunks. */
const PARTIAL_FLOATS = 1 << 24;

/** Two matrices of one width as one, by rows (the parts of a weight are its tensors' rows, in order). */
function stackRows(a: Weight, b: Weight): Weight {
  return { ...a, parts: [...a.parts, ...b.parts], shape: [a.shape[0] + b.shape[0], a.shape[1]] };
}

/** Layers recorded per command buffer of a step (GpuEngine.flushLayers' default): the best of 2, 3, 6 and 9 on the H200 (bench/RESULTS.md). */
const FLUSH_LAYERS = 3;

/** One matrix-vector product's options: its input (as is, normed by `g`, or SwiGLU'd), where rows lie, routing. */
interface LinearOptions {
  input?: MatvecInput;
  g?: GPUBuffer;
  xOff?: number;
  xStride?: number;
  yOff?: number;
  yStride?: number;
  accumulate?: boolean;
  /** Routed experts: each input row's expert in ids; x row = pair / inDiv; with fan, an output sums fan pairs weighted by weights. */
  routed?: { ids: GPUBuffer; inDiv: number; fan?: number; weights?: GPUBuffer };
  /** Row groups of a larger matrix: output row r reads W row (r / rows) * stride + skip + r % rows and x at (r / rows) * x. */
  groups?: { rows: number; stride: number; skip: number; x: number };
}

/** A decode step's time by dispatch family: each family alone in a command buffer, timed submit to done. */
export interface ProfileRow {
  tag: string;
  dispatches: number;
  ms: number;
}

const ROUTE_METHOD = { greedy: ROUTE_GREEDY, group_limited_greedy: ROUTE_GROUP_LIMITED_GREEDY, noaux_tc: ROUTE_NOAUX_TC } as const;

function gpuQuant(dir: string, converted: string | undefined, requested?: QuantName): GpuQuant {
  if (converted) fail(`${dir} was written by "deepwasm convert" (${converted}), which the WebGPU backend does not read; load the original checkpoint (--quant ${converted} gives the same format)`);
  if (requested === 'fp8') fail('--quant fp8 is not supported by the WebGPU backend: it widens FP8 checkpoints to f32 as stored, or runs --quant q8, q4, bf16 or f32');
  return requested ?? 'stored';
}

export class GpuEngine {
  /** Layers per command buffer of a step; 0: the whole step in one (benchmarks compare sizes). */
  flushLayers: number;
  private readonly scratch: Record<string, GPUBuffer> = {};
  private readonly empty: GPUBuffer;
  private readback: GPUBuffer | null = null;
  private idsBuf: GPUBuffer | null = null;
  private readonly rec: Recorder;
  private readonly scoreTokens: number;
  private readonly maxPairs: number;
  /** Attention blocks of SPLIT positions in a full context. */
  private readonly blocks: number;
  /** The kernels made for this model's shape, made once. */
  private readonly defs: { attend?: KernelDef; merge?: KernelDef; absorb?: KernelDef; route?: KernelDef } = {};

  private constructor(
    private readonly gpu: Gpu,
    private readonly cfg: DeepSeekConfig,
    private readonly opts: EngineOptions,
    private readonly kernels: Kernels,
    private readonly layers: Layer[],
    private readonly embedding: GpuMatrix,
    private readonly norm: GPUBuffer,
    private readonly head: GpuMatrix,
    private readonly cos: GPUBuffer,
    private readonly sin: GPUBuffer,
    readonly info: EngineInfo,
  ) {
    const d = gpu.device;
    this.flushLayers = opts.flushLayers ?? FLUSH_LAYERS;
    this.rec = new Recorder(d);
    this.empty = d.createBuffer({ size: 16, usage: USAGE.STORAGE });
    const c = cfg;
    const P = opts.passTokens;
    const k = c.nRoutedExperts > 0 ? c.numExpertsPerTok : 1;
    this.maxPairs = P * k;
    this.blocks = Math.ceil(opts.contextLength / SPLIT);
    this.scoreTokens = Math.max(1, Math.min(P, Math.floor(PARTIAL_FLOATS / (c.numAttentionHeads * this.blocks * (c.kvLoraRank + 2)))));
    if (c.kvLoraRank + c.qkRopeHeadDim > MAX_LATENT) fail(`WebGPU backend: kv_lora_rank + qk_rope_head_dim is ${c.kvLoraRank + c.qkRopeHeadDim}, more than the attention kernel holds (${MAX_LATENT})`);
    const inter = Math.max(c.intermediateSize, c.moeIntermediateSize * Math.max(1, c.nSharedExperts));
    const sizes: Record<string, number> = {
      x: P * c.hiddenSize,
      qkv: P * ((c.qLoraRank ?? c.numAttentionHeads * (c.qkNopeHeadDim + c.qkRopeHeadDim)) + c.kvLoraRank + c.qkRopeHeadDim),
      q: P * c.numAttentionHeads * (c.qkNopeHeadDim + c.qkRopeHeadDim),
      qa: P * c.numAttentionHeads * c.kvLoraRank,
      ol: P * c.numAttentionHeads * c.kvLoraRank,
      o: P * c.numAttentionHeads * c.vHeadDim,
      op: this.scoreTokens * c.numAttentionHeads * this.blocks * c.kvLoraRank,
      ml: this.scoreTokens * c.numAttentionHeads * this.blocks * 2,
      gu: Math.max(P * 2 * inter, this.maxPairs * 2 * c.moeIntermediateSize),
      gs: P * 2 * c.moeIntermediateSize * Math.max(1, c.nSharedExperts),
      rl: P * Math.max(1, c.nRoutedExperts),
      ids: this.maxPairs,
      rw: this.maxPairs,
      logits: P * c.vocabSize,
      parts: 2 * ARGMAX_PARTS,
      arg: 4,
    };
    for (const [name, n] of Object.entries(sizes)) {
      if (n * 4 > d.limits.maxStorageBufferBindingSize) {
        fail(`WebGPU backend: the ${name} scratch of a ${P}-token pass takes ${n * 4} bytes, more than this device binds (maxStorageBufferBindingSize ${d.limits.maxStorageBufferBindingSize}); load with fewer pass tokens or a smaller context`);
      }
      this.scratch[name] = d.createBuffer({ size: Math.max(16, n * 4), usage: USAGE.STORAGE | USAGE.COPY_SRC | USAGE.COPY_DST });
    }
  }

  /** Uploads the checkpoint's weights (the caller closes it afterwards). */
  static async load(ckpt: Checkpoint, opts: EngineOptions, onProgress?: (read: number, total: number) => void): Promise<GpuEngine> {
    const cfg = ckpt.config;
    const quant = gpuQuant(ckpt.dir, cfg.deepwasmQuantization?.format, opts.quant);
    const schema = modelSchema(cfg, { hasLmHead: ckpt.has('lm_head.weight') });
    const gpu = await requestGpu(opts.subgroups ?? true);
    let total = 0;
    for (const w of schemaWeights(schema)) {
      if (w.tied || (w.optional && !ckpt.has(w.parts[0].name))) continue;
      for (const p of w.parts) {
        const e = ckpt.get(p.name);
        total += e.nbytes;
        const scale = p.name.replace(/\.weight$/, '.weight_scale_inv');
        if (e.dtype === 'F8_E4M3' && ckpt.has(scale)) total += ckpt.get(scale).nbytes;
      }
    }
    const up = new Uploader(gpu.device, ckpt, quant, GpuEngine.maxBinding(gpu, opts), total, onProgress);
    return GpuEngine.build(gpu, cfg, schema, up, opts, quant);
  }

  /** Random bf16 weights made on the device (random.ts), for benchmarks of a config without its checkpoint. */
  static async random(cfg: DeepSeekConfig, opts: EngineOptions, seed: number): Promise<GpuEngine> {
    if (opts.quant !== undefined && opts.quant !== 'bf16') fail(`WebGPU backend: random weights are bf16; --quant ${opts.quant} needs a checkpoint`);
    const schema = modelSchema(cfg, { hasLmHead: !cfg.tieWordEmbeddings });
    const gpu = await requestGpu(opts.subgroups ?? true);
    const sink = await RandomWeights.create(gpu.device, GpuEngine.maxBinding(gpu, opts), seed);
    const engine = await GpuEngine.build(gpu, cfg, schema, sink, opts, 'bf16');
    await gpu.device.queue.onSubmittedWorkDone();
    return engine;
  }

  private static maxBinding(gpu: Gpu, opts: EngineOptions): number {
    return Math.min(gpu.device.limits.maxStorageBufferBindingSize, opts.maxBindingBytes ?? Infinity);
  }

  private static async build(gpu: Gpu, cfg: DeepSeekConfig, schema: ModelSchema, up: WeightSink, opts: EngineOptions, quant: GpuQuant): Promise<GpuEngine> {
    const device = gpu.device;
    const mlp = (m: MlpSchema): Mlp => ({ gateUp: up.matrix(m.gateUp), down: up.matrix(m.down), inter: m.inter });
    const row = cfg.kvLoraRank + cfg.qkRopeHeadDim;
    const cacheBytes = opts.maxSequences * opts.contextLength * row * 4;
    if (cacheBytes > device.limits.maxStorageBufferBindingSize) {
      fail(`WebGPU backend: a layer's KV cache for ${opts.maxSequences} x ${opts.contextLength} tokens takes ${cacheBytes} bytes, more than this device binds (${device.limits.maxStorageBufferBindingSize}); load with a smaller context or fewer sequences`);
    }
    let active = 0;
    const count = (m: GpuMatrix, share = 1) => {
      active += m.bytes * share;
      return m;
    };
    const layers: Layer[] = schema.blocks.map((b) => {
      const a = b.attn;
      const qa = 'proj' in a.q ? a.q.proj : a.q.a;
      const qkvA = count(up.matrix(stackRows(qa, a.kvA)));
      const qB = 'proj' in a.q ? null : { aNorm: up.vector(a.q.aNorm), b: count(up.matrix(a.q.b)) };
      const kvB = count(up.matrix(a.kvB));
      if (kvB.pieces.length > 1) fail(`WebGPU backend: ${a.kvB.parts[0].name} is larger than this device binds at once`);
      const layer = {
        attnNorm: up.vector(b.attnNorm),
        qkvA,
        qRows: qa.shape[0],
        qB,
        kvANorm: up.vector(a.kvANorm),
        kvB,
        o: count(up.matrix(a.o)),
        ffnNorm: up.vector(b.ffnNorm),
        cache: device.createBuffer({ size: cacheBytes, usage: USAGE.STORAGE | USAGE.COPY_SRC | USAGE.COPY_DST }),
      };
      if ('mlp' in b.ffn) {
        const m = mlp(b.ffn.mlp);
        count(m.gateUp);
        count(m.down);
        return { ...layer, ffn: { mlp: m } };
      }
      const moe = b.ffn.moe;
      const share = activeShare(cfg, moe.experts[0].gateUp);
      const experts: Mlp = {
        gateUp: count(up.stack(moe.experts.map((e) => e.gateUp)), share),
        down: count(up.stack(moe.experts.map((e) => e.down)), share),
        inter: moe.experts[0].inter,
      };
      const shared = moe.shared ? mlp(moe.shared) : null;
      if (shared) {
        count(shared.gateUp);
        count(shared.down);
      }
      const bias = moe.bias && up.has(moe.bias) ? up.vector(moe.bias) : null;
      return { ...layer, ffn: { router: count(up.matrix(moe.router)), bias, experts, shared } };
    });
    const embedding = up.matrix(schema.embed);
    const norm = up.vector(schema.norm);
    const head = schema.head.tied ? embedding : up.matrix(schema.head);
    count(head);
    const t = ropeTables(cfg, opts.contextLength);
    const cos = up.buffer(t.cos);
    const sin = up.buffer(t.sin);
    const kernels = new Kernels(device, gpu.subgroups);
    const info: EngineInfo = {
      device: `WebGPU: ${gpu.adapter}${gpu.subgroups ? ', subgroups' : ''}`,
      quant,
      subgroups: gpu.subgroups,
      weightBytes: up.bytes,
      activeBytes: Math.round(active),
    };
    const engine = new GpuEngine(gpu, cfg, opts, kernels, layers, embedding, norm, head, cos, sin, info);
    await engine.compile(schema);
    return engine;
  }

  /** Compiles every pipeline before the first step, so a kernel that does not compile fails the load. */
  private async compile(schema: ModelSchema): Promise<void> {
    for (const [W, input, rows] of this.matvecs()) await this.kernels.compile(this.mv(W, input, rows), W.fmt, true);
    for (const def of [cacheRows, this.attendDef(), this.mergeDef(), argmaxParts, argmax]) await this.kernels.compile(def);
    await this.kernels.compile(embed, this.embedding.fmt);
    for (const l of this.layers) await this.kernels.compile(this.absorbDef(), l.kvB.fmt);
    if (schema.config.nRoutedExperts > 0) await this.kernels.compile(this.routeDef());
  }

  /** Every matrix-vector product a pass runs, with its input. */
  private matvecs(): [GpuMatrix, MatvecInput, number?][] {
    const out: [GpuMatrix, MatvecInput, number?][] = [[this.head, 'norm']];
    const mlp = (m: Mlp) => out.push([m.gateUp, 'norm'], [m.down, 'silu']);
    for (const l of this.layers) {
      out.push([l.qkvA, 'norm'], [l.kvB, 'plain', this.valueRows()], [l.o, 'plain']);
      if (l.qB) out.push([l.qB.b, 'norm']);
      if ('mlp' in l.ffn) mlp(l.ffn.mlp);
      else {
        out.push([l.ffn.router, 'norm']);
        mlp(l.ffn.experts);
        if (l.ffn.shared) mlp(l.ffn.shared);
      }
    }
    return out;
  }

  private mv(W: GpuMatrix, input: MatvecInput, rows = MATVEC_ROWS): KernelDef {
    return matmulKernel(input, vec4Rows(W.fmt, W.rowWords), rows);
  }

  /** Rows per workgroup of the value product: a workgroup's rows stay within one head's v_head_dim rows. */
  private valueRows(): number {
    return this.cfg.vHeadDim % MATVEC_ROWS === 0 ? MATVEC_ROWS : 1;
  }

  private attendDef(): KernelDef {
    return (this.defs.attend ??= attendKernel(this.cfg.kvLoraRank, this.cfg.qkRopeHeadDim));
  }

  private mergeDef(): KernelDef {
    return (this.defs.merge ??= mergeKernel(this.cfg.kvLoraRank));
  }

  private absorbDef(): KernelDef {
    return (this.defs.absorb ??= absorbKernel(this.cfg.qkNopeHeadDim));
  }

  private routeDef(): KernelDef {
    const c = this.cfg;
    return (this.defs.route ??= routeKernel(c.nRoutedExperts, c.topkMethod === 'greedy' ? 1 : c.nGroup));
  }

  /** Runs the entries in order in one step; returns their logits rows, one after another. */
  async forward(entries: readonly StepEntry[]): Promise<Float32Array> {
    const V = this.cfg.vocabSize;
    const rows = entries.reduce((n, e) => n + (e.rows === 'none' ? 0 : e.rows === 'all' ? e.tokens.length : 1), 0);
    await this.record(entries, (rec, chunkRows, logitsOff) => rec.copy(this.scratch.logits, 0, this.readbackFor(rows * V * 4), logitsOff * V * 4, chunkRows * V * 4));
    if (rows === 0) {
      await this.submit();
      await this.gpu.device.queue.onSubmittedWorkDone();
      return new Float32Array(0);
    }
    return new Float32Array(await this.read(rows * V * 4));
  }

  /** One entry, its last row's argmax taken on the device: four bytes come back. */
  async greedy(entry: StepEntry): Promise<number> {
    await this.record([{ ...entry, rows: 'last' }], () => {
      this.argmax();
      this.rec.copy(this.scratch.arg, 0, this.readbackFor(4), 0, 4);
    });
    return new Uint32Array(await this.read(4))[0];
  }

  /**
   * Where a greedy step's device time goes: the step timed whole (submit to done, no readback), the same
   * command buffers with no dispatch in them (what every row below pays besides its family), then each
   * dispatch family (tag) alone, `reps` times each after one warm-up, medians. A family alone still pays
   * its dispatches' own overhead; its time less the empty step's is its share of the whole.
   */
  async profile(entry: StepEntry, reps = 5): Promise<ProfileRow[]> {
    const step = { ...entry, rows: 'last' as const };
    const argmaxOf = () => this.argmax();
    const tags = new Map<string, number>();
    this.rec.tags = tags;
    await this.record([step], argmaxOf);
    await this.submit();
    this.rec.tags = null;
    const time = async (only: string | null): Promise<number> => {
      this.rec.only = only;
      const ms: number[] = [];
      for (let r = 0; r <= reps; r++) {
        const t = performance.now();
        await this.record([step], argmaxOf);
        await this.submit();
        await this.gpu.device.queue.onSubmittedWorkDone();
        if (r > 0) ms.push(performance.now() - t);
      }
      this.rec.only = null;
      return ms.sort((a, b) => a - b)[Math.floor(ms.length / 2)];
    };
    const rows: ProfileRow[] = [{ tag: 'step', dispatches: [...tags.values()].reduce((a, b) => a + b, 0), ms: await time(null) }];
    rows.push({ tag: '(no dispatch)', dispatches: 0, ms: await time('(no dispatch)') });
    for (const [tag, n] of tags) rows.push({ tag, dispatches: n, ms: await time(tag) });
    return rows;
  }

  /** The argmax of the pass's logits row into scratch.arg, in two stages. */
  private argmax(): void {
    this.rec.dispatch(this.k(argmaxParts), [this.cfg.vocabSize, 0], [this.scratch.logits, this.scratch.parts], [ARGMAX_PARTS, 1, 1], 'argmax');
    this.rec.dispatch(this.k(argmax), [0], [this.scratch.parts, this.scratch.arg], [1, 1, 1], 'argmax');
  }

  /** Copies a sequence's first `positions` cache rows to another slot, through a staging buffer (a copy within one buffer is not allowed). */
  async fork(from: number, to: number, positions: number): Promise<void> {
    if (positions === 0) return;
    const bytes = (this.cfg.kvLoraRank + this.cfg.qkRopeHeadDim) * 4;
    const slotBytes = this.opts.contextLength * bytes;
    const n = positions * bytes;
    const staging = this.gpu.device.createBuffer({ size: n * this.layers.length, usage: USAGE.COPY_SRC | USAGE.COPY_DST });
    this.begin();
    this.layers.forEach((l, i) => this.rec.copy(l.cache, from * slotBytes, staging, i * n, n));
    this.layers.forEach((l, i) => this.rec.copy(staging, i * n, l.cache, to * slotBytes, n));
    await this.submit();
    await this.gpu.device.queue.onSubmittedWorkDone();
    staging.destroy();
  }

  /** Starts a step: its validation errors, in whichever of its command buffers, are caught until submit. */
  private begin(): void {
    this.gpu.device.pushErrorScope('validation');
  }

  /** Submits what was recorded; a validation error of the step fails it with the device's message. */
  private async submit(): Promise<void> {
    this.rec.submit();
    const e = await this.gpu.device.popErrorScope();
    if (e) fail(`WebGPU backend: ${e.message}`);
  }

  close(): void {
    this.gpu.device.destroy();
  }

  private readbackFor(bytes: number): GPUBuffer {
    if (!this.readback || this.readback.size < bytes) {
      this.readback?.destroy();
      this.readback = this.gpu.device.createBuffer({ size: Math.max(16, bytes), usage: USAGE.MAP_READ | USAGE.COPY_DST });
    }
    return this.readback;
  }

  private async read(bytes: number): Promise<ArrayBuffer> {
    const rb = this.readback!;
    await this.submit();
    await rb.mapAsync(MAP_READ, 0, bytes);
    const out = rb.getMappedRange(0, bytes).slice(0);
    rb.unmap();
    return out;
  }

  private k(def: KernelDef, fmt?: GpuFormat): Compiled {
    return this.kernels.get(def, fmt);
  }

  /**
   * Records every entry's passes (at most passTokens tokens each); after each pass's head, `onLogits`
   * records what to do with its rows (chunkRows rows from the pass's logits, the offset among all rows).
   */
  private async record(entries: readonly StepEntry[], onLogits: (rec: Recorder, chunkRows: number, rowOffset: number) => void): Promise<void> {
    this.begin();
    const all = entries.reduce((n, e) => n + e.tokens.length, 0);
    if (!this.idsBuf || this.idsBuf.size < all * 4) {
      this.idsBuf?.destroy();
      this.idsBuf = this.gpu.device.createBuffer({ size: Math.max(16, all * 4), usage: USAGE.STORAGE | USAGE.COPY_DST });
    }
    // The ids are written before any of the step's command buffers is submitted (flushes go out mid-step).
    const ids = new Uint32Array(Math.max(4, all));
    let at = 0;
    for (const e of entries) for (let i = 0; i < e.tokens.length; i++) ids[at++] = e.tokens[i];
    this.gpu.device.queue.writeBuffer(this.idsBuf, 0, ids.buffer, 0, ids.byteLength);
    let idOff = 0;
    let rowOff = 0;
    for (const e of entries) {
      const P = this.opts.passTokens;
      for (let t0 = 0; t0 < e.tokens.length; t0 += P) {
        const T = Math.min(P, e.tokens.length - t0);
        const last = t0 + T === e.tokens.length;
        const want = e.rows === 'all' ? T : e.rows === 'last' && last ? 1 : 0;
        this.pass(e.slot, e.position + t0, idOff + t0, T, want === 1 && e.rows === 'last' ? T - 1 : 0, want);
        if (want > 0) {
          onLogits(this.rec, want, rowOff);
          rowOff += want;
        }
      }
      idOff += e.tokens.length;
    }
  }

  /** y (+)= W x over `outs` output rows (tokens, or expert pairs), each piece of W in its own dispatch. */
  private linear(tag: string, W: GpuMatrix, x: GPUBuffer, y: GPUBuffer, outs: number, o: LinearOptions = {}): void {
    const input = o.input ?? 'plain';
    const rowsPer = o.groups ? this.valueRows() : MATVEC_ROWS;
    const k = this.k(this.mv(W, input, rowsPer), W.fmt);
    const stack = W.experts > 1 || o.routed !== undefined;
    const grp = o.groups ?? { rows: W.rows, stride: 0, skip: 0, x: 0 };
    const rows = o.groups ? o.groups.rows * Math.floor(W.rows / (o.groups.stride || 1)) : W.rows;
    const fan = o.routed?.fan ?? 1;
    for (const piece of W.pieces) {
      const n = stack || o.groups ? rows : piece.count;
      this.rec.dispatch(
        k,
        [
          n, W.cols, W.rowWords, stack ? 0 : piece.first, o.xOff ?? 0, o.xStride ?? (input === 'silu' ? 2 * W.cols : W.cols), o.routed?.inDiv ?? 1,
          o.yOff ?? 0, o.yStride ?? rows, o.accumulate ? 1 : 0, o.routed ? 1 : 0, fan, stack ? piece.first : 0, stack ? piece.count : 1,
          W.rows * W.rowWords, grp.rows, grp.stride, grp.skip, grp.x, this.cfg.rmsNormEps,
        ],
        [piece.buffer, x, o.routed?.ids ?? this.empty, o.routed?.weights ?? this.empty, o.g ?? this.empty, y],
        rowsGrid(Math.ceil(n / rowsPer), outs),
        tag,
      );
    }
  }

  /** gate_up of x normed by g into gu: a pair per token, or per (token, chosen expert) when routed. */
  private gateUp(tag: string, m: Mlp, g: GPUBuffer, gu: GPUBuffer, tokens: number, routed?: { ids: GPUBuffer; k: number }): void {
    const pairs = routed ? tokens * routed.k : tokens;
    this.linear(`${tag}.gate_up`, m.gateUp, this.scratch.x, gu, pairs, { input: 'norm', g, xStride: this.cfg.hiddenSize, routed: routed && { ids: routed.ids, inDiv: routed.k } });
  }

  /** x += down(silu(gate) * up) from gu; routed: each token's experts' rows summed by the router weights in the same dispatch. */
  private down(tag: string, m: Mlp, gu: GPUBuffer, tokens: number, routed?: { ids: GPUBuffer; weights: GPUBuffer; k: number }): void {
    this.linear(`${tag}.down`, m.down, gu, this.scratch.x, tokens, { input: 'silu', accumulate: true, yStride: this.cfg.hiddenSize, routed: routed && { ids: routed.ids, inDiv: 1, fan: routed.k, weights: routed.weights } });
  }

  /** One pass of T tokens of the sequence in `slot` from position pos0; `want` logits rows from row `first`. */
  private pass(slot: number, pos0: number, idOff: number, T: number, first: number, want: number): void {
    const c = this.cfg;
    const s = this.scratch;
    const hidden = c.hiddenSize;
    const { numAttentionHeads: heads, qkNopeHeadDim: nope, qkRopeHeadDim: ropeDim, vHeadDim: v, kvLoraRank: rank } = c;
    const row = rank + ropeDim;
    const half = ropeDim / 2;
    for (const piece of this.embedding.pieces) {
      this.rec.dispatch(this.k(embed, this.embedding.fmt), [hidden, this.embedding.rowWords, piece.first, piece.count, idOff], [piece.buffer, this.idsBuf!, s.x], [T, 1, 1], 'embed');
    }
    this.layers.forEach((l, li) => {
      // Handing the device each few layers as recorded overlaps its work with the host's recording of the rest.
      if (li > 0 && this.flushLayers > 0 && li % this.flushLayers === 0) this.rec.flush();
      const norm = { input: 'norm' as const, g: l.attnNorm, xStride: hidden };
      const qkv = l.qkvA.rows;
      this.linear('attn.q_kv_a', l.qkvA, s.x, s.qkv, T, norm);
      // The queries: in qkv's first rows, or q_b of them (q_lora).
      const q = l.qB ? { buf: s.q, stride: heads * (nope + ropeDim) } : { buf: s.qkv, stride: qkv };
      if (l.qB) this.linear('attn.q_b', l.qB.b, s.qkv, s.q, T, { input: 'norm', g: l.qB.aNorm, xStride: qkv });
      // The new positions' [c | k_rope] go straight into the cache: c normed, k_rope roped.
      const at = (slot * this.opts.contextLength + pos0) * row;
      this.rec.dispatch(this.k(cacheRows), [rank, l.qRows, qkv, at, row, pos0, half, c.rmsNormEps], [s.qkv, l.kvANorm, this.cos, this.sin, l.cache], [T, 1, 1], 'attn.cache');
      this.rec.dispatch(this.k(this.absorbDef(), l.kvB.fmt), [heads, ropeDim, v, rank, l.kvB.rowWords, q.stride], [l.kvB.pieces[0].buffer, q.buf, s.qa], [Math.ceil(rank / ABSORB_COLUMNS), heads, T], 'attn.absorb');
      const cacheOff = slot * this.opts.contextLength * row;
      for (let t0 = 0; t0 < T; t0 += this.scoreTokens) {
        const n = Math.min(this.scoreTokens, T - t0);
        const blocks = Math.ceil((pos0 + t0 + n) / SPLIT);
        this.rec.dispatch(
          this.k(this.attendDef()),
          [heads, nope, q.stride, cacheOff, pos0, t0, blocks, softmaxScale(c)],
          [s.qa, q.buf, l.cache, this.cos, this.sin, s.op, s.ml],
          [heads, n, blocks],
          'attn.scores',
        );
        this.rec.dispatch(this.k(this.mergeDef()), [heads, pos0, t0, blocks], [s.op, s.ml, s.ol], [heads, n, 1], 'attn.merge');
      }
      this.linear('attn.values', l.kvB, s.ol, s.o, T, { xStride: heads * rank, yStride: heads * v, groups: { rows: v, stride: nope + v, skip: nope, x: rank } });
      this.linear('attn.o', l.o, s.o, s.x, T, { accumulate: true, yStride: hidden });
      if ('mlp' in l.ffn) {
        this.gateUp('mlp', l.ffn.mlp, l.ffnNorm, s.gu, T);
        this.down('mlp', l.ffn.mlp, s.gu, T);
        return;
      }
      const k = c.numExpertsPerTok;
      this.linear('moe.router', l.ffn.router, s.x, s.rl, T, { input: 'norm', g: l.ffnNorm, xStride: hidden });
      this.rec.dispatch(
        this.k(this.routeDef()),
        [k, c.topkGroup, ROUTE_METHOD[c.topkMethod], c.scoringFunc === 'sigmoid' ? SCORE_SIGMOID : SCORE_SOFTMAX, c.normTopkProb ? 1 : 0, l.ffn.bias ? 1 : 0, c.routedScalingFactor],
        [s.rl, l.ffn.bias ?? this.empty, s.ids, s.rw],
        [T, 1, 1],
        'moe.route',
      );
      // Both gate_ups read x before either down adds into it.
      const routed = { ids: s.ids, weights: s.rw, k };
      this.gateUp('moe.experts', l.ffn.experts, l.ffnNorm, s.gu, T, routed);
      if (l.ffn.shared) this.gateUp('moe.shared', l.ffn.shared, l.ffnNorm, s.gs, T);
      this.down('moe.experts', l.ffn.experts, s.gu, T, routed);
      if (l.ffn.shared) this.down('moe.shared', l.ffn.shared, s.gs, T);
    });
    if (want === 0) return;
    this.linear('head', this.head, s.x, s.logits, want, { input: 'norm', g: this.norm, xOff: first * hidden, xStride: hidden, yStride: c.vocabSize });
  }
}
