// One model over several WebAssembly memories computes the same bits as in one: every fixture in each weight
// format it loads in, with one and two threads, prefill (every position, in passes too) and decode, spread
// over at least three memories with a layer's experts split between two. The memories hold what the plan says,
// and a limit below the largest unit is refused by name.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import type { LoadOptions } from '../host/model/backend.js';
import type { QuantName } from '../host/model/weights.js';
import { cli, fails } from './cli-process.js';
import { fixtureTextDir } from './text-fixture.js';
import { FIXTURES, MODEL_FIXTURES, argmax, loadOne, readExpected, splitLayers, splitLimit } from './helpers.js';

const DECODE = 6;
const cleanups: (() => void)[] = [];
const onExit = (f: () => void): number => cleanups.push(f);
test.after(() => cleanups.forEach((f) => f()));

/** Every position's prefill logits, then DECODE greedy steps' logits, all in one array. */
async function run(dir: string, opts: LoadOptions, ids: number[]): Promise<{ logits: Float32Array; greedy: number[]; memories: number }> {
  const model = await loadOne(dir, { contextLength: 64, ...opts });
  try {
    const V = model.config.vocabSize;
    const out = new Float32Array((ids.length + DECODE) * V);
    out.set(model.forward(ids, { allLogits: true }));
    const greedy: number[] = [];
    let last = out.subarray((ids.length - 1) * V, ids.length * V);
    for (let k = 0; k < DECODE; k++) {
      greedy.push(argmax(last));
      out.set(model.forward([greedy[k]]), (ids.length + k) * V);
      last = out.subarray((ids.length + k) * V, (ids.length + k + 1) * V);
    }
    return { logits: out, greedy, memories: model.model.memories.length };
  } finally {
    await model.close();
  }
}

for (const name of MODEL_FIXTURES) {
  const formats: (QuantName | undefined)[] = [undefined, 'q8', 'q4', name === 'v3-fp8-blocks' ? 'fp8' : 'bf16'];
  test(`${name}: over several memories, every format and thread count gives the bits of one memory`, async () => {
    const dir = `${FIXTURES}models/${name}`;
    const ids = Array.from(readExpected(`${dir}/expected.safetensors`).inputIds);
    for (const quant of formats) {
      const memoryLimit = await splitLimit(dir, { quant });
      for (const threads of [1, 2]) {
        for (const passTokens of [undefined, 5]) {
          const what = `${quant ?? 'default'}, ${threads} thread(s)${passTokens ? ', passes of 5' : ''}`;
          const one = await run(dir, { quant, threads, passTokens }, ids);
          const many = await run(dir, { quant, threads, passTokens, memoryLimit }, ids);
          assert.is(one.memories, 1, what);
          assert.ok(many.memories >= 3, `${what}: ${many.memories} memories`);
          assert.equal(many.greedy, one.greedy, `${what}: greedy`);
          const differ = many.logits.findIndex((v, i) => !Object.is(v, one.logits[i]));
          assert.is(differ, -1, `${what}: logit ${differ} differs: ${many.logits[differ]} vs ${one.logits[differ]}`);
        }
      }
    }
  });
}

test('the memories hold what the plan lists, and the CLI runs a model over them with the same text', async () => {
  const dir = `${FIXTURES}models/v3-tiny`;
  const limit = await splitLimit(dir);
  const model = await loadOne(dir, { memoryLimit: limit, threads: 1 });
  try {
    const { memories, runtimes, weightBytes } = model.model;
    assert.is(runtimes.length, memories.length);
    assert.ok(memories.every((m) => m.bytes <= limit), 'a memory over the limit');
    assert.ok(memories.reduce((n, m) => n + m.bytes, 0) >= weightBytes, 'the plan holds every weight');
    assert.match(model.model.device, new RegExp(`, ${memories.length} memories\\)$`));
    assert.ok(splitLayers(memories).length > 0);
  } finally {
    await model.close();
  }
  const text = fixtureTextDir('v3-tiny');
  onExit(text.remove);
  const args = ['run', '--model', text.dir, '--prompt', 'Once upon a time', '--max-tokens', '12', '--temperature', '0', '--threads', '2'];
  const one = cli(args);
  const many = cli([...args, '--memory-limit', String(limit / 1048576)]);
  assert.is(one.status, 0, one.stderr);
  assert.is(many.status, 0, many.stderr);
  assert.is(many.stdout, one.stdout);
});

test('a memory limit below the largest unit is refused by name, before loading', () => {
  const text = fixtureTextDir('v3-tiny');
  onExit(text.remove);
  const dir = text.dir;
  fails(cli(['run', '--model', dir, '--prompt', 'hi', '--memory-limit', '0.01']), /embedding takes 0\.\d\d MiB, more than the memory limit of 0\.01 MiB; raise --memory-limit/, 'unit over the limit');
  fails(cli(['run', '--model', dir, '--prompt', 'hi', '--memory-limit', '0']), /--memory-limit must be at least 0\.001, got 0/, 'zero');
  fails(cli(['run', '--model', dir, '--prompt', 'hi', '--memory-limit', 'big']), /--memory-limit expects a number, got "big"/, 'not a number');
  fails(cli(['bench', '--model', dir, '--memory-limit', '99999']), /a memory limit of 99999 MiB \(--memory-limit, memoryLimit\) is not one a memory can hold: expected more than 0 and at most \d+ MiB/, 'over a wasm32 memory');
});

test.run();
