// `deepwasm convert`: the written checkpoint follows docs/quantized-format.md and loads without
// quantizing again into the very weights the loader makes from the original with --quant (logits
// identical to the last bit); errors for the cases that cannot work.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { openSafetensors } from '../host/checkpoint/safetensors.js';
import { convertCheckpoint } from '../host/model/convert.js';
import type { QuantName } from '../host/model/weights.js';
import { FIXTURES, loadOne, readExpected } from './helpers.js';

const CLI = fileURLToPath(new URL('../host/cli/main.js', import.meta.url));
const tmp = fs.mkdtempSync(join(tmpdir(), 'deepwasm-convert-'));

test.after(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** Prefill logits of the fixture prompt and three decode steps, as one array. */
async function logits(dir: string, quant?: QuantName, threads = 2): Promise<Float32Array> {
  const ref = readExpected(`${FIXTURES}models/${dirName(dir)}/expected.safetensors`);
  const model = await loadOne(dir, { threads, quant });
  try {
    const parts = [model.forward(ref.inputIds, { allLogits: true }).slice()];
    for (let k = 0; k < 3; k++) parts.push(model.forward([ref.genIds[k]]).slice());
    const out = new Float32Array(parts.reduce((n, p) => n + p.length, 0));
    let at = 0;
    for (const p of parts) out.set(p, (at += p.length) - p.length);
    return out;
  } finally {
    await model.close();
  }
}

const sources = new Map<string, string>();
function dirName(dir: string): string {
  return sources.get(dir) ?? dir.split('/').filter(Boolean).pop()!;
}

const bits = (a: Float32Array) => new Uint32Array(a.buffer, a.byteOffset, a.length);

for (const [fixture, quant] of [['v3-tiny', 'q8'], ['v3-tiny', 'q4'], ['v3-odd-bf16-sharded', 'q4'], ['v3-fp8-blocks', 'q8']] as const) {
  test(`convert ${fixture} to ${quant}: loading it gives the logits of loading ${fixture} with --quant ${quant}, bit for bit`, async () => {
    const out = join(tmp, `${fixture}-${quant}`);
    const src = `${FIXTURES}models/${fixture}`;
    sources.set(out, fixture);
    const r = await convertCheckpoint(src, out, { quant, threads: 2 });
    assert.ok(r.tensors > 0 && r.shards === 1);
    const direct = await logits(src, quant);
    const converted = await logits(out, undefined, 1);
    assert.equal(bits(converted), bits(direct));
  });
}

test('the converted checkpoint: config, metadata, tensor names, dtypes and shapes as documented', () => {
  const dir = join(tmp, 'v3-odd-bf16-sharded-q4');
  const config = JSON.parse(fs.readFileSync(join(dir, 'config.json'), 'utf8'));
  assert.equal(
    { quant_method: config.quantization_config.quant_method, format: config.quantization_config.format, group_size: config.quantization_config.group_size },
    { quant_method: 'deepwasm', format: 'q4', group_size: 32 },
  );
  const f = openSafetensors(join(dir, 'model.safetensors'));
  assert.is(f.metadata.format, 'deepwasm-q4');
  assert.is(f.metadata.group_size, '32');
  // down_proj [72, 100]: 100 columns = 4 groups (the last one partial), 16 bytes each in q4.
  const down = f.tensors.get('model.layers.0.mlp.down_proj.weight')!;
  assert.equal([down.dtype, down.shape], ['U8', [72, 64]]);
  const scale = f.tensors.get('model.layers.0.mlp.down_proj.weight_scale')!;
  assert.equal([scale.dtype, scale.shape], ['F32', [72, 4]]);
  // kept in float: embeddings, kv_b, router; vectors as they were
  assert.is(f.tensors.get('model.embed_tokens.weight')!.dtype, 'BF16');
  assert.is(f.tensors.get('model.layers.0.self_attn.kv_b_proj.weight')!.dtype, 'BF16');
  assert.is(f.tensors.get('model.layers.2.mlp.gate.weight')!.dtype, 'BF16');
  assert.is(f.tensors.get('model.layers.0.input_layernorm.weight')!.dtype, 'BF16');
  assert.not.ok(f.tensors.has('model.layers.0.input_layernorm.weight_scale'));
  const q8 = openSafetensors(join(tmp, 'v3-fp8-blocks-q8', 'model.safetensors'));
  const gate = q8.tensors.get('model.layers.1.mlp.experts.0.gate_proj.weight')!;
  assert.equal([gate.dtype, gate.shape], ['I8', [160, 256]]);
  assert.not.ok([...q8.tensors.keys()].some((n) => n.endsWith('weight_scale_inv')));
  assert.is(q8.tensors.get('model.layers.0.self_attn.kv_b_proj.weight')!.dtype, 'F32'); // fp8 kv_b widened, as the loader does
});

test('tokenizer and generation files are copied; a sharded source is read through its index', async () => {
  const src = join(tmp, 'with-tokenizer');
  fs.cpSync(`${FIXTURES}models/v3-odd-bf16-sharded`, src, { recursive: true });
  fs.writeFileSync(join(src, 'tokenizer.json'), '{"model": {}}');
  fs.writeFileSync(join(src, 'tokenizer_config.json'), '{"add_bos_token": true}');
  const out = join(tmp, 'with-tokenizer-q8');
  await convertCheckpoint(src, out, { quant: 'q8', threads: 1 });
  assert.is(fs.readFileSync(join(out, 'tokenizer.json'), 'utf8'), '{"model": {}}');
  assert.is(fs.readFileSync(join(out, 'tokenizer_config.json'), 'utf8'), '{"add_bos_token": true}');
  assert.not.ok(fs.existsSync(join(out, 'expected.safetensors')));
});

test('errors: converting a converted checkpoint, a non-empty --out, a converted checkpoint loaded in another format', async () => {
  const converted = join(tmp, 'v3-tiny-q8');
  await assertRejects(convertCheckpoint(converted, join(tmp, 'again'), { quant: 'q4' }), /already a deepwasm q8 checkpoint/);
  await assertRejects(convertCheckpoint(`${FIXTURES}models/v3-tiny`, converted, { quant: 'q8' }), /exists and is not empty/);
  await assertRejects(loadOne(converted, { threads: 1, quant: 'q4' }), /written by "deepwasm convert" in q8; it loads only as q8/);
});

test('CLI: deepwasm convert, then deepwasm logits --quant gives the same file as logits on the converted folder', () => {
  const out = join(tmp, 'cli-q8');
  const run = (...args: string[]) => spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8' });
  let r = run('convert', '--model', `${FIXTURES}models/v2-lite-tiny`, '--quant', 'q8', '--out', out, '--threads', '1');
  assert.is(r.status, 0, r.stderr);
  assert.match(r.stderr, /wrote \d+ tensors/);
  r = run('logits', '--model', `${FIXTURES}models/v2-lite-tiny`, '--quant', 'q8', '--ids', '1,5,9,30', '--gen', '2', '--out', join(tmp, 'a.safetensors'), '--threads', '1');
  assert.is(r.status, 0, r.stderr);
  r = run('logits', '--model', out, '--ids', '1,5,9,30', '--gen', '2', '--out', join(tmp, 'b.safetensors'), '--threads', '2');
  assert.is(r.status, 0, r.stderr);
  assert.equal(fs.readFileSync(join(tmp, 'a.safetensors')), fs.readFileSync(join(tmp, 'b.safetensors')));
  r = run('convert', '--model', `${FIXTURES}models/v2-lite-tiny`, '--quant', 'bf16', '--out', join(tmp, 'x'));
  assert.is(r.status, 1);
  assert.match(r.stderr, /convert writes q8 or q4/);
  r = run('logits', '--model', `${FIXTURES}models/v2-lite-tiny`, '--quant', 'q5', '--ids', '1', '--out', join(tmp, 'c.safetensors'));
  assert.is(r.status, 1);
  assert.match(r.stderr, /--quant is "q5": expected one of f32, bf16, q8, q4, fp8/);
});

async function assertRejects(p: Promise<unknown>, re: RegExp): Promise<void> {
  try {
    await p;
  } catch (e) {
    assert.match((e as Error).message, re);
    return;
  }
  assert.unreachable(`expected an error matching ${re}`);
}

test.run();
