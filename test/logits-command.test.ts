// `deepwasm logits` end to end: the file it writes matches the reference fixtures, and every kind of
// bad input gets one clear error line, exit code 1 and no stack trace, without hanging.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { FIXTURES, maxAbsDiff, readExpected } from './helpers.js';

const CLI = fileURLToPath(new URL('../host/cli/main.js', import.meta.url));
const TINY = `${FIXTURES}models/v3-tiny`;
const SHARDED = `${FIXTURES}models/v3-odd-bf16-sharded`;
const work = fs.mkdtempSync(join(tmpdir(), 'deepwasm-logits-'));

function deepwasm(...args: string[]) {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', timeout: 60_000 });
  assert.ok(r.signal === null, `deepwasm ${args.join(' ')} was killed by ${r.signal} (hung?)`);
  return r;
}

/** Runs `deepwasm logits` and checks it fails cleanly with a message matching every pattern. */
function expectError(args: string[], ...patterns: RegExp[]): void {
  const r = deepwasm('logits', ...args);
  assert.is(r.status, 1, `exit code (stderr: ${r.stderr})`);
  assert.match(r.stderr, /^error: /);
  assert.not.match(r.stderr, /\n\s+at /, 'no stack trace');
  for (const p of patterns) assert.match(r.stderr, p);
}

/** A copy of a fixture checkpoint whose files the test may break. */
function copyOf(src: string, name: string): string {
  const dir = join(work, name);
  fs.cpSync(src, dir, { recursive: true });
  for (const f of fs.readdirSync(dir)) fs.chmodSync(join(dir, f), 0o644);
  return dir;
}

function editConfig(dir: string, edit: (c: Record<string, unknown>) => void): void {
  const path = join(dir, 'config.json');
  const c = JSON.parse(fs.readFileSync(path, 'utf8'));
  edit(c);
  fs.writeFileSync(path, JSON.stringify(c));
}

/** Rewrites the safetensors header of dir/model.safetensors (keeping the data section). */
function editHeader(dir: string, edit: (h: Record<string, { dtype: string; shape: number[]; data_offsets: number[] }>) => void): void {
  const path = join(dir, 'model.safetensors');
  const bytes = fs.readFileSync(path);
  const n = Number(bytes.readBigUInt64LE(0));
  const header = JSON.parse(bytes.subarray(8, 8 + n).toString('utf8'));
  edit(header);
  let text = JSON.stringify(header);
  text += ' '.repeat((8 - (text.length % 8)) % 8);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(text.length));
  fs.writeFileSync(path, Buffer.concat([len, Buffer.from(text), bytes.subarray(8 + n)]));
}

test('writes the reference logits, greedy ids and decode logits (v3-tiny, --gen 12)', () => {
  const ref = readExpected(`${TINY}/expected.safetensors`);
  const out = join(work, 'out.safetensors');
  const r = deepwasm('logits', '--model', TINY, '--ids', Array.from(ref.inputIds).join(','), '--gen', String(ref.genIds.length), '--threads', '2', '--out', out);
  assert.is(r.status, 0, r.stderr);
  const got = readExpected2(out);
  assert.ok(maxAbsDiff(got.logits, ref.logits) < 2e-3, 'prompt logits');
  assert.equal(Array.from(got.genIds), Array.from(ref.genIds));
  assert.ok(maxAbsDiff(got.genLogits, ref.genLogits) < 2e-3, 'decode logits');
});

/** The output file holds only logits / gen_ids / gen_logits, not input_ids. */
function readExpected2(path: string) {
  const bytes = fs.readFileSync(path);
  const n = Number(bytes.readBigUInt64LE(0));
  const header = JSON.parse(bytes.subarray(8, 8 + n).toString('utf8'));
  const data = bytes.subarray(8 + n);
  const view = (name: string, T: typeof Float32Array | typeof Int32Array) => {
    const [a, b] = header[name].data_offsets;
    return new T(data.buffer.slice(data.byteOffset + a, data.byteOffset + b));
  };
  assert.equal(Object.keys(header).filter((k) => k !== '__metadata__').sort(), ['gen_ids', 'gen_logits', 'logits']);
  return { logits: view('logits', Float32Array), genIds: view('gen_ids', Int32Array), genLogits: view('gen_logits', Float32Array) };
}

test('truncated safetensors file', () => {
  const dir = copyOf(TINY, 'truncated');
  const path = join(dir, 'model.safetensors');
  fs.truncateSync(path, fs.statSync(path).size - 1000);
  expectError(['--model', dir, '--ids', '1,2', '--out', join(work, 'x')], /model\.safetensors/, /past the end|truncated|shorter/);
});

test('absurd header length', () => {
  const dir = copyOf(TINY, 'absurd');
  const path = join(dir, 'model.safetensors');
  const fd = fs.openSync(path, 'r+');
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(1n << 60n);
  fs.writeSync(fd, len, 0, 8, 0);
  fs.closeSync(fd);
  expectError(['--model', dir, '--ids', '1,2', '--out', join(work, 'x')], /model\.safetensors/, /header/);
});

test('header that is not JSON', () => {
  const dir = copyOf(TINY, 'notjson');
  const path = join(dir, 'model.safetensors');
  const fd = fs.openSync(path, 'r+');
  fs.writeSync(fd, Buffer.from('{{{{{{'), 0, 6, 8);
  fs.closeSync(fd);
  expectError(['--model', dir, '--ids', '1,2', '--out', join(work, 'x')], /model\.safetensors/, /JSON/);
});

test('tensor offsets past the end of the file', () => {
  const dir = copyOf(TINY, 'offsets');
  editHeader(dir, (h) => {
    const t = h['model.norm.weight'];
    t.data_offsets = [t.data_offsets[0] + 10_000_000, t.data_offsets[1] + 10_000_000];
  });
  expectError(['--model', dir, '--ids', '1,2', '--out', join(work, 'x')], /model\.norm\.weight/, /past the end/);
});

test('unknown dtype', () => {
  const dir = copyOf(TINY, 'dtype');
  editHeader(dir, (h) => {
    h['model.norm.weight'].dtype = 'Q9_K';
  });
  expectError(['--model', dir, '--ids', '1,2', '--out', join(work, 'x')], /model\.norm\.weight/, /Q9_K/);
});

test('a shard named in the index is missing', () => {
  const dir = copyOf(SHARDED, 'missing-shard');
  fs.rmSync(join(dir, 'model-00002-of-00003.safetensors'));
  expectError(['--model', dir, '--ids', '1,2', '--out', join(work, 'x')], /model-00002-of-00003\.safetensors/, /index/);
});

test('config without a required field', () => {
  const dir = copyOf(TINY, 'no-hidden');
  editConfig(dir, (c) => delete c.hidden_size);
  expectError(['--model', dir, '--ids', '1,2', '--out', join(work, 'x')], /config\.json/, /hidden_size/);
});

test('unknown model_type', () => {
  const dir = copyOf(TINY, 'llama');
  editConfig(dir, (c) => (c.model_type = 'llama'));
  expectError(['--model', dir, '--ids', '1,2', '--out', join(work, 'x')], /llama/, /deepseek_v3/);
});

test('config and tensor shapes disagree', () => {
  const dir = copyOf(TINY, 'shape');
  editConfig(dir, (c) => (c.q_lora_rank = 40));
  expectError(['--model', dir, '--ids', '1,2', '--out', join(work, 'x')], /q_a_proj\.weight/, /\[48, 64\]/, /q_lora_rank/);
});

test('token id outside the vocabulary', () => {
  expectError(['--model', TINY, '--ids', '5,1000', '--out', join(work, 'x')], /token id 1000/, /0 to 999/);
});

test('prompt longer than max_position_embeddings', () => {
  const ids = Array.from({ length: 300 }, (_, i) => i % 100).join(',');
  expectError(['--model', TINY, '--ids', ids, '--out', join(work, 'x')], /300 tokens/, /max_position_embeddings \(256\)/);
});

test('prompt and generated tokens past the context length', () => {
  expectError(['--model', TINY, '--ids', '1,2,3', '--context', '4', '--gen', '3', '--out', join(work, 'x')], /context length \(4\)/);
});

test('bad flags', () => {
  expectError(['--model', TINY, '--ids', '1,x', '--out', join(work, 'x')], /--ids entry 1/);
  expectError(['--model', TINY, '--ids', '1', '--gen', '-1', '--out', join(work, 'x')], /--gen must be at least 0/);
  expectError(['--model', TINY, '--ids', '1', '--threads', '0', '--out', join(work, 'x')], /--threads/);
  expectError(['--model', TINY, '--ids', '1', '--out', join(work, 'x'), '--frobnicate'], /unknown flag --frobnicate/);
  expectError(['--ids', '1', '--out', join(work, 'x')], /--model/);
  expectError(['--model', join(work, 'nowhere'), '--ids', '1', '--out', join(work, 'x')], /nowhere/);
});

test.after(() => fs.rmSync(work, { recursive: true, force: true }));

test.run();
