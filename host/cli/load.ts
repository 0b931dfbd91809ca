import { fail } from '../errors.js';
import { loadBackend } from '../backends/load.js';
import { BACKEND_NAMES, type BackendName, type LoadOptions, type ModelBackend } from '../model/backend.js';
import { parseQuant } from '../model/weights.js';
import type { Flags } from './args.js';
import { loadProgress } from './progress.js';

/** The load options of the flags every weight-loading command shares: --backend, --threads, --context, --quant, --memory-limit. */
export function loadOptions(flags: Flags): LoadOptions {
  const backend = flags['backend'] as string | undefined;
  if (backend !== undefined && !(BACKEND_NAMES as readonly string[]).includes(backend)) {
    fail(`--backend is "${backend}": expected one of ${BACKEND_NAMES.join(', ')}`);
  }
  const quant = flags['quant'] as string | undefined;
  const limit = flags['memory-limit'] as number | undefined;
  return {
    memoryLimit: limit === undefined ? undefined : Math.round(limit * 1024 * 1024),
    backend: backend as BackendName | undefined,
    threads: flags['threads'] as number | undefined,
    contextLength: flags['context'] as number | undefined,
    quant: quant === undefined ? undefined : parseQuant(quant),
  };
}

/** Loads a model for a CLI command, with a progress bar on the terminal for large checkpoints. */
export async function loadWithProgress(dir: string, opts: Omit<LoadOptions, 'onProgress'>): Promise<ModelBackend> {
  const progress = loadProgress(`loading ${dir}`);
  const model = await loadBackend(dir, { ...opts, onProgress: progress.onProgress });
  progress.done();
  return model;
}
