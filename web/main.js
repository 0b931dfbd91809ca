// The page: it only talks to the worker (worker.js), which owns the model, so the page never blocks.
// Automation: /?prompt=...&max_tokens=N&temperature=T loads the served model (or ?model=URL; on ?backend=webgpu|cpu) and
// runs one plain-text generation; then document.body.dataset.state is "done" and #output holds exactly the generated text ("error" and a
// message on failure).
const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const worker = new Worker(new URL('./worker.js', import.meta.url), { type: 'module' });
const history = [];
let busy = false;
let pending = null;
const MiB = 1048576;

// The backend: ?backend=webgpu|cpu or the selector; by default WebGPU when the browser gives an adapter and the page
// is cross-origin isolated (the WebGPU backend's worker waits on shared memory), else the WebAssembly CPU core.
const webgpu = (async () => {
  if (!navigator.gpu) return { ok: false, why: 'this browser has no navigator.gpu' };
  if (!isolatedPage()) return { ok: false, why: 'WebGPU needs a cross-origin isolated page (COOP/COEP)' };
  const adapter = await navigator.gpu.requestAdapter().catch(() => null);
  if (!adapter) return { ok: false, why: 'navigator.gpu gives no adapter' };
  const i = adapter.info ?? {};
  return { ok: true, adapter: [i.vendor, i.architecture, i.description].filter(Boolean).join(' ') || 'an adapter' };
})();
function isolatedPage() {
  return globalThis.crossOriginIsolated === true;
}
webgpu.then((g) => {
  const chosen = params.get('backend') ?? (g.ok ? 'webgpu' : 'cpu');
  $('backend').value = chosen;
  $('backendNote').textContent = g.ok ? `WebGPU adapter: ${g.adapter}` : `WebGPU unavailable: ${g.why}`;
});

// What `deepwasm web` says of the model it serves (its folder's name, --memory-limit); {} from any other server.
const info = fetch('./info.json')
  .then((r) => (r.ok ? r.json() : {}))
  .catch(() => ({}));
const servedBase = new URL('./model/', location.href).href;
const servedName = (i) => (i.embedded ? 'embedded model' : i.model ?? 'the model at ./model/');
info.then((i) => ($('servedName').textContent = servedName(i)));

const isolated = globalThis.crossOriginIsolated === true;
// Before a load: whether threads are possible; after it: the thread count the worker really runs with.
function showThreads(threads) {
  const note =
    threads === undefined
      ? isolated
        ? 'cross-origin isolated: threads available'
        : 'not cross-origin isolated: 1 thread (threads need COOP/COEP)'
      : isolated
        ? `${threads} thread${threads === 1 ? '' : 's'} (cross-origin isolated)`
        : `${threads} thread${threads === 1 ? '' : 's'} (not cross-origin isolated: threads need COOP/COEP)`;
  $('isolation').textContent = note + ' · SIMD128 build';
  if (threads !== undefined) document.body.dataset.threads = String(threads);
}
showThreads();

function setState(state, message) {
  document.body.dataset.state = state;
  if (message !== undefined) $('status').textContent = message;
}

const mb = (n) => (n / MiB).toFixed(n < 10 * MiB ? 2 : 1) + ' MiB';

function modelBase() {
  const chosen = params.get('model') ?? (document.querySelector('input[name=source]:checked').value === 'url' ? $('url').value.trim() : '');
  return chosen ? new URL(chosen, location.href).href : servedBase;
}

/** The served model by what the server calls it; a model URL by its folder's name. */
function modelName(base, i) {
  if (base === servedBase) return servedName(i);
  const folder = new URL(base).pathname.split('/').filter(Boolean).pop();
  return folder ? decodeURIComponent(folder) : base;
}

/** The load request, with the server's --memory-limit. */
function loadRequest(base, i, backend) {
  const msg = { type: 'load', base, backend, wasmUrl: new URL('./wasm/deepwasm.wasm', location.href).href };
  if (i.memoryLimitMiB !== undefined) msg.memoryLimit = Math.round(i.memoryLimitMiB * MiB);
  return msg;
}

/** How many WebAssembly memories hold the model and how big each is; nothing from a backend that does not say. */
function showMemories(memories) {
  if (!memories) return;
  const each = memories.map((m, i) => `#${i} ${mb(m.bytes)}${m.units ? ` (${m.units})` : ''}`).join(', ');
  $('memories').textContent = `${memories.length} WebAssembly memor${memories.length === 1 ? 'y' : 'ies'}: ${each}`;
  document.body.dataset.memories = String(memories.length);
}

function request(msg) {
  return new Promise((resolve, reject) => {
    pending = { resolve, reject };
    worker.postMessage(msg);
  });
}

worker.onmessage = (e) => {
  const m = e.data;
  if (m.type === 'progress') {
    const pct = m.total ? (100 * m.loaded) / m.total : 0;
    $('progress').value = m.total ? m.loaded / m.total : 0;
    $('bytes').textContent =
      m.phase === 'weights'
        ? `weights into memory: ${mb(m.loaded)} of ${mb(m.total)} (${pct.toFixed(1)}%)`
        : `${mb(m.loaded)} of ${mb(m.total)} (${pct.toFixed(1)}%) · ${m.file}`;
  } else if (m.type === 'loaded') {
    $('progress').value = 1;
    $('bytes').textContent = `${mb(m.bytes)} (100%) · ` + (m.cached ? `${m.fromCache} of ${m.files} files from the browser cache` : 'not cached: no origin private file system here');
    if (m.backend === 'webgpu') $('isolation').textContent = `backend: WebGPU · ${m.device}`;
    else showThreads(m.threads);
    document.body.dataset.backend = m.backend;
    $('backendNote').textContent = `running on ${m.device}`;
    pending?.resolve(m);
  } else if (m.type === 'token') {
    onPiece(m);
  } else if (m.type === 'done') {
    showStats(m);
    pending?.resolve(m);
  } else if (m.type === 'error') {
    pending?.reject(new Error(m.message));
  }
};

let liveNode = null;
function onPiece(m) {
  if (liveNode) liveNode.textContent += m.text;
  $('output').textContent += m.text;
  showStats(m);
}

const perSecond = (n, ms) => (n > 0 && ms > 0 ? ((n * 1000) / ms).toFixed(1) : '-');

/** While streaming: pieces and their rate; at the end: the model's token counts, prefill and decode tokens/s. */
function showStats(m) {
  if (m.type === 'token') {
    $('stats').textContent = `${m.pieces} pieces · ${perSecond(m.pieces - 1, m.decodeMs)} tokens/s`;
    return;
  }
  $('stats').textContent =
    `${m.tokens} tokens after a ${m.promptTokens}-token prompt · prefill ${perSecond(m.promptTokens, m.prefillMs)} tokens/s · ` +
    `decode ${perSecond(m.tokens - 1, m.decodeMs)} tokens/s${m.aborted ? ' · stopped' : ''}`;
}

async function load() {
  busy = true;
  $('load').disabled = $('send').disabled = true;
  setState('loading', 'loading…');
  $('model').textContent = $('memories').textContent = '';
  delete document.body.dataset.memories;
  try {
    const base = modelBase();
    const i = await info;
    await webgpu;
    const m = await request(loadRequest(base, i, $('backend').value));
    $('model').textContent = `model: ${modelName(base, i)}`;
    showMemories(m.memories);
    setState('ready', `loaded in ${(m.ms / 1000).toFixed(1)} s`);
    $('send').disabled = false;
  } finally {
    busy = false;
    $('load').disabled = false;
  }
}

async function run(mode, prompt) {
  busy = true;
  $('send').disabled = $('load').disabled = true;
  $('stop').disabled = false;
  $('output').textContent = '';
  setState('generating', 'generating…');
  const maxTokens = Number(params.get('max_tokens') ?? $('maxTokens').value);
  const temperature = Number(params.get('temperature') ?? $('temperature').value);
  try {
    if (mode === 'chat') {
      history.push({ role: 'user', content: prompt });
      addLine('user', 'You: ' + prompt);
      liveNode = addLine('assistant', '');
      const m = await request({ type: 'generate', mode, messages: history.slice(), maxTokens, temperature });
      history.push({ role: 'assistant', content: m.text });
      return m;
    }
    addLine('user', prompt);
    liveNode = addLine('assistant', '');
    return await request({ type: 'generate', mode, prompt, maxTokens, temperature });
  } finally {
    liveNode = null;
    busy = false;
    $('send').disabled = $('load').disabled = false;
    $('stop').disabled = true;
  }
}

function addLine(cls, text) {
  const div = document.createElement('div');
  div.className = cls;
  div.textContent = text;
  $('chat').append(div);
  return div;
}

function fail(e) {
  $('output').textContent = e?.message ?? String(e);
  setState('error', 'error: ' + (e?.message ?? String(e)));
}

$('load').onclick = () => load().catch(fail);
$('stop').onclick = () => worker.postMessage({ type: 'stop' });
$('clear').onclick = () => {
  history.length = 0;
  $('chat').textContent = '';
};
const send = () => {
  const prompt = $('prompt').value;
  if (busy || !prompt) return;
  const mode = document.querySelector('input[name=mode]:checked').value;
  $('prompt').value = '';
  run(mode, prompt)
    .then(() => setState('done', 'done'))
    .catch(fail);
};
$('send').onclick = send;
$('prompt').onkeydown = (e) => {
  if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) send();
};

if (params.has('prompt')) {
  document.querySelector('input[name=mode][value=text]').checked = true;
  $('prompt').value = '';
  (async () => {
    await load();
    await run('text', params.get('prompt'));
    setState('done', 'done');
  })().catch(fail);
}
