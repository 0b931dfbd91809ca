// `deepwasm serve` as users run it, under Node and Deno: flags, the key from DEEPWASM_API_KEY, the same greedy
// text as the library, and SIGTERM draining a running stream (new requests 503) before exiting 0.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { DEFAULT_MODEL_DIR, loadModel } from '../host/index.js';
import { cli, fails } from './cli-process.js';
import { DENO_ENV, denoBinary } from './deno-bin.js';
import { HI, allEvents, metric, post, sseEvents, streamedText } from './serve-helpers.js';
import { startServe, type ServeProcess } from './serve-process.js';

const REQUEST = { messages: HI, temperature: 0, max_tokens: 24 };

async function referenceText(): Promise<string> {
  const model = await loadModel();
  try {
    return (await model.chatText(HI, { temperature: 0, maxTokens: 24 })).text;
  } finally {
    await model.close();
  }
}

/** SIGTERM during a stream: it ends whole, a request sent meanwhile gets 503, and the process exits 0. */
async function drainsOnSigterm(p: ServeProcess, headers: Record<string, string> = {}): Promise<void> {
  const res = await post(p.base, '/v1/completions', { prompt: 'The', max_tokens: 200, ignore_eos: true, stream: true }, headers);
  const events = sseEvents(res);
  await events.next();
  p.child.kill('SIGTERM');
  const end = Date.now() + 10_000;
  while (!/draining/.test(p.stderr()) && Date.now() < end) await new Promise((r) => setTimeout(r, 5));
  const refused = await post(p.base, '/v1/chat/completions', REQUEST, headers);
  assert.is(refused.status, 503);
  const rest: unknown[] = [];
  for await (const e of events) rest.push(e);
  assert.is(rest.at(-1), '[DONE]');
  assert.is((rest.at(-2) as Record<string, any>).choices[0].finish_reason, 'length');
  assert.is(await p.exited, 0, p.stderr());
}

test('serve --parallel 2 with DEEPWASM_API_KEY: the key is required, the greedy text is the library one, SIGTERM drains and exits 0', async () => {
  const expected = await referenceText();
  const p = await startServe(['--parallel', '2', '--context', '256'], { env: { ...process.env, DEEPWASM_API_KEY: 'k1' } });
  try {
    const auth = { Authorization: 'Bearer k1' };
    assert.is((await post(p.base, '/v1/chat/completions', REQUEST)).status, 401);
    const body = await (await post(p.base, '/v1/chat/completions', REQUEST, auth)).json();
    assert.is(body.choices[0].message.content, expected);
    assert.is(body.model, 'tiny', 'the model folder name is its id');
    assert.is(await metric(p.base, 'deepwasm_kv_slots_total', '', auth), 2);
    await drainsOnSigterm(p, auth);
  } finally {
    p.child.kill('SIGKILL');
  }
});

test('serve --draft mtp and --draft DIR: the same greedy text, drafts counted in /metrics, SIGTERM drains and exits 0', async () => {
  const expected = await referenceText();
  for (const draft of [['--draft', 'mtp', '--draft-tokens', '2'], ['--draft', DEFAULT_MODEL_DIR]]) {
    const p = await startServe(['--parallel', '2', '--context', '256', ...draft]);
    try {
      const body = await (await post(p.base, '/v1/chat/completions', REQUEST)).json();
      assert.is(body.choices[0].message.content, expected, draft.join(' '));
      assert.ok((await metric(p.base, 'deepwasm_draft_tokens_proposed_total')) > 0, `${draft.join(' ')}: drafts proposed`);
      assert.is(await metric(p.base, 'deepwasm_draft_sequences_in_use'), 0);
      await drainsOnSigterm(p);
    } finally {
      p.child.kill('SIGKILL');
    }
  }
});

test('serve refuses bad flags in one line, before loading', () => {
  fails(cli(['serve', '--port', '70000']), /--port/, 'port out of range');
  fails(cli(['serve', '--parallel', '0']), /--parallel/, 'parallel 0');
  fails(cli(['serve', '--draft-tokens', '2']), /--draft-tokens needs --draft/, 'draft tokens without a draft');
  fails(cli(['serve', '--draft', 'mtp', '--draft-tokens', '17']), /--draft-tokens/, 'too many draft tokens');
});

test('serve under Deno: the same greedy text, streamed and whole, and SIGTERM drains and exits 0', async () => {
  const expected = await referenceText();
  const p = await startServe([], { command: denoBinary(), prefix: ['run', '-A'], env: DENO_ENV });
  try {
    const body = await (await post(p.base, '/v1/chat/completions', REQUEST)).json();
    assert.is(body.choices[0].message.content, expected);
    assert.is(streamedText(await allEvents(await post(p.base, '/v1/chat/completions', { ...REQUEST, stream: true }))), expected);
    await drainsOnSigterm(p);
  } finally {
    p.child.kill('SIGKILL');
  }
});

test.run();
