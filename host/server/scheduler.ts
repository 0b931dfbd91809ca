// Continuous batching over a model's sequences: every step is one forward() with one entry per running
// generation, a decode token each, or a chunk of a new prompt, so that a long prompt does not stall the
// streams already running. How the backend runs a batch (one entry after another, or every entry's tokens
// through each weight at once) is the backend's business; this file only decides what goes in a step.
import type { BatchEntry, ModelBackend, Sequence } from '../model/backend.js';

/** What the scheduler runs: a prompt, then one token at a time (or a few, with a draft) for as long as `step` returns one. */
export interface Work {
  readonly prompt: readonly number[];
  /** Called once the work holds its sequence, before its first step; a throw fails the work. */
  start?(sequence: Sequence): void;
  /** A prompt chunk's entry, given the scheduler's: the work may add to it (room for the hidden states a draft needs). */
  chunk?(entry: BatchEntry): BatchEntry;
  /**
   * Called in each step the work decodes in, before any work's entry(): where it asks for the drafts that
   * SchedulerOptions.beforeEntries then proposes for every work at once.
   */
  plan?(sequence: Sequence): void;
  /**
   * The entry of a decode step in place of the scheduler's one-token entry (the token step() returned, its
   * last row): the token and the drafts after it, every row's logits. Undefined keeps the scheduler's.
   */
  entry?(sequence: Sequence): BatchEntry | undefined;
  /**
   * Takes the logits rows of its entry (after the prompt's last chunk, and each decode step; `position` tokens
   * are cached) and returns the token to feed next, or undefined when the generation is over.
   */
  step(logits: Float32Array, position: number): number | undefined;
  /**
   * Called once when the scheduler lets go of the work, its sequence already freed: 'done' after step returned
   * undefined, 'cancelled' after cancel(), 'failed' when forward() or step() threw.
   */
  ended(how: EndHow, error?: unknown): void;
}

export type EndHow = 'done' | 'cancelled' | 'failed';

export interface SchedulerOptions {
  /** Generations that hold a sequence at once (at most the model's maxSequences). */
  parallel: number;
  /** Generations that may wait for a sequence; more are refused (QueueFullError). */
  queue: number;
  /** Prompt tokens per step: prompts are fed in chunks of this many, and a step takes chunks up to this many tokens. */
  prefillChunk: number;
  /** Called in each step after the decoding works' plan() and before their entry(); must not throw. */
  beforeEntries?: () => void;
  /** Called after each step with what it ran and how long forward() took. */
  onStep?: (s: StepStats) => void;
  /** Called with what a work's ended() threw: the loop goes on. */
  onError?: (error: unknown) => void;
}

export interface StepStats {
  /** Entries in the batch, how many of them were decode steps, and the draft tokens those verified besides. */
  entries: number;
  decodeTokens: number;
  draftTokens: number;
  prefillTokens: number;
  ms: number;
}

export class QueueFullError extends Error {
  constructor(parallel: number, queue: number) {
    super(`all ${parallel} sequences are busy and the queue of ${queue} is full`);
  }
}

/** A submitted work's handle: cancel() frees its sequence at once (or drops it from the queue). */
export interface Ticket {
  cancel(): void;
}

class Item {
  sequence: Sequence | null = null;
  /** Prompt tokens fed so far. */
  fed = 0;
  /** The token to feed next, once the prompt is in. */
  readonly next = [0];
  /** Its work has been told it ended. */
  over = false;
  constructor(readonly work: Work) {}
}

/** Lets HTTP, timers and signals run between steps: forward() holds the thread while it runs. */
const yieldToEventLoop = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

export class Scheduler {
  private readonly waiting: Item[] = [];
  private readonly running: Item[] = [];
  private loop: Promise<void> | null = null;
  /** Inside a step: ends are applied after it, so the batch being processed stays whole. */
  private stepping = false;
  /** Ends asked for during a step. */
  private readonly deferred: [Item, EndHow, unknown][] = [];
  private sequencesHeld = 0;

  constructor(
    private readonly model: ModelBackend,
    private readonly opts: SchedulerOptions,
  ) {
    if (opts.parallel > model.maxSequences) {
      throw new Error(`the scheduler runs ${opts.parallel} sequences but the model was loaded with ${model.maxSequences}`);
    }
  }

  get parallel(): number {
    return this.opts.parallel;
  }

  /** Generations waiting for a sequence. */
  get queued(): number {
    return this.waiting.length;
  }

  /** Generations holding a sequence (prefilling or decoding). */
  get active(): number {
    return this.running.length;
  }

  /** Sequences taken from the model and not yet given back. */
  get sequencesInUse(): number {
    return this.sequencesHeld;
  }

  /** Tokens in the KV caches of the running generations. */
  get cachedTokens(): number {
    return this.running.reduce((n, it) => n + (it.sequence?.position ?? 0), 0);
  }

  /** Queues `work`; throws QueueFullError when every sequence is busy and the queue is full. */
  submit(work: Work): Ticket {
    if (this.running.length + this.waiting.length >= this.opts.parallel + this.opts.queue) throw new QueueFullError(this.opts.parallel, this.opts.queue);
    const item = new Item(work);
    this.waiting.push(item);
    this.loop ??= this.run();
    return { cancel: () => this.end(item, 'cancelled') };
  }

  /** Resolves when nothing runs or waits. */
  async idle(): Promise<void> {
    while (this.loop) await this.loop;
  }

  private async run(): Promise<void> {
    try {
      while (this.running.length + this.waiting.length > 0) {
        // Before the step, a whole turn of the event loop: requests that arrived meanwhile join it, and connections
        // closed meanwhile are cancelled (their 'close' comes in the turn's last phase, after one setImmediate).
        await yieldToEventLoop();
        await yieldToEventLoop();
        this.admit();
        if (this.running.length > 0) this.step();
      }
    } finally {
      this.loop = null;
    }
  }

  private admit(): void {
    while (this.running.length < this.opts.parallel && this.waiting.length > 0) {
      const item = this.waiting.shift()!;
      try {
        item.sequence = this.model.createSequence();
        this.sequencesHeld++;
        item.work.start?.(item.sequence);
      } catch (e) {
        this.end(item, 'failed', e);
        continue;
      }
      this.running.push(item);
    }
  }

  private step(): void {
    const batch: BatchEntry[] = [];
    const owners: Item[] = [];
    let budget = this.opts.prefillChunk;
    let decodeTokens = 0;
    let draftTokens = 0;
    // Copies: a work whose plan() or entry() throws leaves the running set at once.
    for (const item of [...this.running]) {
      if (item.fed < item.work.prompt.length || !item.work.plan) continue;
      try {
        item.work.plan(item.sequence!);
      } catch (e) {
        this.end(item, 'failed', e);
      }
    }
    this.opts.beforeEntries?.();
    for (const item of [...this.running]) {
      const { work } = item;
      const sequence = item.sequence!;
      let entry: BatchEntry;
      try {
        if (item.fed < work.prompt.length) {
          // Chunks start at multiples of prefillChunk whatever else runs, so a prompt is computed the same way alone
          // or beside others; a step takes whole chunks, the first one always.
          const n = Math.min(this.opts.prefillChunk, work.prompt.length - item.fed);
          if (n > budget && budget < this.opts.prefillChunk) continue;
          budget -= n;
          entry = { sequence, tokens: work.prompt.slice(item.fed, item.fed + n), logits: item.fed + n === work.prompt.length ? 'last' : 'none' };
          if (work.chunk) entry = work.chunk(entry);
        } else {
          entry = work.entry?.(sequence) ?? { sequence, tokens: item.next, logits: 'last' };
          decodeTokens++;
          draftTokens += entry.tokens.length - 1;
        }
      } catch (e) {
        this.end(item, 'failed', e);
        continue;
      }
      batch.push(entry);
      owners.push(item);
    }
    if (batch.length === 0) return;
    const start = performance.now();
    let rows: Float32Array[];
    this.stepping = true;
    try {
      rows = this.model.forward(batch);
    } catch (e) {
      this.stepping = false;
      for (const item of owners) this.end(item, 'failed', e);
      return;
    }
    const ms = performance.now() - start;
    owners.forEach((item, i) => {
      if (item.fed < item.work.prompt.length) {
        item.fed += batch[i].tokens.length;
        if (item.fed < item.work.prompt.length) return;
      }
      let token: number | undefined;
      try {
        token = item.work.step(rows[i], item.sequence!.position);
      } catch (e) {
        this.end(item, 'failed', e);
        return;
      }
      if (token === undefined) this.end(item, 'done');
      else item.next[0] = token;
    });
    this.stepping = false;
    for (const [item, how, error] of this.deferred.splice(0)) this.end(item, how, error);
    this.opts.onStep?.({ entries: batch.length, decodeTokens, draftTokens, prefillTokens: batch.reduce((n, e) => n + e.tokens.length, 0) - decodeTokens - draftTokens, ms });
  }

  /** Frees the item's sequence, takes it out of the queue or the running set, and tells its work: once. */
  private end(item: Item, how: EndHow, error?: unknown): void {
    if (item.over) return;
    if (this.stepping) {
      this.deferred.push([item, how, error]);
      return;
    }
    item.over = true;
    if (item.sequence) {
      this.model.free(item.sequence);
      this.sequencesHeld--;
      item.sequence = null;
    }
    for (const list of [this.running, this.waiting]) {
      const at = list.indexOf(item);
      if (at >= 0) list.splice(at, 1);
    }
    try {
      item.work.ended(how, error);
    } catch (e) {
      this.opts.onError?.(e);
    }
  }
}
