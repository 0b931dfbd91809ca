#!/usr/bin/env node
// A checkpoint in headless Chromium as a user would run it: `deepwasm web --model DIR` serves it, the page
// downloads it into OPFS and loads it over as many WebAssembly memories as it needs, then generates greedy
// text from a prompt; printed: the load time, the memories the page lists, prefill and decode tok/s (the page's
// own stats line), and the renderer's peak memory. A second visit loads from OPFS and is measured again.
//   node bench/web-real-size.mjs MODEL_DIR [MAX_TOKENS] [--memory-limit MIB]
// Needs Debian's chromium (/usr/bin/chromium, or DEEPWASM_CHROMIUM) and `npm run build`.
import { spawn } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const [dir, maxArg, ...rest] = process.argv.slice(2);
if (!dir) {
  console.error('usage: node bench/web-real-size.mjs MODEL_DIR [MAX_TOKENS] [--memory-limit MIB]');
  process.exit(2);
}
const maxTokens = Number(maxArg ?? 16);
const MAIN = fileURLToPath(new URL('../dist/host/cli/main.js', import.meta.url));
const LOAD_TIMEOUT_MS = 30 * 60_000;

const server = spawn(process.execPath, [MAIN, 'web', '--port', '0', '--model', dir, ...rest], { stdio: ['ignore', 'pipe', 'pipe'] });
const url = await new Promise((resolve, reject) => {
  let out = '';
  const read = (d) => {
    out += d;
    const m = /http:\/\/127\.0\.0\.1:\d+\//.exec(out);
    if (m) resolve(m[0]);
  };
  server.stdout.on('data', read);
  server.stderr.on('data', read);
  server.once('exit', (code) => reject(new Error(`deepwasm web exited with ${code}: ${out}`)));
});
const profile = mkdtempSync(join(tmpdir(), 'deepwasm-web-bench-'));
const browser = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.DEEPWASM_CHROMIUM ?? '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking'],
});

/** The renderers' (page and workers) resident memory now, from /proc. */
function rendererRss() {
  let sum = 0;
  for (const pid of readdirSync('/proc')) {
    if (!/^\d+$/.test(pid)) continue;
    try {
      if (!readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes('--type=renderer')) continue;
      sum += Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? 0) * 1024;
    } catch {
      // The process ended between the listing and the read.
    }
  }
  return sum;
}

async function visit(label) {
  const page = browser.pages()[0] ?? (await browser.newPage());
  const started = performance.now();
  let peak = 0;
  const sampler = setInterval(() => (peak = Math.max(peak, rendererRss())), 500);
  await page.goto(`${url}?prompt=${encodeURIComponent('Once upon a time')}&max_tokens=${maxTokens}&temperature=0`);
  await page.waitForFunction(() => ['done', 'error'].includes(document.body.dataset.state ?? ''), null, { timeout: LOAD_TIMEOUT_MS, polling: 1000 });
  clearInterval(sampler);
  const shown = await page.evaluate(() => ({
    state: document.body.dataset.state,
    model: document.getElementById('model')?.textContent,
    memories: document.getElementById('memories')?.textContent,
    bytes: document.getElementById('bytes')?.textContent,
    stats: document.getElementById('stats')?.textContent,
    isolation: document.getElementById('isolation')?.textContent,
    output: document.getElementById('output')?.textContent,
  }));
  const result = { visit: label, seconds: Math.round((performance.now() - started) / 100) / 10, renderer_peak_rss_bytes: peak, ...shown };
  console.log(JSON.stringify(result));
  return result;
}

try {
  await visit('first (download into OPFS)');
  await visit('second (from OPFS)');
} finally {
  await browser.close();
  server.kill('SIGTERM');
  rmSync(profile, { recursive: true, force: true });
}
