// Placeholder until the CUDA backend moves here (branch h-cuda).
import { fail } from '../../errors.js';
import type { LoadOptions, ModelBackend } from '../../model/backend.js';

export async function loadCudaModel(dir: string, opts: LoadOptions): Promise<ModelBackend> {
  return fail(`CUDA backend unavailable (${dir}, ${JSON.stringify(opts)})`);
}

export function cudaStatus(): { ok: boolean; reason: string; device?: string } {
  return { ok: false, reason: 'placeholder' };
}
