/// <reference types="@webgpu/types" />
// The DeepSeek model on a WebGPU device: the weights uploaded once from the schema, a latent KV cache per
// layer for the pool's sequences, and forward passes recorded kernel by kernel into one command buffer
// per call, read back once (the logits rows asked for, or the greedy token's four bytes). It reads like
// host/model/model.ts: embed, then per block x += attn(norm(x)); x += ffn(norm(x)), then norm and head.
import type { Checkpoint } from '../../checkpoint/checkpoint.js';
import type { DeepSeekConfig } from '../../checkpoint/config.js';
import { fail } from '../../errors.js';
import type { LogitsRows } from '../../model/backend.js';
import { ropeTables, softmaxScale } from '../../model/rope.js';
import { activeShare, modelSchema, schemaWeights, type MlpSchema, type ModelSchema } from '../../model/schema.js';
import type { QuantName } from '../../model/weights.js';
import { ROUTE_GREEDY, ROUTE_GROUP_LIMITED_GREEDY, ROUTE_NOAUX_TC, SCORE_SIGMOID, SCORE_SOFTMAX } from '../../runtime/constants.js';
import { Kernels, Recorder, rowsGrid, threadsGrid, type Compiled } from './dispatch.js';
import type { GpuFormat } from './formats.js';
import { MAP_READ, USAGE, requestGpu, type Gpu } from './gpu.js';
import { argmax } from './kernels/argmax.js';
import type { KernelDef } from './kernels/kernel.js';
import { absorb, latent, values } from './kernels/attention.js';
import { combine, copyRows, siluMul } from './kernels/elementwise.js';
import { embed } from './kernels/embed.js';
import { matmul } from './kernels/matmul.js';
import { rmsnorm } from './kernels/rmsnorm.js';
import { rope } from './kernels/rope.js';
import { routeKernel } from './kernels/route.js';
import { Uploader, type GpuMatrix, type GpuQuant } from './upload.js';

export interface EngineOptions {
  contextLength: number;
  maxSequences: number;
  passTokens: number;
  quant?: QuantName;
  /** false: the plain reductions even where the adapter has subgroups. */
  subgroups?: boolean;
  /** Most bytes of one weight buffer, below the device's maxStorageBufferBindingSize (tests). */
  maxBindingBytes?: number;
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
  q: { proj: GpuMatrix } | { a: GpuMatrix; aNorm: GPUBuffer; b: GpuMatrix };
  kvA: GpuMatrix;
  kvANorm: GPUBuffer;
  kvB: GpuMatrix;
  o: GpuMatrix;
  ffnNorm: GPUBuffer;
  ffn: { mlp: Mlp } | { router: GpuMatrix; bias: GPUBuffer | null; experts: Mlp; shared: Mlp | null };
  /** [maxSequences, contextLength, kv_lora_rank + qk_rope_head_dim] f32. */
  cache: GPUBuffer;
}

/** Most floats of attention scores one dispatch keeps (tokens x heads x context): longer passes attend in chunks. */
const SCORE_FLOATS = 1 << 24;

const ROUTE_METHOD = { greedy: ROUTE_GREEDY, group_limited_greedy: ROUTE_GROUP_LIMITED_GREEDY, noaux_tc: ROUTE_NOAUX_TC } as const;

function gpuQuant(dir: string, converted: string | undefined, requested?: QuantName): GpuQuant {
  if (converted) fail(`${dir} was written by "deepwasm convert" (${converted}), which the WebGPU backend does not read; load the original checkpoint (--quant ${converted} gives the same format)`);
  if (requested === 'fp8') fail('--quant fp8 is not supported by the WebGPU backend: it widens FP8 checkpoints to f32 as stored, or runs --quant q8, q4, bf16 or f32');
  return requested ?? 'stored';
}

export class GpuEngine {
  private readonly scratch: Record<string, GPUBuffer> = {};
  private readonly empty: GPUBuffer;
  private readback: GPUBuffer | null = null;
  private idsBuf: GPUBuffer | null = null;
  private readonly rec: Recorder;
  private readonly scoreTokens: number;
  private readonly maxPairs: number;

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
    this.rec = new Recorder(d);
    this.empty = d.createBuffer({ size: 16, usage: USAGE.STORAGE });
    const c = cfg;
    const P = opts.passTokens;
    const k = c.nRoutedExperts > 0 ? c.numExpertsPerTok : 1;
    this.maxPairs = P * k;
    this.scoreTokens = Math.max(1, Math.min(P, Math.floor(SCORE_FLOATS / (c.numAttentionHeads * opts.contextLength))));
    const inter = Math.max(c.intermediateSize, c.moeIntermediateSize * Math.max(1, c.nSharedExperts));
    const sizes: Record<string, number> = {
      x: P * c.hiddenSize,
      h: P * c.hiddenSize,
      ql: P * (c.qLoraRank ?? 1),
      qn: P * (c.qLoraRank ?? 1),
      q: P * c.numAttentionHeads * (c.qkNopeHeadDim + c.qkRopeHeadDim),
      kv: P * (c.kvLoraRank + c.qkRopeHeadDim),
      qa: P * c.numAttentionHeads * c.kvLoraRank,
      ol: P * c.numAttentionHeads * c.kvLoraRank,
      o: P * c.numAttentionHeads * c.vHeadDim,
      s: this.scoreTokens * c.numAttentionHeads * opts.contextLength,
      gu: Math.max(P * 2 * inter, this.maxPairs * 2 * c.moeIntermediateSize),
      hm: Math.max(P * inter, this.maxPairs * c.moeIntermediateSize),
      ye: this.maxPairs * c.hiddenSize,
      rl: P * Math.max(1, c.nRoutedExperts),
      ids: this.maxPairs,
      rw: this.maxPairs,
      logits: P * c.vocabSize,
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
    const device = gpu.device;
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
    const maxBinding = Math.min(device.limits.maxStorageBufferBindingSize, opts.maxBindingBytes ?? Infinity);
    const up = new Uploader(device, ckpt, quant, maxBinding, total, onProgress);
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
      const q = 'proj' in a.q ? { proj: count(up.matrix(a.q.proj)) } : { a: count(up.matrix(a.q.a)), aNorm: up.vector(a.q.aNorm), b: count(up.matrix(a.q.b)) };
      const kvB = count(up.matrix(a.kvB));
      if (kvB.pieces.length > 1) fail(`WebGPU backend: ${a.kvB.parts[0].name} is larger than this device binds at once`);
      const layer = {
        attnNorm: up.vector(b.attnNorm),
        q,
        kvA: count(up.matrix(a.kvA)),
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
      const bias = moe.bias && ckpt.has(moe.bias.parts[0].name) ? up.vector(moe.bias) : null;
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
    const fmts = new Set(this.layers.flatMap((l) => [l.kvA, l.o, 'proj' in l.q ? l.q.proj : l.q.a, ...('mlp' in l.ffn ? [l.ffn.mlp.gateUp] : [l.ffn.router, l.ffn.experts.gateUp])].map((m) => m.fmt)));
    fmts.add(this.head.fmt);
    for (const f of fmts) await this.kernels.compile(matmul, f, true);
    for (const def of [rmsnorm, rope, siluMul, copyRows, combine, latent, argmax]) await this.kernels.compile(def);
    await this.kernels.compile(embed, this.embedding.fmt);
    for (const l of this.layers) {
      await this.kernels.compile(absorb, l.kvB.fmt);
      await this.kernels.compile(values, l.kvB.fmt);
    }
    if (schema.config.nRoutedExperts > 0) await this.kernels.compile(this.routeDef());
  }

  private routeDef() {
    const c = this.cfg;
    return routeKernel(c.nRoutedExperts, c.topkMethod === 'greedy' ? 1 : c.nGroup);
  }

  /** Runs the entries in order in one command buffer; returns their logits rows, one after another. */
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
      this.rec.dispatch(this.k(argmax), [this.cfg.vocabSize, 0, 0], [this.scratch.logits, this.scratch.arg], [1, 1, 1]);
      this.rec.copy(this.scratch.arg, 0, this.readbackFor(4), 0, 4);
    });
    return new Uint32Array(await this.read(4))[0];
  }

  /** Copies a sequence's first `positions` cache rows to another slot, through a staging buffer (a copy within one buffer is not allowed). */
  async fork(from: number, to: number, positions: number): Promise<void> {
    if (positions === 0) return;
    const bytes = (this.cfg.kvLoraRank + this.cfg.qkRopeHeadDim) * 4;
    const slotBytes = this.opts.contextLength * bytes;
    const n = positions * bytes;
    const staging = this.gpu.device.createBuffer({ size: n * this.layers.length, usage: USAGE.COPY_SRC | USAGE.COPY_DST });
    this.layers.forEach((l, i) => this.rec.copy(l.cache, from * slotBytes, staging, i * n, n));
    this.layers.forEach((l, i) => this.rec.copy(staging, i * n, l.cache, to * slotBytes, n));
    await this.submit();
    await this.gpu.device.queue.onSubmittedWorkDone();
    staging.destroy();
  }

  /** Submits what was recorded; a validation error of the step fails it with the device's message. */
  private async submit(): Promise<void> {
    const d = this.gpu.device;
    d.pushErrorScope('validation');
    this.rec.submit();
    const e = await d.popErrorScope();
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
    const all = entries.reduce((n, e) => n + e.tokens.length, 0);
    if (!this.idsBuf || this.idsBuf.size < all * 4) {
      this.idsBuf?.destroy();
      this.idsBuf = this.gpu.device.createBuffer({ size: Math.max(16, all * 4), usage: USAGE.STORAGE | USAGE.COPY_DST });
    }
    const ids = new Uint32Array(Math.max(4, all));
    let idOff = 0;
    let rowOff = 0;
    for (const e of entries) {
      for (let i = 0; i < e.tokens.length; i++) ids[idOff + i] = e.tokens[i];
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
    this.gpu.device.queue.writeBuffer(this.idsBuf, 0, ids.buffer, 0, ids.byteLength);
  }

  /** y (+)= W x over `pairs` input rows, each piece of W in its own dispatch. */
  private linear(W: GpuMatrix, x: GPUBuffer, y: GPUBuffer, pairs: number, o: { xOff?: number; yOff?: number; accumulate?: boolean; routed?: { ids: GPUBuffer; inDiv: number } } = {}): void {
    const k = this.k(matmul, W.fmt);
    const stack = W.experts > 1 || o.routed !== undefined;
    for (const piece of W.pieces) {
      const rows = stack ? W.rows : piece.count;
      this.rec.dispatch(
        k,
        [
          rows, W.cols, W.rowWords, stack ? 0 : piece.first, o.xOff ?? 0, W.cols, o.routed?.inDiv ?? 1, o.yOff ?? 0, W.rows,
          o.accumulate ? 1 : 0, o.routed ? 1 : 0, 0, stack ? piece.first : 0, stack ? piece.count : 1, W.rows * W.rowWords,
        ],
        [piece.buffer, x, o.routed?.ids ?? this.empty, y],
        rowsGrid(rows, pairs),
      );
    }
  }

  private rmsnorm(x: GPUBuffer, g: GPUBuffer, y: GPUBuffer, rows: number, cols: number, o: { xOff?: number; xStride?: number; yOff?: number; yStride?: number } = {}): void {
    this.rec.dispatch(this.k(rmsnorm), [cols, o.xOff ?? 0, o.xStride ?? cols, o.yOff ?? 0, o.yStride ?? cols, this.cfg.rmsNormEps], [x, g, y], [rows, 1, 1]);
  }

  private mlp(m: Mlp, x: GPUBuffer, pairs: number, routed?: { ids: GPUBuffer; inDiv: number }): GPUBuffer {
    const s = this.scratch;
    this.linear(m.gateUp, x, s.gu, pairs, { routed });
    this.rec.dispatch(this.k(siluMul), [m.inter, pairs * m.inter], [s.gu, s.hm], threadsGrid(pairs * m.inter));
    return s.hm;
  }

  /** One pass of T tokens of the sequence in `slot` from position pos0; `want` logits rows from row `first`. */
  private pass(slot: number, pos0: number, idOff: number, T: number, first: number, want: number): void {
    const c = this.cfg;
    const s = this.scratch;
    const hidden = c.hiddenSize;
    const { numAttentionHeads: heads, qkNopeHeadDim: nope, qkRopeHeadDim: ropeDim, vHeadDim: v, kvLoraRank: rank } = c;
    const qd = nope + ropeDim;
    const row = rank + ropeDim;
    const half = ropeDim / 2;
    for (const piece of this.embedding.pieces) {
      this.rec.dispatch(this.k(embed, this.embedding.fmt), [hidden, this.embedding.rowWords, piece.first, piece.count, idOff], [piece.buffer, this.idsBuf!, s.x], [T, 1, 1]);
    }
    for (const l of this.layers) {
      this.rmsnorm(s.x, l.attnNorm, s.h, T, hidden);
      if ('proj' in l.q) this.linear(l.q.proj, s.h, s.q, T);
      else {
        this.linear(l.q.a, s.h, s.ql, T);
        this.rmsnorm(s.ql, l.q.aNorm, s.qn, T, l.q.a.rows);
        this.linear(l.q.b, s.qn, s.q, T);
      }
      this.rec.dispatch(this.k(rope), [nope, heads * qd, qd, pos0, half], [this.cos, this.sin, s.q], [T, heads, 1]);
      // The new positions' [c | k_rope] go straight into the cache: c normed, k_rope copied then roped.
      this.linear(l.kvA, s.h, s.kv, T);
      const at = (slot * this.opts.contextLength + pos0) * row;
      this.rmsnorm(s.kv, l.kvANorm, l.cache, T, rank, { xStride: row, yOff: at, yStride: row });
      this.rec.dispatch(this.k(copyRows), [ropeDim, T * ropeDim, rank, row, at + rank, row], [s.kv, l.cache], threadsGrid(T * ropeDim));
      this.rec.dispatch(this.k(rope), [at + rank, row, 0, pos0, half], [this.cos, this.sin, l.cache], [T, 1, 1]);
      const shape = [heads, nope, ropeDim, v, rank, l.kvB.rowWords];
      this.rec.dispatch(this.k(absorb, l.kvB.fmt), [...shape, T * heads * rank], [l.kvB.pieces[0].buffer, s.q, s.qa], threadsGrid(T * heads * rank));
      const cacheOff = slot * this.opts.contextLength * row;
      for (let t0 = 0; t0 < T; t0 += this.scoreTokens) {
        const n = Math.min(this.scoreTokens, T - t0);
        this.rec.dispatch(this.k(latent), [heads, nope, ropeDim, rank, cacheOff, pos0, t0, this.opts.contextLength, softmaxScale(c)], [s.qa, s.q, l.cache, s.s, s.ol], [heads, n, 1]);
      }
      this.rec.dispatch(this.k(values, l.kvB.fmt), [...shape, T * heads * v], [l.kvB.pieces[0].buffer, s.ol, s.o], threadsGrid(T * heads * v));
      this.linear(l.o, s.o, s.x, T, { accumulate: true });
      this.rmsnorm(s.x, l.ffnNorm, s.h, T, hidden);
      if ('mlp' in l.ffn) {
        this.linear(l.ffn.mlp.down, this.mlp(l.ffn.mlp, s.h, T), s.x, T, { accumulate: true });
        continue;
      }
      const k = c.numExpertsPerTok;
      this.linear(l.ffn.router, s.h, s.rl, T);
      this.rec.dispatch(
        this.k(this.routeDef()),
        [T, k, c.topkGroup, ROUTE_METHOD[c.topkMethod], c.scoringFunc === 'sigmoid' ? SCORE_SIGMOID : SCORE_SOFTMAX, c.normTopkProb ? 1 : 0, l.ffn.bias ? 1 : 0, c.routedScalingFactor],
        [s.rl, l.ffn.bias ?? this.empty, s.ids, s.rw],
        threadsGrid(T),
      );
      const hm = this.mlp(l.ffn.experts, s.h, T * k, { ids: s.ids, inDiv: k });
      this.linear(l.ffn.experts.down, hm, s.ye, T * k, { routed: { ids: s.ids, inDiv: 1 } });
      this.rec.dispatch(this.k(combine), [hidden, k, T * hidden], [s.ye, s.rw, s.x], threadsGrid(T * hidden));
      if (l.ffn.shared) this.linear(l.ffn.shared.down, this.mlp(l.ffn.shared, s.h, T), s.x, T, { accumulate: true });
    }
    if (want === 0) return;
    this.rmsnorm(s.x, this.norm, s.h, want, hidden, { xOff: first * hidden });
    this.linear(this.head, s.h, s.logits, want);
  }
}
