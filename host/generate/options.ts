import { fail } from '../errors.js';
import type { ModelBackend } from '../model/backend.js';

/** How the next token is chosen from the logits. Every option defaults to "off", so the default is greedy decoding. */
export interface SamplingOptions {
  /**
   * Divides the logits before sampling; 0 (the default) takes the most likely token every time (greedy), which is
   * what small models do best with. Top-k, top-p, min-p and the seed only matter when it is above 0.
   */
  temperature?: number;
  /** Sample only from the k most likely tokens (ties broken towards the lower id); 0 (default) turns it off. */
  topK?: number;
  /** Sample only from the most likely tokens whose probabilities add up to at least this, in (0, 1]; 1 (default) is off. */
  topP?: number;
  /** Drop tokens less likely than this fraction of the most likely token's probability, in [0, 1]; 0 (default) is off. */
  minP?: number;
  /**
   * Penalty > 0 for tokens already in the prompt or the output, as in Hugging Face (CTRL): positive logits are divided
   * by it and negative ones multiplied; 1 (default) is off.
   */
  repetitionPenalty?: number;
  /** Subtracted from a generated token's logit once per time it was generated (OpenAI); 0 (default) is off. */
  frequencyPenalty?: number;
  /** Subtracted once from the logit of every token generated at least once (OpenAI); 0 (default) is off. */
  presencePenalty?: number;
  /**
   * Seed of the sampling PRNG, a whole number from 0 to 2^32 - 1: the same seed, prompt and options give the same
   * tokens whatever the thread count. Default: a random seed, reported in the result.
   */
  seed?: number;
}

/** What to generate and when to stop, on top of the sampling options. */
export interface GenerateOptions extends SamplingOptions {
  /** Most tokens to generate (default 256); generation also ends when the context is full. */
  maxTokens?: number;
  /** Stop before any of these strings; the stop string itself is not part of the output. */
  stop?: string | readonly string[];
  /** Aborting ends generation after the current token, with finish reason 'abort'. */
  signal?: AbortSignal;
  /** Called with each piece of text as soon as it is final: the same pieces the async iterables yield. */
  onToken?: (text: string) => void;
  /**
   * Speculative decoding: 'mtp' drafts with the model's MTP layer (load the model with `mtp: true`), or a
   * draft model with the same tokenizer (a loaded model, or the model itself). Greedy output is the same
   * tokens as without it, sampled output follows the same distribution; each step costs one pass.
   */
  draft?: DraftChoice;
  /** Draft tokens per step, 1 to 16 (default 1 with 'mtp', as DeepSeek runs it; 3 with a draft model). */
  draftTokens?: number;
}

/** What drafts: the MTP layer, or a model (a backend, or anything holding one, such as a TextModel). */
export type DraftChoice = 'mtp' | ModelBackend | { readonly model: ModelBackend };
export const MAX_DRAFT_TOKENS = 16;
/**
 * Draft tokens per step when not given: one for the MTP layer (DeepSeek's setting); three for a draft model,
 * so that a verifying pass of K + 1 = 4 tokens fills the q8/q4 matmul's 4-token tile (on v3-2k6 at q4 it
 * costs 1.75 decode steps, against 2.3 for 2 tokens and 3.0 for 3: bench/RESULTS.md).
 */
export const defaultDraftTokens = (draft: 'mtp' | 'model'): number => (draft === 'mtp' ? 1 : 3);

export const DEFAULT_MAX_TOKENS = 256;
const MAX_SEED = 0xffffffff;

/** Sampling options with every default filled in and the seed chosen. */
export type SamplingSettings = Required<SamplingOptions>;

export interface GenerateSettings {
  sampling: SamplingSettings;
  maxTokens: number;
  stop: string[];
  signal: AbortSignal | undefined;
  onToken: ((text: string) => void) | undefined;
  /** The draft and its tokens per step, or null without speculation. */
  draft: { model: ModelBackend | 'mtp'; tokens: number } | null;
}

/** How an option is called in error messages: the library names it `topP`, the CLI `--top-p`. */
export type OptionNamer = (option: keyof GenerateOptions) => string;

const asIs: OptionNamer = (option) => option;

export function resolveSampling(o: SamplingOptions, name: OptionNamer = asIs): SamplingSettings {
  const num = (key: keyof SamplingOptions, dflt: number, ok: (v: number) => boolean, expected: string): number => {
    const v = o[key] ?? dflt;
    if (typeof v !== 'number' || !Number.isFinite(v) || !ok(v)) fail(`${name(key)} must be ${expected}, got ${String(v)}`);
    return v;
  };
  return {
    temperature: num('temperature', 0, (v) => v >= 0, 'a number >= 0 (0 = greedy)'),
    topK: num('topK', 0, (v) => Number.isInteger(v) && v >= 0, 'a whole number >= 0 (0 = off)'),
    topP: num('topP', 1, (v) => v > 0 && v <= 1, 'in (0, 1] (1 = off)'),
    minP: num('minP', 0, (v) => v >= 0 && v <= 1, 'in [0, 1] (0 = off)'),
    repetitionPenalty: num('repetitionPenalty', 1, (v) => v > 0, 'a number > 0 (1 = off)'),
    frequencyPenalty: num('frequencyPenalty', 0, () => true, 'a finite number (0 = off)'),
    presencePenalty: num('presencePenalty', 0, () => true, 'a finite number (0 = off)'),
    seed: num('seed', randomSeed(), (v) => Number.isInteger(v) && v >= 0 && v <= MAX_SEED, `a whole number from 0 to ${MAX_SEED}`),
  };
}

/** Checks every option and fills in the defaults; errors name the option as `name` spells it. */
export function resolveGenerateOptions(o: GenerateOptions, name: OptionNamer = asIs): GenerateSettings {
  const maxTokens = o.maxTokens ?? DEFAULT_MAX_TOKENS;
  if (typeof maxTokens !== 'number' || !Number.isInteger(maxTokens) || maxTokens < 1) {
    fail(`${name('maxTokens')} must be a whole number >= 1, got ${String(maxTokens)}`);
  }
  const stop = o.stop === undefined ? [] : typeof o.stop === 'string' ? [o.stop] : [...o.stop];
  for (const s of stop) {
    if (typeof s !== 'string' || s === '') fail(`${name('stop')} must be a non-empty string or a list of them, got ${JSON.stringify(s)}`);
  }
  if (o.signal !== undefined && !(o.signal instanceof AbortSignal)) fail(`${name('signal')} must be an AbortSignal`);
  if (o.onToken !== undefined && typeof o.onToken !== 'function') fail(`${name('onToken')} must be a function`);
  return { sampling: resolveSampling(o, name), maxTokens, stop, signal: o.signal, onToken: o.onToken, draft: resolveDraft(o, name) };
}

/** The draft and its tokens per step of `draft` and `draftTokens`, checked, or null without a draft. */
export function resolveDraft(o: Pick<GenerateOptions, 'draft' | 'draftTokens'>, name: OptionNamer = asIs): GenerateSettings['draft'] {
  if (o.draft === undefined) {
    if (o.draftTokens !== undefined) fail(`${name('draftTokens')} needs a draft (${name('draft')})`);
    return null;
  }
  const d: unknown = o.draft;
  const held = typeof d === 'object' && d !== null ? ('forward' in d ? d : (d as { model?: unknown }).model) : undefined;
  if (d !== 'mtp' && typeof (held as ModelBackend | undefined)?.forward !== 'function') {
    fail(`${name('draft')} must be 'mtp' or a loaded model, got ${typeof d === 'string' ? JSON.stringify(d) : String(d)}`);
  }
  const model = d === 'mtp' ? 'mtp' : (held as ModelBackend);
  const tokens = o.draftTokens ?? defaultDraftTokens(model === 'mtp' ? 'mtp' : 'model');
  if (!Number.isInteger(tokens) || tokens < 1 || tokens > MAX_DRAFT_TOKENS) {
    fail(`${name('draftTokens')} must be a whole number from 1 to ${MAX_DRAFT_TOKENS}, got ${String(tokens)}`);
  }
  return { model, tokens };
}

function randomSeed(): number {
  return crypto.getRandomValues(new Uint32Array(1))[0];
}
