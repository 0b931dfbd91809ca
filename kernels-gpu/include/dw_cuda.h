/*
 * DeepWasm CUDA bridge: the C ABI of libdwcuda.so.
 *
 * One model per handle; batch 1. Weights, the latent KV cache and every step of the forward pass
 * live on the device. The host (host/backends/cuda.ts) reads the checkpoint and hands each tensor
 * to dw_load; prefill runs cuBLAS GEMMs and the attention kernels; a decode step is one CUDA
 * graph replay that ends with the argmax on the device, so only the next token id (and the
 * logits, when asked for) come back.
 *
 * Every function that returns int returns a negative number on failure; dw_last_error() then says
 * what failed (the CUDA/cuBLAS call, its file and line, and the error text).
 */
#ifndef DW_CUDA_H
#define DW_CUDA_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define DW_ABI_VERSION 1

/* Element types of the data handed to dw_load (and of weights kept on the device). */
enum {
  DW_F32 = 0,
  DW_BF16 = 1,
  DW_F16 = 2, /* widened to f32 on load */
  DW_FP8 = 3, /* e4m3 with f32 block scales (weight_scale_inv) */
  DW_Q8 = 4   /* device-only: int8 with one f32 scale per row and 64 columns (dw_config.quant = 1) */
};

/* Where a tensor goes. Per-layer slots take layer >= 0; global ones take layer = -1. */
enum {
  DW_ATTN_NORM = 0,   /* [hidden] */
  DW_Q_PROJ = 1,      /* [heads*(nope+rope), hidden]   (q_lora_rank == 0) */
  DW_Q_A = 2,         /* [q_lora_rank, hidden] */
  DW_Q_A_NORM = 3,    /* [q_lora_rank] */
  DW_Q_B = 4,         /* [heads*(nope+rope), q_lora_rank] */
  DW_KV_A = 5,        /* [kv_lora_rank + rope, hidden] */
  DW_KV_A_NORM = 6,   /* [kv_lora_rank] */
  DW_KV_B = 7,        /* [heads*(nope+v), kv_lora_rank] */
  DW_O_PROJ = 8,      /* [hidden, heads*v] */
  DW_FFN_NORM = 9,    /* [hidden] */
  DW_GATE_UP = 10,    /* dense MLP [2*inter, hidden]: gate rows at row_offset 0, up rows at inter */
  DW_DOWN = 11,       /* dense MLP [hidden, inter] */
  DW_ROUTER = 12,     /* [n_routed, hidden] */
  DW_ROUTER_BIAS = 13,/* [n_routed] e_score_correction_bias (optional) */
  DW_EXP_GATE_UP = 14,/* expert e: [2*moe_inter, hidden] */
  DW_EXP_DOWN = 15,   /* expert e: [hidden, moe_inter] */
  DW_SH_GATE_UP = 16, /* shared experts [2*moe_inter*n_shared, hidden] */
  DW_SH_DOWN = 17,    /* [hidden, moe_inter*n_shared] */
  DW_LAYER_SLOTS = 18,
  DW_EMBED = 32,      /* [vocab, hidden] */
  DW_FINAL_NORM = 33, /* [hidden] */
  DW_LM_HEAD = 34,    /* [vocab, hidden] */
  DW_ROPE_COS = 35,   /* [max_context, rope/2] f32, YaRN and attention factor included */
  DW_ROPE_SIN = 36    /* [max_context, rope/2] */
};

/* The model's shape, as config.json gives it (all fields 4 bytes, no padding: 28 x 4 bytes). */
typedef struct dw_config {
  int32_t vocab, hidden, inter, moe_inter;
  int32_t layers, heads, q_lora_rank /* 0: one q_proj */, kv_lora_rank;
  int32_t nope, rope, v_dim, n_routed;
  int32_t n_shared, topk, first_dense, moe_freq;
  int32_t n_group, topk_group, topk_method /* 0 greedy, 1 group_limited_greedy, 2 noaux_tc */,
      scoring /* 0 softmax, 1 sigmoid */;
  int32_t norm_topk, max_context, max_prefill /* tokens per prefill chunk (0: 256) */,
      quant /* 0: keep the checkpoint's formats, 1: q8 for every weight matrix */;
  float routed_scale, rms_eps, softmax_scale, reserved;
} dw_config;

int dw_abi_version(void);
/* The message of the last failure on this thread ("" if none). */
const char *dw_last_error(void);
/* Number of CUDA devices (0 when the driver is missing or sees none, with the reason in
 * dw_last_error); writes the first device's name and memory into info. */
int dw_device_info(char *info, int32_t len);

void *dw_create(const dw_config *cfg);
/* Copies one tensor (or the part of a stacked one starting at row_offset) to the device.
 * expert: routed expert index for DW_EXP_* slots, else 0. FP8 data needs scales
 * [ceil(rows/block_rows), ceil(cols/block_cols)] f32; other types pass NULL. */
int dw_load(void *m, int32_t layer, int32_t slot, int32_t expert, int32_t dtype, const void *data,
            int64_t rows, int64_t cols, int64_t row_offset, const float *scales, int32_t block_rows,
            int32_t block_cols);
/* Fills every slot not loaded yet with random bf16 weights (norms 1, bias 0), on the device. */
int dw_fill_random(void *m, uint64_t seed);
/* Checks that every weight is present, allocates the KV cache and scratch, loads cuBLAS. */
int dw_finalize(void *m);

/* Runs n tokens after the cached ones (chunks of max_prefill). logits (may be NULL) receives
 * [n, vocab] when all_rows, else [vocab] for the last token. Returns the argmax of the last row. */
int dw_prefill(void *m, const int32_t *ids, int32_t n, float *logits, int32_t all_rows);
/* One decode step (graph replay) for token; logits (may be NULL) receives [vocab]. Returns argmax. */
int dw_decode(void *m, int32_t token, float *logits);
/* Greedy: feeds token, then each argmax, n steps without leaving the device; out_ids gets n ids. */
int dw_generate(void *m, int32_t token, int32_t n, int32_t *out_ids);
/* Runs one decode step for token (at the current position, which does not advance) with CUDA
 * events between its stages and writes a table (stage, count, ms, MB of weights, GB/s) to out. */
int dw_profile_decode(void *m, int32_t token, char *out, int32_t len);
/* Top k (k <= 256) of the last logits row, largest first, computed on the device. */
int dw_topk(void *m, int32_t k, float *values, int32_t *ids);
int dw_reset(void *m);
int32_t dw_position(void *m);
/* Bytes of weights on the device. */
int64_t dw_weight_bytes(void *m);
/* Bytes read per decode step at batch 1 (active weights), for rooflines. */
int64_t dw_active_bytes(void *m);
void dw_free(void *m);

/* Device-to-device copy bandwidth in GB/s (bytes read + written), median of iters copies. */
double dw_bandwidth_probe(int64_t bytes, int32_t iters);

#ifdef __cplusplus
}
#endif
#endif
