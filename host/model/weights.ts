import type { Checkpoint } from '../checkpoint/checkpoint.js';
import { expectShape } from '../checkpoint/checkpoint.js';
import { bf16ToF32, dequantFp8Blocks, f16ToF32, type DType } from '../checkpoint/dtypes.js';
import { readTensorInto, type TensorEntry } from '../checkpoint/safetensors.js';
import { fail } from '../errors.js';
import type { Runtime } from '../runtime/runtime.js';
import { ROLE_KV_B } from '../runtime/constants.js';
import { FMT_BF16, FMT_F32, FMT_FP8, FMT_Q4, FMT_Q8, type Kernels, type WeightFormat } from '../runtime/kernels.js';
import type { DeepSeekConfig } from '../checkpoint/config.js';
import type { TensorSpec, Weight } from './schema.js';

/** A weight matrix [rows, cols] in wasm memory, in the format the kernels read. */
export interface Matrix {
  fmt: WeightFormat;
  ptr: number;
  rows: number;
  cols: number;
  /** The checkpoint's dtype, kept so that later formats can load it without widening. */
  stored: DType;
}

/** Where a loaded weight lies: its role, layer and index (expert, or head for kv_b's cuts), format, shape and address. */
export interface Placed {
  role: number;
  layer: number;
  index: number;
  name: string;
  fmt: WeightFormat;
  rows: number;
  cols: number;
  ptr: number;
}

/** One matrix cut from a checkpoint tensor: `rows` rows from `row`, transposed ([cols, rows]) when asked. */
export interface Cut {
  row: number;
  rows: number;
  transpose: boolean;
  /** ROLE_* of the cut, and its index (the head). */
  role: number;
  index: number;
}

/** The weight formats --quant names (docs/quantized-format.md). */
export type QuantName = 'f32' | 'bf16' | 'q8' | 'q4' | 'fp8';
export const QUANT_NAMES: readonly QuantName[] = ['f32', 'bf16', 'q8', 'q4', 'fp8'];

/**
 * How a whole load treats its matrices: one of the QuantNames, or 'stored' (bf16 stays bf16, other
 * float dtypes widen to f32).
 */
export type QuantMode = QuantName | 'stored';

/** Checkpoints above this many bytes of bf16/f32 weights load as q8 unless --quant says otherwise. */
export const DEFAULT_Q8_ABOVE_BYTES = 1024 ** 3;

/** The suffix of the scale tensors `deepwasm convert` writes next to each quantized weight. */
export const SCALE_SUFFIX = '_scale';

export function parseQuant(text: string, where = '--quant'): QuantName {
  if (!(QUANT_NAMES as readonly string[]).includes(text)) fail(`${where} is "${text}": expected one of ${QUANT_NAMES.join(', ')}`);
  return text as QuantName;
}

/**
 * The mode a load uses: what `requested` says, else the default rule: a deepwasm-converted checkpoint
 * loads in its format, an FP8 checkpoint stays FP8, a bf16/f32 checkpoint over 1 GiB becomes q8, and
 * anything else loads as stored.
 */
export function resolveQuant(ckpt: Checkpoint, requested?: QuantName): QuantMode {
  const hasFp8 = [...ckpt.tensors.values()].some((e) => e.dtype === 'F8_E4M3');
  return quantFor(ckpt.dir, { converted: ckpt.config.deepwasmQuantization?.format, hasFp8, totalBytes: ckpt.totalBytes }, requested);
}

/** What decides a load's default format: a deepwasm conversion, FP8 tensors, the stored size. */
export interface StoredWeights {
  converted?: 'q8' | 'q4';
  hasFp8: boolean;
  totalBytes: number;
}

/** resolveQuant's rule over the facts of the weights as stored; `where` names them in errors. */
export function quantFor(where: string, stored: StoredWeights, requested?: QuantName): QuantMode {
  const { converted, hasFp8 } = stored;
  if (converted) {
    if (requested !== undefined && requested !== converted) {
      fail(`${where} was written by "deepwasm convert" in ${converted}; it loads only as ${converted} (leave out --quant, or convert the original checkpoint to ${requested})`);
    }
    return converted;
  }
  if (requested === 'fp8' && !hasFp8) {
    fail(`--quant fp8 keeps FP8 weights as they are, but ${where} has no F8_E4M3 tensors; use q8, q4, bf16 or f32`);
  }
  if (requested !== undefined) return requested;
  if (hasFp8) return 'fp8';
  return stored.totalBytes > DEFAULT_Q8_ABOVE_BYTES ? 'q8' : 'stored';
}

/**
 * Reads checkpoint tensors into the arena in the format the mode asks for: f32 and bf16 as they are
 * (or converted), q8 and q4 quantized here in wasm (or packed as they are from a converted checkpoint),
 * fp8 kept as e4m3 with its block scales. Vectors (norms, biases) are always f32.
 */
export class WeightReader {
  readonly mode: QuantMode;
  /** Every weight loaded so far, in load order: the directory of the WASI image, later the placement. */
  readonly placed: Placed[] = [];
  /** The runtime of the memory the weight being read goes to (set by matrix, cuts and vector). */
  private rt: Runtime;

  /** `memoryFor` says which memory's runtime each weight goes to (default: rt's). */
  constructor(
    private readonly ckpt: Checkpoint,
    rt: Runtime,
    private readonly onBytes: (bytes: number) => void,
    quant?: QuantName,
    private readonly memoryFor: (w: Weight) => Runtime = () => rt,
  ) {
    this.rt = rt;
    this.mode = resolveQuant(ckpt, quant);
  }

  /** The checkpoint's folder, for messages. */
  get dir(): string {
    return this.ckpt.dir;
  }

  /** The format a matrix of the schema, made of these tensors, loads in. */
  formatOf(w: Weight, entries: TensorEntry[]): WeightFormat {
    return formatFor(this.mode, w, entries.map((e) => e.dtype), this.fp8Block()[1]);
  }

  /** The checkpoint tensors of a weight, their shapes checked (a converted tensor's against its own layout, later). */
  private entries(w: Weight): TensorEntry[] {
    return w.parts.map((t) => {
      const e = this.ckpt.get(t.name);
      if (!this.isConverted(e)) expectShape(e, t.shape, t.why);
      return e;
    });
  }

  /** Bytes the weight takes in memory once loaded, from the checkpoint's header alone (kv_b: its cuts). */
  plannedBytes(w: Weight): number {
    if (w.tied || (w.optional && !this.ckpt.has(w.parts[0].name))) return 0;
    const dtypes = w.kind === 'vector' ? [] : this.entries(w).map((e) => e.dtype);
    return weightBytes(this.rt.kernels, this.ckpt.config, this.mode, w, dtypes, this.fp8Block()[1]);
  }

  /** Bytes of the checkpoint that loading the weight reads. */
  readBytes(w: Weight): number {
    if (w.tied || (w.optional && !this.ckpt.has(w.parts[0].name))) return 0;
    let n = 0;
    for (const t of w.parts) {
      const e = this.ckpt.get(t.name);
      n += e.nbytes;
      if (e.dtype === 'F8_E4M3') n += this.fp8Scales(e, e.shape[0], e.shape[1]).nbytes;
      if (this.isConverted(e) && this.ckpt.has(e.name + SCALE_SUFFIX)) n += this.ckpt.get(e.name + SCALE_SUFFIX).nbytes;
    }
    return n;
  }

  matrix(w: Weight): Matrix {
    this.rt = this.memoryFor(w);
    const entries = this.entries(w);
    const fmt = this.formatOf(w, entries);
    const [rows, cols] = w.shape;
    const k = this.rt.kernels;
    const ptr = this.rt.arena.alloc(k.weight_bytes(fmt, rows, cols) >>> 0, w.parts[0].name);
    if (fmt === FMT_Q8 || fmt === FMT_Q4 || fmt === FMT_FP8) this.rt.ensureQuantScratch(cols);
    let row = 0;
    for (const [i, e] of entries.entries()) {
      const n = w.parts[i].shape[0];
      if (fmt === FMT_F32) this.readAsF32(e, ptr + row * cols * 4, n, cols);
      else if (fmt === FMT_BF16) this.readAsBf16(e, ptr + row * cols * 2, n, cols);
      else if (fmt === FMT_FP8) this.readFp8(e, ptr, rows, row, n, cols);
      else if (this.isConverted(e)) this.readConverted(fmt, e, w.parts[i], ptr, rows, row, cols);
      else this.quantize(fmt, e, ptr, rows, row, n, cols);
      row += n;
    }
    this.place(w.role, w.layer, w.expert, w.parts[0].name, fmt, rows, cols, ptr);
    return { fmt, ptr, rows, cols, stored: entries[0].dtype };
  }

  /** Records the head of a tied model, which is the embedding. */
  alias(w: Weight, m: Matrix): void {
    this.place(w.role, w.layer, w.expert, w.parts[0].name, m.fmt, m.rows, m.cols, m.ptr);
  }

  private place(role: number, layer: number, index: number, name: string, fmt: WeightFormat, rows: number, cols: number, ptr: number): void {
    this.placed.push({ role, layer, index, name, fmt, rows, cols, ptr });
  }

  /**
   * Matrices cut from one float tensor [part.rows, cols] (MLA's kv_b: each head's W_UK^T and W_UV), each
   * its own blob: a quantized blob keeps each column panel's scales after the panel's weights, so a
   * range of its rows is not a matrix the kernels can take. They load in the mode's format like other
   * matrices, except that q4 mode makes them q8 (in q4, kv_b cost the v2-lite-tiny fixture 4 of its 13
   * greedy top-1 agreements with f32, for 0.5% of v3-2k6's weights) and fp8 mode keeps them float
   * (bf16 stays bf16, others f32): a transposed cut no longer has DeepSeek's 128x128 blocks.
   */
  cuts(w: Weight, cuts: Cut[]): Matrix[] {
    this.rt = this.memoryFor(w);
    const part = w.parts[0];
    const [partRows, cols] = part.shape;
    const e = this.ckpt.get(part.name);
    expectShape(e, part.shape, part.why);
    const fmt = cutFormatFor(this.mode, e.dtype);
    const k = this.rt.kernels;
    const arena = this.rt.arena;
    const out = cuts.map((c): Matrix => {
      const [rows, mCols] = c.transpose ? [cols, c.rows] : [c.rows, cols];
      if (fmt === FMT_Q8) this.rt.ensureQuantScratch(mCols);
      const name = `${part.name} [${c.row}, +${c.rows})${c.transpose ? '^T' : ''}`;
      const ptr = arena.alloc(k.weight_bytes(fmt, rows, mCols) >>> 0, name);
      this.place(c.role, w.layer, c.index, name, fmt, rows, mCols, ptr);
      return { fmt, ptr, rows, cols: mCols, stored: e.dtype };
    });
    const mark = arena.mark();
    const all = arena.allocF32(partRows * cols, `${e.name} (staging)`);
    this.readAsF32(e, all, partRows, cols);
    // A transposed cut is staged once more; a plain one is read where it lies.
    const most = Math.max(0, ...cuts.filter((c) => c.transpose).map((c) => c.rows));
    const turned = arena.allocF32(most * cols, `${e.name} (one transposed cut)`);
    for (const [i, c] of cuts.entries()) {
      const m = out[i];
      let from = all + c.row * cols * 4;
      if (c.transpose) {
        const src = this.rt.f32(from, c.rows * cols);
        const dst = this.rt.f32(turned, c.rows * cols);
        for (let r = 0; r < c.rows; r++) for (let j = 0; j < cols; j++) dst[j * c.rows + r] = src[r * cols + j];
        from = turned;
      }
      const values = this.rt.f32(from, c.rows * cols);
      if (fmt === FMT_F32) this.rt.f32(m.ptr, m.rows * m.cols).set(values);
      else if (fmt === FMT_BF16) f32ToBf16(values, new Uint16Array(this.rt.memory.buffer, m.ptr, m.rows * m.cols));
      else k.quantize_rows(fmt, m.ptr, m.rows, FMT_F32, from, m.rows, m.cols, 0);
    }
    arena.release(mark);
    return out;
  }

  /** A vector (norm, bias) in f32; 0 for an optional one the checkpoint does not have. */
  vector(w: Weight): number {
    const t = w.parts[0];
    if (w.optional && !this.ckpt.has(t.name)) return 0;
    this.rt = this.memoryFor(w);
    const e = this.ckpt.get(t.name);
    expectShape(e, t.shape, t.why);
    const ptr = this.rt.arena.allocF32(t.shape[0], t.name);
    this.readAsF32(e, ptr, 1, t.shape[0]);
    this.place(w.role, w.layer, w.expert, t.name, FMT_F32, t.shape[0], 1, ptr);
    return ptr;
  }

  private read(e: TensorEntry, dst: Uint8Array): void {
    readTensorInto(e, dst);
    this.onBytes(e.nbytes);
  }

  /** A tensor `deepwasm convert` wrote: int bytes with a scale tensor beside it. */
  private isConverted(e: TensorEntry): boolean {
    return (e.dtype === 'I8' || e.dtype === 'U8') && this.ckpt.config.deepwasmQuantization !== undefined;
  }

  /** q8 / q4 from any float dtype: bf16 and f32 go to wasm as they are, others through f32. */
  private quantize(fmt: WeightFormat, e: TensorEntry, blob: number, totalRows: number, rowStart: number, rows: number, cols: number): void {
    const arena = this.rt.arena;
    const mark = arena.mark();
    let src: number;
    let srcFmt: number;
    if (e.dtype === 'BF16' || e.dtype === 'F32') {
      src = arena.alloc(e.nbytes, `${e.name} (staging)`);
      this.read(e, this.rt.bytes(src, e.nbytes));
      srcFmt = e.dtype === 'BF16' ? FMT_BF16 : FMT_F32;
    } else {
      src = arena.allocF32(rows * cols, `${e.name} (staging)`);
      this.readAsF32(e, src, rows, cols);
      srcFmt = FMT_F32;
    }
    this.rt.kernels.quantize_rows(fmt, blob, totalRows, srcFmt, src, rows, cols, rowStart);
    arena.release(mark);
  }

  /** Weights and scales as `deepwasm convert` stores them (docs/quantized-format.md), packed into panels. */
  private readConverted(fmt: WeightFormat, e: TensorEntry, part: TensorSpec, blob: number, totalRows: number, rowStart: number, cols: number): void {
    const groups = Math.ceil(cols / 32);
    const want = fmt === FMT_Q8 ? 'I8' : 'U8';
    if (e.dtype !== want) fail(`${e.path}: tensor "${e.name}" has dtype ${e.dtype}, but this checkpoint's ${fmt === FMT_Q8 ? 'q8' : 'q4'} weights are ${want}`);
    const partRows = part.shape[0];
    expectShape(e, [partRows, fmt === FMT_Q8 ? groups * 32 : groups * 16], `${part.why}, ${fmt === FMT_Q8 ? 'q8: one byte per weight' : 'q4: two weights per byte'}, padded to whole groups of 32`);
    const scaleName = e.name + SCALE_SUFFIX;
    if (!this.ckpt.has(scaleName)) fail(`${e.path}: quantized tensor "${e.name}" has no "${scaleName}" (its per-group scales)`);
    const s = this.ckpt.get(scaleName);
    expectShape(s, [partRows, groups], `${part.why}: one F32 scale per group of 32 columns`);
    if (s.dtype !== 'F32') fail(`${s.path}: "${scaleName}" has dtype ${s.dtype}; expected F32`);
    const arena = this.rt.arena;
    const mark = arena.mark();
    const q = arena.alloc(e.nbytes, `${e.name} (staging)`);
    const sc = arena.alloc(s.nbytes, `${scaleName} (staging)`);
    this.read(e, this.rt.bytes(q, e.nbytes));
    this.read(s, this.rt.bytes(sc, s.nbytes));
    this.rt.kernels.q_pack(fmt, blob, totalRows, q, sc, partRows, cols, rowStart);
    arena.release(mark);
  }

  private fp8Block(): [number, number] {
    return this.ckpt.config.quantization?.blockSize ?? [128, 128];
  }

  private fp8Scales(e: TensorEntry, rows: number, cols: number): TensorEntry {
    const scaleName = e.name.replace(/\.weight$/, '.weight_scale_inv');
    if (!this.ckpt.has(scaleName)) fail(`${e.path}: F8_E4M3 tensor "${e.name}" has no "${scaleName}" (expected its block scales)`);
    const block = this.fp8Block();
    const s = this.ckpt.get(scaleName);
    expectShape(s, [Math.ceil(rows / block[0]), Math.ceil(cols / block[1])], `ceil(rows / ${block[0]}) x ceil(cols / ${block[1]}) block scales`);
    if (s.dtype !== 'F32') fail(`${s.path}: "${scaleName}" has dtype ${s.dtype}; expected F32`);
    return s;
  }

  /** FP8 kept: e4m3 bytes and their block scales into the fp8 panels. */
  private readFp8(e: TensorEntry, blob: number, totalRows: number, rowStart: number, rows: number, cols: number): void {
    const s = this.fp8Scales(e, rows, cols);
    const arena = this.rt.arena;
    const mark = arena.mark();
    const q = arena.alloc(e.nbytes, `${e.name} (staging)`);
    const sc = arena.alloc(s.nbytes, `${s.name} (staging)`);
    this.read(e, this.rt.bytes(q, e.nbytes));
    this.read(s, this.rt.bytes(sc, s.nbytes));
    this.rt.kernels.fp8_pack(blob, totalRows, q, sc, rows, cols, rowStart, this.fp8Block()[0]);
    arena.release(mark);
  }

  private readAsBf16(e: TensorEntry, ptr: number, rows: number, cols: number): void {
    if (e.dtype === 'BF16') {
      this.read(e, this.rt.bytes(ptr, e.nbytes));
      return;
    }
    const arena = this.rt.arena;
    const mark = arena.mark();
    const tmp = arena.allocF32(rows * cols, `${e.name} (staging)`);
    this.readAsF32(e, tmp, rows, cols);
    f32ToBf16(this.rt.f32(tmp, rows * cols), new Uint16Array(this.rt.memory.buffer, ptr, rows * cols));
    arena.release(mark);
  }

  /** Reads any floating-point tensor into f32 at ptr, going through a temporary for other dtypes. */
  private readAsF32(e: TensorEntry, ptr: number, rows: number, cols: number): void {
    const count = rows * cols;
    if (e.dtype === 'F32') {
      this.read(e, this.rt.bytes(ptr, e.nbytes));
      return;
    }
    const arena = this.rt.arena;
    const mark = arena.mark();
    const tmp = arena.alloc(e.nbytes, `${e.name} (staging)`);
    this.read(e, this.rt.bytes(tmp, e.nbytes));
    const dst = this.rt.f32(ptr, count);
    switch (e.dtype) {
      case 'BF16':
        bf16ToF32(new Uint16Array(this.rt.memory.buffer, tmp, count), dst);
        break;
      case 'F16':
        f16ToF32(new Uint16Array(this.rt.memory.buffer, tmp, count), dst);
        break;
      case 'F8_E4M3':
        this.dequantFp8(e, this.rt.bytes(tmp, count), rows, cols, dst);
        break;
      default:
        fail(`${e.path}: tensor "${e.name}" has dtype ${e.dtype}; expected a floating-point weight (F32, BF16, F16 or F8_E4M3)`);
    }
    arena.release(mark);
  }

  private dequantFp8(e: TensorEntry, src: Uint8Array, rows: number, cols: number, dst: Float32Array): void {
    const s = this.fp8Scales(e, rows, cols);
    const block = this.fp8Block();
    const scales = new Float32Array(s.shape[0] * s.shape[1]);
    readTensorInto(s, new Uint8Array(scales.buffer));
    this.onBytes(s.nbytes);
    dequantFp8Blocks(src, scales, rows, cols, dst, block[0], block[1]);
  }
}

/**
 * The format a matrix of the schema loads in under `mode`, given its tensors' dtypes: f32/bf16 modes make
 * every matrix that; 'stored' and the schema's 'float' matrices stay float (bf16 when every part is bf16,
 * else f32); fp8 keeps e4m3 tensors with 128-column blocks and leaves the rest float; q8/q4 quantize.
 */
export function formatFor(mode: QuantMode, w: Weight, dtypes: readonly DType[], fp8BlockCols: number): WeightFormat {
  const floatFmt: WeightFormat = dtypes.every((d) => d === 'BF16') ? FMT_BF16 : FMT_F32;
  if (mode === 'f32') return FMT_F32;
  if (mode === 'bf16') return FMT_BF16;
  if (mode === 'stored' || w.kind === 'float') return floatFmt;
  if (mode === 'fp8') return dtypes.every((d) => d === 'F8_E4M3') && fp8BlockCols === 128 ? FMT_FP8 : floatFmt;
  return mode === 'q8' ? FMT_Q8 : FMT_Q4;
}

/**
 * kv_b's per-head cuts: float as stored, except that q8 and q4 modes make them q8 (in q4, kv_b cost the
 * v2-lite-tiny fixture 4 of its 13 greedy top-1 agreements with f32, for 0.5% of v3-2k6's weights).
 */
export function cutFormatFor(mode: QuantMode, dtype: DType): WeightFormat {
  if (mode === 'f32') return FMT_F32;
  if (mode === 'bf16') return FMT_BF16;
  if (mode === 'q8' || mode === 'q4') return FMT_Q8;
  return dtype === 'BF16' ? FMT_BF16 : FMT_F32;
}

/** Bytes a weight of the schema takes once loaded under `mode` (kv_b: its per-head cuts; vectors: f32). */
export function weightBytes(k: Kernels, cfg: DeepSeekConfig, mode: QuantMode, w: Weight, dtypes: readonly DType[], fp8BlockCols: number): number {
  if (w.kind === 'vector') return w.shape[0] * 4;
  if (w.role === ROLE_KV_B) {
    const fmt = cutFormatFor(mode, dtypes[0]);
    const { numAttentionHeads: heads, qkNopeHeadDim: nope, vHeadDim: v, kvLoraRank: rank } = cfg;
    return heads * ((k.weight_bytes(fmt, rank, nope) >>> 0) + (k.weight_bytes(fmt, v, rank) >>> 0));
  }
  return k.weight_bytes(formatFor(mode, w, dtypes, fp8BlockCols), w.shape[0], w.shape[1]) >>> 0;
}

/** f32 -> bf16 with round-to-nearest-even (NaN stays NaN). */
export function f32ToBf16(src: Float32Array, dst: Uint16Array): void {
  const bits = new Uint32Array(src.buffer, src.byteOffset, src.length);
  for (let i = 0; i < bits.length; i++) {
    const u = bits[i];
    dst[i] = (u & 0x7fffffff) > 0x7f800000 ? (u >>> 16) | 0x40 : (u + 0x7fff + ((u >>> 16) & 1)) >>> 16;
  }
}
