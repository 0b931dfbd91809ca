// The interface every backend implements (the wasm model in host/model/model.ts, the CUDA model in
// host/backends/cuda/): load once, then sequences, each with its own latent KV cache from a pool sized at
// load, and forward() over a batch of (sequence, tokens). Continuous batching (many sequences, one token
// each), speculative verification (one sequence, K + 1 tokens, then truncate), beam search (sequences
// forked from one prompt) and chunked prefill are all this one call.
import type { DeepSeekConfig } from '../checkpoint/config.js';
import type { SimdChoice } from '../runtime/features.js';
import type { QuantName } from './weights.js';

export type BackendName = 'cpu' | 'cuda' | 'webgpu';
export const BACKEND_NAMES: readonly BackendName[] = ['cpu', 'cuda', 'webgpu'];

/** A sequence of tokens with its KV cache in one slot of its backend's pool; made by the backend. */
export interface Sequence {
  /** Its slot in the pool: 0 to maxSequences - 1. */
  readonly slot: number;
  /** Tokens in its cache: the position of its next token. */
  readonly position: number;
}

/** Which logits rows forward() returns for an entry: its last token's, every token's, or none. */
export type LogitsRows = 'last' | 'all' | 'none';

export interface BatchEntry {
  sequence: Sequence;
  /** Token ids to append: a prompt chunk or one decode token. */
  tokens: ArrayLike<number>;
  /** Default 'last'. */
  logits?: LogitsRows;
  /**
   * [tokens, hidden_size] that receives every token's last hidden state after the final norm (what the head
   * reads): what an MTP layer drafts from.
   */
  hidden?: Float32Array;
}

export interface LoadOptions {
  /** Where to run (default 'cpu': the WebAssembly core). */
  backend?: BackendName;
  /** Most tokens a sequence may hold (prompt and generated); default min(max_position_embeddings, 4096). */
  contextLength?: number;
  /** Sequences that may hold a cache at once (default 1): the pool holds maxSequences x contextLength tokens. */
  maxSequences?: number;
  /**
   * Weight format of the matrices (docs/quantized-format.md). CPU default: as stored when the checkpoint
   * is at most 1 GiB, q8 above that for bf16/f32 checkpoints; FP8 checkpoints stay fp8 and `deepwasm
   * convert` output loads in its own format. CUDA: as stored, or q8; it refuses q4.
   */
  quant?: QuantName;
  /** Called as weight bytes are read, with the total to read. */
  onProgress?: (bytesRead: number, totalBytes: number) => void;
  /** CPU: threads taking part in each kernel, this one included (default: all cores). */
  threads?: number;
  /** CPU: 'plain' forces the SIMD128 build, 'relaxed' the relaxed-SIMD one; default DEEPWASM_SIMD or auto-detect. */
  simd?: SimdChoice;
  /** CPU: the compiled core to run (either build), instead of reading build/*.wasm from disk; `simd` is then unused. */
  wasm?: WebAssembly.Module;
  /**
   * Most tokens one pass through the layers takes (default 256; on CUDA the prefill chunk): a longer prompt
   * runs in passes of this many, so its temporaries stay bounded (MLA's per-head buffers alone take heads x tokens x
   * kv_lora_rank floats twice: 128 MiB for 4096 tokens of a 16-head model). 256 keeps every reuse of the
   * weights inside a pass (4-token tiles, 64-token quantization chunks).
   */
  passTokens?: number;
  /**
   * CPU: most bytes of weights and KV cache one WebAssembly memory holds (default: a wasm32 memory's 4 GiB
   * less the scratch each memory keeps). A model larger than this spans several memories, each with its own
   * module instances and threads; a smaller limit spreads even a small model (the tests do).
   */
  memoryLimit?: number;
  /**
   * Also load the checkpoint's multi-token-prediction layer (num_nextn_predict_layers; DeepSeek-V3's
   * model.layers.61), the draft of `draft: 'mtp'`; default false, since it is a layer's worth of weights (CPU, CUDA).
   */
  mtp?: boolean;
  /** CUDA: path of libdwcuda.so (default: $DEEPWASM_CUDA_LIB or kernels-gpu/build/). */
  cudaLibrary?: string;
}

/** DeepSeek-V3's multi-token-prediction layer (host/model/mtp.ts): a draft model inside the model, with a cache per sequence. */
export interface MtpHead {
  /**
   * Runs MTP positions [position, position + tokens.length) of the sequence's MTP cache, forgetting any after:
   * at position i the token t(i+1) with h(i), the main model's hidden state after the final norm (rows of
   * `hidden`, as forward() wrote them, or this layer's own `out` to chain a further draft). Returns the last
   * position's logits (its guess at t(i+2)), a view valid until the next call, and writes that position's
   * output state, before the layer's head norm, to `out` [hidden_size].
   */
  forward(sequence: Sequence, position: number, tokens: ArrayLike<number>, hidden: Float32Array, out: Float32Array): Float32Array;
}

/** A loaded model on one backend. */
export interface ModelBackend {
  readonly backend: BackendName;
  readonly config: DeepSeekConfig;
  readonly contextLength: number;
  readonly maxSequences: number;
  /** The weight format in memory, as --quant names it, or 'stored' (as the checkpoint holds it). */
  readonly quant: string;
  /** What it runs on, for summaries: "CPU (WebAssembly relaxed SIMD, 2 threads)" or the GPU's name. */
  readonly device: string;
  /** Bytes of weights in memory, and those one decoded token reads (its routed experts' share, not the embedding). */
  readonly weightBytes: number;
  readonly activeBytes: number;
  /** The MTP layer, when the load asked for it (`mtp`) and the backend runs it (CPU, CUDA). */
  readonly mtp?: MtpHead;
  /** A new empty sequence; throws when all maxSequences slots are in use. */
  createSequence(): Sequence;
  /**
   * Runs each entry's tokens after the tokens its sequence holds and returns, per entry, its logits rows
   * ([rows, vocab], empty for 'none'). An entry's sequence may appear once per batch. The arrays may be
   * views of the backend's memory, valid until its next call.
   */
  forward(batch: readonly BatchEntry[]): Float32Array[];
  /** Forgets the sequence's tokens from `position` on (0 empties it). */
  truncate(sequence: Sequence, position: number): void;
  /** A new sequence holding a copy of this one's tokens and cache. */
  fork(sequence: Sequence): Sequence;
  /** Gives the sequence's slot back; the sequence cannot be used afterwards. */
  free(sequence: Sequence): void;
  /** Frees the backend's memory and threads; nothing can be used afterwards. */
  close(): Promise<void>;
}
