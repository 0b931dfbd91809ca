import { readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { fail } from '../errors.js';
import { Arena } from './arena.js';
import { BOARD_EXTRA_BYTES, MAX_THREADS } from './constants.js';
import { calibratedLevel, type Calibration } from './calibrate.js';
import { detectRelaxedSimd, simdChoiceFromEnv, type SimdChoice, type SimdLevel } from './features.js';
import { instantiate, type Kernels } from './kernels.js';
import { Ops } from './ops.js';

/** The two builds of the core (asconfig.json): SIMD128 only, and SIMD128 plus relaxed SIMD. */
const WASM_URL: Record<SimdLevel, URL> = {
  simd128: new URL('../../../build/deepwasm.wasm', import.meta.url),
  relaxed: new URL('../../../build/deepwasm-relaxed.wasm', import.meta.url),
};
const WORKER_URL = new URL('./worker.js', import.meta.url);
/** The pool thread for browsers; tools/build-web.mjs bundles it next to the bundle that holds this code. */
const WEB_WORKER_URL = new URL('./web-worker.js', import.meta.url);

/** One pool thread, whichever kind of worker runs it. */
interface PoolThread {
  /** The node:worker_threads Worker or the Web Worker. */
  worker: unknown;
  /** Resolves once the thread has instantiated the module and is about to enter worker_loop. */
  ready: Promise<void>;
  /** After pool_stop: resolves when the thread has ended. */
  stop(): Promise<void>;
  /** Ends the thread now (when the pool failed to start). */
  kill(): void;
}

/** Node and Deno have node:worker_threads; a browser (or a browser worker) has Web Workers. */
function hasNodeWorkers(): boolean {
  const p = (globalThis as { process?: { versions?: { node?: string } } }).process;
  return typeof p?.versions?.node === 'string';
}

async function nodePool(module: WebAssembly.Module, memory: WebAssembly.Memory, board: number, threads: number): Promise<PoolThread[]> {
  // Imported only for a pool, so that one thread also runs where there is no node:worker_threads (edge runtimes).
  const { Worker } = await import('node:worker_threads');
  const pool: PoolThread[] = [];
  for (let tid = 1; tid < threads; tid++) {
    // A worker inherits the process's flags; --input-type (node -e with ESM) is refused for a file worker.
    const execArgv = process.execArgv.filter((a) => !a.startsWith('--input-type'));
    const worker = new Worker(WORKER_URL, { workerData: { module, memory, board, tid }, execArgv });
    const ready = new Promise<void>((resolve, reject) => {
      worker.once('message', () => resolve());
      worker.once('error', reject);
    });
    // Parked workers must not keep the process alive: a program that forgets close() still exits.
    void ready.then(() => worker.unref(), () => {});
    pool.push({
      worker,
      ready,
      stop() {
        worker.ref();
        return new Promise<void>((resolve) => worker.once('exit', () => resolve()));
      },
      kill: () => void worker.terminate(),
    });
  }
  return pool;
}

interface WebWorkerLike {
  onmessage: ((e: { data: unknown }) => void) | null;
  onerror: ((e: { message?: string }) => void) | null;
  postMessage(msg: unknown): void;
  terminate(): void;
}

function webPool(module: WebAssembly.Module, memory: WebAssembly.Memory, board: number, threads: number): PoolThread[] {
  const WebWorker = (globalThis as { Worker?: new (url: URL, opts: { type: 'module' }) => WebWorkerLike }).Worker;
  if (typeof WebWorker !== 'function') fail(`threads = ${threads} needs workers: this runtime has neither node:worker_threads nor Web Workers; use threads = 1`);
  const pool: PoolThread[] = [];
  for (let tid = 1; tid < threads; tid++) {
    const worker = new WebWorker(WEB_WORKER_URL, { type: 'module' });
    const ready = new Promise<void>((resolve, reject) => {
      worker.onmessage = () => resolve();
      worker.onerror = (e) => reject(new Error(`pool worker ${tid} (${WEB_WORKER_URL.href}): ${e?.message ?? 'failed to start'}`));
    });
    // Posting a shared memory fails (DataCloneError) unless the page is cross-origin isolated.
    worker.postMessage({ module, memory, board, tid });
    pool.push({
      worker,
      ready,
      stop() {
        worker.terminate();
        return Promise.resolve();
      },
      kill: () => worker.terminate(),
    });
  }
  return pool;
}

const compiled = new Map<SimdLevel, WebAssembly.Module>();
const read = new Map<SimdLevel, Uint8Array>();

function wasmBytes(level: SimdLevel): Uint8Array {
  let bytes = read.get(level);
  if (!bytes) {
    const url = WASM_URL[level];
    try {
      bytes = new Uint8Array(readFileSync(url));
    } catch {
      fail(`cannot read ${url.pathname}: build the WebAssembly core first with "npm run build"`);
    }
    read.set(level, bytes);
  }
  return bytes;
}

function wasmModule(level: SimdLevel): WebAssembly.Module {
  let module = compiled.get(level);
  if (!module) {
    module = new WebAssembly.Module(wasmBytes(level) as Uint8Array<ArrayBuffer>);
    compiled.set(level, module);
  }
  return module;
}

/** The build `choice` asks for, checked against what the engine runs ('auto': relaxed when it runs correctly). */
export function simdLevel(choice: SimdChoice = simdChoiceFromEnv()): SimdLevel {
  if (choice === 'plain') return 'simd128';
  const probe = detectRelaxedSimd();
  if (choice === 'relaxed' && !probe.relaxed) fail(`relaxed SIMD was asked for, but ${probe.reason}; use Node 22 or newer, or DEEPWASM_SIMD=plain`);
  return probe.relaxed ? 'relaxed' : 'simd128';
}

/**
 * The build a runtime of `choice` runs: an explicit choice as simdLevel says; 'auto', where both builds run,
 * the one this machine's calibration found faster (host/runtime/calibrate.ts), measured once and kept.
 */
export async function chosenSimd(choice: SimdChoice = simdChoiceFromEnv()): Promise<{ level: SimdLevel; calibration?: Calibration }> {
  const level = simdLevel(choice);
  if (choice !== 'auto' || level !== 'relaxed') return { level };
  const calibration = await calibratedLevel({ simd128: wasmBytes('simd128'), relaxed: wasmBytes('relaxed') }, (l) =>
    Runtime.create(1, { simd: l === 'relaxed' ? 'relaxed' : 'plain' }),
  );
  return { level: calibration.level, calibration };
}

export interface RuntimeOptions {
  /** 'relaxed' or 'plain' forces a build; 'auto' (default, or DEEPWASM_SIMD) runs the build this machine's calibration found faster. */
  simd?: SimdChoice;
  /** The compiled core (either build) instead of build/*.wasm read from disk; its build decides `simd`. */
  module?: WebAssembly.Module;
}

/** Scratch for the quantized matmuls: at least this much, more for matrices wider than ~4000 columns. */
const MIN_QUANT_SCRATCH = 4 * 1024 * 1024;
/** Tokens a quantized prefill takes per pass over the weights, at least (so also the inputs of that
 * width one matmul_grouped step can take: host/runtime/grouped.ts). */
export const QUANT_CHUNK_TOKENS = 64;

export function defaultThreads(): number {
  return availableParallelism();
}

/**
 * One shared memory, the module instantiated on this thread and in threads - 1 workers, and the
 * arena that owns the memory above the module's static data. The caller's thread takes part in
 * every parallel step, so threads = 1 runs without workers.
 */
export class Runtime {
  private constructor(
    readonly kernels: Kernels,
    readonly memory: WebAssembly.Memory,
    readonly arena: Arena,
    readonly threads: number,
    private readonly pool: PoolThread[],
    /** Which build runs: 'relaxed' (relaxed SIMD) or 'simd128' (plain SIMD). */
    readonly simd: SimdLevel,
  ) {}

  /** The kernels under the names and views the model code uses. */
  readonly ops: Ops = new Ops(this);

  private scratchCols = 0;

  /** The pool's workers: node:worker_threads Workers, or Web Workers in a browser (empty after close()). */
  get workers(): unknown[] {
    return this.pool.map((p) => p.worker);
  }

  static async create(threads = defaultThreads(), opts: RuntimeOptions = {}): Promise<Runtime> {
    if (!Number.isInteger(threads) || threads < 1 || threads > MAX_THREADS) {
      fail(`threads must be a whole number from 1 to ${MAX_THREADS}, got ${threads}`);
    }
    const module = opts.module ?? wasmModule((await chosenSimd(opts.simd)).level);
    const memory = new WebAssembly.Memory({ initial: 32, maximum: 65536, shared: true });
    const kernels = instantiate(module, memory);
    const simd: SimdLevel = kernels.relaxed_simd() === 1 ? 'relaxed' : 'simd128';
    const arena = new Arena(memory, kernels.heap_base());
    // The board plus BOARD_EXTRA_BYTES, where set_scratch keeps the quantized kernels' scratch (assembly/board.ts).
    const boardBytes = (kernels.BOARD_BYTES.value as number) + BOARD_EXTRA_BYTES;
    const board = arena.alloc(boardBytes, 'the job board');
    new Uint8Array(memory.buffer, board, boardBytes).fill(0);
    kernels.pool_init(board, threads);
    const workers: PoolThread[] = [];
    if (threads > 1) workers.push(...(hasNodeWorkers() ? await nodePool(module, memory, board, threads) : webPool(module, memory, board, threads)));
    try {
      await Promise.all(workers.map((w) => w.ready));
    } catch (err) {
      kernels.pool_stop();
      for (const w of workers) w.kill();
      throw err;
    }
    return new Runtime(kernels, memory, arena, threads, workers, simd);
  }

  /**
   * Makes sure the quantized kernels' scratch (activations in their layout, per-thread slots) covers
   * matrices `cols` wide. Call at load time: a wider matrix takes a new, larger area from the arena.
   */
  ensureQuantScratch(cols: number): void {
    if (cols <= this.scratchCols) return;
    const k = this.kernels;
    const bytes = Math.max(MIN_QUANT_SCRATCH, k.quant_scratch_bytes(cols, QUANT_CHUNK_TOKENS) >>> 0);
    const ptr = this.arena.alloc(bytes, 'quantized matmul scratch');
    k.set_scratch(ptr, bytes);
    this.scratchCols = cols;
  }

  f32(ptr: number, count: number): Float32Array {
    return new Float32Array(this.memory.buffer, ptr, count);
  }

  /** Views of the whole memory, remade only after it grows: per-token code indexes these (ptr / 4)
   * instead of making a new view per step. */
  heap(): { u8: Uint8Array; i32: Int32Array; f32: Float32Array } {
    const buffer = this.memory.buffer;
    if (this.views?.buffer !== buffer) this.views = { buffer, u8: new Uint8Array(buffer), i32: new Int32Array(buffer), f32: new Float32Array(buffer) };
    return this.views;
  }

  private views?: { buffer: ArrayBufferLike; u8: Uint8Array; i32: Int32Array; f32: Float32Array };

  /** Copies `bytes` bytes at src in this memory to dst in `to`'s (a hidden state on its way to the memory of the next unit). */
  copyTo(src: number, to: Runtime, dst: number, bytes: number): void {
    const from = this.heap().u8;
    if (to === this) from.copyWithin(dst, src, src + bytes);
    else to.heap().u8.set(from.subarray(src, src + bytes), dst);
  }

  i32(ptr: number, count: number): Int32Array {
    return new Int32Array(this.memory.buffer, ptr, count);
  }

  bytes(ptr: number, count: number): Uint8Array {
    return new Uint8Array(this.memory.buffer, ptr, count);
  }

  /** Stops the workers; the runtime cannot be used afterwards. */
  async close(): Promise<void> {
    if (this.pool.length === 0) return;
    this.kernels.pool_stop();
    await Promise.all(this.pool.map((w) => w.stop()));
    this.pool.length = 0;
  }
}
