// A bounded soak: 200 requests with random options, 8 at a time, one in ten streams dropped mid-way; then 80
// more through a server drafting with the MTP layer. Every completed response is well-formed; afterwards no
// sequence, KV slot, draft or queue entry is left and memory has not grown past a bound.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { metric, post, serveTiny, sseEvents, type Served } from './serve-helpers.js';

const REQUESTS = 200;
const CONCURRENCY = 8;
const ABORT_SHARE = 0.1;
/** Requests of the drafting soak: fewer, since the plain one covers the options and this one the drafts. */
const DRAFTED_REQUESTS = 80;
/**
 * Growth of this process's resident memory over the soak (the model is loaded before it is measured): 35-51 MiB
 * were seen over 200 requests and 49 MiB over 600, the heaps' plateau; a leak per request passes this soon.
 */
const RSS_GROWTH_BOUND = 96 * 1024 * 1024;

/** mulberry32: the same requests on every run. */
function rng(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
}

interface Plan {
  path: string;
  body: Record<string, any>;
  abort: boolean;
}

function plan(random: () => number): Plan {
  const chat = random() < 0.6;
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(random() * xs.length)];
  const body: Record<string, any> = chat ? { messages: [{ role: 'user', content: pick(['Hi', 'Tell me a story', 'What is the law?']) }] } : { prompt: pick(['Once upon a time', 'And God said', 'The']) };
  body.max_tokens = 1 + Math.floor(random() * 32);
  body.temperature = pick([0, 0.7, 1, 1.3]);
  if (random() < 0.5) body.top_p = pick([0.5, 0.9, 1]);
  if (random() < 0.5) body.seed = Math.floor(random() * 1e6);
  if (random() < 0.3) body.presence_penalty = pick([-1, 0.5, 2]);
  if (random() < 0.3) body.frequency_penalty = pick([-0.5, 1]);
  if (random() < 0.2) Object.assign(body, chat ? { logprobs: true, top_logprobs: 2 } : { logprobs: 2 });
  if (chat && random() < 0.15) {
    body.response_format = { type: 'json_object' };
    // Fewer tokens than the shortest object takes is a 400 (serve-faults).
    body.max_tokens += 8;
  }
  else if (random() < 0.3) body.stop = pick([' the', ['and', '.'], '\n']);
  if (random() < 0.2) body.ignore_eos = true;
  body.stream = random() < 0.5;
  if (body.stream && random() < 0.5) body.stream_options = { include_usage: true };
  return { path: chat ? '/v1/chat/completions' : '/v1/completions', body, abort: body.stream && random() < ABORT_SHARE * 2 };
}

/** Checks one answer: finish reasons, usage within the limits, JSON where asked for. */
function checkChoice(p: Plan, text: string, finish: string, usage: Record<string, number> | undefined): void {
  assert.ok(finish === 'stop' || finish === 'length', `finish_reason ${finish}`);
  if (usage) {
    assert.ok(usage.completion_tokens >= 1 && usage.completion_tokens <= p.body.max_tokens, `usage ${JSON.stringify(usage)} for max_tokens ${p.body.max_tokens}`);
    assert.is(usage.total_tokens, usage.prompt_tokens + usage.completion_tokens);
  }
  if (p.body.response_format) {
    try { JSON.parse(text); } catch { assert.unreachable(`${JSON.stringify(p.body)} gave ${JSON.stringify(text)} (${finish})`); }
  }
}

async function run(s: Served, p: Plan): Promise<'done' | 'aborted'> {
  const controller = new AbortController();
  const res = await post(s.base, p.path, p.body, {}, controller.signal);
  assert.is(res.status, 200, JSON.stringify(p.body));
  const chat = p.path === '/v1/chat/completions';
  if (!p.body.stream) {
    const b = await res.json();
    assert.is(b.object, chat ? 'chat.completion' : 'text_completion');
    const c = b.choices[0];
    checkChoice(p, chat ? c.message.content : c.text, c.finish_reason, b.usage);
    return 'done';
  }
  let text = '';
  let finish = '';
  let usage: Record<string, number> | undefined;
  let id: string | undefined;
  let chunks = 0;
  for await (const e of sseEvents(res)) {
    if (e === '[DONE]') {
      checkChoice(p, text, finish, usage);
      assert.is(p.body.stream_options?.include_usage === true, usage !== undefined, 'usage only when asked for');
      return 'done';
    }
    const chunk = e as Record<string, any>;
    id ??= chunk.id;
    assert.is(chunk.id, id);
    assert.is(chunk.object, chat ? 'chat.completion.chunk' : 'text_completion');
    if (chunk.usage) usage = chunk.usage;
    const c = chunk.choices[0];
    if (c) {
      text += (chat ? c.delta.content : c.text) ?? '';
      finish = c.finish_reason ?? finish;
    }
    if (p.abort && ++chunks === 2) break;
  }
  if (!p.abort) throw new Error('the stream ended without [DONE]');
  // Leaving the loop cancelled the body; aborting closes the connection as a client that goes away does.
  controller.abort();
  return 'aborted';
}

for (const [requests, drafting] of [
  [REQUESTS, false],
  [DRAFTED_REQUESTS, true],
] as const) test(`soak: ${requests} requests, ${CONCURRENCY} at a time, ~${ABORT_SHARE * 100}% of them dropped mid-stream${drafting ? ', drafting with the MTP layer' : ''}`, async () => {
  const s = await serveTiny({ sequences: 4, queue: 16, ...(drafting ? { mtp: true, draft: 'mtp', draftTokens: 2 } : {}) });
  try {
    const random = rng(drafting ? 17 : 13);
    const plans = Array.from({ length: requests }, () => plan(random));
    const rssBefore = process.memoryUsage().rss;
    let next = 0;
    const outcomes: string[] = [];
    await Promise.all(
      Array.from({ length: CONCURRENCY }, async () => {
        while (next < plans.length) outcomes.push(await run(s, plans[next++]));
      }),
    );
    const aborted = outcomes.filter((o) => o === 'aborted').length;
    assert.is(outcomes.length, requests);
    assert.ok(aborted >= requests * ABORT_SHARE * 0.5, `${aborted} aborted`);
    // Aborted requests are released as their connections close: give the server a moment to see the last ones.
    const end = Date.now() + 5000;
    while ((await metric(s.base, 'deepwasm_kv_slots_in_use')) > 0 && Date.now() < end) await new Promise((r) => setTimeout(r, 10));
    for (const name of ['deepwasm_active_sequences', 'deepwasm_kv_slots_in_use', 'deepwasm_queue_depth', 'deepwasm_kv_tokens_in_use']) assert.is(await metric(s.base, name), 0, name);
    if (drafting) {
      assert.is(await metric(s.base, 'deepwasm_draft_sequences_in_use'), 0, 'every draft given back');
      assert.ok((await metric(s.base, 'deepwasm_draft_tokens_accepted_total')) > 0, 'drafts were kept');
    }
    assert.is(await metric(s.base, 'deepwasm_requests_total', 'route="/v1/chat/completions",status="429"').catch(() => 0), 0, 'nothing refused');
    const growth = process.memoryUsage().rss - rssBefore;
    assert.ok(growth < RSS_GROWTH_BOUND, `resident memory grew ${(growth / 2 ** 20).toFixed(1)} MiB`);
    assert.is((await fetch(`${s.base}/health`)).status, 200);
  } finally {
    await s.close();
  }
});

test.run();
