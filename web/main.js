// The page: it only talks to the worker (worker.js), which owns the model, so the page never blocks.
// Automation: /?prompt=...&max_tokens=N&temperature=T loads the embedded model (or ?model=URL) and runs one plain-text
// generation; then document.body.dataset.state is "done" and #output holds exactly the generated text ("error" and a
// message on failure).
const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const worker = new Worker(new URL('./worker.js', import.meta.url), { type: 'module' });
const history = [];
let busy = false;
let pending = null;

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

const mb = (n) => (n / 1048576).toFixed(n < 10485760 ? 2 : 1) + ' MiB';

function modelBase() {
  const chosen = params.get('model') ?? (document.querySelector('input[name=source]:checked').value === 'url' ? $('url').value.trim() : '');
  return chosen ? new URL(chosen, location.href).href : new URL('./model/', location.href).href;
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
    $('bytes').textContent = m.file === 'compiling' ? `${mb(m.loaded)} · compiling and loading weights…` : `${mb(m.loaded)} of ${mb(m.total)} (${pct.toFixed(1)}%) · ${m.file}`;
  } else if (m.type === 'loaded') {
    $('progress').value = 1;
    $('bytes').textContent = `${mb(m.bytes)} (100%) · ${m.fromCache} of ${m.files} files from the browser cache`;
    showThreads(m.threads);
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

function showStats(m) {
  const rate = m.pieces > 1 && m.decodeMs > 0 ? ((m.pieces - 1) * 1000) / m.decodeMs : 0;
  $('stats').textContent = `${m.pieces} tokens · ${rate ? rate.toFixed(1) : '-'} tokens/s${m.aborted ? ' · stopped' : ''}`;
}

async function load() {
  busy = true;
  $('load').disabled = $('send').disabled = true;
  setState('loading', 'loading…');
  try {
    const m = await request({ type: 'load', base: modelBase(), wasmUrl: new URL('./wasm/deepwasm.wasm', location.href).href });
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
