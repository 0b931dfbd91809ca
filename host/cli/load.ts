import { Model } from '../model/model.js';
import { createProgress } from './progress.js';

/** Loads a model for a CLI command, with a progress bar on the terminal for large checkpoints. */
export async function loadWithProgress(dir: string, threads?: number, contextLength?: number): Promise<Model> {
  let progress: ReturnType<typeof createProgress> | undefined;
  let seen = 0;
  const model = await Model.load(dir, {
    threads,
    contextLength,
    onProgress: (read, total) => {
      progress ??= createProgress(`loading ${dir}`, total);
      progress.advance(read - seen);
      seen = read;
    },
  });
  progress?.done();
  return model;
}
