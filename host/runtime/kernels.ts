// The typed face of the wasm module's exports. Arguments are numbers (pointers are byte offsets into
// the shared memory); we call instance.exports directly instead of @assemblyscript/loader, whose
// helpers allocate inside the module and so would race between threads on a shared memory.

export const FMT_F32 = 0;
export const FMT_BF16 = 1;
export type WeightFormat = typeof FMT_F32 | typeof FMT_BF16;

export const ROUTE_GREEDY = 0;
export const ROUTE_GROUP_LIMITED_GREEDY = 1;
export const ROUTE_NOAUX_TC = 2;
export const SCORE_SOFTMAX = 0;
export const SCORE_SIGMOID = 1;

export interface Kernels {
  heap_base(): number;
  BOARD_BYTES: WebAssembly.Global;
  pool_init(board: number, threads: number): void;
  pool_stop(): void;
  worker_loop(board: number, tid: number, seenGeneration: number): void;
  matmul(fmt: number, out: number, w: number, x: number, rows: number, cols: number, tokens: number): void;
  rmsnorm(out: number, outStride: number, x: number, xStride: number, w: number, n: number, tokens: number, eps: number): void;
  rope(x: number, tokens: number, vecs: number, tokenStride: number, vecStride: number, cos: number, sin: number, pos0: number, half: number): void;
  softmax(x: number, n: number): void;
  silu_mul(out: number, gateUp: number, n: number, tokens: number): void;
  add(y: number, x: number, n: number): void;
  scale(y: number, a: number, n: number): void;
  embed(fmt: number, out: number, table: number, ids: number, tokens: number, dim: number): void;
  gather_rows(dst: number, src: number, rows: number, n: number, dim: number): void;
  scatter_add(dst: number, src: number, rows: number, weights: number, n: number, dim: number): void;
  copy_rows(dst: number, dstStride: number, src: number, srcStride: number, n: number, tokens: number): void;
  route(
    logits: number, tokens: number, experts: number, bias: number, method: number, scoring: number,
    groups: number, keepGroups: number, k: number, normalize: number, routedScale: number,
    outExperts: number, outWeights: number, scratch: number,
  ): void;
  mla_attention(
    fmt: number, out: number, q: number, kvB: number, cache: number, scratch: number,
    tokens: number, heads: number, nope: number, ropeDim: number, vDim: number, rank: number, pos0: number, softmaxScale: number,
  ): void;
  mla_scratch_floats(rank: number, ropeDim: number, positions: number): number;
  read_probe(src: number, bytes: number, out: number): void;
}

export function instantiate(module: WebAssembly.Module, memory: WebAssembly.Memory): Kernels {
  const instance = new WebAssembly.Instance(module, { env: { memory } });
  return instance.exports as unknown as Kernels;
}
