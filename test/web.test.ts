// The browser demo in a real browser: Debian's chromium driven by playwright-core loads the embedded model from
// `deepwasm web` and its greedy text equals the Node CLI's (--threads 1), once cross-origin isolated (COOP/COEP), where
// the page runs a pool of threads (nested Web Workers), and once served without those headers, on one thread, from a
// copy of the model in a folder of another name. The files are cached in the origin private file system; a reload
// takes them from there, and a file replaced on the server is downloaded again. A screenshot of each run is written
// to a temp folder.
// Without chromium the tests are skipped with one line saying how to install it, except under CI (CI=true), where
// that is a failure: CI must run them (.ci/run installs chromium).
import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, statSync, utimesSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium, type Browser, type Page } from 'playwright-core';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { DEFAULT_MODEL_DIR } from '../host/index.js';
import { startServer, stopServer } from './web-server.js';

const MAIN = fileURLToPath(new URL('../host/cli/main.js', import.meta.url));
const WASM = fileURLToPath(new URL('../../build/deepwasm.wasm', import.meta.url));
// Only test/web-without-chromium.test.ts points this elsewhere, to check what a machine without chromium gets.
const CHROMIUM = process.env.DEEPWASM_CHROMIUM ?? '/usr/bin/chromium';
const INSTALL = 'apt-get install -y --no-install-recommends chromium';
const IN_CI = process.env.CI === 'true' || process.env.CI === '1';
const PROMPT = 'Once upon a time';
const QUERY = `?prompt=${encodeURIComponent(PROMPT)}&max_tokens=24&temperature=0`;

function cliText(): string {
  const r = spawnSync(process.execPath, [MAIN, 'run', '--prompt', PROMPT, '--max-tokens', '24', '--temperature', '0', '--threads', '1'], { encoding: 'utf8', timeout: 120_000 });
  assert.is(r.status, 0, `node CLI: exit code (stderr: ${r.stderr})`);
  return r.stdout;
}

async function launch(): Promise<Browser> {
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
}

async function finished(page: Page): Promise<{ state: string; output: string }> {
  await page.waitForFunction(() => ['done', 'error'].includes(document.body.dataset.state ?? ''), null, { timeout: 60_000 });
  return page.evaluate(() => ({ state: document.body.dataset.state ?? '', output: document.getElementById('output')!.textContent ?? '' }));
}

/** The files the page keeps in OPFS by URL, with their sizes, from their manifests (web/model-store.js). */
async function cachedFiles(page: Page): Promise<Record<string, number>> {
  return page.evaluate(async () => {
    const dir = await (await navigator.storage.getDirectory()).getDirectoryHandle('deepwasm-models-v1', { create: true });
    const files: Record<string, number> = {};
    for await (const [name, handle] of (dir as unknown as { entries(): AsyncIterable<[string, FileSystemFileHandle]> }).entries()) {
      if (!name.endsWith('.json')) continue;
      const { url, size } = JSON.parse(await (await handle.getFile()).text());
      files[url] = size;
    }
    return files;
  });
}

/** The page's model name, memories and stats after a generation, checked the same way in every run. */
async function checkShown(page: Page, name: string): Promise<void> {
  assert.is(await page.textContent('#model'), `model: ${name}`);
  assert.match((await page.textContent('#stats'))!, /^24 tokens after a \d+-token prompt · prefill \d+\.\d tokens\/s · decode \d+\.\d tokens\/s$/);
}

/** A copy of the embedded model in a folder named `name`, so the page must show that name. */
function modelCopy(name: string): string {
  const dir = join(mkdtempSync(join(tmpdir(), 'deepwasm-web-model-')), name);
  mkdirSync(dir);
  for (const f of readdirSync(DEFAULT_MODEL_DIR)) if (!f.endsWith('.md')) copyFileSync(join(DEFAULT_MODEL_DIR, f), join(dir, f));
  return dir;
}

let expected = '';
let shots = '';

const hasChromium = existsSync(CHROMIUM);
if (!hasChromium) {
  const missing = `${CHROMIUM} is missing, so the browser tests (test/web.test.ts) cannot run; install Debian's chromium: ${INSTALL}`;
  if (IN_CI) {
    test('browser (chromium): chromium is installed, as CI runs the browser tests', () => assert.unreachable(`${missing} (.ci/run does this)`));
  } else console.log(`skip: ${missing}`);
}

for (const isolated of hasChromium ? [true, false] : []) {
  test(`browser (chromium): the page's greedy text equals the Node CLI's, ${isolated ? 'cross-origin isolated' : 'without COOP/COEP'}`, async () => {
    expected ||= cliText();
    assert.ok(expected.length > 0, 'the CLI printed text');
    const browser = await launch();
    const copy = isolated ? undefined : modelCopy('tiny-copy');
    const { url, proc } = await startServer(isolated ? [] : ['--no-isolation', '--model', copy!]);
    try {
      const page = await browser.newPage();
      const errors: string[] = [];
      page.on('pageerror', (e) => errors.push(e.message));
      await page.goto(url + QUERY);
      const r = await finished(page);
      shots ||= mkdtempSync(join(tmpdir(), 'deepwasm-web-'));
      const shot = join(shots, `web-${isolated ? 'isolated' : 'not-isolated'}.png`);
      await page.screenshot({ path: shot, fullPage: true });
      console.log(`  screenshot: ${shot}`);
      assert.equal(errors, [], 'no uncaught page errors');
      assert.is(r.state, 'done', `state (output: ${r.output})`);
      assert.is(r.output, expected);
      await checkShown(page, isolated ? 'embedded model' : 'tiny-copy');
      assert.equal(await cachedFiles(page), { [`${url}model/model.safetensors`]: statSync(join(copy ?? DEFAULT_MODEL_DIR, 'model.safetensors')).size, [`${url}wasm/deepwasm.wasm`]: statSync(WASM).size }, 'both files cached');
      assert.is(await page.evaluate(() => globalThis.crossOriginIsolated), isolated, 'crossOriginIsolated');
      const note = (await page.textContent('#isolation'))!;
      const threads = Number(await page.evaluate(() => document.body.dataset.threads));
      console.log(`  ${isolated ? 'isolated' : 'not isolated'}: ${note}`);
      if (isolated) {
        // The CI machine has 2 cores; the worker takes navigator.hardwareConcurrency, at most 4.
        assert.ok(threads > 1, `more than one thread when cross-origin isolated: ${note}`);
        assert.ok(note.startsWith(`${threads} threads (cross-origin isolated)`), `the page says how many threads: ${note}`);
      } else {
        assert.is(threads, 1, `one thread without isolation: ${note}`);
        assert.ok(note.startsWith('1 thread (not cross-origin isolated: threads need COOP/COEP)'), `the page says why one thread: ${note}`);
      }
      if (!isolated) {
        // The shard replaced on the server (a new mtime, so a new ETag): the reload downloads it again.
        utimesSync(join(copy!, 'model.safetensors'), new Date(), new Date(Date.now() + 5_000));
        await page.reload();
        const again = await finished(page);
        assert.is(again.output, expected);
        assert.match((await page.textContent('#bytes'))!, /1 of 2 files from the browser cache/);
      }
      if (isolated) {
        // A reload takes the model files from OPFS and gives the same text.
        await page.reload();
        const again = await finished(page);
        assert.is(again.output, expected);
        assert.match((await page.textContent('#bytes'))!, /2 of 2 files from the browser cache/);
        await checkShown(page, 'embedded model');
        // Chat through the UI: the reply streams into the transcript and the stats line shows tokens/s.
        await page.goto(url);
        await page.click('#load');
        await page.waitForFunction(() => document.body.dataset.state === 'ready', null, { timeout: 60_000 });
        await page.check('input[name=mode][value=chat]');
        await page.fill('#maxTokens', '16');
        await page.fill('#prompt', 'Hello');
        await page.click('#send');
        const chat = await finished(page);
        assert.is(chat.state, 'done', `chat state (${chat.output})`);
        assert.match((await page.textContent('#chat'))!, /You: Hello/);
        assert.match((await page.textContent('#stats'))!, /tokens\/s/);
        // Stop: clicked as soon as the first piece shows, it ends a long generation early.
        await page.check('input[name=mode][value=text]');
        await page.fill('#maxTokens', '100000');
        await page.fill('#prompt', PROMPT);
        await page.evaluate(() => {
          const out = document.getElementById('output')!;
          new MutationObserver(() => {
            if (out.textContent) document.getElementById('stop')!.click();
          }).observe(out, { childList: true, characterData: true, subtree: true });
        });
        await page.click('#send');
        const stopped = await finished(page);
        assert.is(stopped.state, 'done');
        assert.match((await page.textContent('#stats'))!, /stopped/);
      }
    } finally {
      await browser.close();
      await stopServer(proc);
      if (copy) rmSync(join(copy, '..'), { recursive: true, force: true });
    }
  });
}

if (hasChromium) {
  test('browser (chromium): over several WebAssembly memories (--memory-limit 4) the page says how many and gives the CLI\'s text', async () => {
    expected ||= cliText();
    const browser = await launch();
    const { url, proc } = await startServer(['--memory-limit', '4']);
    try {
      const page = await browser.newPage();
      await page.goto(url + QUERY);
      const r = await finished(page);
      assert.is(r.state, 'done', `state (output: ${r.output})`);
      assert.is(r.output, expected);
      const memories = Number(await page.evaluate(() => document.body.dataset.memories));
      const shown = (await page.textContent('#memories'))!;
      console.log(`  ${shown.slice(0, 160)}…`);
      assert.ok(memories >= 2, `at least two memories: ${shown}`);
      assert.match(shown, new RegExp(`^${memories} WebAssembly memories: #0 \\d+\\.\\d\\d MiB \\(embedding`));
      assert.match((await page.textContent('#isolation'))!, /threads \(cross-origin isolated\)/);
    } finally {
      await browser.close();
      await stopServer(proc);
    }
  });

  test('browser (chromium): a model that will not fit in the browser storage is refused, saying why, and leaves nothing cached', async () => {
    const browser = await launch();
    const { url, proc } = await startServer([]);
    try {
      // Refused before the download: what navigator.storage.estimate() says is left is less than the files.
      const page = await browser.newPage();
      await page.goto(url);
      await page.waitForFunction(() => document.getElementById('servedName')!.textContent !== '…');
      const worker = page.workers()[0];
      await worker.evaluate(() => {
        navigator.storage.estimate = async () => ({ quota: 10 * 1048576, usage: 2 * 1048576 });
      });
      await page.click('#load');
      const refused = await finished(page);
      assert.is(refused.state, 'error');
      assert.match(refused.output, /^the model's files need \d+\.\d MiB of browser storage to be cached, but this site may store only 8\.00 MiB more \(2\.00 MiB of its 10\.0 MiB in use\); free disk space or clear this site's data$/);
      assert.equal(await cachedFiles(page), {}, 'nothing cached');
      // The quota the browser enforces, smaller than it reports: the download stops when the shard cannot be written
      // (Chromium refuses when the file is opened or when it is flushed).
      const small = await browser.newPage();
      const cdp = await small.context().newCDPSession(small);
      await cdp.send('Storage.overrideQuotaForOrigin', { origin: new URL(url).origin, quotaSize: 4 * 1048576 });
      await small.goto(url + QUERY);
      const full = await finished(small);
      assert.is(full.state, 'error');
      assert.match(full.output, /^model\.safetensors: (after caching \d+\.\d MiB, )?the browser's storage for this site is full \(QuotaExceededError\); free disk space or clear this site's data$/);
      assert.equal(Object.keys(await cachedFiles(small)), [`${url}wasm/deepwasm.wasm`], 'nothing of the shard left in the cache');
    } finally {
      await browser.close();
      await stopServer(proc);
    }
  });
}

test.run();
