// deepwasm serve under bad input and faults: the API key, malformed and mistyped bodies, a prompt past the
// context, a body over the limit, a full queue, unknown routes, clients that go away mid-stream, and close()
// draining; after all of it the server still answers.
import { request, type ClientRequest } from 'node:http';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { generateIds } from '../host/index.js';
import { HI, allEvents, metric, post, serveTiny, sseEvents, streamedText, until, type Served } from './serve-helpers.js';

const KEY = 'sk-test-key';
const AUTH = { Authorization: `Bearer ${KEY}` };
const CONTEXT = 64;
const LIMIT = 4096;

let s: Served;

test.before(async () => {
  s = await serveTiny({ apiKey: KEY, sequences: 2, parallel: 2, queue: 1, contextLength: CONTEXT, maxBodyBytes: LIMIT });
});

test.after(async () => {
  await s.close();
});

/** The error body of a response, checked to be OpenAI-shaped with that status. */
async function errorOf(res: Response, status: number): Promise<{ message: string; type: string; param: string | null; code: string | null }> {
  const text = await res.text();
  assert.is(res.status, status, text);
  const { error } = JSON.parse(text);
  assert.equal(Object.keys(error).sort(), ['code', 'message', 'param', 'type']);
  assert.type(error.message, 'string');
  return error;
}

test('401 without the key or with a wrong one, on every route but /health', async () => {
  for (const path of ['/v1/models', '/metrics']) {
    const missing = await errorOf(await fetch(s.base + path), 401);
    assert.is(missing.code, 'invalid_api_key');
    assert.match(missing.message, /Authorization: Bearer/);
    await errorOf(await fetch(s.base + path, { headers: { Authorization: 'Bearer sk-wrong' } }), 401);
    assert.is((await fetch(s.base + path, { headers: AUTH })).status, 200);
  }
  await errorOf(await post(s.base, '/v1/chat/completions', { messages: HI }, { Authorization: `Bearer ${KEY}x` }), 401);
  assert.is((await fetch(`${s.base}/health`)).status, 200);
});

test('400 for malformed JSON, a body that is not an object, and each field of the wrong type or range, naming the field', async () => {
  const bad = await errorOf(await post(s.base, '/v1/chat/completions', '{"messages": [', AUTH), 400);
  assert.match(bad.message, /not valid JSON/);
  assert.match((await errorOf(await post(s.base, '/v1/chat/completions', '[1]', AUTH), 400)).message, /must be a JSON object/);
  const cases: [string, Record<string, unknown>, string][] = [
    ['/v1/chat/completions', { messages: 'Hi' }, 'messages'],
    ['/v1/chat/completions', {}, 'messages'],
    ['/v1/chat/completions', { messages: [{ role: 'robot', content: 'x' }] }, 'messages[0].role'],
    ['/v1/chat/completions', { messages: [{ role: 'user', content: 5 }] }, 'messages[0].content'],
    ['/v1/chat/completions', { messages: HI, temperature: 'hot' }, 'temperature'],
    ['/v1/chat/completions', { messages: HI, temperature: 3 }, 'temperature'],
    ['/v1/chat/completions', { messages: HI, max_tokens: 0 }, 'max_tokens'],
    ['/v1/chat/completions', { messages: HI, max_completion_tokens: 1.5 }, 'max_completion_tokens'],
    ['/v1/chat/completions', { messages: HI, top_p: 0 }, 'top_p'],
    ['/v1/chat/completions', { messages: HI, stream: 'yes' }, 'stream'],
    ['/v1/chat/completions', { messages: HI, stop: [1] }, 'stop'],
    ['/v1/chat/completions', { messages: HI, seed: 'x' }, 'seed'],
    ['/v1/chat/completions', { messages: HI, top_logprobs: 2 }, 'top_logprobs'],
    ['/v1/chat/completions', { messages: HI, response_format: { type: 'xml' } }, 'response_format.type'],
    ['/v1/chat/completions', { messages: HI, response_format: { type: 'json_schema', json_schema: { name: 'x', schema: { type: 'string', pattern: 'a+' } } } }, 'response_format.json_schema.schema.pattern'],
    ['/v1/chat/completions', { messages: HI, response_format: { type: 'json_object' }, stop: '}' }, 'stop'],
    ['/v1/chat/completions', { messages: HI, response_format: { type: 'json_schema', json_schema: { name: 'x', schema: { type: 'object', properties: { answer: { type: 'string' } }, required: ['answer'] } } }, max_completion_tokens: 2 }, 'max_completion_tokens'],
    ['/v1/completions', { prompt: 7 }, 'prompt'],
    ['/v1/completions', { prompt: [1, 2, 999999] }, 'prompt'],
    ['/v1/completions', { prompt: 'x', presence_penalty: 9 }, 'presence_penalty'],
  ];
  for (const [path, body, param] of cases) {
    const e = await errorOf(await post(s.base, path, body, AUTH), 400);
    assert.is(e.param, param, `${JSON.stringify(body)}: ${e.message}`);
    assert.ok(e.message.includes(param.split('.').pop()!.replace(/\[\d+\]$/, '')), `the message names ${param}: ${e.message}`);
    assert.is(e.type, 'invalid_request_error');
  }
});

test('a prompt past the context: 400 naming the field, code context_length_exceeded', async () => {
  const long = 'and it came to pass '.repeat(CONTEXT);
  for (const [path, body, param] of [
    ['/v1/completions', { prompt: long }, 'prompt'],
    ['/v1/chat/completions', { messages: [{ role: 'user', content: long }] }, 'messages'],
  ] as const) {
    const e = await errorOf(await post(s.base, path, body, AUTH), 400);
    assert.is(e.param, param);
    assert.is(e.code, 'context_length_exceeded');
    assert.match(e.message, new RegExp(`context of ${CONTEXT} tokens`));
  }
  // A prompt that fills the context exactly still gets its one token.
  const ids = Array.from({ length: CONTEXT }, (_, i) => 10 + i);
  const full = await (await post(s.base, '/v1/completions', { prompt: ids, max_tokens: 5 }, AUTH)).json();
  assert.equal([full.usage.completion_tokens, full.choices[0].finish_reason], [1, 'length']);
});

test('413 for a body over the limit, declared or streamed, and the server goes on', async () => {
  const big = JSON.stringify({ messages: [{ role: 'user', content: 'x'.repeat(LIMIT) }] });
  const e = await errorOf(await post(s.base, '/v1/chat/completions', big, AUTH), 413);
  assert.match(e.message, new RegExp(`larger than ${LIMIT} bytes`));
  // Without a Content-Length (chunked), the limit is counted as the body arrives.
  const chunked = new ReadableStream({
    start(c) {
      for (let i = 0; i < 8; i++) c.enqueue(new TextEncoder().encode(big.slice(i * 1024, (i + 1) * 1024)));
      c.close();
    },
  });
  const res = await fetch(`${s.base}/v1/chat/completions`, { method: 'POST', headers: { ...AUTH, 'Content-Type': 'application/json' }, body: chunked, duplex: 'half' } as RequestInit);
  await errorOf(res, 413);
  assert.is((await fetch(`${s.base}/health`)).status, 200);
});

test('404 for an unknown route, 405 for a wrong method', async () => {
  const e = await errorOf(await fetch(`${s.base}/v1/embeddings`, { headers: AUTH }), 404);
  assert.match(e.message, /POST \/v1\/chat\/completions/);
  await errorOf(await fetch(`${s.base}/`), 404);
  const wrong = await fetch(`${s.base}/v1/chat/completions`, { headers: AUTH });
  assert.is(wrong.headers.get('allow'), 'POST');
  await errorOf(wrong, 405);
});

/** A stream that runs until aborted (ignore_eos, the whole context), its reader started. */
async function longStream(controller: AbortController): Promise<AsyncGenerator<unknown>> {
  const res = await post(s.base, '/v1/completions', { prompt: 'The', max_tokens: CONTEXT, ignore_eos: true, stream: true, temperature: 0 }, AUTH, controller.signal);
  assert.is(res.status, 200);
  const events = sseEvents(res);
  await events.next();
  return events;
}

test('429 with Retry-After when both sequences run and the queue of one is full; the queued one runs later', async () => {
  const controllers = [new AbortController(), new AbortController()];
  const streams = await Promise.all(controllers.map(longStream));
  const queued = post(s.base, '/v1/completions', { prompt: 'Once', max_tokens: 3, temperature: 0 }, AUTH);
  await until(async () => (await metric(s.base, 'deepwasm_queue_depth', '', AUTH)) === 1, 'the request to queue');
  const refused = await post(s.base, '/v1/completions', { prompt: 'Once', max_tokens: 3 }, AUTH);
  const retry = Number(refused.headers.get('retry-after'));
  assert.ok(Number.isInteger(retry) && retry >= 1 && retry <= 60, `Retry-After ${refused.headers.get('retry-after')}`);
  const e = await errorOf(refused, 429);
  assert.is(e.type, 'rate_limit_error');
  controllers.forEach((c) => c.abort());
  await Promise.allSettled(streams.map((st) => st.next()));
  const done = await (await queued).json();
  assert.is(done.usage.completion_tokens, 3);
});

/** Batched steps the server has run, read in-process so that reading it takes no step. */
const stepsRun = (): number => Number(/^deepwasm_steps_total (\S+)$/m.exec(s.server.metrics.text())![1]);

/** Starts a never-ending stream over node:http and resolves, once its first event came, with its request (to destroy). */
function rawStream(): Promise<ClientRequest> {
  return new Promise((resolve, reject) => {
    const body = JSON.stringify({ prompt: 'The', max_tokens: CONTEXT, ignore_eos: true, stream: true });
    const req = request(`${s.base}/v1/completions`, { method: 'POST', headers: { ...AUTH, 'Content-Type': 'application/json' } }, (res) => {
      res.once('data', () => resolve(req));
    });
    req.on('error', (e) => (req.destroyed ? undefined : reject(e)));
    req.end(body);
  });
}

test('a client gone mid-stream frees its sequence within one step; the other stream goes on to its full text', async () => {
  const prompt = 'Once upon a time';
  const other = post(s.base, '/v1/completions', { prompt, max_tokens: 40, ignore_eos: true, stream: true, temperature: 0 }, AUTH);
  const gone = await rawStream();
  await until(() => s.server.scheduler.active === 2, 'both running');
  // Its socket closes now; the step that may start before the server polls it is the one step allowed.
  const backend = s.model.model;
  const free = backend.free;
  let freedAt = -1;
  backend.free = (sequence) => {
    freedAt = stepsRun();
    free.call(backend, sequence);
  };
  const before = stepsRun();
  gone.destroy();
  await until(() => freedAt >= 0, 'the sequence to come back');
  backend.free = free;
  assert.ok(freedAt - before <= 1, `freed after ${freedAt - before} steps`);
  assert.is(s.server.scheduler.sequencesInUse, 1);
  const { tokenizer } = s.model;
  const alone = await generateIds(s.model.model, tokenizer.encode(prompt, { addSpecialTokens: true }), { temperature: 0, maxTokens: 40, eosTokenIds: [] });
  assert.is(streamedText(await allEvents(await other)), tokenizer.decode(alone.tokens, { skipSpecialTokens: true }));
  await until(() => s.server.scheduler.active === 0, 'all done');
});

test('no request crashes the process: odd bytes, odd shapes, a schema nested deep', async () => {
  const odd: [string, string | Record<string, unknown>][] = [
    ['/v1/chat/completions', '\u0000\uffff'],
    ['/v1/chat/completions', 'null'],
    ['/v1/chat/completions', { messages: [null] }],
    ['/v1/chat/completions', { messages: [{ role: 'user', content: [{ type: 'image_url' }] }] }],
    ['/v1/chat/completions', { messages: HI, stream_options: { include_usage: true } }],
    ['/v1/chat/completions', { messages: HI, response_format: { type: 'json_schema', json_schema: { schema: JSON.parse('{"type":"array","items":'.repeat(100) + '{}' + '}'.repeat(100)) } }, max_tokens: 4 }],
    ['/v1/completions', { prompt: [[1, 2], [3]] }],
    ['/v1/completions', { prompt: [] }],
    ['/v1/completions', { prompt: '' }],
  ];
  for (const [path, body] of odd) {
    const res = await post(s.base, path, body, AUTH);
    const text = await res.text();
    assert.ok(res.status === 200 || res.status === 400, `${JSON.stringify(body).slice(0, 80)}: ${res.status} ${text}`);
    const answer = JSON.parse(text);
    assert.type(res.status === 400 ? answer.error.message : answer.choices[0].text ?? answer.choices[0].message.content, 'string');
  }
  assert.is((await fetch(`${s.base}/health`)).status, 200);
});

test('close() drains: the running stream ends whole with [DONE], a new request gets 503, then close resolves', async () => {
  const t = await serveTiny({ sequences: 1 });
  const running = await post(t.base, '/v1/completions', { prompt: 'The', max_tokens: 30, ignore_eos: true, stream: true, temperature: 0 });
  const events = sseEvents(running);
  await events.next();
  const closed = t.close();
  const refused = await post(t.base, '/v1/completions', { prompt: 'x' });
  assert.is(refused.status, 503);
  assert.is((await refused.json()).error.code, 'server_shutting_down');
  const rest: unknown[] = [];
  for await (const e of events) rest.push(e);
  assert.is(rest.at(-1), '[DONE]');
  assert.is((rest.at(-2) as Record<string, any>).choices[0].finish_reason, 'length');
  await closed;
  await fetch(`${t.base}/health`).then(
    () => assert.unreachable('still listening'),
    () => {},
  );
});

test.run();
