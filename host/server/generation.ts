// One request's generation as the scheduler runs it: sampling with the request's settings, the JSON mask,
// log-probabilities, and tokens turned into text that never splits a UTF-8 character and ends before a stop
// string, handed to whoever answers the request. With a draft, each decode step's entry is the last token and
// the drafts, verified by the CLI's own rule (Speculation.settle) with every row going through the same
// masks, penalties and log-probabilities as a plain step's one row.
import type { SamplingSettings } from '../generate/options.js';
import type { Speculation, TokenChooser } from '../generate/speculative.js';
import type { BatchEntry, Sequence } from '../model/backend.js';
import { Sampler } from '../generate/sampler.js';
import { StopMatcher } from '../generate/stop.js';
import type { StreamDecoder, Tokenizer } from '../tokenizer/index.js';
import type { ServerDraft } from './drafting.js';
import { JsonConstraint, type JsonGrammar } from './json-mask.js';
import { logprobOf, type TokenLogprob } from './logprobs.js';
import type { EndHow, Work } from './scheduler.js';

export type FinishReason = 'stop' | 'length';

/** What a request asks for, checked and tokenized. */
export interface GenerationParams {
  prompt: number[];
  /** Most tokens to generate; the context's end stops it earlier. */
  maxTokens: number;
  sampling: SamplingSettings;
  stop: string[];
  /** Alternatives reported per token, or null for no log-probabilities. */
  topLogprobs: number | null;
  /** response_format json_object or json_schema. */
  grammar: JsonGrammar | null;
  /** Generate past end-of-sequence tokens (benchmarks: a fixed number of tokens). */
  ignoreEos: boolean;
  /** Speculative decoding with the server's draft, or null. */
  draft: ServerDraft | null;
}

/** Where the generation's output goes: text as it becomes final, then one end or one failure. */
export interface GenerationSink {
  /** New text (possibly empty when only log-probabilities are new) and the log-probabilities of the tokens behind it. */
  text(delta: string, logprobs: readonly TokenLogprob[]): void;
  end(finish: FinishReason, completionTokens: number): void;
  fail(error: unknown): void;
}

export interface ModelFacts {
  tokenizer: Tokenizer;
  eos: ReadonlySet<number>;
  vocabSize: number;
  contextLength: number;
  /** Told after each verifying step how many draft tokens the model checked and how many it kept. */
  onDraft?: (proposed: number, accepted: number) => void;
}

export class Generation implements Work {
  readonly prompt: readonly number[];
  private readonly sampler: Sampler;
  private readonly decoder: StreamDecoder;
  private readonly matcher: StopMatcher;
  private readonly constraint: JsonConstraint | null;
  private readonly eosIds: number[];
  /** The masked logits before sampling changes them, for log-probabilities and a second draw. */
  private readonly kept: Float32Array | null;
  private logprobs: TokenLogprob[] = [];
  /** Text final but not yet handed on: a step's tokens go out together. */
  private pending = '';
  private count = 0;
  private finish: FinishReason = 'length';
  private over = false;
  private speculation: Speculation | null = null;
  /** Whether the row being picked from needs the grammar's check that the reply can still end in time. */
  private check = false;
  /** A row's pick as the speculative rule sees it: every row through the same masks as a plain step's. */
  private readonly chooser: TokenChooser = {
    sample: (row) => this.pick(row),
    probabilities: (row) => {
      this.prepare(row);
      return this.sampler.probabilities(row);
    },
    accept: (id) => this.take(id),
  };

  constructor(
    private readonly params: GenerationParams,
    private readonly facts: ModelFacts,
    private readonly sink: GenerationSink,
  ) {
    this.prompt = params.prompt;
    this.sampler = new Sampler(facts.vocabSize, params.sampling, params.prompt);
    this.decoder = facts.tokenizer.streamDecoder({ skipSpecialTokens: true });
    this.matcher = new StopMatcher(params.stop);
    this.eosIds = [...facts.eos];
    this.constraint = params.grammar ? new JsonConstraint(params.grammar, this.eosIds) : null;
    this.kept = params.grammar || params.topLogprobs !== null ? new Float32Array(facts.vocabSize) : null;
  }

  /** Tokens generated so far. */
  get completionTokens(): number {
    return this.count;
  }

  start(sequence: Sequence): void {
    this.speculation = this.params.draft?.start(sequence, this.params.sampling) ?? null;
  }

  chunk(entry: BatchEntry): BatchEntry {
    return this.speculation ? this.speculation.promptEntry(entry.sequence, entry.tokens, entry.logits) : entry;
  }

  plan(sequence: Sequence): void {
    if (this.speculation) this.params.draft!.plan(this.speculation, sequence, this.params.maxTokens - this.count);
  }

  entry(sequence: Sequence): BatchEntry | undefined {
    const spec = this.speculation;
    return spec?.draftEntry(sequence, this.params.maxTokens - this.count, this.params.draft!.proposal(spec));
  }

  step(logits: Float32Array): number | undefined {
    const spec = this.speculation;
    let next: number | undefined;
    if (spec && this.count > 0) {
      const { proposed, accepted } = spec.stats;
      const [proposed0, accepted0] = [sum(proposed), sum(accepted)];
      next = spec.settle(logits, this.chooser).at(-1);
      this.facts.onDraft?.(sum(proposed) - proposed0, sum(accepted) - accepted0);
    } else {
      next = this.pick(logits);
      spec?.first(next);
      this.take(next);
    }
    if (this.over) return undefined;
    if (this.pending !== '') this.emit();
    return next;
  }

  ended(how: EndHow, error?: unknown): void {
    if (this.speculation) this.params.draft!.release(this.speculation);
    this.speculation = null;
    if (how === 'done') this.sink.end(this.finish, this.count);
    else if (how === 'failed') this.sink.fail(error);
  }

  /** Tokens this one included that may still come: the last needs no room in the cache, only to be sampled. */
  private room(): number {
    return Math.min(this.params.maxTokens - this.count, this.facts.contextLength - (this.prompt.length + this.count) + 1);
  }

  /** Masks the row as the request asks (end-of-sequence tokens, the JSON grammar) and keeps a copy of it. */
  private prepare(row: Float32Array): void {
    const { params, constraint } = this;
    if (params.ignoreEos) for (const id of this.eosIds) row[id] = -Infinity;
    this.check = constraint ? constraint.mask(row, this.room()) : false;
    this.kept?.set(row);
  }

  /** The next token from the row: the sampler's pick, drawn again among tokens that end in time when it cannot. */
  private pick(row: Float32Array): number {
    this.prepare(row);
    let id = this.sampler.sample(row);
    if (this.check && !this.constraint!.fits(id, this.room() - 1)) {
      row.set(this.kept!);
      this.constraint!.maskForced(row);
      id = this.sampler.sample(row);
    }
    return id;
  }

  /** Takes the chosen token: penalties, log-probabilities, grammar and text; false once the generation is over. */
  private take(id: number): boolean {
    const { params, constraint } = this;
    this.sampler.accept(id);
    this.count++;
    if (this.facts.eos.has(id) && !params.ignoreEos) return this.end('stop');
    if (params.topLogprobs !== null) this.logprobs.push(logprobOf(this.kept!, id, params.topLogprobs));
    constraint?.accept(id);
    this.pending += this.matcher.push(this.decoder.push(id));
    if (this.matcher.stopped || constraint?.done) return this.end('stop');
    // The latest token is not in the cache yet: prompt + count - 1 are.
    if (this.count >= params.maxTokens || this.prompt.length + this.count - 1 >= this.facts.contextLength) return this.end('length');
    return true;
  }

  private end(reason: FinishReason): false {
    this.finish = reason;
    this.over = true;
    this.pending += this.matcher.stopped ? '' : this.matcher.end(this.decoder.flush());
    if (this.pending !== '' || this.logprobs.length > 0) this.emit();
    return false;
  }

  private emit(): void {
    const logprobs = this.logprobs;
    this.logprobs = [];
    const text = this.pending;
    this.pending = '';
    this.sink.text(text, logprobs);
  }
}

const sum = (xs: readonly number[]): number => xs.reduce((a, b) => a + b, 0);
