import * as fs from 'node:fs';
import { basename } from 'node:path';
import { fail } from '../errors.js';
import type { RandomAccessBytes } from './byte-source.js';
import { DTYPES, DTYPE_SIZE, isDType, type DType } from './dtypes.js';

export interface TensorEntry {
  name: string;
  dtype: DType;
  shape: number[];
  /** The file that holds the bytes (with `source`, only its name in messages). */
  path: string;
  /** Absolute byte offset of the first byte in that file. */
  offset: number;
  nbytes: number;
  /** Where the file's bytes are read from when not from `path` with the filesystem (safetensorsFromSource). */
  source?: RandomAccessBytes;
}

export interface SafetensorsFile {
  path: string;
  metadata: Record<string, string>;
  tensors: Map<string, TensorEntry>;
}

/** Real headers are a few MB at most (DeepSeek-V3 shards: ~100 KB); anything larger is a corrupt length. */
const MAX_HEADER_BYTES = 100 * 1024 * 1024;
/** One readSync per 64 MiB keeps each call well under Node's 2 GiB limit and memory churn low. */
const READ_CHUNK = 64 * 1024 * 1024;

const fmtShape = (shape: readonly number[]): string => `[${shape.join(', ')}]`;
const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

function readExactly(fd: number, buf: Uint8Array, position: number): number {
  let done = 0;
  while (done < buf.length) {
    const n = fs.readSync(fd, buf, done, Math.min(READ_CHUNK, buf.length - done), position + done);
    if (n === 0) break;
    done += n;
  }
  return done;
}

function openForRead(path: string): number {
  try {
    return fs.openSync(path, 'r');
  } catch (e) {
    fail(`${path}: cannot open safetensors file (${(e as Error).message})`);
  }
}

/** Reads and validates the header only; tensor bytes stay on disk until readTensorInto. */
export function openSafetensors(path: string): SafetensorsFile {
  const fd = openForRead(path);
  try {
    const size = fs.fstatSync(fd).size;
    const prefix = new Uint8Array(Math.min(8, size));
    readExactly(fd, prefix, 0);
    const headerBuf = new Uint8Array(headerLength(path, prefix, size));
    readExactly(fd, headerBuf, 8);
    return parseHeaderBytes(path, headerBuf, size);
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * A safetensors file read through `source` (an edge runtime's fetched bytes, a browser's Blob): the same checks as
 * openSafetensors, and readTensorRange reads from `source` instead of a file. `path` only names the file in messages.
 */
export function safetensorsFromSource(path: string, source: RandomAccessBytes): SafetensorsFile {
  const prefix = new Uint8Array(Math.min(8, source.size));
  readHeaderPart(path, source, 0, prefix);
  const headerBuf = new Uint8Array(headerLength(path, prefix, source.size));
  readHeaderPart(path, source, 8, headerBuf);
  const file = parseHeaderBytes(path, headerBuf, source.size);
  for (const entry of file.tensors.values()) entry.source = source;
  return file;
}

function readHeaderPart(path: string, source: RandomAccessBytes, offset: number, dst: Uint8Array): void {
  try {
    source.read(offset, dst);
  } catch (e) {
    fail(`${basename(path)}: reading the safetensors header failed (${(e as Error)?.message ?? String(e)})`);
  }
}

/** Validates the 8-byte length prefix (`prefix`, the file's first bytes) of a file of `size` bytes; returns the header length. */
function headerLength(path: string, prefix: Uint8Array, size: number): number {
  const file = basename(path);
  if (size < 8) fail(`${file}: file is ${size} bytes, too short for the 8-byte safetensors header length`);
  const headerLen = new DataView(prefix.buffer, prefix.byteOffset, 8).getBigUint64(0, true);
  if (headerLen > BigInt(MAX_HEADER_BYTES)) {
    fail(`${file}: header length ${headerLen} is absurd (limit ${MAX_HEADER_BYTES} bytes); not a safetensors file?`);
  }
  const n = Number(headerLen);
  if (8 + n > size) fail(`${file}: header length ${n} runs past the end of the file (${size} bytes); truncated?`);
  return n;
}

/** Validates a header given its JSON bytes (after the length prefix) and the size of the whole file. */
function parseHeaderBytes(path: string, headerBuf: Uint8Array, size: number): SafetensorsFile {
  const file = basename(path);
  let header: unknown;
  try {
    header = JSON.parse(new TextDecoder().decode(headerBuf));
  } catch (e) {
    fail(`${file}: header is not valid JSON (${(e as Error).message})`);
  }
  if (!isObject(header)) fail(`${file}: header must be a JSON object of tensors`);
  const n = headerBuf.length;
  return parseHeader(path, header, 8 + n, size - 8 - n);
}

function parseHeader(path: string, header: Record<string, unknown>, dataStart: number, dataSize: number): SafetensorsFile {
  const file = basename(path);
  const metadata: Record<string, string> = {};
  const tensors = new Map<string, TensorEntry>();
  for (const [name, raw] of Object.entries(header)) {
    if (name === '__metadata__') {
      if (!isObject(raw)) fail(`${file}: __metadata__ must be an object of strings`);
      for (const [k, v] of Object.entries(raw)) {
        if (typeof v !== 'string') fail(`${file}: __metadata__ field "${k}" must be a string, got ${JSON.stringify(v)}`);
        metadata[k] = v;
      }
      continue;
    }
    const where = `${file}: tensor "${name}"`;
    if (!isObject(raw)) fail(`${where} must be an object with dtype, shape and data_offsets`);
    const { dtype, shape, data_offsets: offsets } = raw;
    if (dtype === undefined) fail(`${where} has no dtype`);
    if (!isDType(dtype)) fail(`${where} has dtype ${JSON.stringify(dtype)}; supported dtypes: ${DTYPES.join(', ')}`);
    if (!Array.isArray(shape)) fail(`${where} has no shape array`);
    for (const d of shape) {
      if (!Number.isInteger(d) || d < 0) fail(`${where} has shape ${JSON.stringify(shape)}; dimensions must be non-negative integers`);
    }
    if (!Array.isArray(offsets) || offsets.length !== 2) fail(`${where} needs data_offsets [begin, end]`);
    const [begin, end] = offsets as unknown[];
    if (!Number.isSafeInteger(begin) || !Number.isSafeInteger(end) || (begin as number) < 0 || (end as number) < (begin as number)) {
      fail(`${where} has data_offsets ${JSON.stringify(offsets)}; expected integers 0 <= begin <= end`);
    }
    const b = begin as number;
    const e = end as number;
    if (e > dataSize) fail(`${where} data_offsets [${b}, ${e}] run past the end of the data section (${dataSize} bytes)`);
    const elements = (shape as number[]).reduce((p, d) => p * d, 1);
    const expected = elements * DTYPE_SIZE[dtype];
    if (e - b !== expected) {
      fail(`${where} has ${e - b} bytes, but shape ${fmtShape(shape)} of ${dtype} needs ${expected}`);
    }
    tensors.set(name, { name, dtype, shape: shape as number[], path, offset: dataStart + b, nbytes: expected });
  }
  return { path, metadata, tensors };
}

/**
 * Open descriptors by path, so that loading thousands of tensors from one shard opens it once.
 * Bounded: past MAX_OPEN the oldest is closed (Map keeps insertion order), staying far below ulimit.
 */
const MAX_OPEN = 64;
const openFds = new Map<string, number>();

function cachedFd(path: string): number {
  let fd = openFds.get(path);
  if (fd !== undefined) return fd;
  fd = openForRead(path);
  if (openFds.size >= MAX_OPEN) {
    const [oldPath, oldFd] = openFds.entries().next().value as [string, number];
    openFds.delete(oldPath);
    fs.closeSync(oldFd);
  }
  openFds.set(path, fd);
  return fd;
}

export function closeFile(path: string): void {
  const fd = openFds.get(path);
  if (fd === undefined) return;
  openFds.delete(path);
  fs.closeSync(fd);
}

export function closeAll(): void {
  for (const path of [...openFds.keys()]) closeFile(path);
}

/** Copies the tensor's raw little-endian bytes into dst[0, nbytes). */
export function readTensorInto(entry: TensorEntry, dst: Uint8Array): void {
  if (dst.length < entry.nbytes) {
    fail(`${basename(entry.path)}: tensor "${entry.name}" needs ${entry.nbytes} bytes, destination holds ${dst.length}`);
  }
  readTensorRange(entry, 0, dst.length === entry.nbytes ? dst : dst.subarray(0, entry.nbytes));
}

/** Copies dst.length of the tensor's raw bytes, starting `start` bytes into the tensor, into dst (a tensor read in pieces). */
export function readTensorRange(entry: TensorEntry, start: number, dst: Uint8Array): void {
  const file = basename(entry.path);
  if (!Number.isSafeInteger(start) || start < 0 || start + dst.length > entry.nbytes) {
    fail(`${file}: tensor "${entry.name}" has ${entry.nbytes} bytes; cannot read bytes [${start}, ${start + dst.length}) of it`);
  }
  const at = entry.offset + start;
  const fd = entry.source ? undefined : cachedFd(entry.path);
  let got: number;
  try {
    got = fd === undefined ? readSource(entry.source!, at, dst) : readExactly(fd, dst, at);
  } catch (e) {
    if (fd !== undefined) closeFile(entry.path);
    fail(`${file}: reading tensor "${entry.name}" failed (${(e as Error)?.message ?? String(e)})`);
  }
  if (got !== dst.length) {
    // The file changed under us or was cut short after its header; a stale fd would keep failing.
    if (fd !== undefined) closeFile(entry.path);
    fail(`${file}: tensor "${entry.name}" needs bytes [${at}, ${at + dst.length}) but the file ends at ${at + got}; truncated?`);
  }
}

/** Like readExactly: reads what lies within the source, returns how much that was. */
function readSource(source: RandomAccessBytes, at: number, dst: Uint8Array): number {
  const n = Math.max(0, Math.min(dst.length, source.size - at));
  source.read(at, dst.subarray(0, n));
  return n;
}

export interface TensorToWrite {
  name: string;
  dtype: DType;
  shape: number[];
  data: ArrayBufferView;
}

function writeAll(fd: number, bytes: Uint8Array): void {
  let done = 0;
  while (done < bytes.length) done += fs.writeSync(fd, bytes, done, Math.min(READ_CHUNK, bytes.length - done));
}

/** What a header lists of a tensor. */
export interface TensorHeader {
  readonly name: string;
  readonly dtype: DType;
  readonly shape: readonly number[];
  readonly nbytes: number;
}

/** A file's first bytes for these tensors in this order: the 8-byte length, then the JSON padded to 8 bytes. */
export function safetensorsHeader(tensors: readonly TensorHeader[], metadata?: Record<string, string>): Uint8Array {
  const header: Record<string, unknown> = {};
  if (metadata !== undefined) header.__metadata__ = metadata;
  let offset = 0;
  for (const t of tensors) {
    header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + t.nbytes] };
    offset += t.nbytes;
  }
  let json = JSON.stringify(header);
  // Pad with spaces (valid JSON whitespace) so the data section starts 8-byte aligned.
  json += ' '.repeat((8 - (Buffer.byteLength(json) % 8)) % 8);
  const body = new TextEncoder().encode(json);
  const bytes = new Uint8Array(8 + body.length);
  new DataView(bytes.buffer).setBigUint64(0, BigInt(body.length), true);
  bytes.set(body, 8);
  return bytes;
}

/** Streams tensors in the given order; each tensor's bytes go straight from its view to the file. */
export function writeSafetensors(path: string, tensors: readonly TensorToWrite[], metadata?: Record<string, string>): void {
  const file = basename(path);
  const seen = new Set<string>();
  for (const t of tensors) {
    if (t.name === '__metadata__' || seen.has(t.name)) fail(`${file}: cannot write tensor name "${t.name}" twice or as a reserved key`);
    seen.add(t.name);
    const expected = t.shape.reduce((p, d) => p * d, 1) * DTYPE_SIZE[t.dtype];
    if (t.data.byteLength !== expected) {
      fail(`${file}: tensor "${t.name}" has ${t.data.byteLength} bytes, but shape ${fmtShape(t.shape)} of ${t.dtype} needs ${expected}`);
    }
  }
  const header = safetensorsHeader(tensors.map((t) => ({ ...t, nbytes: t.data.byteLength })), metadata);

  closeFile(path);
  const fd = fs.openSync(path, 'w');
  try {
    writeAll(fd, header);
    for (const t of tensors) writeAll(fd, new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength));
  } finally {
    fs.closeSync(fd);
  }
}
