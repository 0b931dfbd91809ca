// The edge entry (host/edge.ts): a model from bytes, on one thread, with no files read and no workers.
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { loadModelFromBuffers } from '../host/edge.js';
import { DEFAULT_MODEL_DIR, loadModel } from '../host/index.js';
import { DENO_ENV, denoBinary } from './deno-bin.js';
import { maxAbsDiff, OneSequence } from './helpers.js';

const WASM = fileURLToPath(new URL('../../build/deepwasm.wasm', import.meta.url));
const SCRIPT = fileURLToPath(new URL('./edge-deno.js', import.meta.url));
const PROMPT = 'Once upon a time';
const FILES: Record<string, string> = {
  'deepwasm.wasm': WASM,
  ...Object.fromEntries(['config.json', 'tokenizer.json', 'tokenizer_config.json', 'model.safetensors'].map((n) => [n, join(DEFAULT_MODEL_DIR, n)])),
};

const json = (name: string): unknown => JSON.parse(readFileSync(FILES[name], 'utf8'));

/** What Node's loadModel generates with the same core (SIMD128) on one thread. */
async function nodeText(): Promise<string> {
  const model = await loadModel(DEFAULT_MODEL_DIR, { threads: 1, simd: 'plain' });
  try {
    return (await model.generateText(PROMPT, { maxTokens: 24, temperature: 0 })).text;
  } finally {
    await model.close();
  }
}

test('edge: a model from ArrayBuffers and Responses generates what loadModel does', async () => {
  const expected = await nodeText();
  const weights = readFileSync(FILES['model.safetensors']);
  const model = await loadModelFromBuffers({
    wasm: new Response(readFileSync(WASM)),
    config: json('config.json'),
    tokenizer: json('tokenizer.json'),
    tokenizerConfig: json('tokenizer_config.json'),
    weights: { 'model.safetensors': weights.buffer.slice(weights.byteOffset, weights.byteOffset + weights.byteLength) },
  });
  assert.is(model.model.device.includes("1 thread)"), true);
  const { text } = await model.generateText(PROMPT, { maxTokens: 24, temperature: 0 });
  await model.close();
  assert.ok(expected.length > 0, 'text generated');
  assert.is(text, expected);
});

test('edge: threads: 2 runs a pool (node:worker_threads under Node) and generates the same text', async () => {
  const expected = await nodeText();
  const model = await loadModelFromBuffers(
    {
      wasm: readFileSync(WASM),
      config: json('config.json'),
      tokenizer: json('tokenizer.json'),
      tokenizerConfig: json('tokenizer_config.json'),
      weights: { 'model.safetensors': readFileSync(FILES['model.safetensors']) },
    },
    { threads: 2 },
  );
  assert.is(model.model.device.includes("2 threads)"), true);
  const { text } = await model.generateText(PROMPT, { maxTokens: 24, temperature: 0 });
  await model.close();
  assert.is(text, expected);
});

/** The bytes as a stream of `size`-byte chunks, each its own Uint8Array, as a slow network might deliver them. */
function trickle(bytes: Uint8Array, size: number): ReadableStream<Uint8Array> {
  let at = 0;
  return new ReadableStream({
    pull(c) {
      if (at >= bytes.length) return c.close();
      c.enqueue(bytes.slice(at, (at += size)));
    },
  });
}

const sources = (weights: Record<string, unknown>) => ({
  wasm: new Blob([readFileSync(WASM)]),
  config: json('config.json'),
  tokenizer: json('tokenizer.json'),
  tokenizerConfig: json('tokenizer_config.json'),
  weights: weights as Record<string, Response>,
});

test('edge: a Response whose body streams in thousands of small chunks gives the logits of the file load', async () => {
  const ids = [0, 735, 567, 434, 386, 381];
  const file = await loadModel(DEFAULT_MODEL_DIR, { threads: 1, simd: 'plain' });
  const expected = new OneSequence(file.model).forward(ids, { allLogits: true }).slice();
  await file.close();
  const weights = new Uint8Array(readFileSync(FILES['model.safetensors']));
  const model = await loadModelFromBuffers(sources({ 'model.safetensors': new Response(trickle(weights, 4093)) }));
  const got = new OneSequence(model.model).forward(ids, { allLogits: true });
  await model.close();
  assert.ok(weights.length / 4093 > 3000, 'many chunks');
  assert.is(maxAbsDiff(got, expected), 0);
});

test('edge: a Blob, a bare ReadableStream and { size, read } load and generate what loadModel does', async () => {
  const expected = await nodeText();
  const weights = readFileSync(FILES['model.safetensors']);
  const reads: number[] = [];
  const randomAccess = {
    size: weights.length,
    read(offset: number, dst: Uint8Array) {
      reads.push(dst.length);
      dst.set(weights.subarray(offset, offset + dst.length));
    },
  };
  for (const source of [new Blob([weights]), trickle(new Uint8Array(weights), 1 << 20), randomAccess]) {
    const model = await loadModelFromBuffers(sources({ 'model.safetensors': source }));
    const { text } = await model.generateText(PROMPT, { maxTokens: 24, temperature: 0 });
    await model.close();
    assert.is(text, expected);
  }
  assert.ok(reads.length > 10 && Math.max(...reads) < weights.length / 2, 'read tensor by tensor');
});

test('edge: weights of another type name the file and what is accepted', async () => {
  try {
    await loadModelFromBuffers(sources({ 'model.safetensors': 'model.safetensors' }));
    assert.unreachable('loaded');
  } catch (e) {
    assert.match((e as Error).message, /model\.safetensors: expected an ArrayBuffer, a typed array, a Blob, a ReadableStream, a Response or \{ size, read\(offset, dst\) \}/);
  }
});

test('edge: a failed Response names the file', async () => {
  try {
    await loadModelFromBuffers({
      wasm: readFileSync(WASM),
      config: json('config.json'),
      tokenizer: json('tokenizer.json'),
      weights: { 'model.safetensors': new Response('gone', { status: 404, statusText: 'Not Found' }) },
    });
    assert.unreachable('loaded');
  } catch (e) {
    assert.match((e as Error).message, /model\.safetensors: the response is 404 Not Found/);
  }
});

test('edge: under Deno without --allow-read, weights fetched from a local server', async () => {
  const deno = denoBinary();
  const expected = await nodeText();
  const server = createServer((req, res) => {
    const path = FILES[(req.url ?? '').slice(1)];
    if (!path) return void res.writeHead(404).end();
    res.writeHead(200).end(readFileSync(path));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  try {
    const child = spawn(deno, ['run', '--no-prompt', `--allow-net=127.0.0.1:${port}`, SCRIPT, `http://127.0.0.1:${port}/`, PROMPT], { env: DENO_ENV });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    const timer = setTimeout(() => child.kill(), 120_000);
    const code = await new Promise<number | null>((resolve, reject) => {
      child.on('error', reject);
      child.on('close', resolve);
    }).finally(() => clearTimeout(timer));
    assert.is(code, 0, `deno exit code (stderr: ${stderr})`);
    assert.is(JSON.parse(stdout), expected);
  } finally {
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
  }
});

test.run();
