// The device thread: loads the engine, then serves one request at a time, writing each result into
// shared memory and waking the caller blocked in WebGpuModel.
import { parentPort, workerData } from 'node:worker_threads';
import { GpuEngine } from './engine.js';
import { ERROR_BYTES, type LoadMessage, type Request, type ThreadStart } from './protocol.js';

const start = workerData as ThreadStart;
const port = parentPort!;
const ctl = new Int32Array(start.control);
const err = new Uint8Array(start.error);
let result: Float32Array | null = null;

function done(ok: boolean, value: number): void {
  Atomics.store(ctl, 1, ok ? 0 : 1);
  Atomics.store(ctl, 2, value);
  Atomics.store(ctl, 0, 1);
  Atomics.notify(ctl, 0);
}

function message(e: unknown): string {
  const m = (e as Error)?.message;
  return `WebGPU backend: ${m ? m : String(e)}`;
}

function failed(e: unknown): void {
  const bytes = new TextEncoder().encode(message(e)).subarray(0, ERROR_BYTES);
  err.set(bytes);
  Atomics.store(ctl, 3, bytes.length);
  done(false, 0);
}

async function serve(engine: GpuEngine, req: Request): Promise<void> {
  switch (req.op) {
    case 'forward': {
      if (req.result) result = new Float32Array(req.result);
      const rows = await engine.forward(req.entries);
      result!.set(rows);
      return done(true, rows.length);
    }
    case 'greedy':
      return done(true, await engine.greedy(req.entry));
    case 'fork':
      await engine.fork(req.from, req.to, req.positions);
      return done(true, 0);
    case 'close':
      engine.close();
      return done(true, 0);
  }
}

try {
  const engine = await GpuEngine.load(start.dir, start.opts, (read, total) => port.postMessage({ op: 'progress', read, total } satisfies LoadMessage));
  port.on('message', (req: Request) => serve(engine, req).catch(failed));
  port.postMessage({ op: 'ready', info: engine.info } satisfies LoadMessage);
} catch (e) {
  port.postMessage({ op: 'error', message: (e as Error)?.message || message(e) } satisfies LoadMessage);
}
