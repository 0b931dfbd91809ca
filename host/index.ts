/**
 * DeepWasm: DeepSeek-V2/V3 inference on a threaded WebAssembly SIMD core.
 *
 * ```ts
 * import { loadModel } from 'deepwasm';
 * const model = await loadModel();            // the embedded tiny model, or loadModel('/path/to/checkpoint')
 * for await (const text of model.generate('Once upon a time', { maxTokens: 50 })) process.stdout.write(text);
 * const reply = await model.chatText([{ role: 'user', content: 'Hi' }], { temperature: 0.7, seed: 1 });
 * await model.close();
 * ```
 */
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { fail } from './errors.js';
import type { LoadOptions } from './model/backend.js';
import { TextModel } from './generate/text-model.js';

export { TextModel, type GenerateResult } from './generate/text-model.js';
export { generateIds, type FinishReason, type GenerateIdsOptions, type TokenResult } from './generate/generate.js';
export { DEFAULT_MAX_TOKENS, type DraftChoice, type GenerateOptions, type SamplingOptions } from './generate/options.js';
export { beamSearch, type BeamOptions, type BeamResult } from './generate/beam.js';
export type { DraftStats } from './generate/speculative.js';
export { Model } from './model/model.js';
export type { BackendName, BatchEntry, LoadOptions, LogitsRows, ModelBackend, MtpHead, Sequence } from './model/backend.js';
export { loadBackend } from './backends/load.js';
export { convertCheckpoint, type ConvertOptions } from './model/convert.js';
export { modelSchema, schemaWeights, parameterCounts, type ModelSchema, type Weight } from './model/schema.js';
export { Tokenizer, StreamDecoder } from './tokenizer/index.js';
export type { ChatMessage, ChatTemplateOptions, ChatToolCall, DecodeOptions, EncodeOptions } from './tokenizer/index.js';
export { loadTokenizer, type LoadTokenizerOptions } from './tokenizer/load.js';
export { DeepWasmError } from './errors.js';
export { DeepWasmServer, type ServerOptions } from './server/server.js';
export type { DeepSeekConfig } from './checkpoint/config.js';

/** The model that ships with the package, at models/tiny in the package root (this file runs from dist/host). */
export const DEFAULT_MODEL_DIR = fileURLToPath(new URL('../../models/tiny', import.meta.url));

/**
 * Loads a model folder (config.json, *.safetensors, tokenizer.json, tokenizer_config.json) for text generation;
 * without `dir` (or with only the options), the embedded model. `backend: 'cuda'` runs it on an NVIDIA GPU. Errors are
 * DeepWasmErrors naming the file and what was wrong.
 */
export async function loadModel(dir?: string, opts?: LoadOptions): Promise<TextModel>;
export async function loadModel(opts: LoadOptions): Promise<TextModel>;
export async function loadModel(dirOrOpts: string | LoadOptions = DEFAULT_MODEL_DIR, maybeOpts: LoadOptions = {}): Promise<TextModel> {
  if (typeof dirOrOpts !== 'string' && (typeof dirOrOpts !== 'object' || dirOrOpts === null || Array.isArray(dirOrOpts))) {
    fail(`loadModel takes the model folder (a string) and/or the load options (an object), got ${dirOrOpts === null ? 'null' : Array.isArray(dirOrOpts) ? 'an array' : typeof dirOrOpts}`);
  }
  const [dir, opts] = typeof dirOrOpts === 'string' ? [dirOrOpts, maybeOpts] : [DEFAULT_MODEL_DIR, dirOrOpts];
  if (dir === DEFAULT_MODEL_DIR && !existsSync(dir)) {
    fail(`the embedded model is not installed (${dir} does not exist); pass the folder of a model to load (--model DIR on the command line)`);
  }
  return TextModel.load(dir, opts);
}
