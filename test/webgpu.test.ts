// The WebGPU backend (host/backends/webgpu/) on whatever adapter the machine has: in CI, SwiftShader, the
// CPU Vulkan driver of Debian's chromium package. `deepwasm logits --backend webgpu` on every reference
// fixture: every prompt logit within 2e-3 and the greedy ids equal; the plain reductions with weights
// split into small buffers and prompts in several passes; q8 and q4; greedy on the device, batches,
// fork and truncate; `run` prints the CPU's text; `bench` runs; the same under `deno run` (Deno's own
// navigator.gpu); clear errors. Without an adapter the
// tests are skipped with one line, except under CI (CI=true), where that is a failure.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { openSafetensors, readTensorInto } from '../host/checkpoint/safetensors.js';
import { MAIN } from './cli-process.js';
import { DENO_ENV, denoBinary } from './deno-bin.js';
import { FIXTURES, MODEL_FIXTURES, maxAbsDiff, readExpected } from './helpers.js';
import { webgpuAdapter, webgpuEnv } from './webgpu-env.js';

const TOL = 2e-3;
const IN_CI = process.env.CI === 'true' || process.env.CI === '1';
const LIBRARY = fileURLToPath(new URL('./webgpu-library.js', import.meta.url));
const work = fs.mkdtempSync(join(tmpdir(), 'deepwasm-webgpu-'));
const fixture = (name: string) => `${FIXTURES}models/${name}`;

function node(args: string[], env = webgpuEnv()) {
  const r = spawnSync(process.execPath, args, { env, encoding: 'utf8', timeout: 170_000 });
  assert.ok(r.signal === null, `node ${args.join(' ')} was killed by ${r.signal}`);
  return r;
}

function deepwasm(...args: string[]) {
  return node([MAIN, ...args]);
}

function tensor(path: string, name: string): ArrayBuffer {
  const e = openSafetensors(path).tensors.get(name)!;
  const bytes = new Uint8Array(e.nbytes);
  readTensorInto(e, bytes);
  return bytes.buffer;
}

/** The JSON lines test/webgpu-library.ts prints for these checks, by check name. */
function library(...checks: string[]): Record<string, Record<string, unknown>> {
  const r = node([LIBRARY, ...checks]);
  assert.is(r.status, 0, `webgpu-library ${checks.join(' ')}: ${r.stderr}`);
  const out: Record<string, Record<string, unknown>> = {};
  for (const line of r.stdout.split('\n')) if (line.startsWith('{')) out[JSON.parse(line).check] = JSON.parse(line);
  return out;
}

const { adapter, why } = webgpuAdapter();
if (!adapter) {
  if (IN_CI) test('webgpu: an adapter exists, as CI runs the WebGPU tests', () => assert.unreachable(why));
  else console.log(`skip: webgpu tests, ${why}`);
} else {
  console.log(`WebGPU adapter: ${adapter}`);

  for (const name of MODEL_FIXTURES) {
    test(`webgpu ${name}: deepwasm logits --backend webgpu matches the reference (prefill, decode steps, greedy ids)`, () => {
      const exp = readExpected(`${fixture(name)}/expected.safetensors`);
      const out = join(work, `${name}.safetensors`);
      const t0 = performance.now();
      const r = deepwasm('logits', '--backend', 'webgpu', '--model', fixture(name), '--ids', Array.from(exp.inputIds).join(','), '--gen', String(exp.genIds.length), '--out', out);
      assert.is(r.status, 0, r.stderr);
      const logits = new Float32Array(tensor(out, 'logits'));
      const genLogits = new Float32Array(tensor(out, 'gen_logits'));
      const prefill = maxAbsDiff(logits, exp.logits);
      const decode = maxAbsDiff(genLogits, exp.genLogits);
      console.log(`  ${name}: prefill ${prefill.toExponential(2)}, decode ${decode.toExponential(2)} (${((performance.now() - t0) / 1000).toFixed(1)} s)`);
      assert.ok(prefill <= TOL, `prefill logits differ by ${prefill}`);
      assert.ok(decode <= TOL, `decode logits differ by ${decode}`);
      assert.equal(Array.from(new Int32Array(tensor(out, 'gen_ids'))), Array.from(exp.genIds));
    });
  }

  test('webgpu: plain reductions, weights split into 16 KiB buffers, prompts in passes of 5 tokens, a command buffer per layer', () => {
    const r = library('plain').plain;
    assert.ok((r.maxDiff as number) <= TOL, `logits differ by ${r.maxDiff}`);
    assert.equal(r.ids, r.expected);
  });

  test('webgpu: q8 and q4 weights land within the CPU backend\'s accuracy bounds for them (v3-tiny)', () => {
    const r = library('quantized');
    // test/quant-accuracy.test.ts's bounds for v3-tiny on the CPU, whose activations are quantized too.
    const within = (q: Record<string, unknown>, max: number, mean: number, top1: number) =>
      (q.maxDiff as number) <= max && (q.meanDiff as number) <= mean && (q.top1 as number) >= top1;
    assert.ok(within(r['quant-q8'], 2.5, 0.08, 0.85), JSON.stringify(r['quant-q8']));
    assert.ok(within(r['quant-q4'], 6.5, 0.65, 0.2), JSON.stringify(r['quant-q4']));
  });

  test('webgpu: greedy on the device, a batch of two sequences, fork and truncate give one sequence\'s logits', () => {
    const r = library('sequences').sequences;
    assert.equal(r.greedy, r.expected);
    for (const k of ['batchDiff', 'halfDiff', 'resumedDiff', 'forkDiff', 'truncatedDiff']) assert.ok((r[k] as number) <= TOL, `${k}: ${r[k]}`);
  });

  test('webgpu: a device thread that exits fails the waiting call and later ones with the reason, instead of hanging', () => {
    const r = library('exit').exit;
    assert.ok((r.before as number) > 0, 'the forward before the exit returned its row');
    assert.match(r.crashed as string, /device thread exited with code 7/);
    assert.match(r.after as string, /device thread exited with code 7/);
    assert.ok((r.ms as number) < 30_000, `took ${r.ms} ms`);
  });

  test('webgpu: deepwasm logits --backend webgpu under deno run matches the reference (v2-lite-tiny)', () => {
    const exp = readExpected(`${fixture('v2-lite-tiny')}/expected.safetensors`);
    const out = join(work, 'deno.safetensors');
    const args = ['run', '-A', MAIN, 'logits', '--backend', 'webgpu', '--model', fixture('v2-lite-tiny'), '--ids', Array.from(exp.inputIds).join(','), '--gen', String(exp.genIds.length), '--out', out];
    const r = spawnSync(denoBinary(), args, { env: { ...DENO_ENV, ...webgpuEnv() }, encoding: 'utf8', timeout: 170_000 });
    assert.is(r.status, 0, r.stderr);
    assert.ok(maxAbsDiff(new Float32Array(tensor(out, 'logits')), exp.logits) <= TOL);
    assert.ok(maxAbsDiff(new Float32Array(tensor(out, 'gen_logits')), exp.genLogits) <= TOL);
    assert.equal(Array.from(new Int32Array(tensor(out, 'gen_ids'))), Array.from(exp.genIds));
  });

  test('webgpu: deepwasm run prints the CPU backend\'s greedy text with the embedded model', () => {
    const args = ['run', '--prompt', 'Once upon a time', '--max-tokens', '12'];
    const cpu = deepwasm(...args);
    const gpu = deepwasm(...args, '--backend', 'webgpu');
    assert.is(gpu.status, 0, gpu.stderr);
    assert.ok(cpu.stdout.length > 10, cpu.stderr);
    assert.is(gpu.stdout, cpu.stdout);
  });

  test('webgpu: deepwasm bench --backend webgpu reports tokens/s and the adapter', () => {
    const r = deepwasm('bench', '--backend', 'webgpu', '--model', fixture('v3-tiny'), '--prompt-tokens', '8', '--gen-tokens', '4', '--json');
    assert.is(r.status, 0, r.stderr);
    const json = JSON.parse(r.stdout.trim().split('\n').pop()!);
    console.log(`  bench v3-tiny on ${adapter}: ${JSON.stringify({ prefill: json.prefill_tok_s, decode: json.decode_tok_s })}`);
    assert.ok(json.decode_tok_s > 0, r.stdout);
  });

  test('webgpu: --quant fp8 and a machine without an adapter are refused in one line', () => {
    const fp8 = deepwasm('logits', '--backend', 'webgpu', '--quant', 'fp8', '--model', fixture('v3-fp8-blocks'), '--ids', '1,2', '--out', join(work, 'x.safetensors'));
    assert.is(fp8.status, 1);
    assert.match(fp8.stderr, /^error: --quant fp8 is not supported by the WebGPU backend/);
    const env = { ...process.env, LD_LIBRARY_PATH: '', VK_ICD_FILENAMES: '/nonexistent.json' };
    const none = node([MAIN, 'logits', '--backend', 'webgpu', '--model', fixture('v3-tiny'), '--ids', '1,2', '--out', join(work, 'y.safetensors')], env);
    assert.is(none.status, 1);
    assert.match(none.stderr, /error: WebGPU backend: no WebGPU adapter/);
    assert.not.match(none.stderr, /\n\s+at .*\.js/, 'no stack trace');
  });
}

test.run();
