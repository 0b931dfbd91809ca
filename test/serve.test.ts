// deepwasm serve's routes through plain fetch, each answer checked against the library on the same model:
// the chat and completion texts, streamed and whole, with sampling options, stop strings, log-probabilities,
// response_format and usage; /v1/models, /health and /metrics.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { HI, allEvents, metric, post, serveTiny, streamedText, type Served } from './serve-helpers.js';

let s: Served;

test.before(async () => {
  s = await serveTiny();
});

test.after(async () => {
  await s.close();
});

const chat = async (body: Record<string, unknown>): Promise<Record<string, any>> => {
  const res = await post(s.base, '/v1/chat/completions', { model: 'tiny', messages: HI, ...body });
  assert.is(res.status, 200, await res.clone().text());
  return res.json();
};

const chatPromptTokens = (): number => s.model.tokenizer.encode(s.model.tokenizer.applyChatTemplate(HI, { addGenerationPrompt: true })).length;

test('GET /health, /v1/models and /v1/models/{id}', async () => {
  assert.equal(await (await fetch(`${s.base}/health`)).json(), { status: 'ok' });
  const list = await (await fetch(`${s.base}/v1/models`)).json();
  assert.is(list.object, 'list');
  assert.equal(list.data.map((m: { id: string }) => m.id), [s.server.modelId]);
  const one = await fetch(`${s.base}/v1/models/${s.server.modelId}`);
  assert.equal(await one.json(), list.data[0]);
  const missing = await fetch(`${s.base}/v1/models/gpt-4`);
  assert.is(missing.status, 404);
  assert.is((await missing.json()).error.param, 'model');
});

test('chat, greedy: the text, finish reason and usage of the library chatText on the same messages', async () => {
  const ref = await s.model.chatText(HI, { temperature: 0, maxTokens: 24 });
  const body = await chat({ temperature: 0, max_tokens: 24 });
  assert.is(body.object, 'chat.completion');
  assert.match(body.id, /^chatcmpl-/);
  assert.is(body.model, s.server.modelId);
  assert.equal(body.choices[0].message, { role: 'assistant', content: ref.text, refusal: null });
  assert.is(body.choices[0].finish_reason, ref.finishReason);
  assert.equal(body.usage, { prompt_tokens: chatPromptTokens(), completion_tokens: ref.tokens.length, total_tokens: chatPromptTokens() + ref.tokens.length });
});

test('chat, streamed: a role chunk, text deltas adding up to the whole reply, a finish chunk, the usage chunk, [DONE]', async () => {
  const whole = await chat({ temperature: 0, max_completion_tokens: 20 });
  const res = await post(s.base, '/v1/chat/completions', { messages: HI, temperature: 0, max_completion_tokens: 20, stream: true, stream_options: { include_usage: true } });
  assert.match(res.headers.get('content-type') ?? '', /^text\/event-stream/);
  const events = await allEvents(res);
  assert.ok(events.every((e) => e.object === 'chat.completion.chunk' && e.id === events[0].id));
  assert.equal(events[0].choices[0].delta, { role: 'assistant', content: '' });
  assert.is(streamedText(events), whole.choices[0].message.content);
  const usage = events.at(-1)!;
  assert.equal(usage.choices, []);
  assert.equal(usage.usage, whole.usage);
  const finish = events.at(-2)!;
  assert.is(finish.choices[0].finish_reason, whole.choices[0].finish_reason);
  assert.ok(events.slice(0, -1).every((e) => e.usage === null), 'usage is null on every chunk but the last');
  assert.ok(events.length > 4, 'the text came in several chunks');
});

test('completions: whole and streamed, as the library generateText continues the prompt', async () => {
  const prompt = 'Once upon a time';
  const ref = await s.model.generateText(prompt, { temperature: 0, maxTokens: 16 });
  const res = await post(s.base, '/v1/completions', { prompt, temperature: 0 });
  const body = await res.json();
  assert.is(body.object, 'text_completion');
  assert.is(body.choices[0].text, ref.text, 'max_tokens defaults to 16, as OpenAI');
  assert.is(body.usage.completion_tokens, 16);
  assert.is(body.usage.prompt_tokens, s.model.tokenizer.encode(prompt, { addSpecialTokens: true }).length);
  const events = await allEvents(await post(s.base, '/v1/completions', { prompt: [prompt], temperature: 0, stream: true }));
  assert.is(streamedText(events), ref.text);
  assert.is(events.at(-1)!.choices[0].finish_reason, 'length');
  const ids = await (await post(s.base, '/v1/completions', { prompt: s.model.tokenizer.encode(prompt, { addSpecialTokens: true }), temperature: 0 })).json();
  assert.is(ids.choices[0].text, ref.text, 'a prompt of token ids');
});

test('sampling options (temperature, top_p, seed, presence and frequency penalties) give the library tokens for the same options', async () => {
  const opts = { temperature: 0.9, topP: 0.95, seed: 1234, presencePenalty: 0.5, frequencyPenalty: 0.3, maxTokens: 24 };
  const ref = await s.model.chatText(HI, opts);
  const body = await chat({ temperature: 0.9, top_p: 0.95, seed: 1234, presence_penalty: 0.5, frequency_penalty: 0.3, max_tokens: 24 });
  assert.is(body.choices[0].message.content, ref.text);
  const again = await chat({ temperature: 0.9, top_p: 0.95, seed: 1234, presence_penalty: 0.5, frequency_penalty: 0.3, max_tokens: 24 });
  assert.is(again.choices[0].message.content, ref.text, 'the same seed, the same text');
});

test('stop, as a string and as a list: the text ends before the first stop string, finish reason stop', async () => {
  const full = (await chat({ temperature: 0, max_tokens: 24 })).choices[0].message.content as string;
  const words = full.trim().split(/\s+/);
  const word = words[Math.floor(words.length / 2)];
  const at = full.indexOf(word);
  for (const stop of [word, ['never-there', word]]) {
    const body = await chat({ temperature: 0, max_tokens: 24, stop });
    assert.is(body.choices[0].message.content, full.slice(0, at), JSON.stringify(stop));
    assert.is(body.choices[0].finish_reason, 'stop');
  }
  const events = await allEvents(await post(s.base, '/v1/chat/completions', { messages: HI, temperature: 0, max_tokens: 24, stop: word, stream: true }));
  assert.is(streamedText(events), full.slice(0, at));
});

test('logprobs / top_logprobs: the log-softmax of the model logits after the prompt, most likely first', async () => {
  const { model: backend, tokenizer } = s.model;
  const prompt = tokenizer.encode(tokenizer.applyChatTemplate(HI, { addGenerationPrompt: true }));
  const seq = backend.createSequence();
  const logits = backend.forward([{ sequence: seq, tokens: prompt }])[0].slice();
  backend.free(seq);
  let max = -Infinity;
  for (const v of logits) max = Math.max(max, v);
  const lse = max + Math.log(logits.reduce((n, v) => n + Math.exp(v - max), 0));
  const order = Array.from(logits.keys()).sort((a, b) => logits[b] - logits[a]);
  const body = await chat({ temperature: 0, max_tokens: 3, logprobs: true, top_logprobs: 3 });
  const first = body.choices[0].logprobs.content[0];
  assert.is(body.choices[0].logprobs.content.length, 3);
  assert.is(first.token, tokenizer.decode([order[0]]));
  assert.ok(Math.abs(first.logprob - (logits[order[0]] - lse)) < 1e-4, `${first.logprob} vs ${logits[order[0]] - lse}`);
  assert.equal(first.top_logprobs.map((t: { token: string }) => t.token), order.slice(0, 3).map((id) => tokenizer.decode([id])));
  first.top_logprobs.forEach((t: { logprob: number }, i: number) => assert.ok(Math.abs(t.logprob - (logits[order[i]] - lse)) < 1e-4));
  assert.equal(first.bytes, Array.from(new TextEncoder().encode(first.token)));
  const completion = await (await post(s.base, '/v1/completions', { prompt: 'Once', temperature: 0, max_tokens: 2, logprobs: 2 })).json();
  const lp = completion.choices[0].logprobs;
  assert.is(lp.tokens.join(''), completion.choices[0].text);
  assert.equal(lp.text_offset, [0, lp.tokens[0].length]);
  assert.is(Object.keys(lp.top_logprobs[0]).length, 2);
});

const SCHEMA = {
  type: 'object',
  properties: { name: { type: 'string' }, age: { type: 'integer' }, mood: { enum: ['happy', 'sad'] }, tags: { type: 'array', items: { type: 'boolean' } } },
  required: ['name', 'age', 'mood', 'tags'],
  additionalProperties: false,
};

/** Whether `v` fits SCHEMA: the keys, the types, the enum. */
function fitsSchema(v: any): boolean {
  return (
    typeof v === 'object' && v !== null && !Array.isArray(v) &&
    Object.keys(v).every((k) => k in SCHEMA.properties) &&
    typeof v.name === 'string' && Number.isInteger(v.age) && ['happy', 'sad'].includes(v.mood) &&
    Array.isArray(v.tags) && v.tags.every((t: unknown) => typeof t === 'boolean')
  );
}

test('response_format json_schema: the reply parses and fits the schema, sampled or greedy, even when max_tokens is tight', async () => {
  const format = { type: 'json_schema', json_schema: { name: 'person', schema: SCHEMA } };
  for (const [opts, label] of [[{ temperature: 0, max_tokens: 200 }, 'greedy'], [{ temperature: 1, seed: 5, max_tokens: 200 }, 'sampled'], [{ temperature: 1, seed: 6, max_tokens: 40 }, '40 tokens']] as const) {
    const body = await chat({ ...opts, response_format: format });
    const text = body.choices[0].message.content;
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch (e) {
      assert.unreachable(`${label}: ${JSON.stringify(text)} is not JSON: ${(e as Error).message}`);
    }
    assert.ok(fitsSchema(parsed), `${label}: ${text}`);
    assert.is(body.choices[0].finish_reason, 'stop', label);
    assert.ok(body.usage.completion_tokens <= opts.max_tokens, label);
  }
  const free = (await chat({ temperature: 0, max_tokens: 40 })).choices[0].message.content;
  assert.throws(() => JSON.parse(free), undefined, 'unconstrained, the model does not write JSON: the mask did the work');
});

test('response_format json_object: an object, streamed too', async () => {
  const events = await allEvents(await post(s.base, '/v1/chat/completions', { messages: HI, temperature: 1, seed: 9, max_tokens: 60, stream: true, response_format: { type: 'json_object' } }));
  const value = JSON.parse(streamedText(events));
  assert.is(typeof value, 'object');
  assert.not.ok(Array.isArray(value));
});

test('n other than 1 is a 400 naming n; unknown fields are ignored', async () => {
  const res = await post(s.base, '/v1/chat/completions', { messages: HI, n: 2 });
  assert.is(res.status, 400);
  const { error } = await res.json();
  assert.is(error.param, 'n');
  assert.is(error.type, 'invalid_request_error');
  assert.is((await chat({ n: 1, temperature: 0, max_tokens: 8, user: 'me', parallel_tool_calls: true, foo: { bar: 1 } })).choices[0].message.content, (await chat({ temperature: 0, max_tokens: 8 })).choices[0].message.content);
});

test('/metrics: Prometheus text whose token counters match the usage the responses reported', async () => {
  const before = await metric(s.base, 'deepwasm_completion_tokens_total');
  const promptBefore = await metric(s.base, 'deepwasm_prompt_tokens_total');
  const a = await chat({ temperature: 0, max_tokens: 5 });
  const b = await chat({ temperature: 0, max_tokens: 7 });
  assert.is(await metric(s.base, 'deepwasm_completion_tokens_total'), before + a.usage.completion_tokens + b.usage.completion_tokens);
  assert.is(await metric(s.base, 'deepwasm_prompt_tokens_total'), promptBefore + a.usage.prompt_tokens + b.usage.prompt_tokens);
  assert.ok((await metric(s.base, 'deepwasm_requests_total', 'route="/v1/chat/completions",status="200"')) >= 2);
  assert.is(await metric(s.base, 'deepwasm_active_sequences'), 0);
  assert.is(await metric(s.base, 'deepwasm_kv_slots_total'), 4);
  const text = await (await fetch(`${s.base}/metrics`)).text();
  for (const name of ['deepwasm_tokens_per_second', 'deepwasm_queue_depth', 'deepwasm_kv_slots_in_use']) assert.match(text, new RegExp(`# TYPE ${name} gauge`));
});

test.run();
