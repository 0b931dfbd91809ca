// The embedded default model reproduces the greedy continuations that transformers recorded when it
// was trained (tools/train_tiny.py), token for token, from the prompt text through the tokenizer.
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { loadTokenizer } from '../host/tokenizer/load.js';
import { argmax, loadOne } from './helpers.js';

const DIR = fileURLToPath(new URL('../../models/tiny', import.meta.url));

interface Recorded {
  prompt: string;
  input_ids: number[];
  output_ids: number[];
  output_text: string;
}

const expected = JSON.parse(readFileSync(`${DIR}/expected.json`, 'utf8')) as { prompts: Recorded[] };

test('three recorded prompts are checked', () => {
  assert.is(expected.prompts.length, 3);
});

for (const rec of expected.prompts) {
  test(`embedded model: greedy continuation of ${JSON.stringify(rec.prompt)} equals transformers'`, async () => {
    const tokenizer = loadTokenizer(DIR);
    assert.equal(tokenizer.encode(rec.prompt, { addSpecialTokens: true }), rec.input_ids, 'prompt ids');
    const model = await loadOne(DIR, { threads: 2 });
    try {
      const out: number[] = [];
      let logits = model.forward(rec.input_ids);
      while (out.length < rec.output_ids.length) {
        out.push(argmax(logits));
        logits = model.forward([out[out.length - 1]]);
      }
      assert.equal(out, rec.output_ids);
      assert.is(tokenizer.decode(out), rec.output_text);
    } finally {
      await model.close();
    }
  });
}

test.run();
