// --draft, --draft-tokens, --num-beams, --length-penalty and --early-stopping as users run them: run and logits
// give the plain greedy text and ids with a draft and transformers' beam ids, and bad combinations are one line.
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { openSafetensors, readTensorInto } from '../host/checkpoint/safetensors.js';
import { DEFAULT_MODEL_DIR, loadTokenizer } from '../host/index.js';
import { cli, fails } from './cli-process.js';
import { FIXTURES, readExpected } from './helpers.js';
import { makeTextModelDir } from './text-fixture.js';

interface Case { prompt: string; input_ids: number[]; num_beams: number; length_penalty: number; early_stopping: boolean; max_new_tokens: number; output_ids: number[] }
const beams = (JSON.parse(readFileSync(`${FIXTURES}beam/tiny.json`, 'utf8')) as { cases: Case[] }).cases;
const out = mkdtempSync(join(tmpdir(), 'deepwasm-decode-cli-'));
const fixture = makeTextModelDir();

test.after(() => {
  rmSync(out, { recursive: true, force: true });
  fixture.remove();
});

function ints(file: string, name: string): number[] {
  const e = openSafetensors(file).tensors.get(name)!;
  const bytes = new Uint8Array(e.nbytes);
  readTensorInto(e, bytes);
  return Array.from(new Int32Array(bytes.buffer));
}

test('run --draft mtp and --draft DIR print the plain greedy text and how often drafts were kept', () => {
  const args = ['run', '--prompt', 'Once upon a time', '--max-tokens', '24', '--threads', '1'];
  const plain = cli(args);
  assert.is(plain.status, 0, plain.stderr);
  for (const draft of [['--draft', 'mtp', '--draft-tokens', '2'], ['--draft', DEFAULT_MODEL_DIR]]) {
    const r = cli([...args, ...draft]);
    assert.is(r.status, 0, r.stderr);
    assert.is(r.stdout, plain.stdout, draft.join(' '));
    assert.match(r.stderr, /drafts kept \d+%/);
  }
});

test('run --num-beams prints the text of transformers\' best hypothesis', () => {
  const c = beams.find((b) => b.num_beams === 4 && b.length_penalty === 1 && !b.early_stopping && b.max_new_tokens === 24)!;
  const r = cli(['run', '--prompt', c.prompt, '--max-tokens', String(c.max_new_tokens), '--num-beams', '4', '--threads', '1']);
  assert.is(r.status, 0, r.stderr);
  const tok = loadTokenizer(DEFAULT_MODEL_DIR);
  assert.is(r.stdout, tok.decode(c.output_ids.filter((id) => id !== 1), { skipSpecialTokens: true }));
  assert.match(r.stderr, /beam score -\d/);
});

test('logits --gen with --num-beams writes the reference ids; with --draft mtp the plain greedy ids', () => {
  const c = beams.find((b) => b.early_stopping && b.length_penalty === 0.5)!;
  const file = join(out, 'beam.safetensors');
  const r = cli(['logits', '--model', DEFAULT_MODEL_DIR, '--ids', c.input_ids.join(','), '--gen', String(c.max_new_tokens), '--num-beams', String(c.num_beams), '--length-penalty', '0.5', '--early-stopping', '--out', file, '--threads', '1']);
  assert.is(r.status, 0, r.stderr);
  assert.equal(ints(file, 'gen_ids'), c.output_ids);
  const dir = `${FIXTURES}models/v3-tiny-mtp`;
  const ref = readExpected(`${dir}/expected.safetensors`);
  const spec = join(out, 'spec.safetensors');
  const s = cli(['logits', '--model', dir, '--ids', Array.from(ref.inputIds).join(','), '--gen', String(ref.genIds.length), '--draft', 'mtp', '--draft-tokens', '3', '--out', spec, '--threads', '1']);
  assert.is(s.status, 0, s.stderr);
  assert.equal(ints(spec, 'gen_ids'), Array.from(ref.genIds));
});

test('bad decoding flags are one-line errors', () => {
  const run = ['run', '--prompt', 'Hi', '--threads', '1'];
  fails(cli([...run, '--num-beams', '0']), /--num-beams must be at least 1, got 0/, 'zero beams');
  fails(cli([...run, '--length-penalty', '2']), /--length-penalty needs --num-beams/, 'penalty alone');
  fails(cli([...run, '--num-beams', '2', '--temperature', '0.7']), /--temperature does not go with --num-beams/, 'beams and sampling');
  fails(cli([...run, '--num-beams', '2', '--draft', 'mtp']), /--draft does not go with --num-beams/, 'beams and draft');
  fails(cli([...run, '--draft-tokens', '2']), /--draft-tokens needs --draft/, 'draft tokens alone');
  fails(cli([...run, '--draft', 'mtp', '--draft-tokens', '17']), /--draft-tokens must be at most 16/, 'too many draft tokens');
  fails(cli([...run, '--model', fixture.dir, '--draft', 'mtp']), /has no MTP layer \(num_nextn_predict_layers is 0 in config.json\); draft with another model \(--draft DIR\)/, 'no MTP layer');
  fails(cli([...run, '--draft', fixture.dir]), /the draft model's tokenizer differs from the model's/, 'other tokenizer');
  fails(cli(['logits', '--model', DEFAULT_MODEL_DIR, '--ids', '0,5', '--draft', 'mtp', '--out', join(out, 'x.safetensors')]), /--draft needs --gen N/, 'logits draft without --gen');
});

test.run();
