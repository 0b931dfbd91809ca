import type { Checkpoint } from '../checkpoint/checkpoint.js';
import { expectShape } from '../checkpoint/checkpoint.js';
import { bf16ToF32, dequantFp8Blocks, f16ToF32, type DType } from '../checkpoint/dtypes.js';
import { readTensorInto, type TensorEntry } from '../checkpoint/safetensors.js';
import { fail } from '../errors.js';
import type { Runtime } from '../runtime/runtime.js';
import { FMT_BF16, FMT_F32, FMT_FP8, FMT_Q4, FMT_Q8, type WeightFormat } from '../runtime/kernels.js';

/** A weight matrix [rows, cols] in wasm memory, in the format the kernels read. */
export interface Matrix {
  fmt: WeightFormat;
  ptr: number;
  rows: number;
  cols: number;
  /** The checkpoint's dtype, kept so that later formats can load it without widening. */
  stored: DType;
}

/** One part of a matrix stacked from several checkpoint tensors (gate and up become one). */
export interface Part {
  name: string;
  rows: number;
  /** Explains the expected shape in errors, e.g. "moe_intermediate_size x hidden_size". */
  why: string;
}

/** One matrix cut from a checkpoint tensor: `rows` rows from `row`, transposed ([cols, rows]) when asked. */
export interface Cut {
  row: number;
  rows: number;
  transpose: boolean;
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
  const converted = ckpt.config.deepwasmQuantization?.format;
  const hasFp8 = [...ckpt.tensors.values()].some((e) => e.dtype === 'F8_E4M3');
  if (converted) {
    if (requested !== undefined && requested !== converted) {
      fail(`${ckpt.dir} was written by "deepwasm convert" in ${converted}; it loads only as ${converted} (leave out --quant, or convert the original checkpoint to ${requested})`);
    }
    return converted;
  }
  if (requested === 'fp8' && !hasFp8) {
    fail(`--quant fp8 keeps FP8 weights as they are, but ${ckpt.dir} has no F8_E4M3 tensors; use q8, q4, bf16 or f32`);
  }
  if (requested !== undefined) return requested;
  if (hasFp8) return 'fp8';
  return ckpt.totalBytes > DEFAULT_Q8_ABOVE_BYTES ? 'q8' : 'stored';
}

/**
 * Matrices that stay f32 or bf16 whatever the mode: the embeddings (read a row at a time by the embed
 * kernel), MLA's kv_b as one tensor (what `deepwasm convert` writes; attention loads it through
 * WeightReader.cuts, as per-head matrices in the mode's format) and the MoE router (its logits stay
 * float32). Recognised by their checkpoint names.
 */
export function keepsFloat(name: string): boolean {
  return name === 'model.embed_tokens.weight' || name.endsWith('.kv_b_proj.weight') || name.endsWith('.mlp.gate.weight');
}

/**
 * Reads checkpoint tensors into the arena in the format the mode asks for: f32 and bf16 as they are
 * (or converted), q8 and q4 quantized here in wasm (or packed as they are from a converted checkpoint),
 * fp8 kept as e4m3 with its block scales. Vectors (norms, biases) are always f32.
 */
export class WeightReader {
  readonly mode: QuantMode;

  constructor(
    private readonly ckpt: Checkpoint,
    private readonly rt: Runtime,
    private readonly onBytes: (bytes: number) => void,
    quant?: QuantName,
  ) {
    this.mode = resolveQuant(ckpt, quant);
  }

  has(name: string): boolean {
    return this.ckpt.has(name);
  }

  /** The format a matrix made of these tensors loads in. */
  formatOf(entries: TensorEntry[]): WeightFormat {
    const floatFmt: WeightFormat = entries.every((e) => e.dtype === 'BF16') ? FMT_BF16 : FMT_F32;
    const mode = this.mode;
    if (mode === 'f32') return FMT_F32;
    if (mode === 'bf16') return FMT_BF16;
    if (mode === 'stored' || keepsFloat(entries[0].name)) return floatFmt;
    if (mode === 'fp8') return entries.every((e) => e.dtype === 'F8_E4M3') && this.fp8Block()[1] === 128 ? FMT_FP8 : floatFmt;
    return mode === 'q8' ? FMT_Q8 : FMT_Q4;
  }

  matrix(parts: Part[], cols: number): Matrix {
    const entries = parts.map((p) => {
      const e = this.ckpt.get(p.name);
      if (!this.isConverted(e)) expectShape(e, [p.rows, cols], p.why);
      return e;
    });
    const fmt = this.formatOf(entries);
    const rows = parts.reduce((n, p) => n + p.rows, 0);
    const k = this.rt.kernels;
    const ptr = this.rt.arena.alloc(k.weight_bytes(fmt, rows, cols) >>> 0, parts[0].name);
    if (fmt === FMT_Q8 || fmt === FMT_Q4 || fmt === FMT_FP8) this.rt.ensureQuantScratch(cols);
    let row = 0;
    for (const [i, e] of entries.entries()) {
      const n = parts[i].rows;
      if (fmt === FMT_F32) this.readAsF32(e, ptr + row * cols * 4, n, cols);
      else if (fmt === FMT_BF16) this.readAsBf16(e, ptr + row * cols * 2, n, cols);
      else if (fmt === FMT_FP8) this.readFp8(e, ptr, rows, row, n, cols);
      else if (this.isConverted(e)) this.readConverted(fmt, e, parts[i], ptr, rows, row, cols);
      else this.quantize(fmt, e, ptr, rows, row, n, cols);
      row += n;
    }
    return { fmt, ptr, rows, cols, stored: entries[0].dtype };
  }

  /**
   * Matrices cut from one float tensor [part.rows, cols] (MLA's kv_b: each head's W_UK^T and W_UV), each
   * its own blob: a quantized blob keeps each column panel's scales after the panel's weights, so a
   * range of its rows is not a matrix the kernels can take. They load in the mode's format like other
   * matrices, except that q4 mode makes them q8 (in q4, kv_b cost the v2-lite-tiny fixture 4 of its 13
   * greedy top-1 agreements with f32, for 0.5% of v3-2k6's weights) and fp8 mode keeps them float
   * (bf16 stays bf16, others f32): a transposed cut no longer has DeepSeek's 128x128 blocks.
   */
  cuts(part: Part, cols: number, cuts: Cut[]): Matrix[] {
    const e = this.ckpt.get(part.name);
    expectShape(e, [part.rows, cols], part.why);
    const floatFmt: WeightFormat = e.dtype === 'BF16' ? FMT_BF16 : FMT_F32;
    const mode = this.mode;
    const fmt = mode === 'f32' ? FMT_F32 : mode === 'bf16' ? FMT_BF16 : mode === 'q8' || mode === 'q4' ? FMT_Q8 : floatFmt;
    const k = this.rt.kernels;
    const arena = this.rt.arena;
    const out = cuts.map((c): Matrix => {
      const [rows, mCols] = c.transpose ? [cols, c.rows] : [c.rows, cols];
      if (fmt === FMT_Q8) this.rt.ensureQuantScratch(mCols);
      const ptr = arena.alloc(k.weight_bytes(fmt, rows, mCols) >>> 0, `${part.name} [${c.row}, +${c.rows})${c.transpose ? '^T' : ''}`);
      return { fmt, ptr, rows, cols: mCols, stored: e.dtype };
    });
    const mark = arena.mark();
    const all = arena.allocF32(part.rows * cols, `${e.name} (staging)`);
    this.readAsF32(e, all, part.rows, cols);
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

  vector(name: string, size: number, why: string): number {
    const e = this.ckpt.get(name);
    expectShape(e, [size], why);
    const ptr = this.rt.arena.allocF32(size, name);
    this.readAsF32(e, ptr, 1, size);
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
  private readConverted(fmt: WeightFormat, e: TensorEntry, part: Part, blob: number, totalRows: number, rowStart: number, cols: number): void {
    const groups = Math.ceil(cols / 32);
    const want = fmt === FMT_Q8 ? 'I8' : 'U8';
    if (e.dtype !== want) fail(`${e.path}: tensor "${e.name}" has dtype ${e.dtype}, but this checkpoint's ${fmt === FMT_Q8 ? 'q8' : 'q4'} weights are ${want}`);
    expectShape(e, [part.rows, fmt === FMT_Q8 ? groups * 32 : groups * 16], `${part.why}, ${fmt === FMT_Q8 ? 'q8: one byte per weight' : 'q4: two weights per byte'}, padded to whole groups of 32`);
    const scaleName = e.name + SCALE_SUFFIX;
    if (!this.ckpt.has(scaleName)) fail(`${e.path}: quantized tensor "${e.name}" has no "${scaleName}" (its per-group scales)`);
    const s = this.ckpt.get(scaleName);
    expectShape(s, [part.rows, groups], `${part.why}: one F32 scale per group of 32 columns`);
    if (s.dtype !== 'F32') fail(`${s.path}: "${scaleName}" has dtype ${s.dtype}; expected F32`);
    const arena = this.rt.arena;
    const mark = arena.mark();
    const q = arena.alloc(e.nbytes, `${e.name} (staging)`);
    const sc = arena.alloc(s.nbytes, `${scaleName} (staging)`);
    this.read(e, this.rt.bytes(q, e.nbytes));
    this.read(s, this.rt.bytes(sc, s.nbytes));
    this.rt.kernels.q_pack(fmt, blob, totalRows, q, sc, part.rows, cols, rowStart);
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

/** f32 -> bf16 with round-to-nearest-even (NaN stays NaN). */
export function f32ToBf16(src: Float32Array, dst: Uint16Array): void {
  const bits = new Uint32Array(src.buffer, src.byteOffset, src.length);
  for (let i = 0; i < bits.length; i++) {
    const u = bits[i];
    dst[i] = (u & 0x7fffffff) > 0x7f800000 ? (u >>> 16) | 0x40 : (u + 0x7fff + ((u >>> 16) & 1)) >>> 16;
  }
}
