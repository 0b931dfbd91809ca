// One request's generation as the scheduler runs it: sampling with the request's settings, the JSON mask,
// log-probabilities, and tokens turned into text that never splits a UTF-8 character and ends before a stop
// string, handed to whoever answers the request.
import type { SamplingSettings } from '../generate/options.js';
import { Sampler } from '../generate/sampler.js';
import { StopMatcher } from '../generate/stop.js';
import type { StreamDecoder, Tokenizer } from '../tokenizer/index.js';
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
  private count = 0;
  private finish: FinishReason = 'length';

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

  step(logits: Float32Array, position: number): number | undefined {
    const { params, constraint, kept } = this;
    // Tokens this one included that may still come: the last needs no room in the cache, only to be sampled.
    const room = Math.min(params.maxTokens - this.count, this.facts.contextLength - position + 1);
    if (params.ignoreEos) for (const id of this.eosIds) logits[id] = -Infinity;
    const check = constraint ? constraint.mask(logits, room) : false;
    kept?.set(logits);
    let id = this.sampler.sample(logits);
    if (check && !constraint!.fits(id, room - 1)) {
      logits.set(kept!);
      constraint!.maskForced(logits);
      id = this.sampler.sample(logits);
    }
    this.sampler.accept(id);
    this.count++;
    if (this.facts.eos.has(id) && !params.ignoreEos) return this.end('stop');
    if (params.topLogprobs !== null) this.logprobs.push(logprobOf(kept!, id, params.topLogprobs));
    constraint?.accept(id);
    const text = this.matcher.push(this.decoder.push(id));
    if (text !== '') this.emit(text);
    if (this.matcher.stopped || constraint?.done) return this.end('stop');
    if (this.count >= params.maxTokens || position >= this.facts.contextLength) return this.end('length');
    return id;
  }

  ended(how: EndHow, error?: unknown): void {
    if (how === 'done') this.sink.end(this.finish, this.count);
    else if (how === 'failed') this.sink.fail(error);
  }

  private end(reason: FinishReason): undefined {
    this.finish = reason;
    const rest = this.matcher.stopped ? '' : this.matcher.end(this.decoder.flush());
    if (rest !== '' || this.logprobs.length > 0) this.emit(rest);
    return undefined;
  }

  private emit(text: string): void {
    const logprobs = this.logprobs;
    this.logprobs = [];
    this.sink.text(text, logprobs);
  }
}
