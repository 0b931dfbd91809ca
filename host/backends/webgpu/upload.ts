/// <reference types="@webgpu/types" />
// The schema's weights onto the device, once, cut into buffers no larger than maxStorageBufferBindingSize:
// a matrix by rows, a layer's routed experts as one stack cut between experts, so the kernels take any
// piece as it is (WeightSink). From a checkpoint (Uploader): a matrix stored as its GPU format (bf16 as
// bf16 with an even row, f32 as f32) is written as read, with no pass on the host; any other is read as
// f32 (bf16, f16 and DeepSeek's block FP8 widened on the host) and packed (formats.ts).
import { expectShape, type Checkpoint } from '../../checkpoint/checkpoint.js';
import { bf16ToF32, dequantFp8Blocks, f16ToF32 } from '../../checkpoint/dtypes.js';
import { readTensorInto, type TensorEntry } from '../../checkpoint/safetensors.js';
import { fail } from '../../errors.js';
import type { Weight } from '../../model/schema.js';
import { FMT_BF16, FMT_F32, FMT_Q4, FMT_Q8 } from '../../runtime/constants.js';
import { packRows, rowWords, type GpuFormat } from './formats.js';
import { USAGE } from './gpu.js';

/** The load's weight formats: as stored (bf16 stays bf16, others widen to f32) or one --quant format. */
export type GpuQuant = 'stored' | 'f32' | 'bf16' | 'q8' | 'q4';

/** A run of rows (of a matrix) or experts (of a stack) in one buffer. */
export interface Piece {
  buffer: GPUBuffer;
  first: number;
  count: number;
}

/** A matrix, or a stack of `experts` matrices of one shape, in pieces. */
export interface GpuMatrix {
  fmt: GpuFormat;
  rows: number;
  cols: number;
  rowWords: number;
  experts: number;
  pieces: Piece[];
  bytes: number;
}

/** Where a load's weights come from: the piece layout is shared, the bytes are the subclass's. */
export abstract class WeightSink {
  bytes = 0;
  /** `maxBinding`: most bytes of one buffer, at most the device's maxStorageBufferBindingSize. */
  constructor(
    protected readonly device: GPUDevice,
    private readonly maxBinding: number,
  ) {}

  /** The format a schema matrix takes. */
  abstract formatOf(w: Weight): GpuFormat;
  abstract vector(w: Weight): GPUBuffer;
  /** Whether an optional weight is there. */
  abstract has(w: Weight): boolean;
  /** Writes rows [first, first + rows) of `w` in `fmt` into `buf` at byte `at`. */
  protected abstract fill(buf: GPUBuffer, at: number, w: Weight, fmt: GpuFormat, first: number, rows: number): void;

  matrix(w: Weight): GpuMatrix {
    return this.stack([w]);
  }

  /** Matrices of one shape (a layer's experts, in order) as one stack; a single matrix is a stack of one. */
  stack(ws: readonly Weight[]): GpuMatrix {
    const [rows, cols] = ws[0].shape;
    const fmt = this.formatOf(ws[0]);
    const stride = rowWords(fmt, cols);
    const matBytes = rows * stride * 4;
    const m: GpuMatrix = { fmt, rows, cols, rowWords: stride, experts: ws.length, pieces: [], bytes: ws.length * matBytes };
    if (ws.length === 1) {
      const perPiece = Math.max(1, Math.floor(this.maxBinding / (stride * 4)));
      for (let r = 0; r < rows; r += perPiece) {
        const n = Math.min(perPiece, rows - r);
        const buf = this.create(n * stride * 4);
        this.fill(buf, 0, ws[0], fmt, r, n);
        m.pieces.push({ buffer: buf, first: r, count: n });
      }
      return m;
    }
    if (matBytes > this.maxBinding) {
      fail(`WebGPU backend: one expert matrix of ${ws[0].parts[0].name} takes ${matBytes} bytes, more than one buffer may hold (${this.maxBinding} bytes, maxStorageBufferBindingSize)`);
    }
    const perPiece = Math.floor(this.maxBinding / matBytes);
    for (let e = 0; e < ws.length; e += perPiece) {
      const n = Math.min(perPiece, ws.length - e);
      const buf = this.create(n * matBytes);
      for (let j = 0; j < n; j++) this.fill(buf, j * matBytes, ws[e + j], fmt, 0, rows);
      m.pieces.push({ buffer: buf, first: e, count: n });
    }
    return m;
  }

  protected create(bytes: number): GPUBuffer {
    const size = Math.max(16, Math.ceil(bytes / 16) * 16);
    this.bytes += size;
    return this.device.createBuffer({ size, usage: USAGE.STORAGE | USAGE.COPY_DST | USAGE.COPY_SRC });
  }

  buffer(data: Uint32Array | Float32Array): GPUBuffer {
    const buf = this.create(data.byteLength);
    if (data.byteLength > 0) this.device.queue.writeBuffer(buf, 0, data.buffer, data.byteOffset, data.byteLength);
    return buf;
  }
}

export class Uploader extends WeightSink {
  private read = 0;
  /** The last matrix packed whole, for its further pieces (a matrix larger than one buffer). */
  private last: { w: Weight; fmt: GpuFormat; data: Uint32Array } | null = null;

  constructor(
    device: GPUDevice,
    private readonly ckpt: Checkpoint,
    private readonly quant: GpuQuant,
    maxBinding: number,
    private readonly totalRead: number,
    private readonly onProgress?: (read: number, total: number) => void,
  ) {
    super(device, maxBinding);
  }

  /** 'float' weights (embedding, router, kv_b) stay float in q8/q4. */
  formatOf(w: Weight): GpuFormat {
    const bf16 = w.parts.every((p) => this.ckpt.get(p.name).dtype === 'BF16');
    const float = bf16 ? FMT_BF16 : FMT_F32;
    switch (this.quant) {
      case 'f32':
        return FMT_F32;
      case 'bf16':
        return FMT_BF16;
      case 'q8':
        return w.kind === 'matrix' ? FMT_Q8 : float;
      case 'q4':
        return w.kind === 'matrix' ? FMT_Q4 : float;
      default:
        return float;
    }
  }

  has(w: Weight): boolean {
    return this.ckpt.has(w.parts[0].name);
  }

  vector(w: Weight): GPUBuffer {
    const data = this.readF32(this.entries(w)[0]);
    return this.buffer(new Uint32Array(data.buffer, data.byteOffset, data.length));
  }

  protected fill(buf: GPUBuffer, at: number, w: Weight, fmt: GpuFormat, first: number, rows: number): void {
    if (this.last?.w !== w || this.last.fmt !== fmt) this.last = { w, fmt, data: this.packed(w, fmt) };
    const stride = rowWords(fmt, w.shape[1]);
    const data = this.last.data.subarray(first * stride, (first + rows) * stride);
    this.device.queue.writeBuffer(buf, at, data.buffer, data.byteOffset, data.byteLength);
    if (first + rows === w.shape[0]) this.last = null;
  }

  /** Every part's bytes as stored when they are already the GPU format's words, else null. */
  private raw(w: Weight, fmt: GpuFormat): Uint32Array | null {
    const dtype = fmt === FMT_BF16 ? 'BF16' : fmt === FMT_F32 ? 'F32' : null;
    if (!dtype || (fmt === FMT_BF16 && w.shape[1] % 2 !== 0)) return null;
    const es = this.entries(w);
    if (!es.every((e) => e.dtype === dtype)) return null;
    const out = new Uint32Array(rowWords(fmt, w.shape[1]) * w.shape[0]);
    const bytes = new Uint8Array(out.buffer);
    let at = 0;
    for (const e of es) {
      readTensorInto(e, bytes.subarray(at, at + e.nbytes));
      at += e.nbytes;
      this.progress(e.nbytes);
    }
    return out;
  }

  private packed(w: Weight, fmt: GpuFormat): Uint32Array {
    const raw = this.raw(w, fmt);
    if (raw) return raw;
    const [rows, cols] = w.shape;
    const f = new Float32Array(rows * cols);
    let row = 0;
    for (const e of this.entries(w)) {
      f.set(this.readF32(e), row * cols);
      row += e.shape[0];
    }
    return packRows(fmt, f, rows, cols);
  }

  private entries(w: Weight): TensorEntry[] {
    return w.parts.map((t) => {
      const e = this.ckpt.get(t.name);
      expectShape(e, t.shape, t.why);
      return e;
    });
  }

  private readBytes(e: TensorEntry): Uint8Array {
    const bytes = new Uint8Array(e.nbytes);
    readTensorInto(e, bytes);
    this.progress(e.nbytes);
    return bytes;
  }

  private progress(bytes: number): void {
    this.read += bytes;
    this.onProgress?.(this.read, this.totalRead);
  }

  private readF32(e: TensorEntry): Float32Array {
    const raw = this.readBytes(e);
    const n = e.shape.reduce((a, b) => a * b, 1);
    if (e.dtype === 'F32') return new Float32Array(raw.buffer, 0, n);
    const out = new Float32Array(n);
    if (e.dtype === 'BF16') bf16ToF32(new Uint16Array(raw.buffer, 0, n), out);
    else if (e.dtype === 'F16') f16ToF32(new Uint16Array(raw.buffer, 0, n), out);
    else if (e.dtype === 'F8_E4M3') {
      const [br, bc] = this.ckpt.config.quantization?.blockSize ?? [128, 128];
      const name = e.name.replace(/\.weight$/, '.weight_scale_inv');
      if (!this.ckpt.has(name)) fail(`${e.path}: F8_E4M3 tensor "${e.name}" has no "${name}" (expected its block scales)`);
      const s = this.ckpt.get(name);
      expectShape(s, [Math.ceil(e.shape[0] / br), Math.ceil(e.shape[1] / bc)], `ceil(rows / ${br}) x ceil(cols / ${bc}) block scales`);
      const scales = this.readBytes(s);
      dequantFp8Blocks(raw, new Float32Array(scales.buffer, 0, scales.length / 4), e.shape[0], e.shape[1], out, br, bc);
    } else fail(`${e.path}: tensor "${e.name}" has dtype ${e.dtype}; expected F32, BF16, F16 or F8_E4M3`);
    return out;
  }}
