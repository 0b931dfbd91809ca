import { Model, type LoadOptions } from '../model/model.js';
import { loadProgress } from './progress.js';

/** Loads a model for a CLI command, with a progress bar on the terminal for large checkpoints. */
export async function loadWithProgress(dir: string, opts: Omit<LoadOptions, 'onProgress'>): Promise<Model> {
  const progress = loadProgress(`loading ${dir}`);
  const model = await Model.load(dir, { ...opts, onProgress: progress.onProgress });
  progress.done();
  return model;
}
