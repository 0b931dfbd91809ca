// The WebGPU backend: the same DeepSeek model as host/model/, with weights, latent KV caches and every
// kernel of the forward pass on a WebGPU device (engine.ts; WGSL in kernels/), through Dawn's `webgpu`
// package in Node or the runtime's navigator.gpu. The device runs in a worker thread (thread.ts): a
// step is one message and one wait on shared memory, so forward() stays synchronous like the other
// backends'.
import { Worker } from 'node:worker_threads';
import { openCheckpoint } from '../../checkpoint/checkpoint.js';
import type { DeepSeekConfig } from '../../checkpoint/config.js';
import { fail } from '../../errors.js';
import type { BatchEntry, LoadOptions, ModelBackend, Sequence } from '../../model/backend.js';
import { SequencePool, poolShape } from '../../model/sequences.js';
import type { EngineInfo, StepEntry } from './engine.js';
import { ERROR_BYTES, type LoadMessage, type Request, type ThreadStart } from './protocol.js';

export interface WebGpuLoadOptions extends LoadOptions {
  /** false: the plain workgroup reductions even where the adapter has subgroups (tests of that path). */
  subgroups?: boolean;
  /** Cut weights into buffers of at most this many bytes even where the device binds more (tests of the split path). */
  maxBindingBytes?: number;
}

/** Reads a Hugging Face checkpoint folder onto a WebGPU device. */
export function loadWebGpuModel(dir: string, opts: WebGpuLoadOptions = {}): Promise<WebGpuModel> {
  return WebGpuModel.load(dir, opts);
}

export class WebGpuModel implements ModelBackend {
  readonly backend = 'webgpu' as const;
  private readonly pool: SequencePool;
  private readonly ctl: Int32Array;
  private result: Float32Array<ArrayBufferLike> = new Float32Array(0);
  private closed = false;

  private constructor(
    readonly config: DeepSeekConfig,
    readonly contextLength: number,
    readonly maxSequences: number,
    private readonly info: EngineInfo,
    private readonly worker: Worker,
    private readonly start: ThreadStart,
  ) {
    this.pool = new SequencePool(config, contextLength, maxSequences);
    this.ctl = new Int32Array(start.control);
  }

  static async load(dir: string, opts: WebGpuLoadOptions = {}): Promise<WebGpuModel> {
    if (opts.memoryLimit !== undefined) fail('--memory-limit (memoryLimit) sizes the CPU backend\'s WebAssembly memories; leave it out with --backend webgpu');
    const ckpt = openCheckpoint(dir);
    const config = ckpt.config;
    ckpt.close();
    const pool = poolShape(config, opts);
    const start: ThreadStart = {
      dir,
      opts: { ...pool, quant: opts.quant, subgroups: opts.subgroups, maxBindingBytes: opts.maxBindingBytes },
      control: new SharedArrayBuffer(16),
      error: new SharedArrayBuffer(ERROR_BYTES),
    };
    const worker = new Worker(new URL('./thread.js', import.meta.url), { workerData: start });
    const info = await new Promise<EngineInfo>((resolve, reject) => {
      worker.on('error', reject);
      worker.on('message', (m: LoadMessage) => {
        if (m.op === 'progress') opts.onProgress?.(m.read, m.total);
        else if (m.op === 'ready') resolve(m.info);
        else reject(new Error(m.message));
      });
    }).catch(async (e: Error) => {
      await worker.terminate();
      fail(e.message);
    });
    worker.removeAllListeners('message');
    worker.unref();
    return new WebGpuModel(config, pool.contextLength, pool.maxSequences, info, worker, start);
  }

  get quant(): string {
    return this.info.quant;
  }
  get device(): string {
    return this.info.device;
  }
  get weightBytes(): number {
    return this.info.weightBytes;
  }
  get activeBytes(): number {
    return this.info.activeBytes;
  }

  /** Sends one request and blocks until the device thread has answered; returns ctl[2]. */
  private call(req: Request): number {
    if (this.closed) fail('this WebGPU model was closed; load it again');
    Atomics.store(this.ctl, 0, 0);
    this.worker.postMessage(req);
    Atomics.wait(this.ctl, 0, 0);
    if (Atomics.load(this.ctl, 1) !== 0) {
      const n = Atomics.load(this.ctl, 3);
      fail(new TextDecoder().decode(new Uint8Array(this.start.error).slice(0, n)));
    }
    return Atomics.load(this.ctl, 2);
  }

  createSequence(): Sequence {
    return this.pool.create();
  }

  forward(batch: readonly BatchEntry[]): Float32Array[] {
    const slots = this.pool.check(batch);
    const V = this.config.vocabSize;
    const entries: StepEntry[] = batch.map((e, b) => ({ slot: slots[b].slot, position: slots[b].position, tokens: Array.from(e.tokens), rows: e.logits ?? 'last' }));
    const rows = entries.map((e) => (e.rows === 'none' ? 0 : e.rows === 'all' ? e.tokens.length : 1));
    const floats = rows.reduce((a, b) => a + b, 0) * V;
    let result: SharedArrayBuffer | undefined;
    if (this.result.length < floats) {
      result = new SharedArrayBuffer(floats * 4);
      this.result = new Float32Array(result);
    }
    this.call({ op: 'forward', entries, result });
    entries.forEach((e, b) => (slots[b].position += e.tokens.length));
    let at = 0;
    return rows.map((n) => {
      const out = this.result.slice(at, at + n * V);
      at += n * V;
      return out;
    });
  }

  /** Runs tokens after the sequence's and returns the greedy next token: the argmax is taken on the device, four bytes come back. */
  greedyStep(sequence: Sequence, tokens: ArrayLike<number>): number {
    const [s] = this.pool.check([{ sequence, tokens }]);
    const next = this.call({ op: 'greedy', entry: { slot: s.slot, position: s.position, tokens: Array.from(tokens), rows: 'last' } });
    s.position += tokens.length;
    return next;
  }

  truncate(sequence: Sequence, position: number): void {
    this.pool.truncate(sequence, position);
  }

  fork(sequence: Sequence): Sequence {
    const { from, to } = this.pool.fork(sequence);
    try {
      this.call({ op: 'fork', from: from.slot, to: to.slot, positions: from.position });
    } catch (e) {
      this.pool.free(to);
      throw e;
    }
    return to;
  }

  free(sequence: Sequence): void {
    this.pool.free(sequence);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.call({ op: 'close' });
    this.closed = true;
    await this.worker.terminate();
  }
}
