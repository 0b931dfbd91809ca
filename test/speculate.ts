// The greedy speculative-decoding loop the lossless tests run on every backend (CPU, CUDA): prompt, then
// steps of one draft-and-verify until n tokens, keeping every chosen token's logits row.
import type { ModelBackend, Sequence } from '../host/model/backend.js';
import type { Draft } from '../host/generate/drafts.js';
import { resolveSampling } from '../host/generate/options.js';
import { Sampler } from '../host/generate/sampler.js';
import { Speculation } from '../host/generate/speculative.js';

export const GREEDY = resolveSampling({ temperature: 0, seed: 1 });

/** Greedy speculative decoding of n tokens after the prompt, with every chosen token's logits row. */
export function speculate(model: ModelBackend, draft: (seq: Sequence) => Draft, k: number, prompt: readonly number[], n: number) {
  const seq = model.createSequence();
  const spec = new Speculation(model, draft(seq), k, GREEDY);
  const sampler = new Sampler(model.config.vocabSize, GREEDY, prompt);
  const rows: Float32Array[] = [];
  try {
    const first = spec.prefill(seq, prompt);
    rows.push(first.slice());
    const ids = [sampler.sample(first)];
    sampler.accept(ids[0]);
    spec.first(ids[0]);
    while (ids.length < n) ids.push(...spec.step(seq, sampler, n - ids.length, (row) => rows.push(row.slice())));
    return { ids, rows, stats: spec.stats };
  } finally {
    spec.free();
    model.free(seq);
  }
}
