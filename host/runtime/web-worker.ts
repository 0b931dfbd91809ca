// A pool thread in a browser (a nested dedicated Web Worker; host/runtime/worker.ts is the node:worker_threads one):
// it receives { module, memory, board, tid } by postMessage (a WebAssembly.Module and a shared WebAssembly.Memory are
// cloneable when cross-origin isolated), instantiates the module over the shared memory, says 'ready', then lives in
// worker_loop (blocked in memory.atomic.wait32, which workers may do) until pool_stop or terminate().
import { instantiate } from './kernels.js';

interface PoolStart {
  module: WebAssembly.Module;
  memory: WebAssembly.Memory;
  board: number;
  tid: number;
}

const scope = globalThis as unknown as { onmessage: ((e: { data: PoolStart }) => void) | null; postMessage(msg: unknown): void };
scope.onmessage = (e) => {
  scope.onmessage = null;
  const { module, memory, board, tid } = e.data;
  const kernels = instantiate(module, memory);
  scope.postMessage('ready');
  kernels.worker_loop(board, tid, 0);
};
