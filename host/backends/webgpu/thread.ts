// The device thread: loads the engine, then serves one request at a time, writing each result into
// shared memory and waking the caller blocked in WebGpuModel. It runs as a node:worker_threads worker or
// a Web Worker; the first message says where the checkpoint is.
import type { RandomAccessBytes } from '../../checkpoint/byte-source.js';
import { checkpointFromSources, openCheckpoint, type Checkpoint } from '../../checkpoint/checkpoint.js';
import { parseConfig } from '../../checkpoint/config.js';
import { GpuEngine } from './engine.js';
import { CTL, ERROR_BYTES, READ_CHUNK, READ_HEADER, type LoadMessage, type Request, type Start } from './protocol.js';

interface Port {
  post(m: LoadMessage): void;
  on(fn: (m: Start | Request) => void): void;
  /** Runs fn (synchronously) when the thread ends for any reason: a caller blocked on a result must hear of it. */
  onExit(fn: (why: string) => void): void;
  exit(code: number): void;
}

async function port(): Promise<Port> {
  const node = typeof (globalThis as { process?: { versions?: { node?: string } } }).process?.versions?.node === 'string';
  if (node) {
    const { parentPort } = await import('node:worker_threads');
    return {
      post: (m) => parentPort!.postMessage(m),
      on: (fn) => parentPort!.on('message', fn),
      onExit: (fn) => process.on('exit', (code) => fn(`exited with code ${code}`)),
      exit: (code) => process.exit(code),
    };
  }
  const self = globalThis as unknown as {
    postMessage(m: unknown): void;
    onmessage: ((e: { data: Start | Request }) => void) | null;
    addEventListener(type: 'error', fn: (e: { message?: string }) => void): void;
    close(): void;
  };
  let exitFn: (why: string) => void = () => {};
  return {
    post: (m) => self.postMessage(m),
    on: (fn) => (self.onmessage = (e) => fn(e.data)),
    onExit: (fn) => {
      exitFn = fn;
      self.addEventListener('error', (e) => fn(`failed: ${e.message ?? 'an uncaught error'}`));
    },
    exit: (code) => {
      exitFn(`exited with code ${code}`);
      self.close();
    },
  };
}

/** The caller's file, read a chunk at a time through shared memory (this thread may block; the caller is waiting on its messages). */
function remoteFile(p: Port, bytes: SharedArrayBuffer, file: number, size: number): RandomAccessBytes {
  const flag = new Int32Array(bytes, 0, 1);
  return {
    size,
    read(offset, dst) {
      for (let at = 0; at < dst.length; at += READ_CHUNK) {
        const length = Math.min(READ_CHUNK, dst.length - at);
        Atomics.store(flag, 0, 0);
        p.post({ op: 'read', file, offset: offset + at, length });
        Atomics.wait(flag, 0, 0);
        dst.set(new Uint8Array(bytes, READ_HEADER, length), at);
      }
    },
  };
}

function checkpointOf(p: Port, start: Start): Checkpoint {
  const s = start.source;
  if ('dir' in s) return openCheckpoint(s.dir);
  const files = new Map(s.files.map((f, i) => [f.name, remoteFile(p, s.bytes, i, f.size)]));
  return checkpointFromSources('(in memory)', parseConfig(s.config, 'config.json'), files);
}

function message(e: unknown): string {
  const m = (e as Error)?.message;
  return m ? m : `WebGPU backend: ${String(e)}`;
}

function serve(p: Port, start: Start): void {
  const ctl = new Int32Array(start.control);
  const done = (ok: boolean, value: number): void => {
    Atomics.store(ctl, CTL.FAILED, ok ? 0 : 1);
    Atomics.store(ctl, CTL.VALUE, value);
    Atomics.store(ctl, CTL.READY, 1);
    Atomics.notify(ctl, CTL.READY);
  };
  const failed = (e: unknown): void => {
    const bytes = new TextEncoder().encode(message(e)).subarray(0, ERROR_BYTES);
    new Uint8Array(start.error).fill(0).set(bytes);
    Atomics.store(ctl, CTL.ERROR_LENGTH, bytes.length);
    done(false, 0);
  };
  p.onExit((why) => {
    Atomics.store(ctl, CTL.EXITED, 1);
    failed(new Error(`WebGPU backend: the device thread ${why}; load the model again`));
  });
  let engine: GpuEngine | null = null;
  let result: Float32Array | null = null;
  const run = async (req: Request): Promise<void> => {
    const e = engine!;
    switch (req.op) {
      case 'forward': {
        if (req.result) result = new Float32Array(req.result);
        const rows = await e.forward(req.entries);
        result!.set(rows);
        return done(true, rows.length);
      }
      case 'greedy':
        return done(true, await e.greedy(req.entry));
      case 'fork':
        await e.fork(req.from, req.to, req.positions);
        return done(true, 0);
      case 'close':
        e.close();
        return done(true, 0);
      case 'exit':
        return p.exit(req.code);
    }
  };
  p.on((m) => {
    if (m.op !== 'start') void run(m).catch(failed);
  });
  void (async () => {
    try {
      const ckpt = checkpointOf(p, start);
      try {
        engine = await GpuEngine.load(ckpt, start.opts, (read, total) => p.post({ op: 'progress', read, total }));
      } finally {
        ckpt.close();
      }
      p.post({ op: 'ready', info: engine.info });
    } catch (e) {
      p.post({ op: 'error', message: message(e) });
    }
  })();
}

const p = await port();
let started = false;
p.on((m) => {
  if (m.op === 'start' && !started) {
    started = true;
    serve(p, m);
  }
});
