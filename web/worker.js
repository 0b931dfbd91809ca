// The worker that owns the model: it downloads the model files into the origin private file system (or takes them
// from it, model-store.js), loads them with host/edge.ts (no filesystem API; each tensor is read from its file
// straight into wasm memory, so no file is ever held whole here) and generates, posting progress, text pieces and results to the page,
// which never blocks. With backend 'webgpu' the model runs on navigator.gpu, its device in a nested worker
// (webgpu-thread.js) that this worker waits on. Otherwise, cross-origin isolated, the kernels run on a pool of threads (this worker plus nested Web Workers running
// web-worker.js over one shared memory; this worker may block in Atomics.wait, the page may not); otherwise on one.
import { loadModelFromBuffers } from '../host/edge.ts';
import { fileName, lengthOf, openModelStore, tagOf } from './model-store.js';

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

let model = null;
let abort = null;

const post = (msg) => self.postMessage(msg);

/** Threads to run: the cores (at most 4) when the shared memory can be posted to workers, else 1. */
const MAX_THREADS = 4;
function threadCount() {
  if (globalThis.crossOriginIsolated !== true) return 1;
  return Math.max(1, Math.min(MAX_THREADS, navigator.hardwareConcurrency || 1));
}

const MiB = 1024 ** 2;
const size = (n) => (n < 1024 * MiB ? `${(n / MiB).toFixed(n < 10 * MiB ? 2 : 1)} MiB` : `${(n / 1024 / MiB).toFixed(2)} GiB`);

/** Progress messages at most every 100 ms (a 9 GB shard arrives in ~150,000 chunks), and the last one. */
function throttled(send) {
  let last = 0;
  return (msg, final) => {
    const now = performance.now();
    if (!final && now - last < 100) return;
    last = now;
    send(msg);
  };
}

/**
 * fetch(), with the URL in a network error's message. The files are kept in OPFS; 'no-store' keeps the browser's
 * HTTP cache from holding a second copy of each on disk.
 */
function get(url, init = {}) {
  return fetch(url, { cache: 'no-store', ...init }).catch((e) => {
    throw new Error(`${url}: ${e?.message ?? e}`);
  });
}

/** What the server says of a file now ({ length, tag }), or null when it cannot be asked (offline). */
async function describe(url) {
  const res = await get(url, { method: 'HEAD' }).catch(() => null);
  return res?.ok ? { length: lengthOf(res), tag: tagOf(res) } : null;
}

/** Refuses before any download when the files to cache will not fit in what the browser lets this site store. */
async function checkRoom(bytes) {
  if (bytes === 0 || !navigator.storage?.estimate) return;
  // Persistent storage is not evicted under pressure, so the files written first are still there after the last.
  await navigator.storage.persist?.().catch(() => false);
  const { quota, usage } = await navigator.storage.estimate();
  if (quota === undefined || usage === undefined || bytes <= quota - usage) return;
  throw new Error(
    `the model's files need ${size(bytes)} of browser storage to be cached, but this site may store only ${size(Math.max(0, quota - usage))} more ` +
      `(${size(usage)} of its ${size(quota)} in use); free disk space or clear this site's data`,
  );
}

/** A download passed through to a Blob where there is no OPFS: the browser keeps a large Blob on disk, not in this heap. */
async function blobOf(res, onBytes) {
  const counted = new TransformStream({
    transform(chunk, ctrl) {
      onBytes(chunk.length);
      ctrl.enqueue(chunk);
    },
  });
  return new Response(res.body.pipeThrough(counted)).blob();
}

/**
 * The files at `urls`, each from the store when it holds it unchanged, else downloaded into it (a Blob where there is
 * no store). Posts download progress; returns the files (close() those from the store once loaded) and how many were cached.
 */
async function filesOf(urls) {
  const store = await openModelStore();
  const remote = await Promise.all(urls.map(describe));
  const files = [];
  try {
    for (let i = 0; i < urls.length; i++) files.push(store ? await store.open(urls[i], remote[i]) : null);
    const fromCache = files.filter(Boolean).length;
    if (store) await checkRoom(urls.reduce((n, _, i) => n + (files[i] ? 0 : remote[i]?.length ?? 0), 0));
    let total = urls.reduce((n, _, i) => n + (files[i]?.size ?? remote[i]?.length ?? 0), 0);
    let loaded = 0;
    const progress = throttled(post);
    for (let i = 0; i < urls.length; i++) {
      const file = fileName(urls[i]);
      if (!files[i]) {
        const res = await get(urls[i]);
        if (!res.ok) throw new Error(`${urls[i]}: ${res.status} ${res.statusText}`);
        const onBytes = (n) => {
          loaded += n;
          total = Math.max(total, loaded);
          progress({ type: 'progress', phase: 'download', loaded, total, file });
        };
        files[i] = store ? await store.put(urls[i], res, onBytes) : await blobOf(res, onBytes);
      } else loaded += files[i].size;
      progress({ type: 'progress', phase: 'download', loaded, total, file }, true);
    }
    return { files, fromCache, bytes: loaded, cached: !!store };
  } catch (e) {
    closeAll(files);
    throw e;
  }
}

/** The store's files hold read locks until closed, and the model has read everything it needs once loaded. */
const closeAll = (files) => files.forEach((f) => f?.close?.());

async function load({ base, wasmUrl, memoryLimit, backend }) {
  if (!base.endsWith('/')) base += '/';
  const text = async (name, optional) => {
    const res = await get(base + name);
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
  const { files, fromCache, bytes, cached } = await filesOf(urls);
  const weights = {};
  shards.forEach((s, i) => (weights[s] = files[i + 1]));
  const previous = model;
  model = null;
  await previous?.close();
  const progress = throttled(post);
  const opts = {
    backend,
    threads: threadCount(),
    onProgress: (loaded, total) => progress({ type: 'progress', phase: 'weights', loaded, total }, loaded === total),
    ...(memoryLimit !== undefined && { memoryLimit }),
  };
  progress({ type: 'progress', phase: 'weights', loaded: 0, total: 0 }, true);
  try {
    model = await loadModelFromBuffers({ wasm: files[0], config, tokenizer, tokenizerConfig, weights }, opts);
  } finally {
    closeAll(files);
  }
  post({
    type: 'loaded',
    ms: performance.now() - started,
    bytes,
    fromCache,
    cached,
    files: urls.length,
    chatTemplate: !!tokenizerConfig?.chat_template,
    threads: model.model.threads,
    backend: model.model.backend,
    device: model.model.device,
    isolated: globalThis.crossOriginIsolated === true,
    memories: model.model.memories?.map(({ bytes, units }) => ({ bytes, units })),
  });
}

async function generate({ mode, prompt, messages, maxTokens, temperature }) {
  if (!model) throw new Error('no model loaded');
  abort = new AbortController();
  const started = performance.now();
  let first = 0;
  let pieces = 0;
  const onToken = (piece) => {
    if (pieces === 0) first = performance.now();
    pieces++;
    post({ type: 'token', text: piece, pieces, ms: performance.now() - started, decodeMs: performance.now() - first });
  };
  const opts = { maxTokens, temperature, signal: abort.signal, onToken };
  // The token loop yields a macrotask between tokens (setImmediate above), which lets a 'stop' message in.
  const r = mode === 'chat' ? await model.chatText(messages, opts) : await model.generateText(prompt, opts);
  abort = null;
  post({
    type: 'done',
    text: r.text,
    pieces,
    tokens: r.tokens.length,
    promptTokens: r.promptTokens,
    prefillMs: r.prefillMs,
    decodeMs: r.decodeMs,
    aborted: r.finishReason === 'abort',
  });
}

// A failure outside a request (a promise nobody awaits) still reaches the page, which would otherwise wait forever.
self.addEventListener('unhandledrejection', (e) => post({ type: 'error', message: e.reason?.message ?? String(e.reason) }));

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
