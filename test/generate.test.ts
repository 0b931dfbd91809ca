// Generation on real weights: v3-tiny (token-level) and v3-tiny padded to the v3-format tokenizer (text-level).
import { copyFileSync, existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { DEFAULT_MODEL_DIR, DeepWasmError, Model, TextModel, generateIds, loadModel, loadTokenizer, type GenerateIdsOptions } from '../host/index.js';
import { readExpected } from './helpers.js';
import { V3_TINY, V3_TOKENIZER, makeTextModelDir } from './text-fixture.js';

const ref = readExpected(`${V3_TINY}/expected.safetensors`);
const promptIds = Array.from(ref.inputIds);
const genIds = Array.from(ref.genIds);
const fixture = makeTextModelDir();
let text: TextModel;

test.before(async () => {
  text = await loadModel(fixture.dir, { threads: 1 });
});

test.after(async () => {
  await text.close();
  fixture.remove();
});

async function withModel<T>(threads: number, fn: (m: Model) => Promise<T>, contextLength?: number): Promise<T> {
  const model = await Model.load(V3_TINY, { threads, contextLength });
  try {
    return await fn(model);
  } finally {
    await model.close();
  }
}

/** The DeepWasmError message `fn` throws or rejects with. */
async function errorOf(fn: () => unknown): Promise<string> {
  try {
    await fn();
  } catch (e) {
    assert.instance(e, DeepWasmError, `${String(e)}`);
    return (e as Error).message;
  }
  return assert.unreachable('expected a DeepWasmError') as never;
}

test('the v3-format tokenizer needs more ids than v3-tiny has, so v3-tiny with it is refused (the tests pad it)', async () => {
  assert.is(loadTokenizer(V3_TOKENIZER, { tokenizerOnly: true }).vocabSize, 3013);
  assert.is(ref.vocab, 1000);
  const dir = mkdtempSync(join(tmpdir(), 'deepwasm-mismatch-'));
  try {
    for (const f of ['config.json', 'model.safetensors']) copyFileSync(join(V3_TINY, f), join(dir, f));
    for (const f of ['tokenizer.json', 'tokenizer_config.json']) copyFileSync(join(V3_TOKENIZER, f), join(dir, f));
    assert.match(await errorOf(() => loadModel(dir)), /tokenizer\.json has ids up to 3012 but config\.json vocab_size is 1000/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

for (const threads of [1, 2]) {
  test(`greedy generation from the fixture's input_ids reproduces its gen_ids (${threads} thread(s))`, async () => {
    const r = await withModel(threads, (m) => generateIds(m, promptIds, { maxTokens: genIds.length }));
    assert.equal(r.tokens, genIds);
    assert.is(r.finishReason, 'length');
    assert.is(r.promptTokens, promptIds.length);
    assert.ok(r.prefillMs > 0 && r.decodeMs > 0);
  });
}

test('maxTokens limits the output; end-of-sequence ids stop it and come last', async () => {
  await withModel(1, async (m) => {
    const five = await generateIds(m, promptIds, { maxTokens: 5 });
    assert.equal(five.tokens, genIds.slice(0, 5));
    assert.is(five.finishReason, 'length');
    const eos = await generateIds(m, promptIds, { eosTokenIds: [genIds[3]] });
    assert.equal(eos.tokens, genIds.slice(0, 4));
    assert.is(eos.finishReason, 'stop');
  });
});

test('a full context ends generation with finish reason length', async () => {
  const r = await withModel(1, (m) => generateIds(m, promptIds, { maxTokens: 100 }), 30);
  // Six decode steps fill positions 24..29; the seventh token comes from the last logits.
  assert.is(r.tokens.length, 7);
  assert.equal(r.tokens, genIds.slice(0, 7));
  assert.is(r.finishReason, 'length');
});

test('the same seed and options give the same tokens with 1 and 2 threads; another seed other tokens', async () => {
  const opts: GenerateIdsOptions = { temperature: 1.2, topK: 50, topP: 0.95, minP: 0.01, repetitionPenalty: 1.1, frequencyPenalty: 0.2, presencePenalty: 0.1, maxTokens: 40, seed: 42 };
  const one = await withModel(1, async (m) => [await generateIds(m, promptIds, opts), await generateIds(m, promptIds, opts)]);
  const two = await withModel(2, (m) => generateIds(m, promptIds, opts));
  const other = await withModel(1, (m) => generateIds(m, promptIds, { ...opts, seed: 43 }));
  assert.is(one[0].tokens.length, 40);
  assert.equal(one[1].tokens, one[0].tokens, 'again on the same model');
  assert.equal(two.tokens, one[0].tokens, '2 threads');
  assert.is(two.seed, 42);
  assert.not.equal(other.tokens, one[0].tokens);
});

test('an aborted signal stops generation between tokens, also when aborted from another task', async () => {
  await withModel(1, async (m) => {
    const before = await generateIds(m, promptIds, { signal: AbortSignal.abort() });
    assert.equal(before.tokens, []);
    assert.is(before.finishReason, 'abort');
    const ac = new AbortController();
    let ticks = 0;
    const tick = (): void => void (++ticks === 5 ? ac.abort() : setImmediate(tick));
    setImmediate(tick);
    const r = await generateIds(m, promptIds, { maxTokens: 200, signal: ac.signal });
    assert.is(r.finishReason, 'abort');
    assert.ok(r.tokens.length >= 1 && r.tokens.length <= 10, `${r.tokens.length} tokens before the abort`);
    assert.equal(r.tokens, genIds.slice(0, r.tokens.length));
  });
});

test('text generation: the stream, the pieces passed to onToken and generateText agree; BOS is added', async () => {
  const pieces: string[] = [];
  const whole = await text.generateText('Hello world', { maxTokens: 30, onToken: (t) => pieces.push(t) });
  const streamed: string[] = [];
  for await (const t of text.generate('Hello world', { maxTokens: 30 })) streamed.push(t);
  assert.is(whole.promptTokens, 7, 'BOS + the 6 tokens of "Hello world"');
  assert.is(whole.tokens.length, 30);
  assert.is(whole.finishReason, 'length');
  assert.is(whole.text, text.tokenizer.decode(whole.tokens, { skipSpecialTokens: true }));
  assert.ok(whole.text.length > 0);
  assert.equal(pieces, streamed);
  assert.is(streamed.join(''), whole.text);
  assert.ok(pieces.every((p) => p !== ''));
});

test('chat renders the template with the generation prompt and adds no second BOS', async () => {
  const messages = [{ role: 'user', content: 'Hi' }];
  const r = await text.chatText(messages, { maxTokens: 10 });
  assert.is(r.promptTokens, 5, '<BOS><User>Hi<Assistant> as in chat_cases.json');
  const direct = await generateIds(text.model, [0, 3000, 42, 75, 3001], { maxTokens: 10, eosTokenIds: [1] });
  assert.equal(r.tokens, direct.tokens);
  let streamed = '';
  for await (const t of text.chat(messages, { maxTokens: 10 })) streamed += t;
  assert.is(streamed, r.text);
});

test('a stop string spanning two tokens ends the text before it', async () => {
  const pieces: string[] = [];
  const free = await text.generateText('Hello world', { maxTokens: 40, onToken: (t) => pieces.push(t) });
  let stop: string | undefined;
  let at = 0;
  for (const p of pieces.slice(0, -1)) {
    at += p.length;
    const candidate = free.text.slice(at - 2, at + 2);
    if (at >= 2 && candidate.length === 4 && free.text.indexOf(candidate) === at - 2 && !candidate.includes('\ufffd')) {
      stop = candidate;
      break;
    }
  }
  assert.ok(stop !== undefined, `no piece boundary to put a stop string across in ${JSON.stringify(pieces)}`);
  const cut = free.text.indexOf(stop);
  const seen: string[] = [];
  const r = await text.generateText('Hello world', { maxTokens: 40, stop: ['never in the text', stop], onToken: (t) => seen.push(t) });
  assert.is(r.text, free.text.slice(0, cut));
  assert.is(seen.join(''), r.text, 'no part of the stop string was streamed');
  assert.is(r.finishReason, 'stop');
  assert.ok(r.tokens.length < 40);
});

test('the text API stops on abort and when the consumer stops reading', async () => {
  const ac = new AbortController();
  const r = await text.generateText('Hello world', { maxTokens: 50, signal: ac.signal, onToken: () => ac.abort() });
  assert.is(r.finishReason, 'abort');
  assert.ok(r.tokens.length >= 1 && r.tokens.length < 50);
  for await (const piece of text.generate('Hello world')) {
    assert.ok(piece.length > 0);
    break;
  }
  assert.is((await text.generateText('Hello world', { maxTokens: 2 })).tokens.length, 2, 'the model is free again');
});

test('the end-of-sequence id of config.json ends text generation without text', async () => {
  const first = (await text.generateText('Hello world', { maxTokens: 1 })).tokens[0];
  const eosDir = makeTextModelDir({ eos_token_id: [first] });
  try {
    const m = await loadModel(eosDir.dir, { threads: 1 });
    try {
      const r = await m.generateText('Hello world');
      assert.equal(r.tokens, [first]);
      assert.is(r.text, '');
      assert.is(r.finishReason, 'stop');
    } finally {
      await m.close();
    }
  } finally {
    eosDir.remove();
  }
});

test('as many generations at once as the model has sequences', async () => {
  const a = text.generateText('Hello world', { maxTokens: 5 });
  assert.match(await errorOf(() => text.generateText('Hello', { maxTokens: 5 })), /all 1 sequences of this model are in use/);
  assert.is((await a).tokens.length, 5);
  const two = await loadModel(fixture.dir, { threads: 1, maxSequences: 2 });
  try {
    const alone = [await two.generateText('Hello world', { maxTokens: 8 }), await two.generateText('The tide', { maxTokens: 8 })];
    const together = await Promise.all([two.generateText('Hello world', { maxTokens: 8 }), two.generateText('The tide', { maxTokens: 8 })]);
    assert.equal(together.map((r) => r.tokens), alone.map((r) => r.tokens));
    assert.not.equal(alone[0].tokens, alone[1].tokens);
  } finally {
    await two.close();
  }
});

test('close() during a generation ends it (finish reason abort) and closes the model', async () => {
  const m = await loadModel({ threads: 2 });
  const running = m.generateText('Once upon a time', { maxTokens: 100000 });
  await new Promise((resolve) => setTimeout(resolve, 50));
  await m.close();
  const r = await running;
  assert.is(r.finishReason, 'abort');
  assert.ok(r.tokens.length > 0 && r.tokens.length < 100000);
  assert.match(await errorOf(() => m.generateText('Hello', { maxTokens: 1 })), /this model is closed/);
});

test('loadModel takes the options alone (the embedded model), and says what it was given otherwise', async () => {
  const m = await loadModel({ threads: 1, contextLength: 64 });
  try {
    assert.is(m.model.contextLength, 64);
    assert.is((await m.generateText('Once upon a time', { maxTokens: 3 })).tokens.length, 3);
  } finally {
    await m.close();
  }
  assert.match(await errorOf(() => loadModel(42 as unknown as string)), /loadModel takes the model folder \(a string\) and\/or the load options \(an object\), got number/);
});

test('bad input fails with clear errors, before any token', async () => {
  assert.match(await errorOf(() => text.generate('')), /^the prompt is empty/);
  assert.match(await errorOf(() => text.generateText('')), /^the prompt is empty/);
  assert.match(await errorOf(() => text.generate('Hi', { temperature: -1 })), /^temperature must be a number >= 0/);
  assert.match(await errorOf(() => text.generate('Hi', { topP: 0 })), /^topP must be in \(0, 1\]/);
  assert.match(await errorOf(() => text.chat([])), /list of chat messages is empty/);
  assert.match(await errorOf(() => text.chat([{ role: 'user' } as never])), /message 0 needs a "content" string/);
  assert.match(await errorOf(() => generateIds(text.model, [])), /^the prompt is empty/);
  const small = await loadModel(fixture.dir, { threads: 1, contextLength: 4 });
  try {
    assert.match(await errorOf(() => small.generateText('Hello world')), /7 tokens exceed the context length \(4\)/);
    assert.is((await small.generateText('Hi', { maxTokens: 8 })).finishReason, 'length', 'usable after the error');
  } finally {
    await small.close();
  }
});

test('a folder without tokenizer files, or without anything, is named in the error', async () => {
  assert.match(await errorOf(() => loadModel(V3_TINY)), /v3-tiny has no tokenizer\.json/);
  assert.match(await errorOf(() => loadModel(join(tmpdir(), 'deepwasm-no-such-model'))), /model folder .*deepwasm-no-such-model does not exist/);
});

test('the default model is models/tiny at the repository root', async () => {
  assert.is(DEFAULT_MODEL_DIR, fileURLToPath(new URL('../../models/tiny', import.meta.url)));
  if (existsSync(DEFAULT_MODEL_DIR)) {
    const m = await loadModel(undefined, { threads: 1 });
    try {
      assert.is((await m.generateText('Once upon a time', { maxTokens: 3 })).tokens.length, 3);
    } finally {
      await m.close();
    }
  } else {
    assert.match(await errorOf(() => loadModel()), /the embedded model is not installed/);
  }
});

test.run();
