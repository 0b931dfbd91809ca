// Request bodies of /v1/chat/completions and /v1/completions, checked field by field the way OpenAI's API
// documents them: each mistake is a 400 whose param names the field. Fields this server does not know are
// ignored, as OpenAI's clients expect; fields it knows but cannot honour (n > 1, echo) are refused.
import type { SamplingOptions } from '../generate/options.js';
import type { ChatMessage } from '../tokenizer/index.js';
import { invalid } from './errors.js';
import { ANY_OBJECT, compileSchema, type SchemaNode } from './json-schema.js';

/** What both routes share, checked. */
export interface CommonRequest {
  stream: boolean;
  includeUsage: boolean;
  /** Absent: as many as the context holds (chat), 16 (completions, as OpenAI's). */
  maxTokens: number | undefined;
  /** The field maxTokens came from, for errors about it. */
  maxTokensParam: 'max_completion_tokens' | 'max_tokens';
  sampling: SamplingOptions;
  stop: string[];
  topLogprobs: number | null;
  /** The schema response_format asks for, or null for free text; `key` is the same for the same schema. */
  responseFormat: { key: string; schema: SchemaNode } | null;
  ignoreEos: boolean;
}

export interface ChatRequest extends CommonRequest {
  messages: ChatMessage[];
}

export interface CompletionRequest extends CommonRequest {
  /** Text to encode (with BOS), or token ids as they are. */
  prompt: string | number[];
}

const MAX_STOP = 4;
const MAX_TOP_LOGPROBS = 20;
const MAX_COMPLETION_LOGPROBS = 5;
const ROLES = ['system', 'developer', 'user', 'assistant', 'tool'];

const describe = (v: unknown): string =>
  v === null ? 'null' : Array.isArray(v) ? 'an array' : typeof v === 'object' ? 'an object' : typeof v === 'string' ? JSON.stringify(v.length > 40 ? v.slice(0, 40) + '…' : v) : String(v);

/** The body's fields; null counts as absent, as in OpenAI's API. */
class Fields {
  constructor(readonly body: Record<string, unknown>) {}

  get(name: string): unknown {
    const v = this.body[name];
    return v === null ? undefined : v;
  }

  number(name: string, range: { min: number; max?: number; integer?: boolean; above?: boolean }): number | undefined {
    const v = this.get(name);
    if (v === undefined) return undefined;
    const { min, max, integer, above } = range;
    const ok = typeof v === 'number' && Number.isFinite(v) && (above ? v > min : v >= min) && (max === undefined || v <= max) && (!integer || Number.isInteger(v));
    if (!ok) {
      const kind = integer ? 'a whole number' : 'a number';
      const span = max === undefined ? `${above ? '>' : '>='} ${min}` : above ? `above ${min} and at most ${max}` : `from ${min} to ${max}`;
      throw invalid(name, `${name} must be ${kind} ${span}, got ${describe(v)}`);
    }
    return v as number;
  }

  boolean(name: string): boolean | undefined {
    const v = this.get(name);
    if (v !== undefined && typeof v !== 'boolean') throw invalid(name, `${name} must be true or false, got ${describe(v)}`);
    return v as boolean | undefined;
  }

  object(name: string): Fields | undefined {
    const v = this.get(name);
    if (v === undefined) return undefined;
    if (typeof v !== 'object' || Array.isArray(v)) throw invalid(name, `${name} must be an object, got ${describe(v)}`);
    return new Fields(v as Record<string, unknown>);
  }
}

/** The body as an object of fields: anything else is a 400. */
function fieldsOf(body: unknown): Fields {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) throw invalid(null, `the request body must be a JSON object, got ${describe(body)}`);
  return new Fields(body as Record<string, unknown>);
}

export function parseChatRequest(body: unknown): ChatRequest {
  const f = fieldsOf(body);
  const common = parseCommon(f, 'chat');
  return { ...common, messages: parseMessages(f.body['messages']) };
}

export function parseCompletionRequest(body: unknown): CompletionRequest {
  const f = fieldsOf(body);
  const common = parseCommon(f, 'completions');
  if (f.get('echo') === true) throw invalid('echo', 'echo is not supported: the response holds only the completion');
  f.boolean('echo');
  const suffix = f.get('suffix');
  if (suffix !== undefined && suffix !== '') throw invalid('suffix', 'suffix is not supported: this server only continues a prompt');
  const bestOf = f.number('best_of', { min: 1, integer: true });
  if (bestOf !== undefined && bestOf !== 1) throw invalid('best_of', `best_of must be 1 (one completion per request), got ${bestOf}`);
  return { ...common, prompt: parsePrompt(f.body['prompt']) };
}

function parseCommon(f: Fields, route: 'chat' | 'completions'): CommonRequest {
  const model = f.get('model');
  if (model !== undefined && typeof model !== 'string') throw invalid('model', `model must be a string, got ${describe(model)}`);
  const n = f.number('n', { min: 1, integer: true });
  if (n !== undefined && n !== 1) throw invalid('n', `n must be 1: this server generates one choice per request, got ${n}`);
  const stream = f.boolean('stream') ?? false;
  const options = f.object('stream_options');
  if (options && !stream) throw invalid('stream_options', 'stream_options is only allowed when stream is true');
  const includeUsage = (() => {
    const v = options?.get('include_usage');
    if (v !== undefined && typeof v !== 'boolean') throw invalid('stream_options.include_usage', `stream_options.include_usage must be true or false, got ${describe(v)}`);
    return v === true;
  })();

  const newer = f.number('max_completion_tokens', { min: 1, integer: true });
  const maxTokens = newer ?? f.number('max_tokens', { min: 1, integer: true });
  const seed = f.number('seed', { min: Number.MIN_SAFE_INTEGER, max: Number.MAX_SAFE_INTEGER, integer: true });
  const sampling: SamplingOptions = {
    temperature: f.number('temperature', { min: 0, max: 2 }) ?? 1,
    topP: f.number('top_p', { min: 0, max: 1, above: true }),
    topK: f.number('top_k', { min: 0, integer: true }),
    minP: f.number('min_p', { min: 0, max: 1 }),
    presencePenalty: f.number('presence_penalty', { min: -2, max: 2 }),
    frequencyPenalty: f.number('frequency_penalty', { min: -2, max: 2 }),
    repetitionPenalty: f.number('repetition_penalty', { min: 0, above: true }),
    // OpenAI takes any integer; the sampler's PRNG has 32 bits of state.
    seed: seed === undefined ? undefined : ((seed % 2 ** 32) + 2 ** 32) % 2 ** 32,
  };

  let topLogprobs: number | null;
  if (route === 'chat') {
    const logprobs = f.boolean('logprobs') ?? false;
    const top = f.number('top_logprobs', { min: 0, max: MAX_TOP_LOGPROBS, integer: true });
    if (top !== undefined && !logprobs) throw invalid('top_logprobs', 'top_logprobs needs logprobs: true');
    topLogprobs = logprobs ? (top ?? 0) : null;
  } else {
    topLogprobs = f.number('logprobs', { min: 0, max: MAX_COMPLETION_LOGPROBS, integer: true }) ?? null;
  }

  const stop = parseStop(f.get('stop'));
  const responseFormat = parseResponseFormat(f);
  if (responseFormat && stop.length > 0) throw invalid('stop', 'stop cannot be combined with response_format json_object or json_schema: a stop string could cut the JSON short; the reply ends when the JSON does');
  return {
    stream,
    includeUsage,
    maxTokens,
    maxTokensParam: newer !== undefined ? 'max_completion_tokens' : 'max_tokens',
    sampling,
    stop,
    topLogprobs,
    responseFormat,
    ignoreEos: f.boolean('ignore_eos') ?? false,
  };
}

function parseStop(v: unknown): string[] {
  if (v === undefined) return [];
  const list = typeof v === 'string' ? [v] : v;
  if (!Array.isArray(list) || list.length > MAX_STOP || list.some((s) => typeof s !== 'string' || s === '')) {
    throw invalid('stop', `stop must be a non-empty string or a list of at most ${MAX_STOP} of them, got ${describe(v)}`);
  }
  return list as string[];
}

function parseResponseFormat(f: Fields): CommonRequest['responseFormat'] {
  const rf = f.object('response_format');
  if (!rf) return null;
  const type = rf.get('type');
  if (type === 'text') return null;
  if (type === 'json_object') return { key: 'json_object', schema: ANY_OBJECT };
  if (type === 'json_schema') {
    const js = rf.object('json_schema');
    if (!js) throw invalid('response_format.json_schema', 'response_format.json_schema is required when type is "json_schema": {"name": ..., "schema": {...}}');
    const schema = js.get('schema');
    if (schema === undefined) throw invalid('response_format.json_schema.schema', 'response_format.json_schema.schema is required: the JSON schema of the reply');
    return { key: JSON.stringify(schema), schema: compileSchema(schema, 'response_format.json_schema.schema') };
  }
  throw invalid('response_format.type', `response_format.type must be "text", "json_object" or "json_schema", got ${describe(type)}`);
}

function parseMessages(v: unknown): ChatMessage[] {
  if (v === undefined || v === null) throw invalid('messages', 'messages is required: a list of {"role", "content"} objects');
  if (!Array.isArray(v) || v.length === 0) throw invalid('messages', `messages must be a non-empty list of {"role", "content"} objects, got ${describe(v)}`);
  return v.map((m: unknown, i): ChatMessage => {
    const at = `messages[${i}]`;
    if (typeof m !== 'object' || m === null || Array.isArray(m)) throw invalid(at, `${at} must be an object like {"role": "user", "content": "Hi"}, got ${describe(m)}`);
    const { role, content, tool_calls } = m as Record<string, unknown>;
    if (typeof role !== 'string' || !ROLES.includes(role)) throw invalid(`${at}.role`, `${at}.role must be one of ${ROLES.join(', ')}, got ${describe(role)}`);
    const message: ChatMessage = { role: role === 'developer' ? 'system' : role, content: contentText(content, `${at}.content`, role === 'assistant') };
    if (tool_calls !== undefined && tool_calls !== null) {
      if (!Array.isArray(tool_calls)) throw invalid(`${at}.tool_calls`, `${at}.tool_calls must be a list, got ${describe(tool_calls)}`);
      message.tool_calls = tool_calls as ChatMessage['tool_calls'];
    }
    return message;
  });
}

/** A message's content: a string, or a list of text parts joined (the model reads only text). */
function contentText(v: unknown, at: string, mayBeNull: boolean): string | null {
  if (typeof v === 'string') return v;
  if ((v === null || v === undefined) && mayBeNull) return null;
  if (!Array.isArray(v)) throw invalid(at, `${at} must be a string or a list of {"type": "text", "text": ...} parts, got ${describe(v)}`);
  return v
    .map((part: unknown, j) => {
      const p = part as Record<string, unknown> | null;
      if (typeof p !== 'object' || p === null || p['type'] !== 'text' || typeof p['text'] !== 'string') {
        throw invalid(`${at}[${j}]`, `${at}[${j}] must be {"type": "text", "text": "..."}: this model reads text only, got ${describe(p?.['type'] ?? p)}`);
      }
      return p['text'];
    })
    .join('');
}

function parsePrompt(v: unknown): string | number[] {
  if (v === undefined || v === null) throw invalid('prompt', 'prompt is required: a string (or a list of token ids)');
  // One prompt per request: a list of one string or one list of ids is that prompt.
  const one = Array.isArray(v) && v.length === 1 && (typeof v[0] === 'string' || Array.isArray(v[0])) ? v[0] : v;
  if (typeof one === 'string') return one;
  if (Array.isArray(one) && one.length > 0 && one.every((id) => Number.isInteger(id) && id >= 0)) return one as number[];
  if (Array.isArray(one) && one.length > 1 && one.every((x) => typeof x === 'string')) throw invalid('prompt', `prompt must be one prompt: this server generates one choice per request, got a list of ${one.length} strings`);
  throw invalid('prompt', `prompt must be a string or a non-empty list of token ids, got ${describe(v)}`);
}
