import { timingSafeEqual } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { ApiError, invalid } from './errors.js';

/** A body over the limit is still read this far (and dropped) so the client sees the 413 rather than a reset. */
const DRAIN_FACTOR = 16;

/** Reads the body as JSON: 413 past `limit` bytes, 400 when it does not parse. */
export async function readJson(req: IncomingMessage, res: ServerResponse, limit: number): Promise<unknown> {
  const declared = Number(req.headers['content-length'] ?? NaN);
  if (declared > limit) throw tooLarge(req, res, limit);
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > limit) throw tooLarge(req, res, limit);
    chunks.push(chunk);
  }
  const text = Buffer.concat(chunks).toString('utf8');
  if (text.trim() === '') throw invalid(null, 'the request body is empty; send a JSON object');
  try {
    return JSON.parse(text);
  } catch (e) {
    throw invalid(null, `the request body is not valid JSON: ${(e as Error).message}`);
  }
}

/** The 413, after arranging for the rest of the body to be read and dropped (up to a bound) and the connection closed. */
function tooLarge(req: IncomingMessage, res: ServerResponse, limit: number): ApiError {
  res.setHeader('Connection', 'close');
  let dropped = 0;
  req.on('data', (chunk: Buffer) => {
    dropped += chunk.length;
    if (dropped > DRAIN_FACTOR * limit) req.destroy();
  });
  req.resume();
  return new ApiError(413, `the request body is larger than ${limit} bytes`, null, 'request_too_large');
}

export function sendJson(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  if (res.headersSent || res.destroyed) return;
  const text = JSON.stringify(body);
  res.writeHead(status, { 'Content-Type': 'application/json; charset=utf-8', 'Content-Length': Buffer.byteLength(text), ...headers });
  res.end(text);
}

export function sendError(res: ServerResponse, e: ApiError): void {
  sendJson(res, e.status, e.body(), e.headers);
}

/** 401 unless the request carries `Authorization: Bearer <key>`; compared in constant time. */
export function checkApiKey(req: IncomingMessage, key: string): void {
  const header = req.headers['authorization'];
  const given = typeof header === 'string' && /^Bearer\s+/i.test(header) ? header.replace(/^Bearer\s+/i, '').trim() : undefined;
  if (given === undefined) throw new ApiError(401, 'missing API key: send it as "Authorization: Bearer KEY"', null, 'invalid_api_key');
  const a = Buffer.from(given);
  const b = Buffer.from(key);
  if (a.length !== b.length || !timingSafeEqual(a, b)) throw new ApiError(401, 'incorrect API key provided', null, 'invalid_api_key');
}
