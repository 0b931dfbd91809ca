import { fileURLToPath } from 'node:url';
import type { DeepSeekConfig } from '../host/checkpoint/config.js';
import { openSafetensors, readTensorInto } from '../host/checkpoint/safetensors.js';
import type { BatchEntry, LoadOptions, ModelBackend, Sequence } from '../host/model/backend.js';
import { Model } from '../host/model/model.js';

/** Tests run from dist/test; fixtures stay in the source tree. */
export const FIXTURES = fileURLToPath(new URL('../../test/fixtures/', import.meta.url));
export const MODEL_FIXTURES = ['v3-tiny', 'v2-lite-tiny', 'v3-odd-bf16-sharded', 'v3-fp8-blocks'];

export interface Expected {
  inputIds: Int32Array;
  logits: Float32Array;
  genIds: Int32Array;
  genLogits: Float32Array;
  vocab: number;
}

export function readExpected(path: string): Expected {
  const f = openSafetensors(path);
  const get = (name: string) => {
    const e = f.tensors.get(name)!;
    const bytes = new Uint8Array(e.nbytes);
    readTensorInto(e, bytes);
    return { bytes, shape: e.shape };
  };
  const logits = get('logits');
  return {
    inputIds: new Int32Array(get('input_ids').bytes.buffer),
    logits: new Float32Array(logits.bytes.buffer),
    genIds: new Int32Array(get('gen_ids').bytes.buffer),
    genLogits: new Float32Array(get('gen_logits').bytes.buffer),
    vocab: logits.shape[1],
  };
}

export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length ${a.length} != ${b.length}`);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

export function argmax(a: ArrayLike<number>, from = 0, n = a.length): number {
  let best = from;
  for (let i = from + 1; i < from + n; i++) if (a[i] > a[best]) best = i;
  return best - from;
}

/** One sequence of a model, driven the way most tests read best: forward(ids) appends ids and returns logits. */
export class OneSequence<M extends ModelBackend = Model> {
  readonly sequence: Sequence;
  /** One batch, reused: decoding through it allocates nothing per token. */
  private readonly entry: BatchEntry;
  private readonly batch: BatchEntry[];

  constructor(readonly model: M) {
    this.sequence = model.createSequence();
    this.entry = { sequence: this.sequence, tokens: [] };
    this.batch = [this.entry];
  }

  get config(): DeepSeekConfig {
    return this.model.config;
  }

  get position(): number {
    return this.sequence.position;
  }

  /** The last position's logits, or with allLogits every position's ([T, vocab]). */
  forward(ids: ArrayLike<number>, opts: { allLogits?: boolean } = {}): Float32Array {
    this.entry.tokens = ids;
    this.entry.logits = opts.allLogits ? 'all' : 'last';
    return this.model.forward(this.batch)[0];
  }

  reset(): void {
    this.model.truncate(this.sequence, 0);
  }

  close(): Promise<void> {
    return this.model.close();
  }
}

/** The CPU model of `dir` with one sequence. */
export async function loadOne(dir: string, opts: LoadOptions = {}): Promise<OneSequence<Model>> {
  return new OneSequence(await Model.load(dir, opts));
}

/** Layers whose routed experts lie in more than one memory, from the model's memory list. */
export function splitLayers(memories: readonly { units: string }[]): number[] {
  const seen = new Map<number, number>();
  for (const m of memories) for (const [, layer] of m.units.matchAll(/layer (\d+) \([^)]*experts? \d+/g)) seen.set(Number(layer), (seen.get(Number(layer)) ?? 0) + 1);
  return [...seen].filter(([, n]) => n > 1).map(([layer]) => layer);
}

/**
 * A memory limit that lays the checkpoint over at least three memories with a layer's experts split over
 * two, for these load options: found by loading (the fixtures load in milliseconds) with ever smaller limits.
 */
export async function splitLimit(dir: string, opts: LoadOptions = {}): Promise<number> {
  const whole = await Model.load(dir, { ...opts, threads: 1 });
  let limit = Math.ceil(whole.weightBytes / 2);
  await whole.close();
  for (;;) {
    const model = await Model.load(dir, { ...opts, threads: 1, memoryLimit: limit });
    const ok = model.memories.length >= 3 && splitLayers(model.memories).length > 0;
    await model.close();
    if (ok) return limit;
    limit = Math.floor(limit * 0.85);
  }
}

/** Every tensor of a safetensors file (the MTP references: I32 ids, F32 logits). */
export function readTensors(path: string): Map<string, Float32Array | Int32Array> {
  const f = openSafetensors(path);
  const out = new Map<string, Float32Array | Int32Array>();
  for (const [name, e] of f.tensors) {
    const bytes = new Uint8Array(e.nbytes);
    readTensorInto(e, bytes);
    out.set(name, e.dtype === 'I32' ? new Int32Array(bytes.buffer) : new Float32Array(bytes.buffer));
  }
  return out;
}

/** The MTP logits of every position of `ids` (row i from h_i and ids[i + 1]), one position per call, and the hidden states forward() gave. */
export function mtpRows(model: ModelBackend, ids: readonly number[]): { rows: Float32Array; hidden: Float32Array } {
  const { hiddenSize: dim, vocabSize: vocab } = model.config;
  const seq = model.createSequence();
  try {
    const hidden = new Float32Array(ids.length * dim);
    model.forward([{ sequence: seq, tokens: ids, logits: 'none', hidden }]);
    const rows = new Float32Array((ids.length - 1) * vocab);
    const out = new Float32Array(dim);
    for (let i = 0; i + 1 < ids.length; i++) rows.set(model.mtp!.forward(seq, i, [ids[i + 1]], hidden.subarray(i * dim, (i + 1) * dim), out), i * vocab);
    return { rows, hidden };
  } finally {
    model.free(seq);
  }
}
