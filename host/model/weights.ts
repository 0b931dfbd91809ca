import type { Checkpoint } from '../checkpoint/checkpoint.js';
import { expectShape } from '../checkpoint/checkpoint.js';
import { bf16ToF32, dequantFp8Blocks, f16ToF32, type DType } from '../checkpoint/dtypes.js';
import { readTensorInto, type TensorEntry } from '../checkpoint/safetensors.js';
import { fail } from '../errors.js';
import type { Runtime } from '../runtime/runtime.js';
import { FMT_BF16, FMT_F32, type WeightFormat } from '../runtime/kernels.js';

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

/**
 * Reads checkpoint tensors into the arena. bf16 matrices stay bf16; f16 and block-scaled fp8 are
 * widened to f32 here; vectors (norms, biases) are always f32.
 */
export class WeightReader {
  constructor(
    private readonly ckpt: Checkpoint,
    private readonly rt: Runtime,
    private readonly onBytes: (bytes: number) => void,
  ) {}

  has(name: string): boolean {
    return this.ckpt.has(name);
  }

  matrix(parts: Part[], cols: number): Matrix {
    const entries = parts.map((p) => {
      const e = this.ckpt.get(p.name);
      expectShape(e, [p.rows, cols], p.why);
      return e;
    });
    const fmt: WeightFormat = entries.every((e) => e.dtype === 'BF16') ? FMT_BF16 : FMT_F32;
    const bytesPerValue = fmt === FMT_BF16 ? 2 : 4;
    const rows = parts.reduce((n, p) => n + p.rows, 0);
    const ptr = this.rt.arena.alloc(rows * cols * bytesPerValue, parts[0].name);
    let at = ptr;
    for (const e of entries) {
      const count = e.shape[0] * cols;
      if (fmt === FMT_BF16) this.read(e, this.rt.bytes(at, e.nbytes));
      else this.readAsF32(e, at, e.shape[0], cols);
      at += count * bytesPerValue;
    }
    return { fmt, ptr, rows, cols, stored: entries[0].dtype };
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
    const scaleName = e.name.replace(/\.weight$/, '.weight_scale_inv');
    if (!this.ckpt.has(scaleName)) fail(`${e.path}: F8_E4M3 tensor "${e.name}" has no "${scaleName}" (expected its block scales)`);
    const block = this.ckpt.config.quantization?.blockSize ?? [128, 128];
    const s = this.ckpt.get(scaleName);
    expectShape(s, [Math.ceil(rows / block[0]), Math.ceil(cols / block[1])], `ceil(rows / ${block[0]}) x ceil(cols / ${block[1]}) block scales`);
    if (s.dtype !== 'F32') fail(`${s.path}: "${scaleName}" has dtype ${s.dtype}; expected F32`);
    const scales = new Float32Array(s.shape[0] * s.shape[1]);
    readTensorInto(s, new Uint8Array(scales.buffer));
    this.onBytes(s.nbytes);
    dequantFp8Blocks(src, scales, rows, cols, dst, block[0], block[1]);
  }
}
