// The bookkeeping of sequences that every backend shares: which slots of the KV-cache pool are taken,
// each sequence's position, and the checks on a batch before any kernel runs. The backends own the caches
// themselves (wasm memory, device memory) and only copy rows on fork.
import type { DeepSeekConfig } from '../checkpoint/config.js';
import { fail } from '../errors.js';
import type { BatchEntry, LoadOptions, Sequence } from './backend.js';

/** The pool and pass sizes a load asks for, with their defaults, checked against the config. */
export interface PoolShape {
  contextLength: number;
  maxSequences: number;
  passTokens: number;
}

/** The load options' pool and pass sizes: every backend checks them here, before it allocates or reads anything. */
export function poolShape(cfg: DeepSeekConfig, opts: LoadOptions): PoolShape {
  const contextLength = opts.contextLength ?? Math.min(cfg.maxPositionEmbeddings, 4096);
  const maxSequences = opts.maxSequences ?? 1;
  const passTokens = opts.passTokens ?? 256;
  if (!Number.isInteger(passTokens) || passTokens < 1) fail(`passTokens must be a whole number of at least 1, got ${passTokens}`);
  if (!Number.isInteger(maxSequences) || maxSequences < 1) fail(`maxSequences must be a whole number of at least 1, got ${maxSequences}`);
  if (!Number.isInteger(contextLength) || contextLength < 1 || contextLength > cfg.maxPositionEmbeddings) {
    fail(`context length must be a whole number from 1 to max_position_embeddings (${cfg.maxPositionEmbeddings}), got ${contextLength}`);
  }
  return { contextLength, maxSequences, passTokens };
}

export class Slot implements Sequence {
  position = 0;
  freed = false;
  constructor(readonly slot: number, readonly pool: SequencePool) {}
}

export class SequencePool {
  private readonly taken: (Slot | null)[];

  constructor(
    private readonly config: DeepSeekConfig,
    readonly contextLength: number,
    readonly maxSequences: number,
  ) {
    this.taken = new Array(maxSequences).fill(null);
  }

  create(): Sequence {
    const slot = this.taken.indexOf(null);
    if (slot < 0) {
      fail(`all ${this.maxSequences} sequences of this model are in use; free one, or load the model with more (maxSequences, --parallel)`);
    }
    const s = new Slot(slot, this);
    this.taken[slot] = s;
    return s;
  }

  /** The sequence as this pool's own: it must come from this pool and not be freed. */
  own(sequence: Sequence): Slot {
    const s = sequence as Slot;
    if (!(s instanceof Slot) || s.pool !== this) fail('this sequence belongs to another model');
    if (s.freed) fail(`sequence ${s.slot} was freed; create a new one`);
    return s;
  }

  /**
   * A new slot holding as many tokens as `sequence`, its cache rows copied by `copy` (the backend's own
   * memory move); a copy that throws leaves no slot taken.
   */
  fork(sequence: Sequence, copy: (from: Slot, to: Slot) => void): Slot {
    const from = this.own(sequence);
    const to = this.create() as Slot;
    to.position = from.position;
    try {
      copy(from, to);
    } catch (e) {
      this.free(to);
      throw e;
    }
    return to;
  }

  free(sequence: Sequence): void {
    const s = this.own(sequence);
    s.freed = true;
    this.taken[s.slot] = null;
  }

  truncate(sequence: Sequence, position: number): void {
    const s = this.own(sequence);
    if (!Number.isInteger(position) || position < 0 || position > s.position) {
      fail(`cannot truncate sequence ${s.slot} to ${position}: it holds ${s.position} tokens (expected 0 to ${s.position})`);
    }
    s.position = position;
  }

  /** Checks the whole batch (ids in the vocabulary, room in each context, each sequence once) before anything runs. */
  check(batch: readonly BatchEntry[]): Slot[] {
    if (batch.length === 0) fail('forward() needs at least one (sequence, tokens) entry');
    const vocab = this.config.vocabSize;
    const seen = new Set<Slot>();
    return batch.map((entry, b) => {
      const s = this.own(entry.sequence);
      if (seen.has(s)) fail(`sequence ${s.slot} appears twice in one batch; give it one entry with all its tokens`);
      seen.add(s);
      const ids = entry.tokens;
      if (ids.length === 0) fail('no tokens to run: the prompt is empty');
      for (let i = 0; i < ids.length; i++) {
        const id = ids[i];
        if (!Number.isInteger(id) || id < 0 || id >= vocab) {
          fail(`token id ${id} at index ${i}${batch.length > 1 ? ` of batch entry ${b}` : ''} is outside the vocabulary (expected 0 to ${vocab - 1}, vocab_size in config.json)`);
        }
      }
      if (entry.hidden !== undefined && entry.hidden.length !== ids.length * this.config.hiddenSize) {
        fail(`batch entry ${b}'s hidden buffer holds ${entry.hidden.length} floats; ${ids.length} tokens need ${ids.length} x hidden_size (${ids.length * this.config.hiddenSize})`);
      }
      const end = s.position + ids.length;
      if (end > this.config.maxPositionEmbeddings) {
        fail(`${end} tokens exceed max_position_embeddings (${this.config.maxPositionEmbeddings}) in config.json`);
      }
      if (end > this.contextLength) {
        fail(`${end} tokens exceed the context length (${this.contextLength}); load the model with a larger context (--context)`);
      }
      return s;
    });
  }
}
