// GGUF, llama.cpp's file format, as far as `deepwasm convert --to gguf` writes it: version 3, metadata
// key/values, tensor infos, then the tensors' data aligned to 32 bytes; F32 tensors and the Q8_0 and Q4_0
// block formats (ggml-common.h: 32 weights per block behind one f16 scale), quantized as ggml's reference
// quantize_row_q8_0 / quantize_row_q4_0 do.
import { fail } from '../errors.js';
import { f32ToF16 } from './dtypes.js';

const MAGIC = 0x46554747; // "GGUF" read as a little-endian u32
const VERSION = 3;
export const GGUF_ALIGNMENT = 32;

/** ggml_type numbers of the tensor types written here. */
export const GGML_F32 = 0;
export const GGML_Q4_0 = 2;
export const GGML_Q8_0 = 8;
export type GgmlType = typeof GGML_F32 | typeof GGML_Q4_0 | typeof GGML_Q8_0;

/** Weights per block, and bytes per block, of each type. */
export const BLOCK_SIZE = 32;
const BLOCK_BYTES: Record<typeof GGML_Q4_0 | typeof GGML_Q8_0, number> = { [GGML_Q4_0]: 2 + BLOCK_SIZE / 2, [GGML_Q8_0]: 2 + BLOCK_SIZE };

// gguf_type numbers of metadata values.
const T_U32 = 4;
const T_I32 = 5;
const T_F32 = 6;
const T_BOOL = 7;
const T_STRING = 8;
const T_ARRAY = 9;

/** A metadata value: its GGUF type is given, since a JS number does not say whether it is u32 or f32. */
export type GgufValue =
  | { u32: number }
  | { f32: number }
  | { bool: boolean }
  | { str: string }
  | { strs: readonly string[] }
  | { i32s: ArrayLike<number> };

export interface GgufTensorInfo {
  name: string;
  /** ggml's ne: the innermost (contiguous) dimension first. */
  ne: readonly number[];
  type: GgmlType;
}

/** Bytes of a tensor's data (rows of ne[0] weights, each a whole number of blocks). */
export function tensorBytes(t: GgufTensorInfo): number {
  const n = t.ne.reduce((p, d) => p * d, 1);
  if (t.type === GGML_F32) return n * 4;
  if (t.ne[0] % BLOCK_SIZE !== 0) fail(`GGUF tensor ${t.name}: its rows of ${t.ne[0]} weights are not whole ${BLOCK_SIZE}-weight blocks, which llama.cpp's Q8_0 and Q4_0 need`);
  return (n / BLOCK_SIZE) * BLOCK_BYTES[t.type];
}

const alignUp = (n: number): number => Math.ceil(n / GGUF_ALIGNMENT) * GGUF_ALIGNMENT;

/** Grows as it is written to; the header is a few MB at most (the vocabulary). */
class ByteWriter {
  private buf = new Uint8Array(1 << 20);
  private view = new DataView(this.buf.buffer);
  length = 0;
  private room(n: number): void {
    if (this.length + n <= this.buf.length) return;
    const next = new Uint8Array(Math.max(this.buf.length * 2, this.length + n));
    next.set(this.buf.subarray(0, this.length));
    this.buf = next;
    this.view = new DataView(next.buffer);
  }
  u32(v: number): void {
    this.room(4);
    this.view.setUint32(this.length, v, true);
    this.length += 4;
  }
  i32(v: number): void {
    this.room(4);
    this.view.setInt32(this.length, v, true);
    this.length += 4;
  }
  u64(v: number): void {
    this.room(8);
    this.view.setBigUint64(this.length, BigInt(v), true);
    this.length += 8;
  }
  f32(v: number): void {
    this.room(4);
    this.view.setFloat32(this.length, v, true);
    this.length += 4;
  }
  u8(v: number): void {
    this.room(1);
    this.buf[this.length++] = v;
  }
  str(s: string): void {
    const bytes = new TextEncoder().encode(s);
    this.u64(bytes.length);
    this.room(bytes.length);
    this.buf.set(bytes, this.length);
    this.length += bytes.length;
  }
  pad(to: number): void {
    this.room(to - this.length);
    this.buf.fill(0, this.length, to);
    this.length = to;
  }
  bytes(): Uint8Array {
    return this.buf.subarray(0, this.length);
  }
}

function writeValue(w: ByteWriter, v: GgufValue): void {
  if ('u32' in v) (w.u32(T_U32), w.u32(v.u32));
  else if ('f32' in v) (w.u32(T_F32), w.f32(v.f32));
  else if ('bool' in v) (w.u32(T_BOOL), w.u8(v.bool ? 1 : 0));
  else if ('str' in v) (w.u32(T_STRING), w.str(v.str));
  else if ('strs' in v) {
    w.u32(T_ARRAY);
    w.u32(T_STRING);
    w.u64(v.strs.length);
    for (const s of v.strs) w.str(s);
  } else {
    w.u32(T_ARRAY);
    w.u32(T_I32);
    w.u64(v.i32s.length);
    for (let i = 0; i < v.i32s.length; i++) w.i32(v.i32s[i]);
  }
}

/**
 * The file up to its data section: header, metadata, tensor infos (each tensor's offset follows from the
 * sizes before it), padding. The tensors' data then follows in the same order, each padded to the alignment.
 */
export function ggufHeader(metadata: ReadonlyMap<string, GgufValue>, tensors: readonly GgufTensorInfo[]): Uint8Array {
  const w = new ByteWriter();
  w.u32(MAGIC);
  w.u32(VERSION);
  w.u64(tensors.length);
  w.u64(metadata.size);
  for (const [key, value] of metadata) {
    w.str(key);
    writeValue(w, value);
  }
  let offset = 0;
  for (const t of tensors) {
    w.str(t.name);
    w.u32(t.ne.length);
    for (const d of t.ne) w.u64(d);
    w.u32(t.type);
    w.u64(offset);
    offset = alignUp(offset + tensorBytes(t));
  }
  w.pad(alignUp(w.length));
  return w.bytes();
}

/** Zero bytes that pad a tensor of n bytes to the alignment. */
export const paddingAfter = (n: number): number => alignUp(n) - n;

/** Rows of `src` (a whole number of 32-weight blocks) as Q8_0 blocks into dst: d = amax / 127, q = round(x / d). */
export function quantizeQ8_0(src: Float32Array, dst: Uint8Array): void {
  const blocks = src.length / BLOCK_SIZE;
  const view = new DataView(dst.buffer, dst.byteOffset, dst.byteLength);
  for (let b = 0; b < blocks; b++) {
    const x0 = b * BLOCK_SIZE;
    let amax = 0;
    for (let j = 0; j < BLOCK_SIZE; j++) amax = Math.max(amax, Math.abs(src[x0 + j]));
    // In float32, as ggml computes them, so that the blocks are ggml's to the bit.
    const d = Math.fround(amax / 127);
    const id = d ? Math.fround(1 / d) : 0;
    const o = b * BLOCK_BYTES[GGML_Q8_0];
    view.setUint16(o, f32ToF16(d), true);
    // roundf: halves away from zero.
    for (let j = 0; j < BLOCK_SIZE; j++) {
      const v = Math.fround(src[x0 + j] * id);
      view.setInt8(o + 2 + j, Math.sign(v) * Math.round(Math.abs(v)));
    }
  }
}

/**
 * Rows of `src` as Q4_0 blocks: d = max / -8 where max is the weight of largest magnitude, q = min(15, x / d + 8.5)
 * truncated; weight j of a block in the low nibble of byte j, weight j + 16 in its high nibble.
 */
export function quantizeQ4_0(src: Float32Array, dst: Uint8Array): void {
  const blocks = src.length / BLOCK_SIZE;
  const half = BLOCK_SIZE / 2;
  for (let b = 0; b < blocks; b++) {
    const x0 = b * BLOCK_SIZE;
    let amax = 0;
    let max = 0;
    for (let j = 0; j < BLOCK_SIZE; j++) {
      const v = src[x0 + j];
      if (Math.abs(v) > amax) {
        amax = Math.abs(v);
        max = v;
      }
    }
    const d = Math.fround(max / -8);
    const id = d ? Math.fround(1 / d) : 0;
    const o = b * BLOCK_BYTES[GGML_Q4_0];
    const h = f32ToF16(d);
    dst[o] = h & 0xff;
    dst[o + 1] = h >>> 8;
    for (let j = 0; j < half; j++) {
      const lo = Math.min(15, Math.trunc(Math.fround(Math.fround(src[x0 + j] * id) + 8.5)));
      const hi = Math.min(15, Math.trunc(Math.fround(Math.fround(src[x0 + half + j] * id) + 8.5)));
      dst[o + 2 + j] = lo | (hi << 4);
    }
  }
}

/** Bytes one row of n weights takes in a type. */
export const rowBytes = (type: GgmlType, n: number): number => tensorBytes({ name: 'row', ne: [n], type });
