// `deepwasm serve --backend webgpu` (in CI on SwiftShader, the CPU Vulkan driver of Debian's chromium package):
// the backend interface is the CPU's, so the server batches on it unchanged; two streams at once give the CPU
// library's greedy text (one server: on SwiftShader each WebGPU load compiles its pipelines for about a minute).
// Without an adapter the test is skipped with one line, except under CI (CI=true), where that is a failure.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { loadModel } from '../host/index.js';
import { allEvents, post, streamedText } from './serve-helpers.js';
import { startServe } from './serve-process.js';
import { webgpuAdapter, webgpuEnv } from './webgpu-env.js';

const IN_CI = process.env.CI === 'true' || process.env.CI === '1';
const PROMPTS = ['Once upon a time', 'In the beginning God created the heaven and the earth.'];
const MAX = 24;

const { adapter, why } = webgpuAdapter();
if (!adapter) {
  if (IN_CI) test('serve --backend webgpu: an adapter exists, as CI runs the WebGPU tests', () => assert.unreachable(why));
  else console.log(`skip: serve --backend webgpu, ${why}`);
} else {
  test(`serve --backend webgpu (${adapter}) --parallel 2, two streams at once: the CPU's greedy text`, async () => {
    const cpu = await loadModel();
    const expected: string[] = [];
    try {
      for (const prompt of PROMPTS) expected.push((await cpu.generateText(prompt, { maxTokens: MAX })).text);
    } finally {
      await cpu.close();
    }
    const p = await startServe(['--backend', 'webgpu', '--parallel', '2', '--context', '128'], { env: webgpuEnv(), startMs: 170_000 });
    try {
      const got = await Promise.all(PROMPTS.map(async (prompt) => streamedText(await allEvents(await post(p.base, '/v1/completions', { prompt, max_tokens: MAX, temperature: 0, stream: true })))));
      assert.equal(got, expected);
      p.child.kill('SIGTERM');
      assert.is(await p.exited, 0, p.stderr());
    } finally {
      p.child.kill('SIGKILL');
    }
  });
}

test.run();
