// The routes: which path and method go where, the API key, 404/405/503, and the two generation routes,
// which turn a checked request into a Generation for the scheduler and its output into OpenAI's bodies,
// whole or streamed.
import { randomBytes } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { resolveSampling } from '../generate/options.js';
import type { TextModel } from '../generate/text-model.js';
import { ApiError, invalid, queueFull } from './errors.js';
import type { ServerDraft } from './drafting.js';
import { Generation, type FinishReason, type GenerationSink } from './generation.js';
import { checkApiKey, readJson, sendError, sendJson } from './http.js';
import type { JsonGrammar } from './json-mask.js';
import type { TokenLogprob } from './logprobs.js';
import type { Metrics } from './metrics.js';
import { chatFormat, completionFormat, modelEntry, usage } from './openai.js';
import { QueueFullError, type Scheduler, type Ticket } from './scheduler.js';
import { SseStream } from './sse.js';
import { parseChatRequest, parseCompletionRequest, type CommonRequest } from './validate.js';

/** What the routes need from the server. */
export interface ServerContext {
  readonly model: TextModel;
  readonly modelId: string;
  /** Unix seconds the server started: the model's `created`. */
  readonly created: number;
  readonly scheduler: Scheduler;
  readonly metrics: Metrics;
  readonly apiKey: string | undefined;
  readonly maxBodyBytes: number;
  /** What every request drafts with, or null without speculative decoding. */
  readonly draft: ServerDraft | null;
  /** Shutting down: generation routes answer 503. */
  readonly draining: boolean;
  grammar(key: string, compile: () => JsonGrammar['schema']): JsonGrammar;
  /** Seconds a refused client should wait (Retry-After). */
  retryAfter(): number;
  /** Counts a generation's response as in flight until the function it returns is called, with its duration when it completed. */
  begin(res: ServerResponse): (completedMs?: number) => void;
}

interface Route {
  path: string | RegExp;
  method: 'GET' | 'POST';
  /** Checked against --api-key. */
  auth: boolean;
  /** Refused with 503 while draining. */
  refusedWhileDraining: boolean;
  handle(ctx: ServerContext, req: IncomingMessage, res: ServerResponse, match: string[]): Promise<void> | void;
}

const ROUTES: Route[] = [
  { path: '/health', method: 'GET', auth: false, refusedWhileDraining: false, handle: health },
  { path: '/metrics', method: 'GET', auth: true, refusedWhileDraining: false, handle: metrics },
  { path: '/v1/models', method: 'GET', auth: true, refusedWhileDraining: true, handle: models },
  { path: /^\/v1\/models\/([^/]+)$/, method: 'GET', auth: true, refusedWhileDraining: true, handle: oneModel },
  { path: '/v1/chat/completions', method: 'POST', auth: true, refusedWhileDraining: true, handle: (ctx, req, res) => generate(ctx, req, res, 'chat') },
  { path: '/v1/completions', method: 'POST', auth: true, refusedWhileDraining: true, handle: (ctx, req, res) => generate(ctx, req, res, 'completions') },
];

/** Answers one request; whatever goes wrong becomes an error response, never an exception out of here. */
export async function dispatch(ctx: ServerContext, req: IncomingMessage, res: ServerResponse, log: (line: string) => void): Promise<void> {
  const path = new URL(req.url ?? '/', 'http://localhost').pathname;
  let label = 'other';
  res.once('finish', () => ctx.metrics.request(label, res.statusCode));
  try {
    const routes = ROUTES.map((r) => ({ r, m: typeof r.path === 'string' ? (r.path === path ? [path] : null) : r.path.exec(path) })).filter((x) => x.m);
    if (routes.length === 0) throw new ApiError(404, `no route ${req.method} ${path}; this server has ${ROUTES.map((r) => `${r.method} ${typeof r.path === 'string' ? r.path : '/v1/models/{id}'}`).join(', ')}`, null, 'not_found');
    const found = routes.find((x) => x.r.method === req.method);
    if (!found) throw new ApiError(405, `${path} takes ${routes.map((x) => x.r.method).join(', ')}, not ${req.method}`, null, 'method_not_allowed', undefined, { Allow: routes.map((x) => x.r.method).join(', ') });
    const { r, m } = found;
    label = typeof r.path === 'string' ? r.path : '/v1/models/{id}';
    if (r.auth && ctx.apiKey !== undefined) checkApiKey(req, ctx.apiKey);
    if (r.refusedWhileDraining && ctx.draining) throw shuttingDown();
    await r.handle(ctx, req, res, [...m!]);
  } catch (e) {
    if (e instanceof ApiError) sendError(res, e);
    else {
      log(`error: ${req.method} ${path}: ${(e as Error)?.stack ?? String(e)}`);
      sendError(res, new ApiError(500, `internal error: ${(e as Error)?.message ?? String(e)}`));
    }
  }
}

const shuttingDown = (): ApiError => new ApiError(503, 'the server is shutting down; no new requests are taken', null, 'server_shutting_down');

function health(ctx: ServerContext, _req: IncomingMessage, res: ServerResponse): void {
  sendJson(res, ctx.draining ? 503 : 200, { status: ctx.draining ? 'draining' : 'ok' });
}

function metrics(ctx: ServerContext, _req: IncomingMessage, res: ServerResponse): void {
  const text = ctx.metrics.text();
  res.writeHead(200, { 'Content-Type': 'text/plain; version=0.0.4; charset=utf-8', 'Content-Length': Buffer.byteLength(text) });
  res.end(text);
}

function models(ctx: ServerContext, _req: IncomingMessage, res: ServerResponse): void {
  sendJson(res, 200, { object: 'list', data: [modelEntry(ctx.modelId, ctx.created)] });
}

function oneModel(ctx: ServerContext, _req: IncomingMessage, res: ServerResponse, match: string[]): void {
  const id = decodeURIComponent(match[1]);
  if (id !== ctx.modelId) throw new ApiError(404, `the model "${id}" does not exist; this server has "${ctx.modelId}"`, 'model', 'model_not_found');
  sendJson(res, 200, modelEntry(ctx.modelId, ctx.created));
}

/** Prompt ids of a chat (its template, with the assistant's prefix) or of a completion's prompt (with BOS). */
function promptIds(ctx: ServerContext, kind: 'chat' | 'completions', body: unknown): { request: CommonRequest; ids: number[]; param: string } {
  const { tokenizer, config } = ctx.model;
  if (kind === 'chat') {
    const request = parseChatRequest(body);
    let text: string;
    try {
      text = tokenizer.applyChatTemplate(request.messages, { addGenerationPrompt: true });
    } catch (e) {
      throw invalid('messages', `the chat template cannot format these messages: ${(e as Error).message}`);
    }
    return { request, ids: tokenizer.encode(text), param: 'messages' };
  }
  const request = parseCompletionRequest(body);
  const { prompt } = request;
  if (typeof prompt === 'string') return { request, ids: tokenizer.encode(prompt, { addSpecialTokens: true }), param: 'prompt' };
  const bad = prompt.findIndex((id) => id >= config.vocabSize);
  if (bad >= 0) throw invalid('prompt', `prompt[${bad}] is token id ${prompt[bad]}, outside the vocabulary (0 to ${config.vocabSize - 1})`);
  return { request, ids: prompt, param: 'prompt' };
}

async function generate(ctx: ServerContext, req: IncomingMessage, res: ServerResponse, kind: 'chat' | 'completions'): Promise<void> {
  const body = await readJson(req, res, ctx.maxBodyBytes);
  const { request: r, ids, param } = promptIds(ctx, kind, body);
  const { model, scheduler, metrics } = ctx;
  const context = model.model.contextLength;
  if (ids.length === 0) throw invalid(param, `${param} is empty: there is nothing to continue`);
  if (ids.length > context) {
    throw invalid(param, `the prompt is ${ids.length} tokens, more than this server's context of ${context} tokens (--context); shorten ${param}`, 'context_length_exceeded');
  }
  // The last token needs no room in the cache, so a full context still yields one.
  const room = context - ids.length + 1;
  const maxTokens = Math.min(r.maxTokens ?? (kind === 'chat' ? room : 16), room);
  const grammar = r.responseFormat ? ctx.grammar(r.responseFormat.key, () => r.responseFormat!.schema) : null;
  if (grammar && maxTokens < grammar.minTokens) {
    const capped = r.maxTokens === undefined || r.maxTokens > room;
    throw invalid(capped ? param : r.maxTokensParam, `the shortest reply response_format allows takes ${grammar.minTokens} tokens, but ${capped ? `the context leaves room for ${room}; shorten ${param}` : `${r.maxTokensParam} is ${maxTokens}`}`);
  }
  const format = kind === 'chat' ? chatFormat(model.tokenizer) : completionFormat(model.tokenizer);
  if (ctx.draining) throw shuttingDown();

  const id = format.idPrefix + randomBytes(12).toString('hex');
  const created = Math.floor(Date.now() / 1000);
  const head = { id, object: r.stream ? format.chunkObject : format.object, created, model: ctx.modelId };
  const withLogprobs = r.topLogprobs !== null;
  const started = performance.now();
  const settle = ctx.begin(res);

  let sse: SseStream | null = null;
  const noUsage = r.includeUsage ? { usage: null } : {};
  let text = '';
  const logprobs: TokenLogprob[] = [];
  let finished = false;
  const sink: GenerationSink = {
    text(delta, lps) {
      if (sse) sse.send({ ...head, choices: [format.piece(delta, withLogprobs ? lps : null, null, false)], ...noUsage });
      else {
        text += delta;
        logprobs.push(...lps);
      }
    },
    end(finish: FinishReason, completionTokens: number) {
      finished = true;
      metrics.completionTokens += completionTokens;
      const u = usage(ids.length, completionTokens);
      if (sse) {
        sse.send({ ...head, choices: [format.piece('', null, finish, false)], ...noUsage });
        if (r.includeUsage) sse.send({ ...head, choices: [], usage: u });
        sse.done();
      } else {
        sendJson(res, 200, { ...head, choices: [format.whole(text, finish, withLogprobs ? logprobs : null)], usage: u });
      }
      settle(performance.now() - started);
    },
    fail(error: unknown) {
      finished = true;
      metrics.completionTokens += generation.completionTokens;
      const e = new ApiError(500, `generation failed: ${(error as Error)?.message ?? String(error)}`);
      if (sse) {
        sse.send(e.body());
        sse.done();
      } else sendError(res, e);
      settle();
    },
  };
  const sampling = resolveSampling(r.sampling);
  const draft = ctx.draft?.applies(sampling, grammar !== null) ? ctx.draft : null;
  const generation = new Generation(
    { prompt: ids, maxTokens, sampling, stop: r.stop, topLogprobs: r.topLogprobs, grammar, ignoreEos: r.ignoreEos, draft },
    { tokenizer: model.tokenizer, eos: model.eos, vocabSize: model.config.vocabSize, contextLength: context, onDraft: (p, a) => metrics.drafted(p, a) },
    sink,
  );
  let ticket: Ticket;
  try {
    ticket = scheduler.submit(generation);
  } catch (e) {
    settle();
    if (e instanceof QueueFullError) throw queueFull(ctx.retryAfter());
    throw e;
  }
  metrics.promptTokens += ids.length;
  // A client that goes away mid-generation gives its sequence back at once.
  const gone = (): void => {
    if (finished) return;
    finished = true;
    ticket.cancel();
    metrics.completionTokens += generation.completionTokens;
    settle();
  };
  if (res.destroyed) return gone();
  res.once('close', gone);
  if (r.stream) {
    sse = new SseStream(res);
    if (kind === 'chat') sse.send({ ...head, choices: [format.piece('', withLogprobs ? [] : null, null, true)], ...noUsage });
  }
}
