// generated from assembly/constants.ts by tools/gen-constants.mjs (npm run build): edit that file, not this one.

// Weight formats: how a matrix lies in memory, in wasm and on the GPU alike (docs/quantized-format.md).
export const FMT_F32 = 0;
export const FMT_BF16 = 1;
/** int8 weights, one f32 scale per group of QUANT_GROUP along each row. */
export const FMT_Q8 = 2;
/** 4-bit weights (stored q + 8), one f32 scale per group of QUANT_GROUP along each row. */
export const FMT_Q4 = 3;
/** e4m3 weights with DeepSeek's FP8_BLOCK x FP8_BLOCK block scales, dequantized inside the kernel. */
export const FMT_FP8 = 4;
/** Weights and activations of q8 and q4 share one scale per this many values along a row. */
export const QUANT_GROUP = 32;
/** DeepSeek's FP8 weight_block_size. */
export const FP8_BLOCK = 128;

// Element types of checkpoint data handed over as it is stored (dw_load).
export const DTYPE_F32 = 0;
export const DTYPE_BF16 = 1;
export const DTYPE_F16 = 2;
export const DTYPE_F8_E4M3 = 3;

// MoE routing: config.json's topk_method and scoring_func.
export const ROUTE_GREEDY = 0;
export const ROUTE_GROUP_LIMITED_GREEDY = 1;
export const ROUTE_NOAUX_TC = 2;
export const SCORE_SOFTMAX = 0;
export const SCORE_SIGMOID = 1;

// Tensor roles (host/model/schema.ts): what a tensor is in its layer. The CUDA library's load slots.

// Per-layer roles come with a layer index; the MTP layers' indices follow the decoder layers'.
export const ROLE_ATTN_NORM = 0;
export const ROLE_Q_PROJ = 1;
export const ROLE_Q_A = 2;
export const ROLE_Q_A_NORM = 3;
export const ROLE_Q_B = 4;
export const ROLE_KV_A = 5;
export const ROLE_KV_A_NORM = 6;
export const ROLE_KV_B = 7;
export const ROLE_O_PROJ = 8;
export const ROLE_FFN_NORM = 9;
/** Dense MLP: gate and up stacked by rows [2 * inter, hidden]. */
export const ROLE_GATE_UP = 10;
export const ROLE_DOWN = 11;
export const ROLE_ROUTER = 12;
export const ROLE_ROUTER_BIAS = 13;
/** Routed expert e (its index given beside the role): gate and up stacked by rows. */
export const ROLE_EXP_GATE_UP = 14;
export const ROLE_EXP_DOWN = 15;
export const ROLE_SH_GATE_UP = 16;
export const ROLE_SH_DOWN = 17;
/** MTP layer: norm of the next token's embedding. */
export const ROLE_MTP_ENORM = 18;
/** MTP layer: norm of the previous layer's hidden state. */
export const ROLE_MTP_HNORM = 19;
/** MTP layer: [hidden, 2 * hidden], from [enorm(e) | hnorm(h)] to the block's input. */
export const ROLE_MTP_EH_PROJ = 20;
export const ROLE_MTP_HEAD_NORM = 21;
export const ROLE_MTP_HEAD = 22;
export const ROLE_MTP_EMBED = 23;
/** Cut from kv_b at load (wasm): head h's W_UK^T [kv_lora_rank, qk_nope_head_dim], h given beside the role. */
export const ROLE_W_UK_T = 24;
/** Cut from kv_b at load (wasm): head h's W_UV [v_head_dim, kv_lora_rank]. */
export const ROLE_W_UV = 25;
export const LAYER_ROLES = 26;
export const ROLE_EMBED = 32;
export const ROLE_FINAL_NORM = 33;
export const ROLE_LM_HEAD = 34;
/** Rotary tables [context, qk_rope_head_dim / 2] f32, YaRN's attention factor included. */
export const ROLE_ROPE_COS = 35;
export const ROLE_ROPE_SIN = 36;

// Layouts in wasm memory that the host writes and the kernels read.
/** Bytes per entry of matmul_grouped's descriptor table (assembly/kernels/grouped.ts). */
export const GROUPED_DESC_BYTES = 32;
/** Bytes after the job board where set_scratch keeps the quantized kernels' scratch descriptor. */
export const BOARD_EXTRA_BYTES = 64;

// wasm core
/** Most threads one runtime runs (Runtime.create), and the per-thread slots the quantized scratch reserves. */
export const MAX_THREADS = 256;
/** Bytes per matrix of a matrix table (grouped_entries): i32 [ptr, rows, cols, fmt]. */
export const MATRIX_DESC_BYTES = 16;
/** Multiply-adds dot_peak does per round (assembly/kernels/probe.ts: two weight vectors of 16 against four tokens). */
export const DOT_PEAK_MACS = 128;
