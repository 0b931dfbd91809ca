import { fail } from '../errors.js';
import type { ModelBackend, Sequence } from '../model/backend.js';
import { checkDraft, makeDraft } from './drafts.js';
import { resolveGenerateOptions, type DraftChoice, type GenerateSettings, type SamplingOptions } from './options.js';
import { Sampler } from './sampler.js';
import { Speculation, type DraftStats } from './speculative.js';

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
  /** With a draft: how often the model kept each draft position. */
  draft?: DraftStats;
}

export interface GenerateIdsOptions extends SamplingOptions {
  /** Most tokens to generate (default 256). */
  maxTokens?: number;
  signal?: AbortSignal;
  /** Ids that end generation; default: eos_token_id of config.json. */
  eosTokenIds?: readonly number[];
  /** Speculative decoding, as GenerateOptions.draft. */
  draft?: DraftChoice;
  draftTokens?: number;
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
  private speculation: Speculation | undefined;
  /** Tokens a speculative step yielded beyond the first, handed out one per next(). */
  private readonly queued: number[] = [];

  constructor(
    private readonly model: ModelBackend,
    private readonly promptIds: readonly number[],
    private readonly settings: Pick<GenerateSettings, 'sampling' | 'maxTokens' | 'signal'> & Partial<Pick<GenerateSettings, 'draft'>>,
    private readonly eos: ReadonlySet<number>,
    /** Called once, when generation ends. */
    private readonly onEnd?: (loop: TokenLoop) => void,
  ) {
    if (promptIds.length === 0) fail('the prompt is empty: there is nothing to continue');
    this.sampler = new Sampler(model.config.vocabSize, settings.sampling, promptIds);
    if (settings.draft) checkDraft(model, settings.draft.model);
  }

  /** The next generated token, or undefined once generation has ended (finishReason says why). */
  async next(): Promise<number | undefined> {
    if (this.finishReason !== undefined) return undefined;
    const { model } = this;
    this.sequence ??= model.createSequence();
    const sequence = this.sequence;
    const { draft, sampling } = this.settings;
    if (draft && !this.speculation) this.speculation = new Speculation(model, makeDraft(model, draft.model, sequence, sampling), draft.tokens, sampling);
    if (this.queued.length > 0) return this.emit(this.queued.shift()!);
    await yieldToEventLoop();
    // finish() may have run meanwhile (the model was closed).
    if (this.finishReason !== undefined) return undefined;
    if (this.settings.signal?.aborted) return this.finish('abort');
    const last = this.tokens.length === 0 ? undefined : this.tokens[this.tokens.length - 1];
    if (last !== undefined && (this.tokens.length >= this.settings.maxTokens || sequence.position >= model.contextLength)) {
      return this.finish('length');
    }
    const start = performance.now();
    const spec = this.speculation;
    let id: number;
    try {
      if (spec && last !== undefined) {
        const ids = spec.step(sequence, this.sampler, this.settings.maxTokens - this.tokens.length);
        id = ids[0];
        this.queued.push(...ids.slice(1));
      } else {
        const logits = spec ? spec.prefill(sequence, this.promptIds) : model.forward([{ sequence, tokens: last === undefined ? this.promptIds : [last] }])[0];
        id = this.sampler.sample(logits);
        this.sampler.accept(id);
        spec?.first(id);
      }
    } catch (e) {
      this.finish('abort');
      throw e;
    }
    const ms = performance.now() - start;
    if (last === undefined) this.prefillMs = ms;
    else this.decodeMs += ms;
    return this.emit(id);
  }

  /** Hands out a generated token, or ends generation at an end-of-sequence one. */
  private emit(id: number): number | undefined {
    this.tokens.push(id);
    return this.eos.has(id) ? this.finish('stop') : id;
  }

  /** Ends generation (a no-op once ended) and gives the sequence back. */
  finish(reason: FinishReason): undefined {
    if (this.finishReason === undefined) {
      this.finishReason = reason;
      if (this.sequence) this.model.free(this.sequence);
      this.speculation?.free();
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
      ...(this.speculation ? { draft: this.speculation.stats } : {}),
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
