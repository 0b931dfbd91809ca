// --backend on every command that loads weights: the CPU by default, the same text with --backend cpu, and
// where there is no usable GPU, --backend cuda is one clear line and exit 1 (on the GPU machine,
// test/cuda.test.ts compares the two backends' text).
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { cudaStatus } from '../host/backends/cuda/model.js';
import { FIXTURES } from './helpers.js';

const MAIN = fileURLToPath(new URL('../host/cli/main.js', import.meta.url));
const cli = (args: string[]) => spawnSync(process.execPath, [MAIN, ...args], { encoding: 'utf8', timeout: 60_000 });
const gpu = cudaStatus();

test('run: --backend cpu prints the default greedy text', () => {
  const args = ['run', '--prompt', 'Once upon a time', '--max-tokens', '12', '--threads', '1'];
  const plain = cli(args);
  const cpu = cli([...args, '--backend', 'cpu']);
  assert.is(plain.status, 0, plain.stderr);
  assert.is(cpu.status, 0, cpu.stderr);
  assert.ok(plain.stdout.length > 10);
  assert.is(cpu.stdout, plain.stdout);
});

test('--backend with an unknown name is one line', () => {
  const bad = cli(['run', '--prompt', 'x', '--backend', 'tpu']);
  assert.is(bad.status, 1);
  assert.is(bad.stderr, 'error: --backend is "tpu": expected one of cpu, cuda, webgpu\n');
});

test('--memory-limit with --backend cuda is one line: it sizes WebAssembly memories', () => {
  const r = cli(['run', '--prompt', 'x', '--backend', 'cuda', '--memory-limit', '100']);
  assert.is(r.status, 1);
  assert.is(r.stderr, "error: --memory-limit (memoryLimit) sizes the CPU backend's WebAssembly memories; leave it out with --backend cuda\n");
});

if (gpu.ok) {
  console.log(`backend-cli: a CUDA device is here (${gpu.device}); the no-GPU refusals are not tested`);
} else {
  for (const args of [
    ['run', '--prompt', 'Once upon a time', '--max-tokens', '4'],
    ['chat'],
    ['bench', '--model', `${FIXTURES}models/v3-tiny`, '--prompt-tokens', '4', '--gen-tokens', '2'],
    ['logits', '--model', `${FIXTURES}models/v3-tiny`, '--ids', '1,2', '--out', '/tmp/deepwasm-never.safetensors'],
  ]) {
    test(`${args[0]} --backend cuda without a GPU: one line naming what is missing, exit 1`, () => {
      const r = cli([...args, '--backend', 'cuda']);
      assert.is(r.status, 1, r.stderr);
      assert.match(r.stderr, /^error: CUDA backend unavailable: .+\n$/);
      assert.is(r.stderr.split('\n').length, 2, r.stderr);
      assert.is(r.stdout, '');
    });
  }
}

test.run();
