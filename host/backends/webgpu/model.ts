// The WebGPU backend: the same DeepSeek model as host/model/, with weights, latent KV caches and every
// kernel of the forward pass on a WebGPU device (engine.ts; WGSL in kernels/), through Dawn's `webgpu`
// package in Node or the runtime's navigator.gpu. The device runs in a worker thread (thread.ts): a
// step is one message and one wait on shared memory, so forward() stays synchronous like the other
// backends'.
import type { RandomAccessBytes } from '../../checkpoint/byte-source.js';
import { openCheckpoint } from '../../checkpoint/checkpoint.js';
import { parseConfig, type DeepSeekConfig } from '../../checkpoint/config.js';
import { fail } from '../../errors.js';
import type { BatchEntry, LoadOptions, ModelBackend, Sequence } from '../../model/backend.js';
import { SequencePool, poolShape } from '../../model/sequences.js';
import type { EngineInfo, StepEntry } from './engine.js';
import { CONTROL_BYTES, CTL, ERROR_BYTES, READ_CHUNK, READ_HEADER, serveRead, type CheckpointSource, type LoadMessage, type Request, type Start } from './protocol.js';

/** The device thread: thread.js beside this file under Node and Deno; in a browser bundle, webgpu-thread.js beside it (tools/build-web.mjs). */
const NODE_THREAD_URL = new URL('./thread.js', import.meta.url);
const WEB_THREAD_URL = new URL('./webgpu-thread.js', import.meta.url);

/** The worker, whichever kind runs it. */
interface DeviceThread {
  post(m: Start | Request): void;
  onMessage(fn: (m: LoadMessage) => void, onError: (e: Error) => void): void;
  /** Lets the process exit while the thread lives (Node). */
  unref(): void;
  terminate(): Promise<void>;
}

async function startThread(): Promise<DeviceThread> {
  const node = typeof (globalThis as { process?: { versions?: { node?: string } } }).process?.versions?.node === 'string';
  if (node) {
    const { Worker } = await import('node:worker_threads');
    const execArgv = process.execArgv.filter((a) => !a.startsWith('--input-type'));
    const w = new Worker(NODE_THREAD_URL, { execArgv });
    return {
      post: (m) => w.postMessage(m),
      onMessage(fn, onError) {
        w.removeAllListeners('message');
        w.on('message', fn);
        w.once('error', onError);
      },
      unref: () => w.unref(),
      terminate: async () => void (await w.terminate()),
    };
  }
  const w = new Worker(WEB_THREAD_URL, { type: 'module' });
  return {
    post: (m) => w.postMessage(m),
    onMessage(fn, onError) {
      w.onmessage = (e: MessageEvent<LoadMessage>) => fn(e.data);
      w.onerror = (e: ErrorEvent) => onError(new Error(e.message || 'the WebGPU device thread failed to start'));
    },
    unref: () => {},
    terminate: async () => w.terminate(),
  };
}

export interface WebGpuLoadOptions extends LoadOptions {
  /** false: the plain workgroup reductions even where the adapter has subgroups (tests of that path). */
  subgroups?: boolean;
  /** Cut weights into buffers of at most this many bytes even where the device binds more (tests of the split path). */
  maxBindingBytes?: number;
  /** Layers per command buffer of a step (tests: 1, so that every step is cut into several). */
  flushLayers?: number;
  /** Longest wait for one call's answer from the device thread (default 10 minutes): past it the call fails, where it would hang. */
  callTimeoutMs?: number;
}

const CALL_TIMEOUT_MS = 600_000;

/** Reads a Hugging Face checkpoint folder onto a WebGPU device. */
export function loadWebGpuModel(dir: string, opts: WebGpuLoadOptions = {}): Promise<WebGpuModel> {
  return WebGpuModel.load(dir, opts);
}

/** The checkpoint's files as bytes (the edge entry, a browser worker), read onto a WebGPU device. */
export function webGpuModelFromSources(config: unknown, files: ReadonlyMap<string, RandomAccessBytes>, opts: WebGpuLoadOptions = {}): Promise<WebGpuModel> {
  return WebGpuModel.fromSources(config, files, opts);
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
    private readonly thread: DeviceThread,
    private readonly started: Start,
    private readonly callTimeoutMs: number,
  ) {
    this.pool = new SequencePool(config, contextLength, maxSequences);
    this.ctl = new Int32Array(started.control);
  }

  static async load(dir: string, opts: WebGpuLoadOptions = {}): Promise<WebGpuModel> {
    const ckpt = openCheckpoint(dir);
    const config = ckpt.config;
    ckpt.close();
    return WebGpuModel.start(config, { dir }, [], opts);
  }

  static async fromSources(rawConfig: unknown, files: ReadonlyMap<string, RandomAccessBytes>, opts: WebGpuLoadOptions = {}): Promise<WebGpuModel> {
    const config = parseConfig(rawConfig, 'config.json');
    const names = [...files.keys()];
    const bytes = new SharedArrayBuffer(READ_HEADER + READ_CHUNK);
    const source = { config: rawConfig, files: names.map((name) => ({ name, size: files.get(name)!.size })), bytes };
    return WebGpuModel.start(config, source, names.map((n) => files.get(n)!), opts);
  }

  /** Starts the device thread, serves its reads of `files` while it loads, and waits until it is ready. */
  private static async start(config: DeepSeekConfig, source: CheckpointSource, files: RandomAccessBytes[], opts: WebGpuLoadOptions): Promise<WebGpuModel> {
    if (opts.flushLayers !== undefined && !(Number.isInteger(opts.flushLayers) && opts.flushLayers >= 0)) fail(`flushLayers must be a whole number of at least 0, got ${opts.flushLayers}`);
    if (opts.memoryLimit !== undefined) fail('--memory-limit (memoryLimit) sizes the CPU backend\'s WebAssembly memories; leave it out with --backend webgpu');
    if (typeof SharedArrayBuffer === 'undefined' || typeof Atomics?.wait !== 'function') {
      fail('WebGPU backend: needs SharedArrayBuffer and Atomics.wait (a browser page must be cross-origin isolated, COOP/COEP, and the model must run in a worker)');
    }
    const pool = poolShape(config, opts);
    const start: Start = {
      op: 'start',
      source,
      opts: { ...pool, quant: opts.quant, subgroups: opts.subgroups, maxBindingBytes: opts.maxBindingBytes, flushLayers: opts.flushLayers },
      control: new SharedArrayBuffer(CONTROL_BYTES),
      error: new SharedArrayBuffer(ERROR_BYTES),
    };
    const thread = await startThread();
    const info = await new Promise<EngineInfo>((resolve, reject) => {
      thread.onMessage((m) => {
        if (m.op === 'progress') opts.onProgress?.(m.read, m.total);
        else if (m.op === 'read' && 'bytes' in source) serveRead(files, source.bytes, m);
        else if (m.op === 'ready') resolve(m.info);
        else if (m.op === 'error') reject(new Error(m.message));
      }, reject);
      thread.post(start);
    }).catch(async (e: Error) => {
      await thread.terminate();
      fail(e.message);
    });
    thread.onMessage(() => {}, () => {});
    thread.unref();
    return new WebGpuModel(config, pool.contextLength, pool.maxSequences, info, thread, start, opts.callTimeoutMs ?? CALL_TIMEOUT_MS);
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

  /**
   * Sends one request and blocks until the device thread has answered; returns its value. A thread that
   * ended (its exit handler writes the reason) or that does not answer within callTimeoutMs fails the call
   * with that reason instead of blocking for ever.
   */
  private call(req: Request): number {
    if (this.closed) fail('this WebGPU model was closed; load it again');
    if (Atomics.load(this.ctl, CTL.EXITED) !== 0) fail(this.error());
    Atomics.store(this.ctl, CTL.READY, 0);
    this.thread.post(req);
    if (Atomics.wait(this.ctl, CTL.READY, 0, this.callTimeoutMs) === 'timed-out') {
      fail(`WebGPU backend: the device thread did not answer a ${req.op} request within ${this.callTimeoutMs / 1000} s (callTimeoutMs); the device may be lost or hung`);
    }
    if (Atomics.load(this.ctl, CTL.FAILED) !== 0) fail(this.error());
    return Atomics.load(this.ctl, CTL.VALUE);
  }

  private error(): string {
    const n = Atomics.load(this.ctl, CTL.ERROR_LENGTH);
    return new TextDecoder().decode(new Uint8Array(this.started.error).slice(0, n));
  }

  /** Tests: ends the device thread as a native crash would, then makes `op` fail the way a caller sees it. */
  crashForTest(code: number): void {
    this.call({ op: 'exit', code });
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
    return this.pool.fork(sequence, (from, to) => void this.call({ op: 'fork', from: from.slot, to: to.slot, positions: from.position }));
  }

  free(sequence: Sequence): void {
    this.pool.free(sequence);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    if (Atomics.load(this.ctl, CTL.EXITED) === 0) this.call({ op: 'close' });
    this.closed = true;
    await this.thread.terminate();
  }
}
