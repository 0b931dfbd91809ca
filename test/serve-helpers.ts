// What the server tests share: the embedded model behind a DeepWasmServer on a free port, requests with
// fetch, server-sent events read as they arrive, and /metrics values by name.
import { loadModel, type TextModel } from '../host/index.js';
import { DeepWasmServer, type ServerOptions } from '../host/server/server.js';

export interface Served {
  server: DeepWasmServer;
  model: TextModel;
  /** The server's base URL (the OpenAI base URL is this + /v1). */
  base: string;
  /** Drains the server and frees the model. */
  close(): Promise<void>;
}

/** The embedded model with `sequences` KV caches of `contextLength` tokens (and its MTP layer with `mtp`), served on 127.0.0.1 at a free port. */
export async function serveTiny(opts: ServerOptions & { sequences?: number; contextLength?: number; mtp?: boolean } = {}): Promise<Served> {
  const { sequences = 4, contextLength, mtp, ...serverOpts } = opts;
  const model = await loadModel({ maxSequences: sequences, contextLength, mtp });
  const server = await DeepWasmServer.start(model, { port: 0, log: () => {}, ...serverOpts });
  return {
    server,
    model,
    base: server.url,
    close: async () => {
      await server.close();
      await model.close();
    },
  };
}

export function post(base: string, path: string, body: unknown, headers: Record<string, string> = {}, signal?: AbortSignal): Promise<Response> {
  return fetch(base + path, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
    signal,
  });
}

/** The `data:` payloads of a server-sent event stream as they arrive; "[DONE]" is yielded as the string. */
export async function* sseEvents(res: Response): AsyncGenerator<unknown> {
  const decoder = new TextDecoder();
  let buffer = '';
  for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
    buffer += decoder.decode(chunk, { stream: true });
    let end: number;
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      if (!event.startsWith('data: ')) throw new Error(`not a data event: ${JSON.stringify(event)}`);
      const data = event.slice('data: '.length);
      yield data === '[DONE]' ? data : JSON.parse(data);
    }
  }
  if (buffer !== '') throw new Error(`the stream ended inside an event: ${JSON.stringify(buffer)}`);
}

/** Every event of a stream, checked to end with exactly one [DONE]. */
export async function allEvents(res: Response): Promise<Record<string, any>[]> {
  const events: unknown[] = [];
  for await (const e of sseEvents(res)) events.push(e);
  if (events.at(-1) !== '[DONE]' || events.indexOf('[DONE]') !== events.length - 1) throw new Error(`the stream does not end with one [DONE]: ${JSON.stringify(events.slice(-2))}`);
  return events.slice(0, -1) as Record<string, any>[];
}

/** The text a stream's chunks add up to (chat deltas or completion texts). */
export function streamedText(events: Record<string, any>[]): string {
  return events.map((e) => e.choices?.[0]?.delta?.content ?? e.choices?.[0]?.text ?? '').join('');
}

/** A value of GET /metrics: the sample whose name (and labels, if given) match. */
export async function metric(base: string, name: string, labels = '', headers: Record<string, string> = {}): Promise<number> {
  const text = await (await fetch(base + '/metrics', { headers })).text();
  const line = text.split('\n').find((l) => l.startsWith(labels ? `${name}{${labels}} ` : `${name} `));
  if (line === undefined) throw new Error(`no sample ${name}{${labels}} in /metrics`);
  return Number(line.slice(line.lastIndexOf(' ') + 1));
}

/** Polls `check` every few ms until it holds, or fails after `ms`. */
export async function until(check: () => boolean | Promise<boolean>, what: string, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

export const HI = [{ role: 'user' as const, content: 'Hi' }];
