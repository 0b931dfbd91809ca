// Loads a checkpoint folder on the backend the options name. The CUDA and WebGPU backends are imported only
// when asked for, so the CPU path needs neither koffi, the CUDA library nor Dawn.
import { fail } from '../errors.js';
import { BACKEND_NAMES, type LoadOptions, type ModelBackend } from '../model/backend.js';
import { Model } from '../model/model.js';

export async function loadBackend(dir: string, opts: LoadOptions = {}): Promise<ModelBackend> {
  const backend = opts.backend ?? 'cpu';
  if (backend === 'cpu') return Model.load(dir, opts);
  if (backend === 'cuda') {
    if (opts.memoryLimit !== undefined) fail('--memory-limit (memoryLimit) sizes the CPU backend\'s WebAssembly memories; leave it out with --backend cuda');
    return (await import('./cuda/model.js')).loadCudaModel(dir, opts);
  }
  if (backend === 'webgpu') return (await import('./webgpu/model.js')).loadWebGpuModel(dir, opts);
  fail(`backend is "${String(backend)}": expected one of ${BACKEND_NAMES.join(', ')}`);
}
