// A checkpoint onto the device: the schema's weights (host/model/schema.ts) with their checkpoint
// tensors, each weight's device format declared before a byte is read, then every tensor handed to
// dw_load once, parts stacked at row offsets in the weight's role.
import { expectShape, type Checkpoint } from '../../checkpoint/checkpoint.js';
import { bf16ToF32, f16ToF32 } from '../../checkpoint/dtypes.js';
import { readTensorInto, type TensorEntry } from '../../checkpoint/safetensors.js';
import { fail } from '../../errors.js';
import type { Weight } from '../../model/schema.js';
import { DTYPE_BF16, DTYPE_F16, DTYPE_F32, DTYPE_F8_E4M3 } from '../../runtime/constants.js';
import type { DwLib, Handle } from './ffi.js';
import { deviceFormat, type CudaQuant } from './formats.js';

const DTYPE_CODE: Partial<Record<string, number>> = { F32: DTYPE_F32, BF16: DTYPE_BF16, F16: DTYPE_F16, F8_E4M3: DTYPE_F8_E4M3 };

/** A weight with the checkpoint tensors of its parts (and their FP8 block scales). */
interface Planned {
  weight: Weight;
  parts: { entry: TensorEntry; scales: TensorEntry | null; rows: number }[];
  /** Device format of a matrix; vectors are f32. */
  fmt: number;
}

/** Every weight the device holds, checked against the checkpoint: shapes, dtypes, FP8 scales. */
export class CheckpointUpload {
  private readonly planned: Planned[] = [];
  /** The bytes the upload reads. */
  readonly totalBytes: number;
  private readonly block: [number, number];

  constructor(private readonly ckpt: Checkpoint, weights: readonly Weight[], quant: CudaQuant) {
    this.block = ckpt.config.quantization?.blockSize ?? [128, 128];
    let total = 0;
    for (const w of weights) {
      if (w.optional && !w.parts.every((p) => ckpt.has(p.name))) continue;
      const parts = w.parts.map((p) => {
        const entry = ckpt.get(p.name);
        expectShape(entry, p.shape, p.why);
        if (DTYPE_CODE[entry.dtype] === undefined) {
          fail(`${entry.path}: tensor "${entry.name}" has dtype ${entry.dtype}; expected a floating-point weight (F32, BF16, F16 or F8_E4M3)`);
        }
        if (w.kind === 'vector' && entry.dtype === 'F8_E4M3') fail(`${entry.path}: tensor "${entry.name}" is a vector stored as F8_E4M3; expected F32, BF16 or F16`);
        const scales = entry.dtype === 'F8_E4M3' ? this.scalesOf(entry) : null;
        total += entry.nbytes + (scales?.nbytes ?? 0);
        return { entry, scales, rows: p.shape[0] };
      });
      const fmt = w.kind === 'vector' ? -1 : deviceFormat(w, parts.map((p) => p.entry.dtype), quant, this.block[1]);
      this.planned.push({ weight: w, parts, fmt });
    }
    this.totalBytes = total;
  }

  /** dw_declare for every matrix. */
  declare(lib: DwLib, handle: Handle): void {
    for (const { weight: w, fmt } of this.planned) {
      if (fmt < 0) continue;
      if (lib.declare(handle, w.layer, w.role, fmt) < 0) fail(`CUDA backend (declare ${w.parts[0].name}): ${lib.lastError()}`);
    }
  }

  /** Reads every tensor and hands it to dw_load; onProgress after each with the bytes read so far. */
  load(lib: DwLib, handle: Handle, onProgress?: (bytesRead: number, totalBytes: number) => void): void {
    let read = 0;
    const bytesOf = (e: TensorEntry): Uint8Array => {
      const bytes = new Uint8Array(e.nbytes);
      readTensorInto(e, bytes);
      read += e.nbytes;
      return bytes;
    };
    for (const { weight: w, parts } of this.planned) {
      let row = 0;
      for (const { entry, scales, rows } of parts) {
        const raw = bytesOf(entry);
        let rc: number;
        if (w.kind === 'vector') {
          const f = toF32(entry, raw);
          rc = lib.load(handle, w.layer, w.role, w.expert, DTYPE_F32, new Uint8Array(f.buffer, f.byteOffset, f.byteLength), f.length, 1, 0, null, 0, 0);
        } else {
          const s = scales ? new Float32Array(bytesOf(scales).buffer) : null;
          const cols = w.shape[1];
          rc = lib.load(handle, w.layer, w.role, w.expert, DTYPE_CODE[entry.dtype]!, raw, rows, cols, row, s, s ? this.block[0] : 0, s ? this.block[1] : 0);
        }
        if (rc < 0) fail(`CUDA backend (load ${entry.name}): ${lib.lastError()}`);
        row += rows;
        onProgress?.(read, this.totalBytes);
      }
    }
  }

  private scalesOf(e: TensorEntry): TensorEntry {
    const name = e.name.replace(/\.weight$/, '.weight_scale_inv');
    if (!this.ckpt.has(name)) fail(`${e.path}: F8_E4M3 tensor "${e.name}" has no "${name}" (expected its block scales)`);
    const s = this.ckpt.get(name);
    const [br, bc] = this.block;
    expectShape(s, [Math.ceil(e.shape[0] / br), Math.ceil(e.shape[1] / bc)], `ceil(rows / ${br}) x ceil(cols / ${bc}) block scales`);
    if (s.dtype !== 'F32') fail(`${s.path}: "${name}" has dtype ${s.dtype}; expected F32`);
    return s;
  }
}

function toF32(e: TensorEntry, bytes: Uint8Array): Float32Array {
  const n = e.nbytes / (e.dtype === 'F32' ? 4 : 2);
  if (e.dtype === 'F32') return new Float32Array(bytes.buffer, bytes.byteOffset, n);
  const f = new Float32Array(n);
  const src = new Uint16Array(bytes.buffer, bytes.byteOffset, n);
  if (e.dtype === 'BF16') bf16ToF32(src, f);
  else f16ToF32(src, f);
  return f;
}
