// deepwasm serve driven by the official openai npm client: chat (whole and streamed, with usage), legacy
// completions, models, structured output, and errors as the client raises them.
import OpenAI from 'openai';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { HI, serveTiny, type Served } from './serve-helpers.js';

const KEY = 'sk-openai-test';
let s: Served;
let client: OpenAI;

test.before(async () => {
  s = await serveTiny({ apiKey: KEY });
  client = new OpenAI({ baseURL: `${s.base}/v1`, apiKey: KEY, maxRetries: 0 });
});

test.after(async () => {
  await s.close();
});

test('chat.completions.create: the library greedy reply, with usage', async () => {
  const ref = await s.model.chatText(HI, { temperature: 0, maxTokens: 20 });
  const r = await client.chat.completions.create({ model: s.server.modelId, messages: HI, temperature: 0, max_completion_tokens: 20 });
  assert.is(r.choices[0].message.content, ref.text);
  assert.is(r.choices[0].message.role, 'assistant');
  assert.is(r.choices[0].finish_reason, ref.finishReason);
  assert.is(r.usage?.completion_tokens, ref.tokens.length);
});

test('chat.completions.create with stream: the same text from the deltas, usage in the last chunk', async () => {
  const ref = await s.model.chatText(HI, { temperature: 0, maxTokens: 20 });
  const stream = await client.chat.completions.create({ model: s.server.modelId, messages: HI, temperature: 0, max_tokens: 20, stream: true, stream_options: { include_usage: true } });
  let text = '';
  let usage: OpenAI.CompletionUsage | null | undefined;
  let finish: string | null = null;
  for await (const chunk of stream) {
    text += chunk.choices[0]?.delta.content ?? '';
    finish = chunk.choices[0]?.finish_reason ?? finish;
    usage = chunk.usage ?? usage;
  }
  assert.is(text, ref.text);
  assert.is(finish, ref.finishReason);
  assert.is(usage?.completion_tokens, ref.tokens.length);
});

test('the stream helper (chat.completions.stream) assembles the same message', async () => {
  const ref = await s.model.chatText(HI, { temperature: 0, maxTokens: 12 });
  const runner = client.chat.completions.stream({ model: s.server.modelId, messages: HI, temperature: 0, max_tokens: 12 });
  const done = await runner.finalChatCompletion();
  assert.is(done.choices[0].message.content, ref.text);
});

test('completions.create, whole and streamed', async () => {
  const ref = await s.model.generateText('Once upon a time', { temperature: 0, maxTokens: 10 });
  const r = await client.completions.create({ model: s.server.modelId, prompt: 'Once upon a time', temperature: 0, max_tokens: 10 });
  assert.is(r.choices[0].text, ref.text);
  let text = '';
  for await (const c of await client.completions.create({ model: s.server.modelId, prompt: 'Once upon a time', temperature: 0, max_tokens: 10, stream: true })) text += c.choices[0]?.text ?? '';
  assert.is(text, ref.text);
});

test('models.list and models.retrieve', async () => {
  const ids: string[] = [];
  for await (const m of client.models.list()) ids.push(m.id);
  assert.equal(ids, [s.server.modelId]);
  assert.is((await client.models.retrieve(s.server.modelId)).id, s.server.modelId);
});

test('structured output through the client: a json_schema reply that parses to the schema', async () => {
  const r = await client.chat.completions.create({
    model: s.server.modelId,
    messages: HI,
    temperature: 0.7,
    seed: 11,
    max_tokens: 80,
    response_format: { type: 'json_schema', json_schema: { name: 'answer', schema: { type: 'object', properties: { ok: { type: 'boolean' }, n: { type: 'number' } }, required: ['ok', 'n'] } } },
  });
  const v = JSON.parse(r.choices[0].message.content!);
  assert.type(v.ok, 'boolean');
  assert.type(v.n, 'number');
});

test('errors come out as the client types them: 400 BadRequestError naming the param, 401, 404', async () => {
  try {
    await client.chat.completions.create({ model: s.server.modelId, messages: HI, n: 3 });
    assert.unreachable('n: 3 was accepted');
  } catch (e) {
    assert.instance(e, OpenAI.BadRequestError);
    assert.is((e as InstanceType<typeof OpenAI.BadRequestError>).param, 'n');
  }
  const wrong = new OpenAI({ baseURL: `${s.base}/v1`, apiKey: 'nope', maxRetries: 0 });
  await wrong.models.list().then(
    () => assert.unreachable('a wrong key was accepted'),
    (e) => assert.instance(e, OpenAI.AuthenticationError),
  );
  await client.embeddings.create({ model: s.server.modelId, input: 'x' }).then(
    () => assert.unreachable('embeddings answered'),
    (e) => assert.instance(e, OpenAI.NotFoundError),
  );
});

test.run();
