// Continuous batching: the scheduler runs every running generation in one forward() per step, prompts in
// chunks between decode steps, and each sequence's greedy tokens equal those it gets alone.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { generateIds, loadModel, type TextModel } from '../host/index.js';
import type { EndHow, StepStats, Work } from '../host/server/scheduler.js';
import { Scheduler } from '../host/server/scheduler.js';
import { argmax } from './helpers.js';

let text: TextModel;

test.before(async () => {
  text = await loadModel({ maxSequences: 4 });
});

test.after(async () => {
  await text.close();
});

/** Greedy decoding of `max` tokens as scheduler work; `done` resolves with the tokens. */
function greedy(prompt: number[], max: number): Work & { done: Promise<{ ids: number[]; how: EndHow }> } {
  const ids: number[] = [];
  let settle!: (r: { ids: number[]; how: EndHow }) => void;
  const done = new Promise<{ ids: number[]; how: EndHow }>((r) => (settle = r));
  return {
    prompt,
    done,
    step(logits) {
      ids.push(argmax(logits));
      return ids.length < max ? ids.at(-1) : undefined;
    },
    ended: (how) => settle({ ids, how }),
  };
}

const PROMPTS = ['Once upon a time', 'In the beginning God created the heaven and the earth. And the earth was without form, and void', 'The', 'And it came to pass, when men began to multiply on the face of the earth'];
const MAX = 24;

test('four generations, started at different steps, prompts in chunks of 8: each one greedy tokens equal its tokens alone', async () => {
  const prompts = PROMPTS.map((p) => text.tokenizer.encode(p, { addSpecialTokens: true }));
  assert.ok(prompts.some((p) => p.length > 16), 'a prompt spans several chunks');
  const alone: number[][] = [];
  for (const p of prompts) alone.push((await generateIds(text.model, p, { temperature: 0, maxTokens: MAX, eosTokenIds: [] })).tokens);

  const steps: StepStats[] = [];
  const scheduler = new Scheduler(text.model, { parallel: 4, queue: 0, prefillChunk: 8, onStep: (st) => steps.push(st) });
  const works = prompts.map((p) => greedy(p, MAX));
  // Started a few steps apart, so prompts are fed while others decode.
  for (const w of works) {
    scheduler.submit(w);
    const at = steps.length;
    while (steps.length < at + 3) await new Promise((r) => setImmediate(r));
  }
  const results = await Promise.all(works.map((w) => w.done));
  results.forEach((r, i) => {
    assert.is(r.how, 'done');
    assert.equal(r.ids, alone[i], `prompt ${i}`);
  });
  assert.ok(steps.some((st) => st.decodeTokens > 0 && st.prefillTokens > 0), 'a step fed a prompt chunk beside decode tokens');
  assert.ok(steps.some((st) => st.decodeTokens === 4), 'a step decoded all four at once');
  assert.ok(steps.every((st) => st.prefillTokens <= 8), 'no step took more prompt tokens than a chunk');
  const fed = steps.reduce((n, st) => n + st.prefillTokens, 0);
  assert.is(fed, prompts.reduce((n, p) => n + p.length, 0), 'every prompt token was fed once');
  // Each generation's first token comes from its prompt's last chunk; the rest are decode steps.
  assert.is(steps.reduce((n, st) => n + st.decodeTokens, 0), prompts.length * (MAX - 1));
  await scheduler.idle();
  assert.is(scheduler.sequencesInUse, 0);
});

test('a generation cancelled mid-way gives its sequence back before the next step, and the others keep their tokens', async () => {
  const prompts = PROMPTS.slice(0, 3).map((p) => text.tokenizer.encode(p, { addSpecialTokens: true }));
  const alone: number[][] = [];
  for (const p of prompts) alone.push((await generateIds(text.model, p, { temperature: 0, maxTokens: MAX, eosTokenIds: [] })).tokens);
  const entries: number[] = [];
  const scheduler = new Scheduler(text.model, { parallel: 3, queue: 0, prefillChunk: 64, onStep: (st) => entries.push(st.entries) });
  const works = prompts.map((p) => greedy(p, MAX));
  const tickets = works.map((w) => scheduler.submit(w));
  while (entries.length < 5) await new Promise((r) => setImmediate(r));
  tickets[1].cancel();
  assert.is(scheduler.active, 2, 'freed at once between steps');
  assert.is(scheduler.sequencesInUse, 2);
  const at = entries.length;
  const [a, b, c] = await Promise.all(works.map((w) => w.done));
  assert.is(b.how, 'cancelled');
  assert.ok(b.ids.length < MAX);
  assert.equal(a.ids, alone[0]);
  assert.equal(c.ids, alone[2]);
  assert.ok(entries.slice(at).every((n) => n <= 2), 'no later step ran the cancelled sequence');
});

test("a work whose decode entry() throws (a draft that failed) fails alone, its sequence freed, and the others keep their tokens", async () => {
  const prompts = PROMPTS.slice(0, 2).map((p) => text.tokenizer.encode(p, { addSpecialTokens: true }));
  const alone = (await generateIds(text.model, prompts[0], { temperature: 0, maxTokens: MAX, eosTokenIds: [] })).tokens;
  const scheduler = new Scheduler(text.model, { parallel: 2, queue: 0, prefillChunk: 64 });
  const good = greedy(prompts[0], MAX);
  const broken = Object.assign(greedy(prompts[1], MAX), {
    entry(): undefined {
      throw new Error('the draft broke');
    },
  });
  let error: unknown;
  broken.ended = (how, e) => {
    error = e;
    assert.is(how, 'failed');
  };
  scheduler.submit(good);
  scheduler.submit(broken);
  const r = await good.done;
  assert.equal(r.ids, alone);
  assert.match(String(error), 'the draft broke');
  await scheduler.idle();
  assert.is(scheduler.sequencesInUse, 0);
});

test('a queue of 1 behind 1 sequence: the third submission is refused, the second runs when the first ends', async () => {
  const prompt = text.tokenizer.encode('The', { addSpecialTokens: true });
  const scheduler = new Scheduler(text.model, { parallel: 1, queue: 1, prefillChunk: 64 });
  const first = greedy(prompt, 4);
  const second = greedy(prompt, 4);
  scheduler.submit(first);
  scheduler.submit(second);
  assert.throws(() => scheduler.submit(greedy(prompt, 4)), /all 1 sequences are busy and the queue of 1 is full/);
  const [a, b] = await Promise.all([first.done, second.done]);
  assert.equal(a.ids, b.ids);
  await scheduler.idle();
  assert.is(scheduler.sequencesInUse, 0);
});

test.run();
