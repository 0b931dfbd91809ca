// A pool thread: instantiate the module over the shared memory, say so, then live in worker_loop.
// Instantiating re-applies the module's data segments, which hold only read-only math tables whose
// bytes never change, so a late worker cannot clobber anything the host wrote above __heap_base.
import { parentPort, workerData } from 'node:worker_threads';
import { instantiate } from './kernels.js';

const { module, memory, board, tid } = workerData as {
  module: WebAssembly.Module;
  memory: WebAssembly.Memory;
  board: number;
  tid: number;
};
const kernels = instantiate(module, memory);
parentPort!.postMessage('ready');
kernels.worker_loop(board, tid, 0);
