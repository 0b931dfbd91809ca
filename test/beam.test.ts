// Beam search against transformers' generate(num_beams=N, length_penalty=L, early_stopping=E, do_sample=False,
// max_new_tokens=M) on the embedded model: test/fixtures/beam/tiny.json, recorded by tools/beam_refs.py.
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { DEFAULT_MODEL_DIR, DeepWasmError, Model } from '../host/index.js';
import { beamSearch } from '../host/generate/beam.js';

interface Case {
  prompt: string;
  input_ids: number[];
  num_beams: number;
  length_penalty: number;
  early_stopping: boolean;
  max_new_tokens: number;
  output_ids: number[];
  score: number;
}

const refs = JSON.parse(readFileSync(fileURLToPath(new URL('../../test/fixtures/beam/tiny.json', import.meta.url)), 'utf8')) as { cases: Case[] };
const MAX_BEAMS = Math.max(...refs.cases.map((c) => c.num_beams));
let model: Model;

test.before(async () => {
  model = await Model.load(DEFAULT_MODEL_DIR, { threads: 2, maxSequences: MAX_BEAMS, contextLength: 128 });
});

test.after(async () => {
  await model.close();
});

test('beam ids equal transformers on every recorded prompt and setting, scores within 1e-3', async () => {
  assert.ok(refs.cases.length >= 20 && refs.cases.some((c) => c.output_ids.at(-1) === 1), 'the references include hypotheses ended by EOS');
  for (const c of refs.cases) {
    const r = await beamSearch(model, c.input_ids, { numBeams: c.num_beams, lengthPenalty: c.length_penalty, earlyStopping: c.early_stopping, maxTokens: c.max_new_tokens });
    const what = `${JSON.stringify(c.prompt)} beams ${c.num_beams} penalty ${c.length_penalty} early ${c.early_stopping} max ${c.max_new_tokens}`;
    assert.equal(r.tokens, c.output_ids, what);
    assert.ok(Math.abs(r.score - c.score) <= 1e-3 * Math.max(1, Math.abs(c.score)), `${what}: score ${r.score} vs ${c.score}`);
  }
});

test('beams give their sequences back, and more beams than sequences is a clear error', async () => {
  const c = refs.cases[0];
  await beamSearch(model, c.input_ids, { numBeams: MAX_BEAMS, maxTokens: 4 });
  const all = Array.from({ length: MAX_BEAMS }, () => model.createSequence());
  all.forEach((s) => model.free(s));
  for (const [opts, message] of [
    [{ numBeams: MAX_BEAMS + 1 }, `${MAX_BEAMS + 1} beams need ${MAX_BEAMS + 1} sequences`],
    [{ numBeams: 0 }, 'numBeams must be a whole number >= 1, got 0'],
    [{ numBeams: 2, lengthPenalty: Number.NaN }, 'lengthPenalty must be a finite number'],
  ] as const) {
    try {
      await beamSearch(model, c.input_ids, opts);
      assert.unreachable(`expected an error for ${JSON.stringify(opts)}`);
    } catch (e) {
      assert.instance(e, DeepWasmError);
      assert.match((e as Error).message, message);
    }
  }
});

test.run();
