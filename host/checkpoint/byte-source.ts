import { fail } from '../errors.js';

/**
 * A file's bytes where no file descriptor can be had: an edge runtime's fetched file, or a browser's Blob (whose
 * bytes stay on disk). Reads are synchronous, like fs.readSync, and land in the caller's view (usually of a shared
 * wasm memory), so a tensor goes from its source into its memory without a copy of its own on the JS heap.
 */
export interface RandomAccessBytes {
  readonly size: number;
  /** Copies bytes [offset, offset + dst.length) into dst; the range lies within size. */
  read(offset: number, dst: Uint8Array): void;
}

/** Bytes held in memory as a list of chunks, so a file far over the engines' ~2 GiB buffer limit can be held. */
export class ChunkedBytes implements RandomAccessBytes {
  readonly size: number;
  private readonly chunks: Uint8Array[];
  private readonly starts: number[] = [];

  constructor(chunks: readonly Uint8Array[]) {
    this.chunks = chunks.filter((c) => c.length > 0);
    let at = 0;
    for (const c of this.chunks) {
      this.starts.push(at);
      at += c.length;
    }
    this.size = at;
  }

  read(offset: number, dst: Uint8Array): void {
    if (offset < 0 || offset + dst.length > this.size) throw new RangeError(`bytes [${offset}, ${offset + dst.length}) lie outside [0, ${this.size})`);
    let done = 0;
    for (let i = this.chunkAt(offset); done < dst.length; i++) {
      const chunk = this.chunks[i];
      const from = offset + done - this.starts[i];
      const n = Math.min(chunk.length - from, dst.length - done);
      dst.set(chunk.subarray(from, from + n), done);
      done += n;
    }
  }

  /** The last chunk starting at or before `offset`. */
  private chunkAt(offset: number): number {
    let lo = 0;
    let hi = this.starts.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (this.starts[mid] <= offset) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  }
}

/** A stream is copied into blocks of this size: a stream of many small chunks costs no per-chunk overhead, and no buffer is large. */
const BLOCK = 16 * 1024 * 1024;

/** Reads `stream` to its end into memory; `name` names the file in messages. */
export async function bytesFromStream(name: string, stream: ReadableStream<Uint8Array>): Promise<ChunkedBytes> {
  const reader = stream.getReader();
  const blocks: Uint8Array[] = [];
  let block: Uint8Array | undefined;
  let used = 0;
  for (;;) {
    let next: ReadableStreamReadResult<Uint8Array>;
    try {
      next = await reader.read();
    } catch (e) {
      return fail(`${name}: reading the stream failed (${(e as Error)?.message ?? String(e)})`);
    }
    if (next.done) break;
    const value: unknown = next.value;
    if (!(value instanceof Uint8Array)) {
      await reader.cancel().catch(() => {});
      return fail(`${name}: the stream gave a chunk that is not a Uint8Array (${Object.prototype.toString.call(value)})`);
    }
    for (let at = 0; at < value.length; ) {
      block ??= new Uint8Array(BLOCK);
      const n = Math.min(BLOCK - used, value.length - at);
      block.set(value.subarray(at, at + n), used);
      used += n;
      at += n;
      if (used === BLOCK) {
        blocks.push(block);
        block = undefined;
        used = 0;
      }
    }
  }
  if (block) blocks.push(block.slice(0, used));
  return new ChunkedBytes(blocks);
}

interface FileReaderSyncLike {
  readAsArrayBuffer(blob: Blob): ArrayBuffer;
}
const FileReaderSyncClass = (globalThis as { FileReaderSync?: new () => FileReaderSyncLike }).FileReaderSync;

/** FileReaderSync exists in dedicated (and shared) workers only: on a page, or in Node and Deno, a Blob is read as a stream. */
export const canReadBlobs = (): boolean => FileReaderSyncClass !== undefined;

/** FileReaderSync returns a fresh ArrayBuffer per call, garbage once copied: pieces this big keep that small. */
const BLOB_PIECE = 8 * 1024 * 1024;

/** A Blob read on demand; a browser's File from OPFS or a Cache API body stays on disk until read. Needs canReadBlobs(). */
export class BlobBytes implements RandomAccessBytes {
  readonly size: number;
  private readonly reader = new FileReaderSyncClass!();

  constructor(private readonly blob: Blob) {
    this.size = blob.size;
  }

  read(offset: number, dst: Uint8Array): void {
    for (let done = 0; done < dst.length; ) {
      const n = Math.min(BLOB_PIECE, dst.length - done);
      const piece = this.reader.readAsArrayBuffer(this.blob.slice(offset + done, offset + done + n));
      if (piece.byteLength !== n) throw new RangeError(`got ${piece.byteLength} of the ${n} bytes at ${offset + done} of a ${this.size}-byte blob`);
      dst.set(new Uint8Array(piece), done);
      done += n;
    }
  }
}
