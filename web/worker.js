// The worker that owns the model: it downloads (or takes from the Cache API) the model files, loads them with
// host/edge.ts (no filesystem) and generates, posting progress, text pieces and results to the page, which never
// blocks. Cross-origin isolated, the kernels run on a pool of threads (this worker plus nested Web Workers running
// web-worker.js over one shared memory; this worker may block in Atomics.wait, the page may not); otherwise on one.
import { loadModelFromBuffers } from '../host/edge.ts';

// The token loop yields with setImmediate (Node, Deno) between tokens; browsers lack it, and setTimeout(0) is
// clamped to 4 ms once nested, so a MessageChannel stands in.
if (typeof globalThis.setImmediate !== 'function') {
  const channel = new MessageChannel();
  const queue = [];
  channel.port1.onmessage = () => queue.shift()();
  globalThis.setImmediate = (fn, ...args) => {
    queue.push(() => fn(...args));
    channel.port2.postMessage(0);
  };
}

const CACHE = 'deepwasm-models-v1';
let model = null;
let abort = null;

const post = (msg) => self.postMessage(msg);

/** Threads to run: the cores (at most 4) when the shared memory can be posted to workers, else 1. */
const MAX_THREADS = 4;
function threadCount() {
  if (globalThis.crossOriginIsolated !== true) return 1;
  return Math.max(1, Math.min(MAX_THREADS, navigator.hardwareConcurrency || 1));
}

/** One file's bytes: from the cache when there, else fetched with progress and put in the cache. */
async function fetchFile(url, onBytes) {
  const cache = typeof caches !== 'undefined' ? await caches.open(CACHE).catch(() => null) : null;
  let res = cache ? await cache.match(url) : undefined;
  const cached = !!res;
  if (!res) {
    res = await fetch(url);
    if (!res.ok) throw new Error(`${url}: ${res.status} ${res.statusText}`);
  }
  const total = Number(res.headers.get('content-length')) || 0;
  const chunks = [];
  let got = 0;
  const reader = res.body.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
    got += value.byteLength;
    onBytes(value.byteLength, total);
  }
  const bytes = new Uint8Array(got);
  let at = 0;
  for (const c of chunks) {
    bytes.set(c, at);
    at += c.byteLength;
  }
  if (cache && !cached) {
    await cache
      .put(url, new Response(bytes, { headers: { 'content-type': res.headers.get('content-type') ?? 'application/octet-stream', 'content-length': String(got) } }))
      .catch(() => {});
  }
  return { bytes, cached };
}

async function head(url) {
  const cache = typeof caches !== 'undefined' ? await caches.open(CACHE).catch(() => null) : null;
  const hit = cache ? await cache.match(url) : undefined;
  if (hit) return Number(hit.headers.get('content-length')) || 0;
  const res = await fetch(url, { method: 'HEAD' }).catch(() => null);
  return res && res.ok ? Number(res.headers.get('content-length')) || 0 : 0;
}

async function load({ base, wasmUrl }) {
  if (!base.endsWith('/')) base += '/';
  const text = async (name, optional) => {
    const res = await fetch(base + name);
    if (!res.ok) {
      if (optional) return undefined;
      throw new Error(`${base + name}: ${res.status} ${res.statusText}`);
    }
    return res.json();
  };
  const started = performance.now();
  const [config, tokenizer, tokenizerConfig, index] = await Promise.all([
    text('config.json'),
    text('tokenizer.json'),
    text('tokenizer_config.json', true),
    text('model.safetensors.index.json', true),
  ]);
  const shards = index ? [...new Set(Object.values(index.weight_map))] : ['model.safetensors'];
  const urls = [wasmUrl, ...shards.map((s) => base + s)];
  const sizes = await Promise.all(urls.map(head));
  let total = sizes.reduce((a, b) => a + b, 0);
  let loaded = 0;
  let fromCache = 0;
  const files = [];
  for (const url of urls) {
    const { bytes, cached } = await fetchFile(url, (n, size) => {
      loaded += n;
      if (total < loaded) total = loaded;
      post({ type: 'progress', loaded, total, file: url.split('/').pop() });
    });
    if (cached) fromCache++;
    files.push(bytes);
  }
  post({ type: 'progress', loaded, total, file: 'compiling' });
  const weights = {};
  shards.forEach((s, i) => (weights[s] = files[i + 1]));
  const previous = model;
  model = null;
  await previous?.close();
  model = await loadModelFromBuffers({ wasm: files[0], config, tokenizer, tokenizerConfig, weights }, { threads: threadCount() });
  post({
    type: 'loaded',
    ms: performance.now() - started,
    bytes: loaded,
    fromCache,
    files: urls.length,
    chatTemplate: !!tokenizerConfig?.chat_template,
    threads: model.model.threads,
    isolated: globalThis.crossOriginIsolated === true,
  });
}

async function generate({ mode, prompt, messages, maxTokens, temperature }) {
  if (!model) throw new Error('no model loaded');
  abort = new AbortController();
  const opts = { maxTokens, temperature, signal: abort.signal };
  const stream = mode === 'chat' ? model.chat(messages, opts) : model.generate(prompt, opts);
  const started = performance.now();
  let first = 0;
  let pieces = 0;
  let text = '';
  for await (const piece of stream) {
    if (pieces === 0) first = performance.now();
    pieces++;
    text += piece;
    post({ type: 'token', text: piece, pieces, ms: performance.now() - started, decodeMs: performance.now() - first });
    // A macrotask between pieces lets a 'stop' message in.
    await new Promise((r) => setImmediate(r));
  }
  const aborted = abort.signal.aborted;
  abort = null;
  post({ type: 'done', text, pieces, ms: performance.now() - started, decodeMs: performance.now() - first, aborted });
}

self.onmessage = async (e) => {
  const msg = e.data;
  try {
    if (msg.type === 'load') await load(msg);
    else if (msg.type === 'generate') await generate(msg);
    else if (msg.type === 'stop') abort?.abort();
  } catch (err) {
    abort = null;
    post({ type: 'error', message: err?.message ?? String(err) });
  }
};
