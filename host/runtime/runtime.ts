import { readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import { fail } from '../errors.js';
import { Arena } from './arena.js';
import { instantiate, type Kernels } from './kernels.js';

const WASM_URL = new URL('../../../build/deepwasm.wasm', import.meta.url);
const WORKER_URL = new URL('./worker.js', import.meta.url);

let compiled: WebAssembly.Module | undefined;

function wasmModule(): WebAssembly.Module {
  if (!compiled) {
    let bytes: Buffer;
    try {
      bytes = readFileSync(WASM_URL);
    } catch {
      fail(`cannot read ${WASM_URL.pathname}: build the WebAssembly core first with "npm run build"`);
    }
    compiled = new WebAssembly.Module(new Uint8Array(bytes));
  }
  return compiled;
}

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
    private readonly workers: Worker[],
  ) {}

  static async create(threads = defaultThreads()): Promise<Runtime> {
    if (!Number.isInteger(threads) || threads < 1 || threads > 256) {
      fail(`threads must be a whole number from 1 to 256, got ${threads}`);
    }
    const module = wasmModule();
    const memory = new WebAssembly.Memory({ initial: 32, maximum: 65536, shared: true });
    const kernels = instantiate(module, memory);
    const arena = new Arena(memory, kernels.heap_base());
    const board = arena.alloc(kernels.BOARD_BYTES.value as number, 'the job board');
    new Uint8Array(memory.buffer, board, kernels.BOARD_BYTES.value as number).fill(0);
    kernels.pool_init(board, threads);
    const workers: Worker[] = [];
    const ready: Promise<void>[] = [];
    for (let tid = 1; tid < threads; tid++) {
      const worker = new Worker(WORKER_URL, { workerData: { module, memory, board, tid } });
      workers.push(worker);
      ready.push(
        new Promise((resolve, reject) => {
          worker.once('message', () => resolve());
          worker.once('error', reject);
        }),
      );
    }
    await Promise.all(ready);
    // Parked workers must not keep the process alive: a program that forgets close() still exits.
    for (const w of workers) w.unref();
    return new Runtime(kernels, memory, arena, threads, workers);
  }

  f32(ptr: number, count: number): Float32Array {
    return new Float32Array(this.memory.buffer, ptr, count);
  }

  i32(ptr: number, count: number): Int32Array {
    return new Int32Array(this.memory.buffer, ptr, count);
  }

  bytes(ptr: number, count: number): Uint8Array {
    return new Uint8Array(this.memory.buffer, ptr, count);
  }

  /** Stops the workers; the runtime cannot be used afterwards. */
  async close(): Promise<void> {
    if (this.workers.length === 0) return;
    const exited = this.workers.map((w) => {
      w.ref();
      return new Promise((resolve) => w.once('exit', resolve));
    });
    this.kernels.pool_stop();
    await Promise.all(exited);
    this.workers.length = 0;
  }
}
