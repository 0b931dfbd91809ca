/*
 * DeepWasm CUDA bridge: the C ABI of libdwcuda.so.
 *
 * One model per handle. Weights, a pool of latent KV caches (max_sequences x max_context positions
 * per layer) and every step of the forward pass live on the device. The host (host/backends/cuda/)
 * reads the checkpoint, declares each weight's device format, checks the memory plan against the
 * device's free memory, then hands each tensor to dw_load. The host owns the sequences: every run
 * names the sequence's slot in the pool and the position of its first token. Prefill runs cuBLAS
 * GEMMs and the attention kernels; a decode step is one CUDA graph replay (sequence, position and
 * token are read from device memory, so one captured graph serves them all) that ends with the
 * argmax on the device, so only the next token id (and the logits, when asked for) come back. A
 * batched decode step runs one token of each of n sequences the same way, one graph per n.
 *
 * Numbers shared with the wasm core and the host (formats DW_FMT_*, element types DW_DTYPE_*,
 * routing DW_ROUTE_* / DW_SCORE_*, tensor roles DW_ROLE_*) come from dw_constants.h, which is
 * generated from assembly/constants.ts.
 *
 * Every function that returns int returns a negative number on failure; dw_last_error() then says
 * what failed (the CUDA/cuBLAS call, its file and line, and the error text).
 */
#ifndef DW_CUDA_H
#define DW_CUDA_H

#include <stdint.h>
#include "dw_constants.h"

#ifdef __cplusplus
extern "C" {
#endif

#define DW_ABI_VERSION 4

/* The model's shape as config.json gives it, the pool's size and how the decode step runs. All
 * fields 4 bytes, no padding: 29 int32 then 4 float (132 bytes). */
typedef struct dw_config {
  int32_t vocab, hidden, inter, moe_inter;
  int32_t layers, heads, q_lora_rank /* 0: one q_proj */, kv_lora_rank;
  int32_t nope, rope, v_dim, n_routed;
  int32_t n_shared, topk, first_dense, moe_freq;
  int32_t n_group, topk_group, topk_method /* DW_ROUTE_* */, scoring /* DW_SCORE_* */;
  int32_t norm_topk, max_context /* positions per sequence */, max_sequences /* sequences in the pool */,
      max_prefill /* tokens per prefill chunk (0: 256) */;
  int32_t pdl /* 1: programmatic dependent launch in the decode graph */,
      attn_splits /* splits of a decode step's attention, 1..32 (0: 2 x SMs / heads, at most 32) */,
      sync_launches /* 1: synchronise and check after every kernel (debug: names a faulting kernel) */,
      batch_no_pdl /* 1: the batched decode graphs without programmatic dependent launch */;
  int32_t nextn /* 1: DeepSeek-V3's multi-token-prediction layer, layer index `layers`, its own latent cache per sequence */;
  float routed_scale, rms_eps, softmax_scale, reserved_f;
} dw_config;

int dw_abi_version(void);
/* The message of the last failure on this thread ("" if none). */
const char *dw_last_error(void);
/* Number of CUDA devices (0 when the driver is missing or sees none, with the reason in
 * dw_last_error); writes the first device's name and memory into info. */
int dw_device_info(char *info, int32_t len);
/* Free and total memory of the device, in bytes. */
int dw_device_memory(int64_t *free_bytes, int64_t *total_bytes);

void *dw_create(const dw_config *cfg);
/* The device format (DW_FMT_F32, _BF16, _Q8 or _FP8) of a matrix role of a layer (all its
 * experts), or of a global one (layer -1). Every matrix is declared before the memory plan and
 * before its first load; vectors (norms, bias, rope tables) are always f32. */
int dw_declare(void *m, int32_t layer, int32_t role, int32_t fmt);
/* Bytes the model will hold once finalized: weights in their declared formats, the KV-cache pool,
 * and scratch (prefill and decode buffers, load staging, cuBLAS and runtime headroom). Nothing is
 * allocated; call it before loading to refuse a model that cannot fit. */
int dw_memory_plan(void *m, int64_t *weights, int64_t *kv_cache, int64_t *scratch);
/* Copies one tensor (or the part of a stacked one starting at row_offset) to the device in the
 * role's declared format. expert: routed expert index for DW_ROLE_EXP_*, else 0. dtype: DW_DTYPE_*.
 * F8_E4M3 data needs scales [ceil(rows/block_rows), ceil(cols/block_cols)] f32; others pass NULL. */
int dw_load(void *m, int32_t layer, int32_t role, int32_t expert, int32_t dtype, const void *data, int64_t rows,
            int64_t cols, int64_t row_offset, const float *scales, int32_t block_rows, int32_t block_cols);
/* Fills every weight not loaded yet with random values made on the device (uniform, standard
 * deviation 1/sqrt(cols)), in its declared format (bf16 when undeclared); norms 1, no bias. */
int dw_fill_random(void *m, uint64_t seed);
/* Checks that every weight is present, allocates the KV-cache pool and scratch, loads cuBLAS. */
int dw_finalize(void *m);

/* Runs n tokens of sequence seq at positions pos .. pos + n - 1 (chunks of max_prefill); the cache
 * rows before pos are the sequence's. logits (may be NULL) receives [n, vocab] when all_rows, else
 * [vocab] for the last token; hidden (may be NULL) [n, hidden]: every token's state after the final
 * norm, what the head reads (an MTP layer's input). Returns the argmax of the last row. */
int dw_prefill(void *m, int32_t seq, int32_t pos, const int32_t *ids, int32_t n, float *logits, int32_t all_rows,
               float *hidden);
/* One decode step (graph replay) of token at position pos of sequence seq; logits (may be NULL)
 * receives [vocab], hidden (may be NULL) [hidden], the state after the final norm (a kernel after the
 * replay, only when asked for). Returns the argmax. */
int dw_decode(void *m, int32_t seq, int32_t pos, int32_t token, float *logits, float *hidden);
/* Most tokens one batched decode step takes (at most 8; fewer when the model's top-k or widths need it). */
int dw_decode_batch_max(void *m);
/* One batched decode step (a graph replay per n, captured at its first use): token tokens[i] at
 * position pos[i] of sequence seqs[i] for i < n, in one pass over the weights (each routed expert
 * chosen by any of the tokens read once). Tokens of one sequence take consecutive positions (a
 * speculative verify, a short prompt): each attends to the rows before it, the step's earlier tokens'
 * included. next[i] receives each argmax; logits (may be NULL) receives [n, vocab], hidden (may be
 * NULL) [n, hidden] after the final norm. Returns the distinct routed experts the step read, summed
 * over the MoE layers (the bytes model of a batched step). */
int dw_decode_batch(void *m, int32_t n, const int32_t *seqs, const int32_t *pos, const int32_t *tokens, float *logits,
                    int32_t *next, float *hidden);
/* The MTP layer (dw_config.nextn) at MTP positions pos .. pos + n - 1 of sequence seq's MTP cache
 * (chunks of max_prefill): position i takes tokens[i - pos] (the main model's token i + 1) and
 * hidden_in's row [hidden] (the main model's state after the final norm at i, or this layer's own
 * output to chain a draft): eh_proj([enorm(embed(t)); hnorm(h)]), then the layer's decoder block.
 * hidden_out receives the last position's output [hidden] before the head norm, logits [vocab] its
 * shared head's. hidden_in may be hidden_out. Returns 0. */
int dw_mtp_forward(void *m, int32_t seq, int32_t pos, const int32_t *tokens, int32_t n, const float *hidden_in,
                   float *hidden_out, float *logits);
/* Greedy: feeds token at pos, then each argmax at the next positions, n steps without leaving the
 * device; out_ids gets the n ids. */
int dw_generate(void *m, int32_t seq, int32_t pos, int32_t token, int32_t n, int32_t *out_ids);
/* Runs one decode step of token at (seq, pos) with CUDA events between its stages and writes a
 * table (stage, count, ms, MB of weights, GB/s) to out. */
int dw_profile_decode(void *m, int32_t seq, int32_t pos, int32_t token, char *out, int32_t len);
/* The same table for one batched decode step (dw_decode_batch's arguments); positions do not advance. */
int dw_profile_decode_batch(void *m, int32_t n, const int32_t *seqs, const int32_t *pos, const int32_t *tokens, char *out,
                            int32_t len);
/* Copies the first n_positions cache rows of sequence src to sequence dst, every layer (the MTP
 * layer's too: fork). */
int dw_seq_copy(void *m, int32_t dst, int32_t src, int32_t n_positions);
/* Top k (k <= 256) of the most recent logits row (of whichever run came last), largest first. */
int dw_topk(void *m, int32_t k, float *values, int32_t *ids);
/* Bytes of weights on the device. */
int64_t dw_weight_bytes(void *m);
/* Bytes read per decode step at batch 1 (active weights), for rooflines. */
int64_t dw_active_bytes(void *m);
/* Bytes of one routed expert (gate/up and down, scales included): what a step reads per distinct expert. */
int64_t dw_expert_bytes(void *m);
void dw_free(void *m);

/* Device-to-device copy bandwidth in GB/s (bytes read + written), median of iters copies. */
double dw_bandwidth_probe(int64_t bytes, int32_t iters);

#ifdef __cplusplus
}
#endif
#endif
