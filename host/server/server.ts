// `deepwasm serve` as a library: an OpenAI-compatible HTTP server over one loaded model. node:http, since
// Node and Deno both have it and streaming needs nothing more than res.write; no framework is needed for
// six routes.
import { createServer, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { DeepWasmError, fail } from '../errors.js';
import type { TextModel } from '../generate/text-model.js';
import { ServerDraft, type ServerDraftChoice } from './drafting.js';
import { JsonGrammar, TokenTrie } from './json-mask.js';
import type { SchemaNode } from './json-schema.js';
import { Metrics } from './metrics.js';
import { dispatch, type ServerContext } from './routes.js';
import { Scheduler } from './scheduler.js';

export interface ServerOptions {
  /** Default 127.0.0.1: reachable from this machine only. */
  host?: string;
  /** Default 8080; 0 picks a free port. */
  port?: number;
  /** Required as `Authorization: Bearer KEY` on every route but /health; default none. */
  apiKey?: string;
  /** Generations at once (default: the model's maxSequences, which must be at least this). */
  parallel?: number;
  /** Requests that may wait for a sequence (default DEFAULT_QUEUE); more get 429. */
  queue?: number;
  /** Largest request body in bytes (default 1 MiB); larger ones get 413. */
  maxBodyBytes?: number;
  /** Prompt tokens per step (default DEFAULT_PREFILL_CHUNK): prompts are fed in chunks of this many between decode steps. */
  prefillChunk?: number;
  /** The model's name in responses and /v1/models (default "deepwasm"). */
  modelId?: string;
  /** Where internal errors are reported (default: stderr). */
  log?: (line: string) => void;
  /**
   * Speculative decoding for every request (but sampled ones under response_format): 'mtp' drafts with the
   * model's MTP layer (load it with mtp: true), or a draft model of the same tokenizer holding at least
   * `parallel` sequences. Greedy output is the same tokens as without it, sampled output the same distribution.
   */
  draft?: ServerDraftChoice;
  /** Draft tokens per step, 1 to 16 (default 1 with 'mtp', 3 with a draft model). */
  draftTokens?: number;
}

/** Requests that may wait for a sequence, and prompt tokens per step, unless told otherwise. */
export const DEFAULT_QUEUE = 16;
export const DEFAULT_PREFILL_CHUNK = 128;

/** Schemas whose masks are kept between requests. */
const GRAMMARS_KEPT = 32;
/** Weight of the latest generation in the average duration behind Retry-After. */
const DURATION_WEIGHT = 0.2;

export class DeepWasmServer implements ServerContext {
  readonly scheduler: Scheduler;
  readonly metrics: Metrics;
  readonly created = Math.floor(Date.now() / 1000);
  readonly modelId: string;
  readonly apiKey: string | undefined;
  readonly maxBodyBytes: number;
  readonly draft: ServerDraft | null;
  draining = false;
  private readonly grammars = new Map<string, JsonGrammar>();
  /** Every open connection and the responses under way on it. */
  private readonly responses = new Map<Socket, number>();
  /** Responses of generations under way. */
  private readonly inFlight = new Set<ServerResponse>();
  private readonly settled = new Set<() => void>();
  private meanSeconds = 1;
  private closing: Promise<void> | undefined;

  private constructor(
    readonly model: TextModel,
    private readonly http: Server,
    opts: ServerOptions,
  ) {
    const parallel = opts.parallel ?? model.model.maxSequences;
    if (!Number.isInteger(parallel) || parallel < 1 || parallel > model.model.maxSequences) {
      fail(`parallel must be a whole number from 1 to the model's maxSequences (${model.model.maxSequences}), got ${parallel}`);
    }
    const queue = opts.queue ?? DEFAULT_QUEUE;
    if (!Number.isInteger(queue) || queue < 0) fail(`queue must be a whole number >= 0, got ${queue}`);
    const log = opts.log ?? ((line: string) => process.stderr.write(line + '\n'));
    this.modelId = opts.modelId ?? 'deepwasm';
    this.apiKey = opts.apiKey;
    this.maxBodyBytes = opts.maxBodyBytes ?? 1024 * 1024;
    if (opts.draft === undefined && opts.draftTokens !== undefined) fail('draftTokens needs a draft (draft)');
    this.draft = opts.draft === undefined ? null : new ServerDraft(model, opts.draft, opts.draftTokens, parallel);
    this.scheduler = new Scheduler(model.model, {
      parallel,
      queue,
      prefillChunk: opts.prefillChunk ?? DEFAULT_PREFILL_CHUNK,
      beforeEntries: () => this.draft?.propose(),
      onStep: (s) => this.metrics.step(s),
      onError: (e) => log(`error: ${(e as Error)?.stack ?? String(e)}`),
    });
    this.metrics = new Metrics(this.scheduler, this.draft);
    http.on('connection', (socket: Socket) => {
      this.responses.set(socket, 0);
      socket.once('close', () => this.responses.delete(socket));
    });
    http.on('request', (req, res) => {
      if (this.draining) {
        // While draining, every connection ends with its response, so that listening can stop.
        res.setHeader('Connection', 'close');
      }
      const socket = req.socket;
      this.responses.set(socket, (this.responses.get(socket) ?? 0) + 1);
      res.once('close', () => {
        const left = (this.responses.get(socket) ?? 1) - 1;
        this.responses.set(socket, left);
        if (this.draining && left === 0) setImmediate(() => this.dropIdle());
      });
      void dispatch(this, req, res, log);
    });
  }

  /**
   * Ends the connections without a response under way: kept-alive ones and those a client opened ahead of a
   * request it may never send (fetch does), which Node's closeIdleConnections leaves to time out.
   */
  private dropIdle(): void {
    for (const [socket, n] of this.responses) if (n === 0) socket.destroy();
  }

  /** Starts listening; a port in use or not allowed is a DeepWasmError naming it. */
  static async start(model: TextModel, opts: ServerOptions = {}): Promise<DeepWasmServer> {
    const http = createServer({ keepAlive: true });
    const server = new DeepWasmServer(model, http, opts);
    const host = opts.host ?? '127.0.0.1';
    const port = opts.port ?? 8080;
    await new Promise<void>((ok, no) => {
      http.once('error', (e: NodeJS.ErrnoException) => no(listenError(e, host, port)));
      http.listen(port, host, () => ok());
    });
    return server;
  }

  /** The server's base URL, e.g. http://127.0.0.1:8080 (the OpenAI base URL is this + /v1). */
  get url(): string {
    const a = this.http.address() as AddressInfo;
    const host = a.family === 'IPv6' ? `[${a.address}]` : a.address;
    return `http://${host}:${a.port}`;
  }

  grammar(key: string, compile: () => SchemaNode): JsonGrammar {
    let g = this.grammars.get(key);
    if (g) {
      // Most recently used last, so the oldest is dropped first.
      this.grammars.delete(key);
    } else {
      g = new JsonGrammar(compile(), TokenTrie.of(this.model.tokenizer, this.model.config.vocabSize));
      if (this.grammars.size >= GRAMMARS_KEPT) this.grammars.delete(this.grammars.keys().next().value!);
    }
    this.grammars.set(key, g);
    return g;
  }

  retryAfter(): number {
    const waves = (this.scheduler.queued + 1) / this.scheduler.parallel;
    return Math.min(60, Math.max(1, Math.ceil(this.meanSeconds * waves)));
  }

  begin(res: ServerResponse): (completedMs?: number) => void {
    this.inFlight.add(res);
    return (completedMs?: number): void => {
      if (!this.inFlight.delete(res)) return;
      if (completedMs !== undefined) this.meanSeconds += DURATION_WEIGHT * (completedMs / 1000 - this.meanSeconds);
      if (this.inFlight.size === 0) for (const wake of this.settled) wake();
    };
  }

  /** Ends every generation under way now, dropping its connection (a second Ctrl-C): close() then finishes at once. */
  abort(): void {
    for (const res of this.inFlight) res.destroy();
  }

  /**
   * Drains: requests already taken run to their end while new ones get 503, then the server stops listening and
   * closes its connections. The model stays loaded (its owner closes it).
   */
  close(): Promise<void> {
    this.closing ??= (async () => {
      this.draining = true;
      await this.scheduler.idle();
      if (this.inFlight.size > 0) {
        await new Promise<void>((resolve) => {
          const wake = (): void => {
            this.settled.delete(wake);
            resolve();
          };
          this.settled.add(wake);
        });
      }
      await new Promise<void>((resolve) => {
        this.http.close(() => resolve());
        this.dropIdle();
      });
    })();
    return this.closing;
  }
}

/** Fails now, as start() would, when `host`:`port` cannot be listened on: before a long model load rather than after. */
export async function probeListen(host: string, port: number): Promise<void> {
  if (port === 0) return;
  const probe = createServer();
  await new Promise<void>((ok, no) => {
    probe.once('error', (e: NodeJS.ErrnoException) => no(listenError(e, host, port)));
    probe.listen(port, host, () => probe.close(() => ok()));
  });
}

function listenError(e: NodeJS.ErrnoException, host: string, port: number): Error {
  if (e.code === 'EADDRINUSE') return new DeepWasmError(`--port ${port} is in use on ${host}; pick another with --port N`);
  if (e.code === 'EACCES') return new DeepWasmError(`--port ${port} needs privileges this user lacks (ports below 1024 usually do); pick another with --port N`);
  if (e.code === 'EADDRNOTAVAIL' || e.code === 'ENOTFOUND') return new DeepWasmError(`--host ${host} is not an address of this machine`);
  return e;
}
