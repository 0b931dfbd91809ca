// The C ABI of kernels-gpu/build/libdwcuda.so (kernels-gpu/include/dw_cuda.h), bound through koffi
// on Node and Deno.dlopen on Deno. Nothing here knows about models: see cuda.ts.
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

/** Opaque model handle (a BigInt from koffi, a pointer object from Deno). */
export type Handle = unknown;

/** Element types of dw_load, as in dw_cuda.h. */
export const DW_F32 = 0;
export const DW_BF16 = 1;
export const DW_F16 = 2;
export const DW_FP8 = 3;

/** Slots of dw_load, as in dw_cuda.h. */
export const SLOT = {
  ATTN_NORM: 0, Q_PROJ: 1, Q_A: 2, Q_A_NORM: 3, Q_B: 4, KV_A: 5, KV_A_NORM: 6, KV_B: 7, O_PROJ: 8, FFN_NORM: 9,
  GATE_UP: 10, DOWN: 11, ROUTER: 12, ROUTER_BIAS: 13, EXP_GATE_UP: 14, EXP_DOWN: 15, SH_GATE_UP: 16, SH_DOWN: 17,
  EMBED: 32, FINAL_NORM: 33, LM_HEAD: 34, ROPE_COS: 35, ROPE_SIN: 36,
} as const;

export const ABI_VERSION = 1;
/** dw_config: 24 int32 then 4 float32. */
export const CONFIG_BYTES = 28 * 4;

export interface DwLib {
  path: string;
  abiVersion(): number;
  lastError(): string;
  /** Device count (0 with the reason in info when there is no usable device) and a description. */
  deviceInfo(): { count: number; info: string };
  create(config: ArrayBuffer): Handle | null;
  load(m: Handle, layer: number, slot: number, expert: number, dtype: number, data: Uint8Array, rows: number, cols: number,
    rowOffset: number, scales: Float32Array | null, blockRows: number, blockCols: number): number;
  fillRandom(m: Handle, seed: number): number;
  finalize(m: Handle): number;
  prefill(m: Handle, ids: Int32Array, logits: Float32Array | null, allRows: boolean): number;
  decode(m: Handle, token: number, logits: Float32Array | null): number;
  generate(m: Handle, token: number, out: Int32Array): number;
  topk(m: Handle, values: Float32Array, ids: Int32Array): number;
  /** One decode step timed stage by stage (a table); the position does not advance. */
  profileDecode(m: Handle, token: number): string;
  reset(m: Handle): number;
  position(m: Handle): number;
  weightBytes(m: Handle): number;
  activeBytes(m: Handle): number;
  free(m: Handle): void;
  bandwidthProbe(bytes: number, iters: number): number;
}

/** Where the library is looked for: $DEEPWASM_CUDA_LIB, else kernels-gpu/build/ of this checkout. */
export function defaultLibraryPath(): string {
  const env = typeof process !== 'undefined' ? process.env.DEEPWASM_CUDA_LIB : undefined;
  if (env) return env;
  // dist/host/backends/cuda-ffi.js -> repository root
  return fileURLToPath(new URL('../../../kernels-gpu/build/libdwcuda.so', import.meta.url));
}

const cache = new Map<string, DwLib>();

/** Loads the library; throws an Error that says what is missing and how to get it. */
export function openLibrary(path = defaultLibraryPath()): DwLib {
  const hit = cache.get(path);
  if (hit) return hit;
  if (!existsSync(path)) throw new Error(`the CUDA library ${path} is not built (run: npm run build:gpu)`);
  const deno = (globalThis as { Deno?: DenoFfi }).Deno;
  const lib = deno ? bindDeno(deno, path) : bindKoffi(path);
  const v = lib.abiVersion();
  if (v !== ABI_VERSION) throw new Error(`${path} has ABI version ${v}; this build expects ${ABI_VERSION} (rebuild: npm run build:gpu)`);
  cache.set(path, lib);
  return lib;
}

function cString(buf: Uint8Array): string {
  const end = buf.indexOf(0);
  return new TextDecoder().decode(end < 0 ? buf : buf.subarray(0, end));
}

// ---- Node: koffi ---------------------------------------------------------------------------------
interface KoffiLib {
  func(signature: string): (...args: unknown[]) => unknown;
}

function bindKoffi(path: string): DwLib {
  let koffi: { load(path: string): KoffiLib };
  try {
    koffi = createRequire(import.meta.url)('koffi');
  } catch (e) {
    throw new Error(`koffi is not installed (an optional dependency; npm install koffi): ${(e as Error).message}`);
  }
  const lib = koffi.load(path);
  const f = {
    abi: lib.func('int dw_abi_version()'),
    err: lib.func('const char *dw_last_error()'),
    info: lib.func('int dw_device_info(void *info, int32_t len)'),
    create: lib.func('void *dw_create(const void *cfg)'),
    load: lib.func(
      'int dw_load(void *m, int32_t layer, int32_t slot, int32_t expert, int32_t dtype, const void *data, int64_t rows, ' +
        'int64_t cols, int64_t row_offset, const void *scales, int32_t block_rows, int32_t block_cols)',
    ),
    fill: lib.func('int dw_fill_random(void *m, uint64_t seed)'),
    finalize: lib.func('int dw_finalize(void *m)'),
    prefill: lib.func('int dw_prefill(void *m, const void *ids, int32_t n, void *logits, int32_t all_rows)'),
    decode: lib.func('int dw_decode(void *m, int32_t token, void *logits)'),
    generate: lib.func('int dw_generate(void *m, int32_t token, int32_t n, void *out_ids)'),
    topk: lib.func('int dw_topk(void *m, int32_t k, void *values, void *ids)'),
    profile: lib.func('int dw_profile_decode(void *m, int32_t token, void *out, int32_t len)'),
    reset: lib.func('int dw_reset(void *m)'),
    position: lib.func('int32_t dw_position(void *m)'),
    wbytes: lib.func('int64_t dw_weight_bytes(void *m)'),
    abytes: lib.func('int64_t dw_active_bytes(void *m)'),
    free: lib.func('void dw_free(void *m)'),
    bw: lib.func('double dw_bandwidth_probe(int64_t bytes, int32_t iters)'),
  };
  return {
    path,
    abiVersion: () => f.abi() as number,
    lastError: () => (f.err() as string) ?? '',
    deviceInfo() {
      const buf = new Uint8Array(512);
      const count = f.info(buf, buf.length) as number;
      return { count, info: cString(buf) || (f.err() as string) };
    },
    create: (config) => (f.create(new Uint8Array(config)) as Handle) ?? null,
    load: (m, layer, slot, expert, dtype, data, rows, cols, rowOffset, scales, br, bc) =>
      f.load(m, layer, slot, expert, dtype, data, rows, cols, rowOffset, scales, br, bc) as number,
    fillRandom: (m, seed) => f.fill(m, seed) as number,
    finalize: (m) => f.finalize(m) as number,
    prefill: (m, ids, logits, all) => f.prefill(m, ids, ids.length, logits, all ? 1 : 0) as number,
    decode: (m, token, logits) => f.decode(m, token, logits) as number,
    generate: (m, token, out) => f.generate(m, token, out.length, out) as number,
    topk: (m, values, ids) => f.topk(m, values.length, values, ids) as number,
    profileDecode(m, token) {
      const buf = new Uint8Array(16384);
      const rc = f.profile(m, token, buf, buf.length) as number;
      return rc < 0 ? `error: ${f.err() as string}` : cString(buf);
    },
    reset: (m) => f.reset(m) as number,
    position: (m) => f.position(m) as number,
    weightBytes: (m) => Number(f.wbytes(m)),
    activeBytes: (m) => Number(f.abytes(m)),
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
    dw_create: { parameters: [b], result: p },
    dw_load: { parameters: [p, i32, i32, i32, i32, b, i64, i64, i64, b, i32, i32], result: i32 },
    dw_fill_random: { parameters: [p, 'u64'], result: i32 },
    dw_finalize: { parameters: [p], result: i32 },
    dw_prefill: { parameters: [p, b, i32, b, i32], result: i32 },
    dw_decode: { parameters: [p, i32, b], result: i32 },
    dw_generate: { parameters: [p, i32, i32, b], result: i32 },
    dw_topk: { parameters: [p, i32, b, b], result: i32 },
    dw_profile_decode: { parameters: [p, i32, b, i32], result: i32 },
    dw_reset: { parameters: [p], result: i32 },
    dw_position: { parameters: [p], result: i32 },
    dw_weight_bytes: { parameters: [p], result: i64 },
    dw_active_bytes: { parameters: [p], result: i64 },
    dw_free: { parameters: [p], result: 'void' },
    dw_bandwidth_probe: { parameters: [i64, i32], result: 'f64' },
  });
  const big = (n: number) => BigInt(Math.trunc(n));
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
    create: (config) => (s.dw_create(new Uint8Array(config)) as Handle) ?? null,
    load: (m, layer, slot, expert, dtype, data, rows, cols, rowOffset, scales, br, bc) =>
      s.dw_load(m, layer, slot, expert, dtype, data, big(rows), big(cols), big(rowOffset), scales, br, bc) as number,
    fillRandom: (m, seed) => s.dw_fill_random(m, big(seed)) as number,
    finalize: (m) => s.dw_finalize(m) as number,
    prefill: (m, ids, logits, all) => s.dw_prefill(m, ids, ids.length, logits, all ? 1 : 0) as number,
    decode: (m, token, logits) => s.dw_decode(m, token, logits) as number,
    generate: (m, token, out) => s.dw_generate(m, token, out.length, out) as number,
    topk: (m, values, ids) => s.dw_topk(m, values.length, values, ids) as number,
    profileDecode(m, token) {
      const buf = new Uint8Array(16384);
      const rc = s.dw_profile_decode(m, token, buf, buf.length) as number;
      return rc < 0 ? `error: ${lastError()}` : cString(buf);
    },
    reset: (m) => s.dw_reset(m) as number,
    position: (m) => s.dw_position(m) as number,
    weightBytes: (m) => Number(s.dw_weight_bytes(m)),
    activeBytes: (m) => Number(s.dw_active_bytes(m)),
    free: (m) => void s.dw_free(m),
    bandwidthProbe: (bytes, iters) => s.dw_bandwidth_probe(big(bytes), iters) as number,
  };
}
