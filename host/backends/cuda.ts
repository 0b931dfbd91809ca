// The CUDA backend: the same DeepSeek model as host/model/, with the weights, the latent KV cache and
// the whole forward pass on an NVIDIA GPU (kernels-gpu/). This file reads the checkpoint exactly as
// host/model/weights.ts does and hands each tensor to the library once; after that a prefill is one
// call and a decode step is one CUDA-graph replay that returns only the next greedy token (and the
// logits when they are asked for).
import { expectShape, openCheckpoint, type Checkpoint } from '../checkpoint/checkpoint.js';
import { isMoeLayer, type DeepSeekConfig } from '../checkpoint/config.js';
import { bf16ToF32, dequantFp8Blocks, f16ToF32 } from '../checkpoint/dtypes.js';
import { readTensorInto, type TensorEntry } from '../checkpoint/safetensors.js';
import { fail } from '../errors.js';
import { ropeTables, softmaxScale } from '../model/rope.js';
import {
  CONFIG_BYTES, DW_BF16, DW_F16, DW_F32, DW_FP8, SLOT, openLibrary, type DwLib, type Handle,
} from './cuda-ffi.js';

export { SLOT } from './cuda-ffi.js';

export interface CudaLoadOptions {
  /** Most tokens a sequence may hold; default min(max_position_embeddings, 4096). */
  contextLength?: number;
  /** Tokens per prefill chunk (default 256). */
  maxPrefill?: number;
  /** 'q8': every weight matrix stored as int8 with one scale per row and 64 columns. */
  quant?: 'none' | 'q8';
  /** Path of libdwcuda.so (default: $DEEPWASM_CUDA_LIB or kernels-gpu/build/). */
  library?: string;
  onProgress?: (bytesRead: number, totalBytes: number) => void;
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

const TOPK_METHOD = { greedy: 0, group_limited_greedy: 1, noaux_tc: 2 } as const;

/** dw_config as the library reads it (kernels-gpu/include/dw_cuda.h). */
export function packConfig(cfg: DeepSeekConfig, contextLength: number, maxPrefill: number, quant: number): ArrayBuffer {
  const buf = new ArrayBuffer(CONFIG_BYTES);
  const ints = new Int32Array(buf, 0, 24);
  const floats = new Float32Array(buf, 96, 4);
  ints.set([
    cfg.vocabSize, cfg.hiddenSize, cfg.intermediateSize, cfg.moeIntermediateSize,
    cfg.numHiddenLayers, cfg.numAttentionHeads, cfg.qLoraRank ?? 0, cfg.kvLoraRank,
    cfg.qkNopeHeadDim, cfg.qkRopeHeadDim, cfg.vHeadDim, cfg.nRoutedExperts,
    cfg.nSharedExperts, cfg.numExpertsPerTok, cfg.firstKDenseReplace, cfg.moeLayerFreq,
    cfg.nGroup, cfg.topkGroup, TOPK_METHOD[cfg.topkMethod], cfg.scoringFunc === 'sigmoid' ? 1 : 0,
    cfg.normTopkProb ? 1 : 0, contextLength, maxPrefill, quant,
  ]);
  floats.set([cfg.routedScalingFactor, cfg.rmsNormEps, softmaxScale(cfg), 0]);
  return buf;
}

const DTYPE_CODE: Record<string, number> = { F32: DW_F32, BF16: DW_BF16, F16: DW_F16, F8_E4M3: DW_FP8 };

/**
 * A DeepSeek-V2/V3 model on the GPU with its latent KV cache; the same interface as host/model's
 * Model for what the CLI uses (forward, position, reset, close).
 */
export class CudaModel {
  private closed = false;

  private constructor(
    readonly config: DeepSeekConfig,
    readonly contextLength: number,
    private readonly lib: DwLib,
    private readonly handle: Handle,
    readonly device: string,
  ) {}

  /** Reads a Hugging Face checkpoint folder onto the device. */
  static async load(dir: string, opts: CudaLoadOptions = {}): Promise<CudaModel> {
    const ckpt = openCheckpoint(dir);
    try {
      const model = CudaModel.create(ckpt.config, opts);
      try {
        new Uploader(ckpt, model.lib, model.handle, opts.onProgress).all();
        model.uploadRope();
        model.check(model.lib.finalize(model.handle), 'finalize');
      } catch (e) {
        await model.close();
        throw e;
      }
      return model;
    } finally {
      ckpt.close();
    }
  }

  /** A model of this shape with random bf16 weights made on the device (benchmarks). */
  static async random(cfg: DeepSeekConfig, seed: number, opts: CudaLoadOptions = {}): Promise<CudaModel> {
    const model = CudaModel.create(cfg, opts);
    try {
      model.uploadRope();
      model.check(model.lib.fillRandom(model.handle, seed), 'fill_random');
      model.check(model.lib.finalize(model.handle), 'finalize');
    } catch (e) {
      await model.close();
      throw e;
    }
    return model;
  }

  private static create(cfg: DeepSeekConfig, opts: CudaLoadOptions): CudaModel {
    const contextLength = opts.contextLength ?? Math.min(cfg.maxPositionEmbeddings, 4096);
    if (!Number.isInteger(contextLength) || contextLength < 1 || contextLength > cfg.maxPositionEmbeddings) {
      fail(`context length must be a whole number from 1 to max_position_embeddings (${cfg.maxPositionEmbeddings}), got ${contextLength}`);
    }
    let lib: DwLib;
    try {
      lib = openLibrary(opts.library);
    } catch (e) {
      fail(`CUDA backend unavailable: ${(e as Error).message}`);
    }
    const { count, info } = lib.deviceInfo();
    if (count <= 0) fail(`CUDA backend unavailable: no CUDA device (${info})`);
    const handle = lib.create(packConfig(cfg, contextLength, opts.maxPrefill ?? 256, opts.quant === 'q8' ? 1 : 0));
    if (!handle) fail(`CUDA backend: ${lib.lastError()}`);
    return new CudaModel(cfg, contextLength, lib, handle, info);
  }

  private uploadRope(): void {
    const t = ropeTables(this.config, this.contextLength);
    for (const [slot, data] of [[SLOT.ROPE_COS, t.cos], [SLOT.ROPE_SIN, t.sin]] as const) {
      const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
      this.check(this.lib.load(this.handle, -1, slot, 0, DW_F32, bytes, data.length, 1, 0, null, 0, 0), 'load rope tables');
    }
  }

  private check(rc: number, what: string): number {
    if (rc < 0) fail(`CUDA backend (${what}): ${this.lib.lastError()}`);
    return rc;
  }

  /** Tokens already in the cache: the position of the next token. */
  get position(): number {
    return this.lib.position(this.handle);
  }

  /** Bytes of weights on the device, and those one decode step reads. */
  get weightBytes(): number {
    return this.lib.weightBytes(this.handle);
  }
  get activeBytes(): number {
    return this.lib.activeBytes(this.handle);
  }

  reset(): void {
    this.check(this.lib.reset(this.handle), 'reset');
  }

  private validate(ids: ArrayLike<number>): Int32Array {
    const vocab = this.config.vocabSize;
    if (ids.length === 0) fail('no tokens to run: the prompt is empty');
    const out = new Int32Array(ids.length);
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i];
      if (!Number.isInteger(id) || id < 0 || id >= vocab) {
        fail(`token id ${id} at index ${i} is outside the vocabulary (expected 0 to ${vocab - 1}, vocab_size in config.json)`);
      }
      out[i] = id;
    }
    const end = this.position + ids.length;
    if (end > this.contextLength) {
      fail(`${end} tokens exceed the context length (${this.contextLength}); load the model with a larger context (--context)`);
    }
    return out;
  }

  /** Runs ids after the cached tokens: prefill for several, a graph-replayed decode step for one.
   * Returns [1 or T, vocab] logits (all positions with allLogits). */
  forward(ids: ArrayLike<number>, opts: { allLogits?: boolean } = {}): Float32Array {
    const vocab = this.config.vocabSize;
    if (ids.length === 1 && !opts.allLogits) {
      const logits = new Float32Array(vocab);
      this.step(this.validate(ids)[0], logits);
      return logits;
    }
    const rows = opts.allLogits ? ids.length : 1;
    const logits = new Float32Array(rows * vocab);
    this.prefill(ids, logits, !!opts.allLogits);
    return logits;
  }

  /** Prefill; logits (if given) receives [T, vocab] with allRows, else the last row. Returns the argmax. */
  prefill(ids: ArrayLike<number>, logits: Float32Array | null = null, allRows = false): number {
    const arr = this.validate(ids);
    return this.check(this.lib.prefill(this.handle, arr, logits, allRows), 'prefill');
  }

  /** One decode step; logits (if given) receives the step's logits. Returns the greedy next token. */
  step(token: number, logits: Float32Array | null = null): number {
    this.validate([token]);
    return this.check(this.lib.decode(this.handle, token, logits), 'decode');
  }

  /** Greedy decoding on the device: feeds token, then each argmax; returns n ids. */
  generate(token: number, n: number): Int32Array {
    if (this.position + n > this.contextLength) fail(`${this.position + n} tokens exceed the context length (${this.contextLength})`);
    const out = new Int32Array(n);
    this.check(this.lib.generate(this.handle, token, out), 'generate');
    return out;
  }

  /** One decode step of token timed stage by stage on the device (a text table); the position
   * does not advance. */
  profileDecode(token: number): string {
    this.validate([token]);
    return this.lib.profileDecode(this.handle, token);
  }

  /** The k largest logits of the last step (computed on the device), largest first. */
  topk(k: number): { values: Float32Array; ids: Int32Array } {
    const values = new Float32Array(k);
    const ids = new Int32Array(k);
    this.check(this.lib.topk(this.handle, values, ids), 'topk');
    return { values, ids };
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.lib.free(this.handle);
  }
}

/** Reads each checkpoint tensor (as host/model/weights.ts names and shapes them) into its slot. */
class Uploader {
  private read = 0;

  constructor(
    private readonly ckpt: Checkpoint,
    private readonly lib: DwLib,
    private readonly handle: Handle,
    private readonly onProgress?: (bytesRead: number, totalBytes: number) => void,
  ) {}

  all(): void {
    const cfg = this.ckpt.config;
    const { hiddenSize: hidden, numAttentionHeads: heads, qkNopeHeadDim: nope, qkRopeHeadDim: rope, vHeadDim: v } = cfg;
    const rank = cfg.kvLoraRank;
    const qRows = heads * (nope + rope);
    const qWhy = 'num_attention_heads * (qk_nope_head_dim + qk_rope_head_dim)';
    this.matrix(-1, SLOT.EMBED, 0, [{ name: 'model.embed_tokens.weight', rows: cfg.vocabSize, why: 'vocab_size x hidden_size' }], hidden);
    for (let i = 0; i < cfg.numHiddenLayers; i++) {
      const p = `model.layers.${i}`;
      const a = `${p}.self_attn`;
      this.vector(i, SLOT.ATTN_NORM, `${p}.input_layernorm.weight`, hidden, 'hidden_size');
      if (cfg.qLoraRank === null) {
        this.matrix(i, SLOT.Q_PROJ, 0, [{ name: `${a}.q_proj.weight`, rows: qRows, why: `${qWhy} x hidden_size` }], hidden);
      } else {
        this.matrix(i, SLOT.Q_A, 0, [{ name: `${a}.q_a_proj.weight`, rows: cfg.qLoraRank, why: 'q_lora_rank x hidden_size' }], hidden);
        this.vector(i, SLOT.Q_A_NORM, `${a}.q_a_layernorm.weight`, cfg.qLoraRank, 'q_lora_rank');
        this.matrix(i, SLOT.Q_B, 0, [{ name: `${a}.q_b_proj.weight`, rows: qRows, why: `${qWhy} x q_lora_rank` }], cfg.qLoraRank);
      }
      this.matrix(i, SLOT.KV_A, 0, [
        { name: `${a}.kv_a_proj_with_mqa.weight`, rows: rank + rope, why: '(kv_lora_rank + qk_rope_head_dim) x hidden_size' },
      ], hidden);
      this.vector(i, SLOT.KV_A_NORM, `${a}.kv_a_layernorm.weight`, rank, 'kv_lora_rank');
      this.matrix(i, SLOT.KV_B, 0, [
        { name: `${a}.kv_b_proj.weight`, rows: heads * (nope + v), why: 'num_attention_heads * (qk_nope_head_dim + v_head_dim) x kv_lora_rank' },
      ], rank);
      this.matrix(i, SLOT.O_PROJ, 0, [{ name: `${a}.o_proj.weight`, rows: hidden, why: 'hidden_size x num_attention_heads * v_head_dim' }], heads * v);
      this.vector(i, SLOT.FFN_NORM, `${p}.post_attention_layernorm.weight`, hidden, 'hidden_size');
      const m = `${p}.mlp`;
      if (isMoeLayer(cfg, i)) {
        const n = cfg.nRoutedExperts;
        const inter = cfg.moeIntermediateSize;
        this.matrix(i, SLOT.ROUTER, 0, [{ name: `${m}.gate.weight`, rows: n, why: 'n_routed_experts x hidden_size' }], hidden);
        const bias = `${m}.gate.e_score_correction_bias`;
        if (this.ckpt.has(bias)) this.vector(i, SLOT.ROUTER_BIAS, bias, n, 'n_routed_experts');
        for (let e = 0; e < n; e++) this.mlp(i, SLOT.EXP_GATE_UP, SLOT.EXP_DOWN, e, `${m}.experts.${e}`, inter, 'moe_intermediate_size');
        if (cfg.nSharedExperts > 0) {
          this.mlp(i, SLOT.SH_GATE_UP, SLOT.SH_DOWN, 0, `${m}.shared_experts`, inter * cfg.nSharedExperts, 'moe_intermediate_size * n_shared_experts');
        }
      } else {
        this.mlp(i, SLOT.GATE_UP, SLOT.DOWN, 0, m, cfg.intermediateSize, 'intermediate_size');
      }
    }
    this.vector(-1, SLOT.FINAL_NORM, 'model.norm.weight', hidden, 'hidden_size');
    const head = cfg.tieWordEmbeddings && !this.ckpt.has('lm_head.weight') ? 'model.embed_tokens.weight' : 'lm_head.weight';
    this.matrix(-1, SLOT.LM_HEAD, 0, [{ name: head, rows: cfg.vocabSize, why: 'vocab_size x hidden_size' }], hidden);
  }

  private mlp(layer: number, gateUp: number, down: number, expert: number, prefix: string, inter: number, why: string): void {
    const hidden = this.ckpt.config.hiddenSize;
    this.matrix(layer, gateUp, expert, [
      { name: `${prefix}.gate_proj.weight`, rows: inter, why: `${why} x hidden_size` },
      { name: `${prefix}.up_proj.weight`, rows: inter, why: `${why} x hidden_size` },
    ], hidden);
    this.matrix(layer, down, expert, [{ name: `${prefix}.down_proj.weight`, rows: hidden, why: `hidden_size x ${why}` }], inter);
  }

  private bytesOf(e: TensorEntry): Uint8Array {
    const bytes = new Uint8Array(e.nbytes);
    readTensorInto(e, bytes);
    this.read += e.nbytes;
    this.onProgress?.(this.read, this.ckpt.totalBytes);
    return bytes;
  }

  private load(layer: number, slot: number, expert: number, dtype: number, data: Uint8Array, rows: number, cols: number,
    rowOffset: number, scales: Float32Array | null = null, block: [number, number] = [0, 0]): void {
    const rc = this.lib.load(this.handle, layer, slot, expert, dtype, data, rows, cols, rowOffset, scales, block[0], block[1]);
    if (rc < 0) fail(`CUDA backend (load): ${this.lib.lastError()}`);
  }

  /** Parts stacked by rows into one slot; mixed dtypes are widened to f32 here (as the CPU reader does). */
  private matrix(layer: number, slot: number, expert: number, parts: { name: string; rows: number; why: string }[], cols: number): void {
    const entries = parts.map((p) => {
      const e = this.ckpt.get(p.name);
      expectShape(e, [p.rows, cols], p.why);
      if (!(e.dtype in DTYPE_CODE)) {
        fail(`${e.path}: tensor "${e.name}" has dtype ${e.dtype}; expected a floating-point weight (F32, BF16, F16 or F8_E4M3)`);
      }
      return e;
    });
    const mixed = entries.some((e) => e.dtype !== entries[0].dtype);
    let row = 0;
    for (const e of entries) {
      const rows = e.shape[0];
      const bytes = this.bytesOf(e);
      if (e.dtype === 'F8_E4M3') {
        const { scales, block } = this.fp8Scales(e, rows, cols);
        if (mixed) {
          const f = new Float32Array(rows * cols);
          dequantFp8Blocks(bytes, scales, rows, cols, f, block[0], block[1]);
          this.load(layer, slot, expert, DW_F32, new Uint8Array(f.buffer), rows, cols, row);
        } else {
          this.load(layer, slot, expert, DW_FP8, bytes, rows, cols, row, scales, block);
        }
      } else if (mixed && e.dtype !== 'F32') {
        const f = new Float32Array(rows * cols);
        const src = new Uint16Array(bytes.buffer, bytes.byteOffset, rows * cols);
        if (e.dtype === 'BF16') bf16ToF32(src, f);
        else f16ToF32(src, f);
        this.load(layer, slot, expert, DW_F32, new Uint8Array(f.buffer), rows, cols, row);
      } else {
        this.load(layer, slot, expert, DTYPE_CODE[e.dtype], bytes, rows, cols, row);
      }
      row += rows;
    }
  }

  private fp8Scales(e: TensorEntry, rows: number, cols: number): { scales: Float32Array; block: [number, number] } {
    const scaleName = e.name.replace(/\.weight$/, '.weight_scale_inv');
    if (!this.ckpt.has(scaleName)) fail(`${e.path}: F8_E4M3 tensor "${e.name}" has no "${scaleName}" (expected its block scales)`);
    const block = this.ckpt.config.quantization?.blockSize ?? [128, 128];
    const s = this.ckpt.get(scaleName);
    expectShape(s, [Math.ceil(rows / block[0]), Math.ceil(cols / block[1])], `ceil(rows / ${block[0]}) x ceil(cols / ${block[1]}) block scales`);
    if (s.dtype !== 'F32') fail(`${s.path}: "${scaleName}" has dtype ${s.dtype}; expected F32`);
    const scales = new Float32Array(s.shape[0] * s.shape[1]);
    readTensorInto(s, new Uint8Array(scales.buffer));
    return { scales, block: [block[0], block[1]] };
  }

  private vector(layer: number, slot: number, name: string, size: number, why: string): void {
    const e = this.ckpt.get(name);
    expectShape(e, [size], why);
    const bytes = this.bytesOf(e);
    let f: Float32Array;
    switch (e.dtype) {
      case 'F32':
        f = new Float32Array(bytes.buffer, bytes.byteOffset, size);
        break;
      case 'BF16':
      case 'F16': {
        f = new Float32Array(size);
        const src = new Uint16Array(bytes.buffer, bytes.byteOffset, size);
        if (e.dtype === 'BF16') bf16ToF32(src, f);
        else f16ToF32(src, f);
        break;
      }
      default:
        fail(`${e.path}: tensor "${e.name}" has dtype ${e.dtype}; expected F32, BF16 or F16`);
    }
    this.load(layer, slot, 0, DW_F32, new Uint8Array(f.buffer, f.byteOffset, f.byteLength), size, 1, 0);
  }
}
