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
import { checkpointFromBytes } from './checkpoint/checkpoint.js';
import { parseConfig } from './checkpoint/config.js';
import { fail } from './errors.js';
import { TextModel } from './generate/text-model.js';
import type { LoadOptions } from './model/backend.js';
import { Model } from './model/model.js';
import { Tokenizer } from './tokenizer/tokenizer.js';

export { TextModel, type GenerateResult } from './generate/text-model.js';
export { DeepWasmError } from './errors.js';

/** Bytes as an ArrayBuffer, a view of one, or a Response (or its promise) whose body is read to the end. */
export type ByteSource = ArrayBuffer | ArrayBufferView | Response | Promise<Response>;

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

async function bytesOf(name: string, source: ByteSource): Promise<Uint8Array> {
  const s = await source;
  if (s instanceof ArrayBuffer) return new Uint8Array(s);
  if (ArrayBuffer.isView(s)) return new Uint8Array(s.buffer, s.byteOffset, s.byteLength);
  if (typeof Response !== 'undefined' && s instanceof Response) {
    if (!s.ok) fail(`${name}: the response is ${s.status} ${s.statusText}${s.url ? ` (${s.url})` : ''}`);
    return new Uint8Array(await s.arrayBuffer());
  }
  return fail(`${name}: expected an ArrayBuffer, a typed array or a Response`);
}

/**
 * Loads a model from bytes for text generation (the same TextModel as loadModel), on this thread alone by default
 * (`threads`: 1) or with a pool of threads - 1 workers. Errors are DeepWasmErrors naming the file and what was wrong.
 */
export async function loadModelFromBuffers(sources: BufferModelSources, opts: Omit<LoadOptions, 'simd' | 'wasm' | 'backend' | 'cudaLibrary'> = {}): Promise<TextModel> {
  const tokenizer = Tokenizer.fromJSON(sources.tokenizer, sources.tokenizerConfig);
  const config = parseConfig(sources.config, 'config.json');
  const names = Object.keys(sources.weights ?? {});
  if (names.length === 0) fail('weights: give at least one safetensors file, e.g. { "model.safetensors": bytes }');
  const wasm =
    sources.wasm instanceof WebAssembly.Module ? sources.wasm : await WebAssembly.compile((await bytesOf('wasm', sources.wasm as ByteSource)) as Uint8Array<ArrayBuffer>);
  const files = new Map<string, Uint8Array>();
  for (const name of names) files.set(name, await bytesOf(name, sources.weights[name]));
  const ckpt = checkpointFromBytes('(in memory)', config, files);
  return TextModel.assemble('(in memory)', tokenizer, config, () => Model.fromCheckpoint(ckpt, { ...opts, threads: opts.threads ?? 1, wasm }));
}
