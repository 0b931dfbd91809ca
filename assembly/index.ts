// The module's exports: the pool, the kernels and the blocks. Everything takes pointers into the one
// shared memory that the host owns; nothing here allocates.
export { BOARD_BYTES, set_scratch } from './board';
export { pool_init, pool_stop, worker_loop } from './pool';
export { matmul, matmul_grouped, quantize_rows, silu_mul, mla_attention, read_probe } from './steps';
export { quant_scratch_bytes } from './kernels/matmul';
export { dot_peak } from './kernels/probe';
export { grouped_entries } from './kernels/grouped';
export { q_pack, q_unpack, fp8_pack } from './kernels/quantize';
export { weightBytes as weight_bytes } from './kernels/format';
export { rmsnorm } from './kernels/norm';
export { rope } from './kernels/rope';
export { softmax } from './kernels/activation';
export { add, scale, embed, gather_rows, scatter_add, copy_rows } from './kernels/elementwise';
export { route } from './kernels/route';
export { moe_group } from './kernels/moe';
export { mla_scratch_floats } from './blocks/mla';

/** 1 in the relaxed-SIMD build (build/deepwasm-relaxed.wasm), 0 in the plain SIMD128 build. */
export function relaxed_simd(): i32 {
  return ASC_FEATURE_RELAXED_SIMD ? 1 : 0;
}

/** First byte the host may use: everything below belongs to the module's static data. */
export function heap_base(): usize {
  return __heap_base;
}
