// The browser demo on WebGPU: headless Debian chromium on SwiftShader (GUIDE.md §4's flags) loads the embedded
// model from `deepwasm web` with ?backend=webgpu, and its greedy text equals the Node CLI's; the page says it runs
// on WebGPU and which adapter. Without chromium the test is skipped with one line, except under CI (CI=true).
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { startServer, stopServer } from './web-server.js';

const MAIN = fileURLToPath(new URL('../host/cli/main.js', import.meta.url));
const CHROMIUM = process.env.DEEPWASM_CHROMIUM ?? '/usr/bin/chromium';
const IN_CI = process.env.CI === 'true' || process.env.CI === '1';
const PROMPT = 'Once upon a time';
const TOKENS = 24;
const WEBGPU_FLAGS = ['--enable-unsafe-webgpu', '--enable-features=Vulkan', '--use-vulkan=swiftshader', '--use-webgpu-adapter=swiftshader'];

if (!existsSync(CHROMIUM)) {
  const missing = `${CHROMIUM} is missing, so the WebGPU page test cannot run; apt-get install -y --no-install-recommends chromium`;
  if (IN_CI) test('webgpu page: chromium is installed', () => assert.unreachable(missing));
  else console.log(`skip: ${missing}`);
} else {
  test('webgpu page (chromium on SwiftShader): ?backend=webgpu gives the Node CLI\'s greedy text and names the adapter', async () => {
    const cli = spawnSync(process.execPath, [MAIN, 'run', '--prompt', PROMPT, '--max-tokens', String(TOKENS), '--temperature', '0', '--threads', '1'], { encoding: 'utf8', timeout: 120_000 });
    assert.is(cli.status, 0, cli.stderr);
    const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ['--no-sandbox', '--no-first-run', '--disable-background-networking', ...WEBGPU_FLAGS] });
    const { url, proc } = await startServer([]);
    try {
      const page = await browser.newPage();
      const errors: string[] = [];
      page.on('pageerror', (e) => errors.push(e.message));
      const t0 = performance.now();
      await page.goto(`${url}?backend=webgpu&prompt=${encodeURIComponent(PROMPT)}&max_tokens=${TOKENS}&temperature=0`);
      await page.waitForFunction(() => ['done', 'error'].includes(document.body.dataset.state ?? ''), null, { timeout: 150_000 });
      const r = await page.evaluate(() => ({
        state: document.body.dataset.state,
        backend: document.body.dataset.backend,
        output: document.getElementById('output')!.textContent,
        note: document.getElementById('backendNote')!.textContent,
        stats: document.getElementById('stats')!.textContent,
      }));
      console.log(`  ${r.note} · ${r.stats} (${((performance.now() - t0) / 1000).toFixed(1)} s)`);
      assert.equal(errors, [], 'no uncaught page errors');
      assert.is(r.state, 'done', `state (output: ${r.output})`);
      assert.is(r.backend, 'webgpu');
      assert.match(r.note!, /^running on WebGPU: .*swiftshader/i);
      assert.is(r.output, cli.stdout);
    } finally {
      await browser.close();
      await stopServer(proc);
    }
  });
}

test.run();
