// The response bodies of OpenAI's chat completions and (legacy) completions, whole and as stream chunks, so
// that its clients read them unchanged.
import { tokenBytes } from '../tokenizer/bytelevel.js';
import type { Tokenizer } from '../tokenizer/index.js';
import type { FinishReason } from './generation.js';
import type { TokenLogprob } from './logprobs.js';

export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
}

export function usage(prompt: number, completion: number): Usage {
  return { prompt_tokens: prompt, completion_tokens: completion, total_tokens: prompt + completion };
}

/** How one route writes its choice: whole, or as the pieces of a stream. */
export interface ChoiceFormat {
  /** "chat.completion" or "text_completion". */
  readonly object: string;
  readonly chunkObject: string;
  readonly idPrefix: string;
  whole(text: string, finish: FinishReason, logprobs: readonly TokenLogprob[] | null): object;
  /** A stream chunk's choice: new text, or with `finish` the last one. `first` opens a chat stream with the role. */
  piece(text: string, logprobs: readonly TokenLogprob[] | null, finish: FinishReason | null, first: boolean): object;
}

/** A token's text as the log-probabilities show it, and its bytes (a token may hold part of a UTF-8 character). */
function tokenOf(tokenizer: Tokenizer, id: number): { token: string; bytes: number[] } {
  const t = tokenizer.idToToken(id);
  return { token: tokenizer.decode([id]), bytes: t === undefined ? [] : Array.from(tokenBytes(t)) };
}

export function chatFormat(tokenizer: Tokenizer): ChoiceFormat {
  const entry = (lp: TokenLogprob) => ({
    ...tokenOf(tokenizer, lp.id),
    logprob: lp.logprob,
    top_logprobs: lp.top.map((t) => ({ ...tokenOf(tokenizer, t.id), logprob: t.logprob })),
  });
  const logprobsOf = (lps: readonly TokenLogprob[] | null) => (lps === null ? null : { content: lps.map(entry), refusal: null });
  return {
    object: 'chat.completion',
    chunkObject: 'chat.completion.chunk',
    idPrefix: 'chatcmpl-',
    whole: (text, finish, lps) => ({ index: 0, message: { role: 'assistant', content: text, refusal: null }, logprobs: logprobsOf(lps), finish_reason: finish }),
    piece: (text, lps, finish, first) => ({
      index: 0,
      delta: finish !== null ? {} : first ? { role: 'assistant', content: text } : { content: text },
      logprobs: logprobsOf(lps),
      finish_reason: finish,
    }),
  };
}

export function completionFormat(tokenizer: Tokenizer): ChoiceFormat {
  let offset = 0;
  const logprobsOf = (lps: readonly TokenLogprob[] | null) => {
    if (lps === null) return null;
    const tokens = lps.map((lp) => tokenOf(tokenizer, lp.id).token);
    const text_offset = tokens.map((t) => {
      const at = offset;
      offset += t.length;
      return at;
    });
    return {
      tokens,
      token_logprobs: lps.map((lp) => lp.logprob),
      top_logprobs: lps.map((lp) => Object.fromEntries(lp.top.map((t) => [tokenOf(tokenizer, t.id).token, t.logprob]))),
      text_offset,
    };
  };
  return {
    object: 'text_completion',
    chunkObject: 'text_completion',
    idPrefix: 'cmpl-',
    whole: (text, finish, lps) => ({ index: 0, text, logprobs: logprobsOf(lps), finish_reason: finish }),
    piece: (text, lps, finish) => ({ index: 0, text, logprobs: logprobsOf(lps), finish_reason: finish }),
  };
}

/** The body of GET /v1/models and /v1/models/{id}. */
export function modelEntry(id: string, created: number): object {
  return { id, object: 'model', created, owned_by: 'deepwasm' };
}
