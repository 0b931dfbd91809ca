#!/usr/bin/env node
// Serving throughput (issue 13, point 4): aggregate decode tokens/s of `deepwasm serve` at 1, 2, 4 and 8
// concurrent streams, beside what a bytes model predicts, and the time to first token of a new request
// while 8 streams decode. Run by hand (after `npm run build`); its output goes into bench/RESULTS.md.
//
//   node bench/serve-throughput.mjs [--model DIR] [--streams 1,2,4,8] [--gen-tokens 48] [--prompt-tokens 32]
//       [--ttft-prompts 32,128] [--threads 2] [--context 512] [--prefill-chunk 128]
//
// The server runs in this process (DeepWasmServer over the loaded model) and the clients are fetch streams
// over loopback, so HTTP, JSON and SSE are in the numbers. Each stream is a /v1/completions request of
// `prompt-tokens` distinct token ids, ignore_eos and greedy, so every stream decodes exactly `gen-tokens`.
//
// Measured: the model's forward() is wrapped to time each batched step; the steady state is the steps in which
// every one of the N streams decodes one token (no prompt chunk, nobody finished). Aggregate tok/s = N x those
// steps / the wall time from the first one's start to the last one's end (so sampling, SSE writes and the
// event loop between steps count). Predicted: decode is bound by the weight bytes a step reads. A step reads
// every non-routed weight once and each distinct routed expert it chose once, whatever its tokens, so
// bytes(N) = active - moeLayers x k x expert + distinct(N) x expert, with distinct(N) counted in the run
// (Model.countExperts); at the same bandwidth, tok/s(N) = N x tok/s(1) x bytes(1) / bytes(N).
// The VM is shared: each run also records the CPU the rest of the machine used meanwhile.
//
// With --draft mtp|DIR [--draft-tokens K] [--rounds 3] it measures speculative decoding instead (issue 14): two
// servers over the one loaded model, one drafting (the MTP layer, or the draft model in DIR) and one not, run
// the same requests (greedy, ignore_eos, `gen-tokens` each, English prompts) at each --streams count, the two
// interleaved and their order swapped every round, so that the machine's load falls on both alike. Per stream,
// tok/s is (tokens - 1) / (last chunk - first chunk); aggregate is all streams' tokens after their first over
// the time from the earliest first chunk to the latest end; kept is draft tokens kept / verified (/metrics).
import * as fs from 'node:fs';
import * as os from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const { loadModel } = await import(join(ROOT, 'dist/host/index.js'));
const { DeepWasmServer } = await import(join(ROOT, 'dist/host/server/server.js'));

function parseArgs(argv) {
  const flags = {};
  for (let i = 0; i < argv.length; i++) {
    if (!argv[i].startsWith('--')) throw new Error(`unexpected argument ${argv[i]}`);
    flags[argv[i].slice(2)] = argv[++i];
  }
  return flags;
}

const flags = parseArgs(process.argv.slice(2));
const dir = flags.model ?? '/work/big/v3-2k6-q8';
const streams = (flags.streams ?? '1,2,4,8').split(',').map(Number);
const genTokens = Number(flags['gen-tokens'] ?? 48);
const promptTokens = Number(flags['prompt-tokens'] ?? 32);
const ttftPrompts = (flags['ttft-prompts'] ?? '32,128').split(',').map(Number);
const threads = flags.threads === undefined ? undefined : Number(flags.threads);
const contextLength = Number(flags.context ?? 512);
const prefillChunk = Number(flags['prefill-chunk'] ?? 128);
const most = Math.max(...streams);
const draftFlag = flags.draft;
const draftTokens = flags['draft-tokens'] === undefined ? undefined : Number(flags['draft-tokens']);
const rounds = Number(flags.rounds ?? 3);

/** CPU seconds the whole machine spent busy so far (/proc/stat), or null off Linux. */
function machineBusy() {
  try {
    const f = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
    const [user, nice, system, , , irq, softirq, steal] = f;
    return (user + nice + system + irq + softirq + steal) / 100;
  } catch {
    return null;
  }
}

/** Runs fn and returns its result with the share of the machine's cores that other processes kept busy meanwhile. */
async function withOthers(fn) {
  const busy0 = machineBusy();
  const own0 = process.cpuUsage();
  const t0 = performance.now();
  const result = await fn();
  const wall = (performance.now() - t0) / 1000;
  const own = process.cpuUsage(own0);
  const busy = machineBusy();
  const others = busy0 === null ? null : Math.max(0, busy - busy0 - (own.user + own.system) / 1e6) / (wall * os.availableParallelism());
  return { ...result, others_cpu_share: others === null ? null : Number(others.toFixed(2)) };
}

let seed = 7;
/** Distinct-looking prompts of n token ids (a fixed sequence, so runs compare). */
function promptIds(n, vocab) {
  return Array.from({ length: n }, () => {
    seed = (seed * 1103515245 + 12345) % 2 ** 31;
    return 100 + (seed % (vocab - 200));
  });
}

/** Prompts of ordinary text, so that a trained MTP layer drafts as it would for users. */
const PROMPTS = [
  'Once upon a time, in a small village by the sea, there lived an old fisherman who',
  'In the beginning God created the heaven and the earth. And the earth was without form, and void;',
  'The history of the city begins with a settlement on the river, where traders from the north',
  'And it came to pass, when men began to multiply on the face of the earth, and daughters were born unto them,',
];

const text = await loadModel(dir, { maxSequences: most + 1, contextLength, threads, mtp: draftFlag === 'mtp' });
if (draftFlag !== undefined) {
  await compareDrafts();
  await text.close();
  process.exit(0);
}
const backend = text.model;
const cfg = backend.config;
const tally = { experts: 0 };
backend.countExperts(tally);
/** Every forward() call: its entries, whether all were one-token decodes, start/end ms and the experts it ran. */
const steps = [];
const forward = backend.forward.bind(backend);
backend.forward = (batch) => {
  const experts = tally.experts;
  const start = performance.now();
  const rows = forward(batch);
  steps.push({ entries: batch.length, decode: batch.every((e) => e.tokens.length === 1), start, end: performance.now(), experts: tally.experts - experts });
  return rows;
};
const server = await DeepWasmServer.start(text, { port: 0, parallel: most + 1, queue: 0, prefillChunk, log: (l) => process.stderr.write(l + '\n') });
const moeLayers = cfg.numHiddenLayers - cfg.firstKDenseReplace;
const routedPerToken = moeLayers * cfg.numExpertsPerTok;
const bytesOf = (distinct) => backend.activeBytes - routedPerToken * backend.expertBytes + distinct * backend.expertBytes;

/** One streaming completion; resolves with the time its first chunk came and its end. */
async function stream(ids, maxTokens, signal) {
  const t0 = performance.now();
  const res = await fetch(`${server.url}/v1/completions`, {
    signal,
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ prompt: ids, max_tokens: maxTokens, ignore_eos: true, temperature: 0, stream: true }),
  });
  if (res.status !== 200) throw new Error(`status ${res.status}: ${await res.text()}`);
  let first = null;
  for await (const chunk of res.body) {
    first ??= performance.now();
    if (new TextDecoder().decode(chunk).includes('data: [DONE]')) break;
  }
  return { t0, first, end: performance.now() };
}

/** N streams at once: the steady-state decode steps (all N decoding) and their rate. */
async function concurrent(n) {
  const from = steps.length;
  const ids = Array.from({ length: n }, () => promptIds(promptTokens, cfg.vocabSize));
  await Promise.all(ids.map((p) => stream(p, genTokens)));
  const full = steps.slice(from).filter((s) => s.decode && s.entries === n);
  const wall = (full.at(-1).end - full[0].start) / 1000;
  const forwardS = full.reduce((t, s) => t + (s.end - s.start), 0) / 1000;
  const distinct = full.reduce((t, s) => t + s.experts, 0) / full.length;
  return { streams: n, steps: full.length, tok_s: (n * full.length) / wall, forward_tok_s: (n * full.length) / forwardS, distinct_experts_per_step: distinct, bytes_per_step: bytesOf(distinct) };
}

/** Time to first token of a prompt of p tokens while `busy` streams decode. */
async function ttft(p, busy) {
  const stop = new AbortController();
  const long = Array.from({ length: busy }, () => stream(promptIds(promptTokens, cfg.vocabSize), contextLength - promptTokens, stop.signal));
  // Every busy stream is decoding before the new request arrives.
  const decoding = () => busy === 0 || (steps.at(-1)?.entries === busy && steps.at(-1).decode);
  while (!decoding()) await new Promise((r) => setTimeout(r, 5));
  const r = await stream(promptIds(p, cfg.vocabSize), 1);
  stop.abort();
  await Promise.allSettled(long);
  await server.scheduler.idle();
  return { s: (r.first - r.t0) / 1000 };
}

process.stderr.write(`${dir}: ${backend.device}; weights ${(backend.weightBytes / 1e9).toFixed(2)} GB, ${(backend.activeBytes / 1e9).toFixed(3)} GB active per token, routed expert ${(backend.expertBytes / 1e6).toFixed(2)} MB x ${routedPerToken} per token\n`);
await stream(promptIds(promptTokens, cfg.vocabSize), 4);
const rows = [];
for (const n of streams) {
  const r = await withOthers(() => concurrent(n));
  rows.push(r);
  process.stderr.write(`${n} streams: ${r.tok_s.toFixed(1)} tok/s\n`);
}
const one = rows.find((r) => r.streams === 1) ?? rows[0];
// A step's time scales with its bytes: t(N) = t(one) x bytes(N) / bytes(one), and tok/s(N) = N / t(N).
for (const r of rows) {
  r.predicted_tok_s = ((r.streams * one.tok_s) / one.streams) * (one.bytes_per_step / r.bytes_per_step);
  r.of_prediction = r.tok_s / r.predicted_tok_s;
}
const busy = Math.min(8, most);
const ttfts = [];
for (const p of ttftPrompts) ttfts.push({ prompt_tokens: p, alone: await withOthers(() => ttft(p, 0)), busy: await withOthers(() => ttft(p, busy)) });

const gb = (b) => (b / 1e9).toFixed(3);
console.log(`| streams | aggregate tok/s | forward-only tok/s | distinct experts / step | GB read / step | predicted tok/s | measured / predicted | others' CPU |`);
console.log(`|---:|---:|---:|---:|---:|---:|---:|---:|`);
for (const r of rows) {
  console.log(`| ${r.streams} | ${r.tok_s.toFixed(1)} | ${r.forward_tok_s.toFixed(1)} | ${r.distinct_experts_per_step.toFixed(1)} of ${routedPerToken * r.streams} | ${gb(r.bytes_per_step)} | ${r.predicted_tok_s.toFixed(1)} | ${(r.of_prediction * 100).toFixed(0)}% | ${r.others_cpu_share ?? '?'} |`);
}
console.log('');
console.log(`| prompt tokens | TTFT alone (s) | TTFT with ${busy} streams decoding (s) | others' CPU |`);
console.log(`|---:|---:|---:|---:|`);
for (const t of ttfts) console.log(`| ${t.prompt_tokens} | ${t.alone.s.toFixed(3)} | ${t.busy.s.toFixed(3)} | ${t.busy.others_cpu_share ?? '?'} |`);
console.log(JSON.stringify({ model: dir, device: backend.device, gen_tokens: genTokens, prompt_tokens: promptTokens, prefill_chunk: prefillChunk, rows, ttfts }));

await server.close();
await text.close();

/** Draft tokens verified and kept so far, from the server's /metrics text. */
function draftCounts(server) {
  const text = server.metrics.text();
  const value = (name) => Number(new RegExp(`^${name} (\\S+)$`, 'm').exec(text)?.[1] ?? NaN);
  return { proposed: value('deepwasm_draft_tokens_proposed_total'), accepted: value('deepwasm_draft_tokens_accepted_total') };
}

/** n streams at once on `server`: per-stream and aggregate tok/s after each stream's first token. */
async function timedStreams(server, n) {
  const runs = Array.from({ length: n }, async (_, i) => {
    const res = await fetch(`${server.url}/v1/completions`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ prompt: PROMPTS[i % PROMPTS.length], max_tokens: genTokens, ignore_eos: true, temperature: 0, stream: true, stream_options: { include_usage: true } }),
    });
    if (res.status !== 200) throw new Error(`status ${res.status}: ${await res.text()}`);
    let first = null;
    let tokens = 0;
    let buffer = '';
    for await (const chunk of res.body) {
      first ??= performance.now();
      buffer += new TextDecoder().decode(chunk);
      const m = /"completion_tokens":(\d+)/.exec(buffer);
      if (m) tokens = Number(m[1]);
      if (buffer.includes('data: [DONE]')) break;
    }
    return { first, end: performance.now(), tokens };
  });
  const r = await Promise.all(runs);
  const after = r.reduce((t, s) => t + s.tokens - 1, 0);
  const perStream = r.reduce((t, s) => t + (s.tokens - 1) / ((s.end - s.first) / 1000), 0) / n;
  const aggregate = after / ((Math.max(...r.map((s) => s.end)) - Math.min(...r.map((s) => s.first))) / 1000);
  return { per_stream: perStream, aggregate };
}

async function compareDrafts() {
  const draft = draftFlag === 'mtp' ? 'mtp' : await loadModel(draftFlag, { maxSequences: most + 1, contextLength, threads });
  const opts = { port: 0, parallel: most, queue: 0, prefillChunk, log: (l) => process.stderr.write(l + '\n') };
  const plain = await DeepWasmServer.start(text, opts);
  const drafting = await DeepWasmServer.start(text, { ...opts, draft, draftTokens });
  const k = drafting.draft.tokens;
  const label = `${draftFlag === 'mtp' ? 'MTP' : draftFlag}, K = ${k}`;
  process.stderr.write(`${dir}: ${text.model.device}; draft ${label}; ${rounds} rounds of ${streams.join(', ')} streams x ${genTokens} tokens\n`);
  await timedStreams(plain, 1);
  await timedStreams(drafting, 1);
  const results = new Map(streams.map((n) => [n, { plain: [], draft: [], proposed: 0, accepted: 0 }]));
  for (let round = 0; round < rounds; round++) {
    for (const n of streams) {
      const cell = results.get(n);
      const order = round % 2 === 0 ? ['plain', 'draft'] : ['draft', 'plain'];
      for (const mode of order) {
        const before = draftCounts(drafting);
        const r = await withOthers(() => timedStreams(mode === 'plain' ? plain : drafting, n));
        cell[mode].push(r);
        if (mode === 'draft') {
          const after = draftCounts(drafting);
          cell.proposed += after.proposed - before.proposed;
          cell.accepted += after.accepted - before.accepted;
        }
        process.stderr.write(`round ${round + 1}, ${n} streams, ${mode}: ${r.per_stream.toFixed(1)} tok/s per stream, ${r.aggregate.toFixed(1)} aggregate (others' CPU ${r.others_cpu_share})\n`);
      }
    }
  }
  const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  const rows = streams.map((n) => {
    const c = results.get(n);
    const m = (mode, key) => median(c[mode].map((r) => r[key]));
    return {
      streams: n,
      plain_per_stream: m('plain', 'per_stream'),
      plain_aggregate: m('plain', 'aggregate'),
      draft_per_stream: m('draft', 'per_stream'),
      draft_aggregate: m('draft', 'aggregate'),
      // Ratios per round (each pair ran back to back), then their median.
      ratio: median(c.draft.map((r, i) => r.aggregate / c.plain[i].aggregate)),
      kept: c.accepted / c.proposed,
      others_cpu_share: median([...c.plain, ...c.draft].map((r) => r.others_cpu_share ?? 0)),
    };
  });
  console.log(`| streams | no draft: tok/s per stream | aggregate | ${label}: tok/s per stream | aggregate | with / without (aggregate) | drafts kept | others' CPU |`);
  console.log(`|---:|---:|---:|---:|---:|---:|---:|---:|`);
  for (const r of rows) {
    console.log(`| ${r.streams} | ${r.plain_per_stream.toFixed(1)} | ${r.plain_aggregate.toFixed(1)} | ${r.draft_per_stream.toFixed(1)} | ${r.draft_aggregate.toFixed(1)} | ×${r.ratio.toFixed(2)} | ${(r.kept * 100).toFixed(0)}% | ${r.others_cpu_share.toFixed(2)} |`);
  }
  console.log(JSON.stringify({ model: dir, device: text.model.device, draft: label, gen_tokens: genTokens, rounds, rows }));
  await drafting.close();
  await plain.close();
  if (typeof draft === 'object') await draft.close();
}
