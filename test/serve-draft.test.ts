// Speculative decoding in the server: with the MTP layer (1 and 3 a step) or a draft model (the model itself,
// loaded again, proposing for every stream in one pass per draft position), several streams at once give the
// same greedy tokens as the server without a draft, the log-probabilities of the main model, stop strings cut
// inside accepted runs, penalties and the JSON mask on every drafted row, the same end at the context's end;
// sampled output is the library's (the one Speculation.settle both call); an aborted stream gives back its
// draft sequence too. The random MTP layer of v3-tiny-mtp is rejected often, the embedded one about a third.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { DEFAULT_MODEL_DIR, loadModel, type TextModel } from '../host/index.js';
import { DeepWasmServer, type ServerOptions } from '../host/server/server.js';
import { allEvents, metric, post, until } from './serve-helpers.js';
import { fixtureTextDir } from './text-fixture.js';

const SEQUENCES = 4;
let tiny: TextModel;
let itself: TextModel;
let random: TextModel;
let removeRandom: () => void;

test.before(async () => {
  tiny = await loadModel({ maxSequences: SEQUENCES, mtp: true, contextLength: 256 });
  itself = await loadModel(DEFAULT_MODEL_DIR, { maxSequences: SEQUENCES, contextLength: 256 });
  const fixture = fixtureTextDir('v3-tiny-mtp');
  removeRandom = fixture.remove;
  random = await loadModel(fixture.dir, { maxSequences: SEQUENCES, mtp: true, contextLength: 256 });
});

test.after(async () => {
  await Promise.all([tiny.close(), itself.close(), random.close()]);
  removeRandom();
});

/** Runs `fn` against a server over `model`, then drains it (the model stays loaded). */
async function withServer<T>(model: TextModel, opts: ServerOptions, fn: (base: string, server: DeepWasmServer) => Promise<T>): Promise<T> {
  const server = await DeepWasmServer.start(model, { port: 0, log: () => {}, parallel: SEQUENCES, ...opts });
  try {
    return await fn(server.url, server);
  } finally {
    await server.close();
  }
}

interface Streamed {
  text: string;
  tokens: string[];
  logprobs: number[];
  finish: string;
  completionTokens: number;
  /** Chunks that carried text. */
  chunks: number;
}

/** A streamed /v1/completions request with log-probabilities, its chunks put together. */
async function complete(base: string, body: Record<string, unknown>, signal?: AbortSignal): Promise<Streamed> {
  const res = await post(base, '/v1/completions', { logprobs: 0, ...body, stream: true, stream_options: { include_usage: true } }, {}, signal);
  assert.is(res.status, 200, await (res.status === 200 ? '' : res.text()));
  const out: Streamed = { text: '', tokens: [], logprobs: [], finish: '', completionTokens: 0, chunks: 0 };
  for (const e of await allEvents(res)) {
    if (e.error) throw new Error(`the stream failed: ${e.error.message}`);
    if (e.usage) out.completionTokens = e.usage.completion_tokens;
    const c = e.choices[0];
    if (!c) continue;
    if (c.text !== '') out.chunks++;
    out.text += c.text;
    out.tokens.push(...(c.logprobs?.tokens ?? []));
    out.logprobs.push(...(c.logprobs?.token_logprobs ?? []));
    if (c.finish_reason) out.finish = c.finish_reason;
  }
  return out;
}

const PROMPTS = ['Once upon a time', 'In the beginning God created the heaven and the earth.', 'The', 'And it came to pass, when men began to multiply'];
/** Requests of different lengths, so that streams end at different steps while the others go on. */
const bodies = (extra: Record<string, unknown> = {}): Record<string, unknown>[] =>
  PROMPTS.map((prompt, i) => ({ prompt, max_tokens: 20 + 9 * i, temperature: 0, ignore_eos: true, ...extra }));

/** Every body at once, the streams started a little apart so that prompts are fed beside decode steps. */
async function concurrently(base: string, all: Record<string, unknown>[]): Promise<Streamed[]> {
  const runs: Promise<Streamed>[] = [];
  for (const b of all) {
    runs.push(complete(base, b));
    await new Promise((r) => setTimeout(r, 3));
  }
  return Promise.all(runs);
}

function assertSame(got: Streamed[], want: Streamed[], what: string): void {
  got.forEach((g, i) => {
    assert.equal(g.tokens, want[i].tokens, `${what}, stream ${i}: tokens`);
    assert.is(g.text, want[i].text, `${what}, stream ${i}: text`);
    assert.is(g.finish, want[i].finish, `${what}, stream ${i}: finish reason`);
    assert.is(g.completionTokens, want[i].completionTokens, `${what}, stream ${i}: usage`);
    const diff = Math.max(...g.logprobs.map((lp, j) => Math.abs(lp - want[i].logprobs[j])));
    assert.ok(diff < 2e-3, `${what}, stream ${i}: logprobs max |diff| ${diff}`);
  });
}

const draftCounts = async (base: string): Promise<{ proposed: number; accepted: number }> => ({
  proposed: await metric(base, 'deepwasm_draft_tokens_proposed_total'),
  accepted: await metric(base, 'deepwasm_draft_tokens_accepted_total'),
});

for (const [name, model] of [
  ['embedded model', () => tiny],
  ['v3-tiny-mtp (random MTP layer)', () => random],
] as const) {
  test(`${name}: four concurrent greedy streams with the MTP layer (1 and 3 a step) and the model as its own draft equal the server without a draft`, async () => {
    const m = model();
    // Prompts in chunks of 8, so that the MTP layer gets the hidden states of a prompt fed in several steps.
    const chunks = { prefillChunk: 8 };
    const plain = await withServer(m, chunks, (base) => concurrently(base, bodies({ frequency_penalty: 0.5 })));
    const drafts: [string, ServerOptions][] = [
      ['MTP, 1 a step', { draft: 'mtp' }],
      ['MTP, 3 a step', { draft: 'mtp', draftTokens: 3 }],
    ];
    if (m === tiny) drafts.push(['the model itself, 3 a step', { draft: itself }]);
    for (const [what, opts] of drafts) {
      // The draft model's passes: each draft position is one forward() of every stream drafting.
      const widths: number[] = [];
      const forward = itself.model.forward;
      if (opts.draft === itself) itself.model.forward = (batch) => (widths.push(batch.length), forward.call(itself.model, batch));
      await withServer(m, { ...chunks, ...opts }, async (base) => {
        const got = await concurrently(base, bodies({ frequency_penalty: 0.5 })).finally(() => (itself.model.forward = forward));
        assertSame(got, plain, what);
        if (opts.draft === itself) assert.ok(widths.includes(4), `the draft model ran four streams' drafts in one pass (widths ${[...new Set(widths)]})`);
        const { proposed, accepted } = await draftCounts(base);
        const total = plain.reduce((n, s) => n + s.completionTokens, 0);
        assert.ok(proposed > 0 && accepted <= proposed, `${what}: ${accepted} of ${proposed} drafts kept`);
        // The draft picks without the penalties, so even the model itself is sometimes rejected.
        assert.ok(accepted < proposed, `${what}: rejections happen (${accepted} of ${proposed} kept)`);
        // Every token but each stream's first comes from a verifying step: one its own, the rest kept drafts.
        const steps = await metric(base, 'deepwasm_steps_total');
        assert.ok(steps < total, `${what}: ${steps} steps for ${total} tokens`);
        if (accepted > proposed / 2) assert.ok(got.some((s) => s.chunks < s.completionTokens), `${what}: a chunk carried several tokens`);
        assert.is(await metric(base, 'deepwasm_draft_sequences_in_use'), 0);
      });
    }
  });
}

test('a stop string inside a run of kept drafts ends the text before it, as without a draft', async () => {
  const body = { prompt: PROMPTS[1], max_tokens: 40, temperature: 0 };
  const whole = await withServer(tiny, {}, (base) => complete(base, body));
  // A stop string starting well inside the output: with the model drafting for itself, 4 tokens a step are all kept.
  const at = Math.floor(whole.text.length / 2);
  const stop = whole.text.slice(at, at + 3);
  const cut = whole.text.slice(0, whole.text.indexOf(stop));
  const plain = await withServer(tiny, {}, (base) => complete(base, { ...body, stop }));
  assert.is(plain.text, cut);
  for (const opts of [{ draft: itself }, { draft: 'mtp' as const, draftTokens: 3 }]) {
    await withServer(tiny, opts, async (base) => {
      const got = await complete(base, { ...body, stop });
      assert.is(got.text, cut);
      assert.is(got.finish, 'stop');
      assert.is(got.completionTokens, plain.completionTokens);
      assert.equal(got.tokens, plain.tokens);
    });
  }
});

test('at the end of the context a step drafts only what the cache holds: the same tokens and length as without a draft', async () => {
  const words = tiny.tokenizer.encode(PROMPTS.join(' '), { addSpecialTokens: true });
  const context = tiny.model.contextLength;
  const prompt = Array.from({ length: context - 6 }, (_, i) => words[i % words.length]);
  const body = { prompt, max_tokens: 50, temperature: 0, ignore_eos: true };
  const plain = await withServer(tiny, {}, (base) => complete(base, body));
  assert.is(plain.completionTokens, 7, 'the context leaves room for 7');
  assert.is(plain.finish, 'length');
  for (const opts of [{ draft: itself }, { draft: 'mtp' as const, draftTokens: 3 }]) {
    await withServer(tiny, opts, async (base) => assertSame([await complete(base, body)], [plain], `${opts.draft === 'mtp' ? 'MTP' : 'itself'} at the context's end`));
  }
});

test('greedy under response_format json_object drafts and gives the same reply; sampled, it does not draft', async () => {
  const chat = { messages: [{ role: 'user', content: 'Give me a JSON object' }], max_tokens: 40, response_format: { type: 'json_object' } };
  const reply = async (base: string, extra: object): Promise<string> => {
    const res = await post(base, '/v1/chat/completions', { ...chat, ...extra });
    assert.is(res.status, 200);
    return ((await res.json()) as { choices: { message: { content: string } }[] }).choices[0].message.content;
  };
  const plain = await withServer(tiny, {}, (base) => reply(base, { temperature: 0 }));
  await withServer(tiny, { draft: 'mtp', draftTokens: 3 }, async (base) => {
    assert.is(await reply(base, { temperature: 0 }), plain);
    const before = await draftCounts(base);
    assert.ok(before.proposed > 0);
    JSON.parse(await reply(base, { temperature: 1, seed: 3 }));
    assert.equal(await draftCounts(base), before, 'a sampled request under a grammar ran without drafts');
  });
});

test('sampling with a draft in the server gives the library\'s tokens for the same seed (one verification rule)', async () => {
  for (const [opts, draft] of [
    [{ draft: 'mtp', draftTokens: 2 }, { draft: 'mtp', draftTokens: 2 }],
    [{ draft: itself }, { draft: itself }],
  ] as const) {
    await withServer(tiny, opts, async (base) => {
      for (const seed of [1, 2, 3]) {
        const sampling = { temperature: 1, top_k: 8, presence_penalty: 0.4, seed };
        const got = await complete(base, { prompt: PROMPTS[0], max_tokens: 24, ...sampling });
        const lib = await tiny.generateText(PROMPTS[0], { maxTokens: 24, temperature: 1, topK: 8, presencePenalty: 0.4, seed, ...draft });
        assert.is(got.text, lib.text, `seed ${seed}`);
        assert.is(got.completionTokens, lib.tokens.length, `seed ${seed}: tokens`);
        assert.ok(lib.draft!.proposed[0] > 0, 'the library drafted');
      }
      const { proposed, accepted } = await draftCounts(base);
      assert.ok(proposed > 0, 'the server drafted');
      if (opts.draft === 'mtp') assert.ok(accepted < proposed, `sampled MTP drafts are sometimes rejected (${accepted} of ${proposed} kept)`);
    });
  }
});

test('an aborted stream gives back its sequence and its draft model sequence', async () => {
  await withServer(tiny, { draft: itself }, async (base) => {
    const stop = new AbortController();
    const aborted = complete(base, { prompt: PROMPTS[0], max_tokens: 200, temperature: 0, ignore_eos: true }, stop.signal).catch((e: Error) => e);
    const other = complete(base, { prompt: PROMPTS[1], max_tokens: 60, temperature: 0, ignore_eos: true });
    await until(async () => (await metric(base, 'deepwasm_draft_sequences_in_use')) === 2 && (await metric(base, 'deepwasm_draft_tokens_proposed_total')) > 8, 'both streams drafting');
    stop.abort();
    assert.instance(await aborted, Error);
    await until(async () => (await metric(base, 'deepwasm_draft_sequences_in_use')) === 1, 'the aborted stream to free its draft');
    assert.is((await other).completionTokens, 60);
    await until(async () => (await metric(base, 'deepwasm_kv_slots_in_use')) === 0, 'every slot back');
    assert.is(await metric(base, 'deepwasm_draft_sequences_in_use'), 0);
  });
  // Every sequence of the draft model is free again.
  const held = Array.from({ length: SEQUENCES }, () => itself.model.createSequence());
  for (const s of held) itself.model.free(s);
});

async function rejects(p: Promise<unknown>, message: string): Promise<void> {
  const e = await p.then(
    () => null,
    (err: Error) => err,
  );
  assert.ok(e, `expected an error with "${message}"`);
  assert.ok(e.message.includes(message), `"${e.message}" should include "${message}"`);
}

test('bad drafts are clear errors at start', async () => {
  const small = await loadModel(DEFAULT_MODEL_DIR, { maxSequences: 2 });
  try {
    for (const [opts, message] of [
      [{ draft: small }, 'the draft model holds 2 sequences but the server runs 4 (--parallel): load it with maxSequences 4'],
      [{ draft: random }, "the draft model's tokenizer differs from the model's"],
      [{ draftTokens: 2 }, 'draftTokens needs a draft (draft)'],
      [{ draft: 'mtp', draftTokens: 17 }, 'draftTokens must be a whole number from 1 to 16, got 17'],
    ] as const) {
      await rejects(DeepWasmServer.start(itself, { port: 0, parallel: SEQUENCES, ...(opts as ServerOptions) }), message as string);
    }
    await rejects(DeepWasmServer.start(itself, { port: 0, draft: 'mtp' }), "draft 'mtp' needs the model's MTP layer");
  } finally {
    await small.close();
  }
});

test.run();
