// The messages between a WebGpuModel and its device thread. WebGPU hands results back only through
// promises (mapAsync), while forward() returns its rows, so the device lives in a worker and the caller
// blocks on a shared word until the worker has written the result into shared memory.
import type { EngineInfo, EngineOptions, StepEntry } from './engine.js';

export type Request =
  | { op: 'forward'; entries: StepEntry[]; result?: SharedArrayBuffer }
  | { op: 'greedy'; entry: StepEntry }
  | { op: 'fork'; from: number; to: number; positions: number }
  | { op: 'close' };

/** What the worker says while loading, before requests start. */
export type LoadMessage =
  | { op: 'progress'; read: number; total: number }
  | { op: 'ready'; info: EngineInfo }
  | { op: 'error'; message: string };

export interface ThreadStart {
  dir: string;
  opts: EngineOptions;
  /** ctl[0]: 1 when a result is ready; ctl[1]: 0 ok, 1 failed; ctl[2]: the result (floats written, or the token). */
  control: SharedArrayBuffer;
  /** The error message of a failed request, UTF-8, its length in ctl[3]. */
  error: SharedArrayBuffer;
}

export const ERROR_BYTES = 4096;
