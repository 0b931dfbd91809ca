import { fail } from '../errors.js';
import type { ModelBackend, Sequence } from '../model/backend.js';
import { resolveGenerateOptions, type GenerateSettings, type SamplingOptions } from './options.js';
import { Sampler } from './sampler.js';

/** Why generation ended: an end-of-sequence token or stop string, the token limit or full context, or an abort. */
export type FinishReason = 'stop' | 'length' | 'abort';

/** What a generation produced, token by token, and how long the model took. */
export interface TokenResult {
  /** Generated token ids, the end-of-sequence token included when one ended generation. */
  tokens: number[];
  /** Length of the prompt in tokens. */
  promptTokens: number;
  finishReason: FinishReason;
  /** Milliseconds for the prompt's forward pass and the first token. */
  prefillMs: number;
  /** Milliseconds for the other tokens: one forward pass and one sampling step each (tokens.length - 1 passes). */
  decodeMs: number;
  /** The sampling seed used: pass it back as `seed` to get the same tokens again. */
  seed: number;
}

export interface GenerateIdsOptions extends SamplingOptions {
  /** Most tokens to generate (default 256). */
  maxTokens?: number;
  signal?: AbortSignal;
  /** Ids that end generation; default: eos_token_id of config.json. */
  eosTokenIds?: readonly number[];
}

/** Lets timers, signals and stdin run between tokens: forward() holds the thread while it runs. */
const yieldToEventLoop = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

/**
 * The decode loop, pulled one token at a time so that whoever turns tokens into text can end it between tokens. It
 * takes a sequence of the model when the first token is asked for (and fails if every one is in use) and gives it
 * back when it ends; end-of-sequence tokens end the loop instead of coming out.
 */
export class TokenLoop {
  readonly tokens: number[] = [];
  finishReason: FinishReason | undefined;
  prefillMs = 0;
  decodeMs = 0;
  private readonly sampler: Sampler;
  private sequence: Sequence | undefined;

  constructor(
    private readonly model: ModelBackend,
    private readonly promptIds: readonly number[],
    private readonly settings: Pick<GenerateSettings, 'sampling' | 'maxTokens' | 'signal'>,
    private readonly eos: ReadonlySet<number>,
    /** Called once, when generation ends. */
    private readonly onEnd?: (loop: TokenLoop) => void,
  ) {
    if (promptIds.length === 0) fail('the prompt is empty: there is nothing to continue');
    this.sampler = new Sampler(model.config.vocabSize, settings.sampling, promptIds);
  }

  /** The next generated token, or undefined once generation has ended (finishReason says why). */
  async next(): Promise<number | undefined> {
    if (this.finishReason !== undefined) return undefined;
    const { model } = this;
    this.sequence ??= model.createSequence();
    const sequence = this.sequence;
    await yieldToEventLoop();
    // finish() may have run meanwhile (the model was closed).
    if (this.finishReason !== undefined) return undefined;
    if (this.settings.signal?.aborted) return this.finish('abort');
    const last = this.tokens.length === 0 ? undefined : this.tokens[this.tokens.length - 1];
    if (last !== undefined && (this.tokens.length >= this.settings.maxTokens || sequence.position >= model.contextLength)) {
      return this.finish('length');
    }
    const start = performance.now();
    let logits: Float32Array;
    try {
      logits = model.forward([{ sequence, tokens: last === undefined ? this.promptIds : [last] }])[0];
    } catch (e) {
      this.finish('abort');
      throw e;
    }
    const id = this.sampler.sample(logits);
    this.sampler.accept(id);
    this.tokens.push(id);
    const ms = performance.now() - start;
    if (last === undefined) this.prefillMs = ms;
    else this.decodeMs += ms;
    return this.eos.has(id) ? this.finish('stop') : id;
  }

  /** Ends generation (a no-op once ended) and gives the sequence back. */
  finish(reason: FinishReason): undefined {
    if (this.finishReason === undefined) {
      this.finishReason = reason;
      if (this.sequence) this.model.free(this.sequence);
      this.onEnd?.(this);
    }
    return undefined;
  }

  result(): TokenResult {
    return {
      tokens: this.tokens,
      promptTokens: this.promptIds.length,
      finishReason: this.finishReason ?? 'abort',
      prefillMs: this.prefillMs,
      decodeMs: this.decodeMs,
      seed: this.settings.sampling.seed,
    };
  }
}

/**
 * Generates token ids after `promptIds` (which should start with BOS if the model expects one), for callers that do
 * their own tokenization. Stops at `eosTokenIds`, after `maxTokens` or when the context is full.
 */
export async function generateIds(model: ModelBackend, promptIds: readonly number[], opts: GenerateIdsOptions = {}): Promise<TokenResult> {
  const settings = resolveGenerateOptions(opts);
  const loop = new TokenLoop(model, promptIds, settings, new Set(opts.eosTokenIds ?? model.config.eosTokenIds));
  while ((await loop.next()) !== undefined);
  return loop.result();
}
