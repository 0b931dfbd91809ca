// The messages between a WebGpuModel and its device thread. WebGPU hands results back only through
// promises (mapAsync), while forward() returns its rows, so the device lives in a worker and the caller
// blocks on a shared word until the worker has written the result into shared memory. The same thread
// runs under node:worker_threads (Node, Deno) and as a Web Worker (the browser page's model worker
// starts it), where the checkpoint's bytes stay with the caller and are read over shared memory too.
import type { RandomAccessBytes } from '../../checkpoint/byte-source.js';
import type { EngineInfo, EngineOptions, StepEntry } from './engine.js';

export type Request =
  | { op: 'forward'; entries: StepEntry[]; result?: SharedArrayBuffer }
  | { op: 'greedy'; entry: StepEntry }
  | { op: 'fork'; from: number; to: number; positions: number }
  | { op: 'close' }
  /** Tests: the thread ends at once with this exit code, as when the device's native code takes it down. */
  | { op: 'exit'; code: number };

/** Where the device thread reads the checkpoint: a folder (Node, Deno), or files the caller serves (read requests). */
export type CheckpointSource = { dir: string } | { config: unknown; files: { name: string; size: number }[]; bytes: SharedArrayBuffer };

/** The first message to the thread. */
export interface Start {
  op: 'start';
  source: CheckpointSource;
  opts: EngineOptions;
  /** Int32 words, CTL_* below. */
  control: SharedArrayBuffer;
  /** The error message of a failed request, UTF-8. */
  error: SharedArrayBuffer;
}

/** What the thread says while loading, before requests start. */
export type LoadMessage =
  | { op: 'progress'; read: number; total: number }
  | { op: 'read'; file: number; offset: number; length: number }
  | { op: 'ready'; info: EngineInfo }
  | { op: 'error'; message: string };

/** The control words: READY 1 when a result is ready; FAILED 0 ok, 1 failed; VALUE the result (floats written, or the token); ERROR_LENGTH the error's bytes; EXITED 1 once the thread has ended (its last error says how). */
export const CTL = { READY: 0, FAILED: 1, VALUE: 2, ERROR_LENGTH: 3, EXITED: 4 } as const;
export const CONTROL_BYTES = 32;

export const ERROR_BYTES = 4096;
/** Most checkpoint bytes one read request moves. */
export const READ_CHUNK = 16 * 1024 * 1024;
/** The read buffer: a flag word, then up to READ_CHUNK bytes. */
export const READ_HEADER = 8;

/** Serves the thread's read requests from the caller's files: copies the range into the shared buffer and wakes it. */
export function serveRead(files: readonly RandomAccessBytes[], bytes: SharedArrayBuffer, m: { file: number; offset: number; length: number }): void {
  const flag = new Int32Array(bytes, 0, 1);
  files[m.file].read(m.offset, new Uint8Array(bytes, READ_HEADER, m.length));
  Atomics.store(flag, 0, 1);
  Atomics.notify(flag, 0);
}
