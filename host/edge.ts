/**
 * The edge entry: no filesystem, and one thread (no workers) unless `threads` asks for a pool. Everything comes in as
 * bytes, so it runs where files cannot be read (Deno without --allow-read, edge functions, service workers). With
 * threads > 1 the pool runs on node:worker_threads under Node and Deno, and on nested Web Workers in a browser worker
 * that is crossOriginIsolated (the shared memory cannot be posted otherwise; web-worker.js must sit next to the
 * bundle, as tools/build-web.mjs puts it).
 *
 * ```ts
 * import { loadModelFromBuffers } from 'deepwasm/edge';
 * const base = 'https://example.com/tiny/';
 * const get = (name: string) => fetch(base + name);
 * const model = await loadModelFromBuffers({
 *   wasm: get('deepwasm.wasm'),
 *   config: await (await get('config.json')).json(),
 *   tokenizer: await (await get('tokenizer.json')).json(),
 *   tokenizerConfig: await (await get('tokenizer_config.json')).json(),
 *   weights: { 'model.safetensors': get('model.safetensors') },
 * });
 * const { text } = await model.generateText('Once upon a time', { maxTokens: 24 });
 * ```
 */
import { BlobBytes, bytesFromStream, canReadBlobs, ChunkedBytes, type RandomAccessBytes } from './checkpoint/byte-source.js';
import { checkpointFromSources } from './checkpoint/checkpoint.js';
import { parseConfig } from './checkpoint/config.js';
import { fail } from './errors.js';
import { TextModel } from './generate/text-model.js';
import type { LoadOptions } from './model/backend.js';
import { Model } from './model/model.js';
import { Tokenizer } from './tokenizer/tokenizer.js';

export { TextModel, type GenerateResult } from './generate/text-model.js';
export { DeepWasmError } from './errors.js';

export type { RandomAccessBytes } from './checkpoint/byte-source.js';

type Bytes = ArrayBuffer | ArrayBufferView | Blob | ReadableStream<Uint8Array> | Response | RandomAccessBytes;

/**
 * Bytes as an ArrayBuffer, a view of one, a Blob, a ReadableStream of Uint8Arrays, a Response, or anything with a
 * `size` and a synchronous `read(offset, dst)` (RandomAccessBytes: e.g. over an OPFS sync access handle), or a
 * promise of one of them. A stream or a Response body is read to its end into memory in pieces; a Blob is read on
 * demand where FileReaderSync exists (a browser worker: a File is never held whole), else as a stream.
 */
export type ByteSource = Bytes | Promise<Bytes>;

const isRandomAccess = (s: object): s is RandomAccessBytes =>
  typeof (s as RandomAccessBytes).read === 'function' && Number.isSafeInteger((s as RandomAccessBytes).size) && (s as RandomAccessBytes).size >= 0;

export interface BufferModelSources {
  /** build/deepwasm.wasm or build/deepwasm-relaxed.wasm (the engine must have relaxed SIMD), or it compiled. */
  wasm: ByteSource | WebAssembly.Module;
  /** config.json, parsed. */
  config: unknown;
  /** tokenizer.json, parsed. */
  tokenizer: unknown;
  /** tokenizer_config.json, parsed (BOS and the chat template); optional. */
  tokenizerConfig?: unknown;
  /** The safetensors shards by file name, e.g. { 'model.safetensors': ... }. */
  weights: Record<string, ByteSource>;
}

async function bytesOf(name: string, source: ByteSource): Promise<RandomAccessBytes> {
  const s = await source;
  if (s instanceof ArrayBuffer) return new ChunkedBytes([new Uint8Array(s)]);
  if (ArrayBuffer.isView(s)) return new ChunkedBytes([new Uint8Array(s.buffer, s.byteOffset, s.byteLength)]);
  if (typeof Blob !== 'undefined' && s instanceof Blob) return canReadBlobs() ? new BlobBytes(s) : bytesFromStream(name, s.stream());
  if (typeof ReadableStream !== 'undefined' && s instanceof ReadableStream) return bytesFromStream(name, s);
  if (typeof Response !== 'undefined' && s instanceof Response) {
    if (!s.ok) fail(`${name}: the response is ${s.status} ${s.statusText}${s.url ? ` (${s.url})` : ''}`);
    return s.body ? bytesFromStream(name, s.body) : new ChunkedBytes([]);
  }
  if (typeof s === 'object' && s !== null && isRandomAccess(s)) return s;
  return fail(`${name}: expected an ArrayBuffer, a typed array, a Blob, a ReadableStream, a Response or { size, read(offset, dst) }`);
}

async function compileWasm(source: ByteSource): Promise<WebAssembly.Module> {
  const bytes = await bytesOf('wasm', source);
  const whole = new Uint8Array(bytes.size);
  bytes.read(0, whole);
  return WebAssembly.compile(whole);
}

/**
 * Loads a model from bytes for text generation (the same TextModel as loadModel), on this thread alone by default
 * (`threads`: 1) or with a pool of threads - 1 workers; `backend: 'webgpu'` runs it on navigator.gpu instead (the
 * device in a worker started from webgpu-thread.js beside the bundle; needs SharedArrayBuffer). Errors are DeepWasmErrors naming the file and what was wrong.
 */
export async function loadModelFromBuffers(
  sources: BufferModelSources,
  opts: Omit<LoadOptions, 'simd' | 'wasm' | 'backend' | 'cudaLibrary'> & { backend?: 'cpu' | 'webgpu' } = {},
): Promise<TextModel> {
  const tokenizer = Tokenizer.fromJSON(sources.tokenizer, sources.tokenizerConfig);
  const config = parseConfig(sources.config, 'config.json');
  const names = Object.keys(sources.weights ?? {});
  if (names.length === 0) fail('weights: give at least one safetensors file, e.g. { "model.safetensors": bytes }');
  const files = new Map<string, RandomAccessBytes>();
  for (const name of names) files.set(name, await bytesOf(name, sources.weights[name]));
  if (opts.backend === 'webgpu') {
    const { webGpuModelFromSources } = await import('./backends/webgpu/model.js');
    return TextModel.assemble('(in memory)', tokenizer, config, () => webGpuModelFromSources(sources.config, files, opts));
  }
  const wasm = sources.wasm instanceof WebAssembly.Module ? sources.wasm : await compileWasm(sources.wasm);
  const ckpt = checkpointFromSources('(in memory)', config, files);
  return TextModel.assemble('(in memory)', tokenizer, config, () => Model.fromCheckpoint(ckpt, { ...opts, threads: opts.threads ?? 1, wasm }));
}
