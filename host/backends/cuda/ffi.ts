// The C ABI of kernels-gpu/build/libdwcuda.so (kernels-gpu/include/dw_cuda.h), bound through koffi
// on Node and Deno.dlopen on Deno. Nothing here knows about models: see model.ts.
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { fail } from '../../errors.js';

/** Opaque model handle (a BigInt from koffi, a pointer object from Deno). */
export type Handle = unknown;

/** DW_ABI_VERSION of dw_cuda.h. */
export const ABI_VERSION = 4;
/** dw_config: 29 int32 then 4 float32. */
export const CONFIG_INTS = 29;
export const CONFIG_BYTES = (CONFIG_INTS + 4) * 4;

export interface MemoryPlan {
  weights: number;
  kvCache: number;
  scratch: number;
}

export interface DwLib {
  path: string;
  abiVersion(): number;
  lastError(): string;
  /** Device count (0 with the reason in info when there is no usable device) and a description. */
  deviceInfo(): { count: number; info: string };
  /** Free and total bytes of the device, or null on failure (lastError says why). */
  deviceMemory(): { free: number; total: number } | null;
  create(config: ArrayBuffer): Handle | null;
  declare(m: Handle, layer: number, role: number, fmt: number): number;
  /** Bytes the model will hold once finalized, or null on failure. */
  memoryPlan(m: Handle): MemoryPlan | null;
  load(m: Handle, layer: number, role: number, expert: number, dtype: number, data: Uint8Array, rows: number, cols: number,
    rowOffset: number, scales: Float32Array | null, blockRows: number, blockCols: number): number;
  fillRandom(m: Handle, seed: number): number;
  finalize(m: Handle): number;
  /** hidden (when not null): every token's state after the final norm, [ids, hidden_size]. */
  prefill(m: Handle, seq: number, pos: number, ids: Int32Array, logits: Float32Array | null, allRows: boolean, hidden: Float32Array | null): number;
  decode(m: Handle, seq: number, pos: number, token: number, logits: Float32Array | null, hidden: Float32Array | null): number;
  /** Most tokens one batched decode step takes. */
  decodeBatchMax(m: Handle): number;
  /** One batched decode step: tokens[i] at pos[i] of seqs[i]; next gets the argmaxes; returns the distinct routed experts read (or < 0). */
  decodeBatch(m: Handle, seqs: Int32Array, pos: Int32Array, tokens: Int32Array, logits: Float32Array | null, next: Int32Array, hidden: Float32Array | null): number;
  /** The MTP layer at MTP positions pos .. pos + tokens.length - 1 of seq: the last one's output state into hiddenOut, its logits into logits. */
  mtpForward(m: Handle, seq: number, pos: number, tokens: Int32Array, hiddenIn: Float32Array, hiddenOut: Float32Array, logits: Float32Array): number;
  generate(m: Handle, seq: number, pos: number, token: number, out: Int32Array): number;
  /** One decode step timed stage by stage (a table), or null on failure. */
  profileDecode(m: Handle, seq: number, pos: number, token: number): string | null;
  /** One batched decode step timed stage by stage (a table), or null on failure. */
  profileDecodeBatch(m: Handle, seqs: Int32Array, pos: Int32Array, tokens: Int32Array): string | null;
  seqCopy(m: Handle, dst: number, src: number, positions: number): number;
  topk(m: Handle, values: Float32Array, ids: Int32Array): number;
  weightBytes(m: Handle): number;
  activeBytes(m: Handle): number;
  expertBytes(m: Handle): number;
  free(m: Handle): void;
  bandwidthProbe(bytes: number, iters: number): number;
}

/** Where the library is looked for: $DEEPWASM_CUDA_LIB, else kernels-gpu/build/ of this checkout. */
export function defaultLibraryPath(): string {
  const env = typeof process !== 'undefined' ? process.env.DEEPWASM_CUDA_LIB : undefined;
  if (env) return env;
  // dist/host/backends/cuda/ffi.js -> repository root
  return fileURLToPath(new URL('../../../../kernels-gpu/build/libdwcuda.so', import.meta.url));
}

const cache = new Map<string, DwLib>();

/** Loads the library; fails with a line that says what is missing and how to get it. */
export function openLibrary(path = defaultLibraryPath()): DwLib {
  const hit = cache.get(path);
  if (hit) return hit;
  if (!existsSync(path)) fail(`the CUDA library ${path} is not built (run: npm run build:gpu)`);
  const deno = (globalThis as { Deno?: DenoFfi }).Deno;
  const lib = deno ? bindDeno(deno, path) : bindKoffi(path);
  const v = lib.abiVersion();
  if (v !== ABI_VERSION) fail(`${path} has ABI version ${v}; this build expects ${ABI_VERSION} (rebuild: npm run build:gpu)`);
  cache.set(path, lib);
  return lib;
}

function cString(buf: Uint8Array): string {
  const end = buf.indexOf(0);
  return new TextDecoder().decode(end < 0 ? buf : buf.subarray(0, end));
}

const PROFILE_BYTES = 16384;

// ---- Node: koffi ---------------------------------------------------------------------------------
interface KoffiLib {
  func(signature: string): (...args: unknown[]) => unknown;
}

function bindKoffi(path: string): DwLib {
  let koffi: { load(path: string): KoffiLib };
  try {
    koffi = createRequire(import.meta.url)('koffi');
  } catch (e) {
    fail(`koffi is not installed (an optional dependency the CUDA backend needs: npm install koffi): ${(e as Error).message}`);
  }
  const lib = koffi.load(path);
  const f = {
    abi: lib.func('int dw_abi_version()'),
    err: lib.func('const char *dw_last_error()'),
    info: lib.func('int dw_device_info(void *info, int32_t len)'),
    memory: lib.func('int dw_device_memory(void *free_bytes, void *total_bytes)'),
    create: lib.func('void *dw_create(const void *cfg)'),
    declare: lib.func('int dw_declare(void *m, int32_t layer, int32_t role, int32_t fmt)'),
    plan: lib.func('int dw_memory_plan(void *m, void *weights, void *kv_cache, void *scratch)'),
    load: lib.func(
      'int dw_load(void *m, int32_t layer, int32_t role, int32_t expert, int32_t dtype, const void *data, int64_t rows, ' +
        'int64_t cols, int64_t row_offset, const void *scales, int32_t block_rows, int32_t block_cols)',
    ),
    fill: lib.func('int dw_fill_random(void *m, uint64_t seed)'),
    finalize: lib.func('int dw_finalize(void *m)'),
    prefill: lib.func('int dw_prefill(void *m, int32_t seq, int32_t pos, const void *ids, int32_t n, void *logits, int32_t all_rows, void *hidden)'),
    decode: lib.func('int dw_decode(void *m, int32_t seq, int32_t pos, int32_t token, void *logits, void *hidden)'),
    batchMax: lib.func('int dw_decode_batch_max(void *m)'),
    batch: lib.func('int dw_decode_batch(void *m, int32_t n, const void *seqs, const void *pos, const void *tokens, void *logits, void *next, void *hidden)'),
    mtp: lib.func('int dw_mtp_forward(void *m, int32_t seq, int32_t pos, const void *tokens, int32_t n, const void *hidden_in, void *hidden_out, void *logits)'),
    generate: lib.func('int dw_generate(void *m, int32_t seq, int32_t pos, int32_t token, int32_t n, void *out_ids)'),
    profile: lib.func('int dw_profile_decode(void *m, int32_t seq, int32_t pos, int32_t token, void *out, int32_t len)'),
    profileBatch: lib.func('int dw_profile_decode_batch(void *m, int32_t n, const void *seqs, const void *pos, const void *tokens, void *out, int32_t len)'),
    seqCopy: lib.func('int dw_seq_copy(void *m, int32_t dst, int32_t src, int32_t n_positions)'),
    topk: lib.func('int dw_topk(void *m, int32_t k, void *values, void *ids)'),
    wbytes: lib.func('int64_t dw_weight_bytes(void *m)'),
    abytes: lib.func('int64_t dw_active_bytes(void *m)'),
    ebytes: lib.func('int64_t dw_expert_bytes(void *m)'),
    free: lib.func('void dw_free(void *m)'),
    bw: lib.func('double dw_bandwidth_probe(int64_t bytes, int32_t iters)'),
  };
  const i64 = () => new BigInt64Array(1);
  return {
    path,
    abiVersion: () => f.abi() as number,
    lastError: () => (f.err() as string) ?? '',
    deviceInfo() {
      const buf = new Uint8Array(512);
      const count = f.info(buf, buf.length) as number;
      return { count, info: cString(buf) || (f.err() as string) };
    },
    deviceMemory() {
      const [free, total] = [i64(), i64()];
      return (f.memory(free, total) as number) < 0 ? null : { free: Number(free[0]), total: Number(total[0]) };
    },
    create: (config) => (f.create(new Uint8Array(config)) as Handle) ?? null,
    declare: (m, layer, role, fmt) => f.declare(m, layer, role, fmt) as number,
    memoryPlan(m) {
      const [w, kv, s] = [i64(), i64(), i64()];
      return (f.plan(m, w, kv, s) as number) < 0 ? null : { weights: Number(w[0]), kvCache: Number(kv[0]), scratch: Number(s[0]) };
    },
    load: (m, layer, role, expert, dtype, data, rows, cols, rowOffset, scales, br, bc) =>
      f.load(m, layer, role, expert, dtype, data, rows, cols, rowOffset, scales, br, bc) as number,
    fillRandom: (m, seed) => f.fill(m, seed) as number,
    finalize: (m) => f.finalize(m) as number,
    prefill: (m, seq, pos, ids, logits, all, hidden) => f.prefill(m, seq, pos, ids, ids.length, logits, all ? 1 : 0, hidden) as number,
    decode: (m, seq, pos, token, logits, hidden) => f.decode(m, seq, pos, token, logits, hidden) as number,
    decodeBatchMax: (m) => f.batchMax(m) as number,
    decodeBatch: (m, seqs, pos, tokens, logits, next, hidden) => f.batch(m, seqs.length, seqs, pos, tokens, logits, next, hidden) as number,
    mtpForward: (m, seq, pos, tokens, hiddenIn, hiddenOut, logits) => f.mtp(m, seq, pos, tokens, tokens.length, hiddenIn, hiddenOut, logits) as number,
    generate: (m, seq, pos, token, out) => f.generate(m, seq, pos, token, out.length, out) as number,
    profileDecode(m, seq, pos, token) {
      const buf = new Uint8Array(PROFILE_BYTES);
      return (f.profile(m, seq, pos, token, buf, buf.length) as number) < 0 ? null : cString(buf);
    },
    profileDecodeBatch(m, seqs, pos, tokens) {
      const buf = new Uint8Array(PROFILE_BYTES);
      return (f.profileBatch(m, seqs.length, seqs, pos, tokens, buf, buf.length) as number) < 0 ? null : cString(buf);
    },
    seqCopy: (m, dst, src, n) => f.seqCopy(m, dst, src, n) as number,
    topk: (m, values, ids) => f.topk(m, values.length, values, ids) as number,
    weightBytes: (m) => Number(f.wbytes(m)),
    activeBytes: (m) => Number(f.abytes(m)),
    expertBytes: (m) => Number(f.ebytes(m)),
    free: (m) => void f.free(m),
    bandwidthProbe: (bytes, iters) => f.bw(bytes, iters) as number,
  };
}

// ---- Deno: Deno.dlopen ----------------------------------------------------------------------------
interface DenoFfi {
  dlopen(path: string, symbols: Record<string, { parameters: string[]; result: string }>): {
    symbols: Record<string, (...args: unknown[]) => unknown>;
  };
  UnsafePointerView: { getCString(p: unknown): string };
}

function bindDeno(deno: DenoFfi, path: string): DwLib {
  const p = 'pointer', b = 'buffer', i32 = 'i32', i64 = 'i64';
  const { symbols: s } = deno.dlopen(path, {
    dw_abi_version: { parameters: [], result: i32 },
    dw_last_error: { parameters: [], result: p },
    dw_device_info: { parameters: [b, i32], result: i32 },
    dw_device_memory: { parameters: [b, b], result: i32 },
    dw_create: { parameters: [b], result: p },
    dw_declare: { parameters: [p, i32, i32, i32], result: i32 },
    dw_memory_plan: { parameters: [p, b, b, b], result: i32 },
    dw_load: { parameters: [p, i32, i32, i32, i32, b, i64, i64, i64, b, i32, i32], result: i32 },
    dw_fill_random: { parameters: [p, 'u64'], result: i32 },
    dw_finalize: { parameters: [p], result: i32 },
    dw_prefill: { parameters: [p, i32, i32, b, i32, b, i32, b], result: i32 },
    dw_decode: { parameters: [p, i32, i32, i32, b, b], result: i32 },
    dw_decode_batch_max: { parameters: [p], result: i32 },
    dw_decode_batch: { parameters: [p, i32, b, b, b, b, b, b], result: i32 },
    dw_mtp_forward: { parameters: [p, i32, i32, b, i32, b, b, b], result: i32 },
    dw_generate: { parameters: [p, i32, i32, i32, i32, b], result: i32 },
    dw_profile_decode: { parameters: [p, i32, i32, i32, b, i32], result: i32 },
    dw_profile_decode_batch: { parameters: [p, i32, b, b, b, b, i32], result: i32 },
    dw_seq_copy: { parameters: [p, i32, i32, i32], result: i32 },
    dw_topk: { parameters: [p, i32, b, b], result: i32 },
    dw_weight_bytes: { parameters: [p], result: i64 },
    dw_active_bytes: { parameters: [p], result: i64 },
    dw_expert_bytes: { parameters: [p], result: i64 },
    dw_free: { parameters: [p], result: 'void' },
    dw_bandwidth_probe: { parameters: [i64, i32], result: 'f64' },
  });
  const big = (n: number) => BigInt(Math.trunc(n));
  const i64buf = () => new BigInt64Array(1);
  const lastError = () => {
    const ptr = s.dw_last_error();
    return ptr ? deno.UnsafePointerView.getCString(ptr) : '';
  };
  return {
    path,
    abiVersion: () => s.dw_abi_version() as number,
    lastError,
    deviceInfo() {
      const buf = new Uint8Array(512);
      const count = s.dw_device_info(buf, buf.length) as number;
      return { count, info: cString(buf) || lastError() };
    },
    deviceMemory() {
      const [free, total] = [i64buf(), i64buf()];
      return (s.dw_device_memory(free, total) as number) < 0 ? null : { free: Number(free[0]), total: Number(total[0]) };
    },
    create: (config) => (s.dw_create(new Uint8Array(config)) as Handle) ?? null,
    declare: (m, layer, role, fmt) => s.dw_declare(m, layer, role, fmt) as number,
    memoryPlan(m) {
      const [w, kv, sc] = [i64buf(), i64buf(), i64buf()];
      return (s.dw_memory_plan(m, w, kv, sc) as number) < 0 ? null : { weights: Number(w[0]), kvCache: Number(kv[0]), scratch: Number(sc[0]) };
    },
    load: (m, layer, role, expert, dtype, data, rows, cols, rowOffset, scales, br, bc) =>
      s.dw_load(m, layer, role, expert, dtype, data, big(rows), big(cols), big(rowOffset), scales, br, bc) as number,
    fillRandom: (m, seed) => s.dw_fill_random(m, big(seed)) as number,
    finalize: (m) => s.dw_finalize(m) as number,
    prefill: (m, seq, pos, ids, logits, all, hidden) => s.dw_prefill(m, seq, pos, ids, ids.length, logits, all ? 1 : 0, hidden) as number,
    decode: (m, seq, pos, token, logits, hidden) => s.dw_decode(m, seq, pos, token, logits, hidden) as number,
    decodeBatchMax: (m) => s.dw_decode_batch_max(m) as number,
    decodeBatch: (m, seqs, pos, tokens, logits, next, hidden) => s.dw_decode_batch(m, seqs.length, seqs, pos, tokens, logits, next, hidden) as number,
    mtpForward: (m, seq, pos, tokens, hiddenIn, hiddenOut, logits) => s.dw_mtp_forward(m, seq, pos, tokens, tokens.length, hiddenIn, hiddenOut, logits) as number,
    generate: (m, seq, pos, token, out) => s.dw_generate(m, seq, pos, token, out.length, out) as number,
    profileDecode(m, seq, pos, token) {
      const buf = new Uint8Array(PROFILE_BYTES);
      return (s.dw_profile_decode(m, seq, pos, token, buf, buf.length) as number) < 0 ? null : cString(buf);
    },
    profileDecodeBatch(m, seqs, pos, tokens) {
      const buf = new Uint8Array(PROFILE_BYTES);
      return (s.dw_profile_decode_batch(m, seqs.length, seqs, pos, tokens, buf, buf.length) as number) < 0 ? null : cString(buf);
    },
    seqCopy: (m, dst, src, n) => s.dw_seq_copy(m, dst, src, n) as number,
    topk: (m, values, ids) => s.dw_topk(m, values.length, values, ids) as number,
    weightBytes: (m) => Number(s.dw_weight_bytes(m)),
    activeBytes: (m) => Number(s.dw_active_bytes(m)),
    expertBytes: (m) => Number(s.dw_expert_bytes(m)),
    free: (m) => void s.dw_free(m),
    bandwidthProbe: (bytes, iters) => s.dw_bandwidth_probe(big(bytes), iters) as number,
  };
}
