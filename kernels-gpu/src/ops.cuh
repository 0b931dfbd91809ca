// The launch wrappers of every op, as the schedules (decode.cu, prefill.cu) and the loader call
// them; each checks its launch. One file per op family holds the kernels behind them.
#pragma once
#include <algorithm>
#include "format.cuh"
#include "route.cuh"

// ---- gemv.cu: decode matrix-vector products over one input ----------------------------------------
constexpr int GEMV_MAXSEG = 4;
struct GemvSeg {
  WRef w;
  int rows;
  int add;  // y += W x instead of y = W x
  float *y;
  int block0;
  int yld;  // batched: floats between tokens' outputs
};
struct GemvParams {
  GemvSeg seg[GEMV_MAXSEG];  // matrices of one format over the same input, one launch
  int nseg;
  const float *x;
  const float *norm;  // RMS-normalise x with this weight first (null: use x as it is)
  float eps;
  int cols;
  int rpw;  // rows per warp
  int n;    // batched: tokens, their inputs xld floats apart
  int xld;
};
int gemv_rows_per_warp(int64_t rows, int nsm);
void launch_gemv(cudaStream_t st, int fmt, GemvParams &p);

struct Units;  // batch.cu

// ---- moe.cu: decode feed-forward (routed experts, shared experts, dense MLP) -------------------------
struct MoeParams {
  WRef gu, dn;  // routed experts (expert 0), offsets per expert below
  int64_t gu_estride, dn_estride, gu_sestride, dn_sestride;
  int inter, inter8, k;
  const int *chosen;
  const float *weights;
  WRef fgu, fdn;  // the fixed MLP: shared experts or the dense MLP
  int finter, has_fixed;
  int hidden;
  const float *x;     // input (already normalised when norm is null), zero-padded to a multiple of 8
  const float *norm;  // RMS-normalise x with this weight first (staged in shared memory)
  float eps;
  float *act;     // [k * inter8 + round8(finter)], pads zero
  int fixed_off;  // where the fixed MLP's activations start in act (k * inter8)
  float *xout;    // residual stream: += sum of experts
  int bps_r;      // blocks per routed slot (set by the launch)
  // Router folded into the gate/up launch of the fixed MLP: blocks [0, router_blocks) compute the
  // router logits (router_fmt may differ from the experts') and the last of them routes the token.
  WRef router;
  int router_fmt, router_blocks;
  float *logits;
  RouteArgs ra;
  int *route_e;
  float *route_w;
  unsigned *counter;  // zero between launches
  float *h_out;       // block 0 writes the normalised input here (the routed gate/up's input)
  // The batched step (batch.cu): n tokens, x and xout xld floats apart, act act_ld apart; the
  // routed experts are the step's distinct ones (units, at most max_units of them).
  int n, xld, act_ld, max_units;
  const Units *units;
};
// gate/up (+ silu) of the chosen experts and the fixed MLP; with router_blocks > 0 also the router.
void launch_moe_gateup(cudaStream_t st, int fmt, MoeParams &p);
// down of every slot, weighted, added to the residual stream.
void launch_moe_down(cudaStream_t st, int fmt, const MoeParams &p);

// ---- mla.cu: absorbed multi-head latent attention ---------------------------------------------------
struct MlaParams {
  const float *q;  // [T, heads * (nope + rope)]
  int q_ld;
  const float *kv;  // [T, rank + rope]  (kv_a output)
  int kv_ld;
  WRef kvb;  // kv_b_proj [heads * (nope + v), rank]
  int kvb_fmt;
  const float *kv_norm;    // [rank]
  const float *cos, *sin;  // [ctx, rope/2]
  float *cache;            // this layer's pool: [sequences][ctx][rank + rope]
  int64_t seq_stride;      // floats per sequence in cache
  float *qabs;             // [T, heads, rank + rope]
  float *part;             // [T, heads, nsplit, rank + 2]
  float *out;              // [T, heads * v]
  const DState *state;     // the sequence and the position of token 0
  int heads, nope, rope, v, rank, nsplit;
  float eps, scale;
  int tokens;
  const int *tseq, *tpos;  // batched step: token t's own sequence and position (null: the state's)
};
void launch_mla(cudaStream_t st, const MlaParams &p);

// ---- batch.cu: the batched decode step (B sequences at their own positions, one token each) ------------
constexpr int BATCH_MAX = 8;   // tokens of one batched step
constexpr int UNITS_MAX = 64;  // distinct routed experts of one MoE layer in a step (tokens x top-k at most)

// The step's inputs in device memory, copied from the host before each replay of its graph.
struct BState {
  int seq[BATCH_MAX], pos[BATCH_MAX], token[BATCH_MAX];
  int next[BATCH_MAX];  // each token's argmax
  int experts;          // distinct routed experts, summed over the MoE layers (zero before the step)
};
// One MoE layer's routed experts grouped: unit u is expert exp[u]; token b uses it when bit b of
// mask[u] is set, with router weight w[u][b] and its activations at column off[u][b] of its row.
struct Units {
  int n;
  int exp[UNITS_MAX];
  unsigned mask[UNITS_MAX];
  float w[UNITS_MAX][BATCH_MAX];
  int off[UNITS_MAX][BATCH_MAX];
};
// y[b] (=|+=) W x[b] for the p.n tokens, each row of W read once for all of them.
void launch_gemv_batch(cudaStream_t st, int fmt, GemvParams &p, int nsm);
// out[t] = RMSNorm(x[t]) * norm for t < n (rows xld apart, padded with zeros to a multiple of 8).
void launch_norm_batch(cudaStream_t st, float *out, const float *x, int xld, const float *norm, float eps, int cols, int n);
// Routes the n tokens (logits [n][E]), groups their (token, expert) pairs into units (activation
// column of slot j: j * inter8) and adds the distinct count to state->experts.
void launch_route_batch(cudaStream_t st, const float *logits, int n, const RouteArgs &ra, int inter8, int *chosen,
                        float *weights, Units *units, BState *state);
// gate/up (+ silu) of every unit and the fixed MLP for the p.n tokens; then the weighted down.
void launch_moe_gateup_batch(cudaStream_t st, int fmt, MoeParams &p);
void launch_moe_down_batch(cudaStream_t st, int fmt, const MoeParams &p);

// ---- embed.cu, norm.cu, act.cu ---------------------------------------------------------------------
// x[t * ld] = emb[ids[t]] for t < tokens; with ids null, the one token of the state.
void launch_embed(cudaStream_t st, const DMat &emb, const int *ids, const DState *state, float *x, int tokens, int hidden,
                  int ld);
void launch_rmsnorm_rows(cudaStream_t st, float *out, int out_ld, const float *x, int x_ld, const float *w, int n,
                         int rows, float eps);
void launch_silu_mul(cudaStream_t st, float *out, int out_ld, const float *gu, int gu_ld, int inter, int rows);

// ---- sample.cu: argmax into the state, top-k ----------------------------------------------------------
// Scratch of the multi-block argmax (v, i: 128 entries each; counter zero between launches).
struct ArgmaxScratch {
  float *v;
  int *i;
  unsigned *counter;
};
// state->token = argmax (ties to the lowest index), state->pos += advance, the id logged.
void launch_argmax(cudaStream_t st, const float *logits, int n, DState *state, int advance, ArgmaxScratch s);
// out[t] = argmax of row t of logits (ld floats apart), t < n.
void launch_argmax_rows(cudaStream_t st, const float *logits, int64_t ld, int n, int vocab, int *out);
void launch_topk(cudaStream_t st, const float *logits, int n, int k, float *scratch, float *vals, int *ids);

// ---- route.cu: prefill routing and expert dispatch ----------------------------------------------------
void launch_route(cudaStream_t st, const float *logits, int tokens, const RouteArgs &ra, int *chosen, float *weights);
// Groups the T*k (token, expert) pairs by expert: list[e][c] = pair, slot[pair] = c, counts[e].
void launch_dispatch(cudaStream_t st, const int *chosen, int pairs, int E, int cap, int *counts, int *list, int *slot);
// xd[e][c] = h[list[e][c] / k] for c < counts[e].
void launch_gather(cudaStream_t st, const float *h, int hidden, const int *counts, const int *list, int k, int E,
                   int cap, float *xd);
// x[t] += add[t] (if add) + sum_j w[t,j] * yd[e_tj][slot(t,j)].
void launch_combine(cudaStream_t st, float *x, const float *add, const float *yd, const int *chosen,
                    const float *weights, const int *slot, int tokens, int k, int hidden, int cap);

// ---- convert.cu: weights into their device format, and back to f32 for cuBLAS ---------------------------
// Converts loaded data (dtype DW_DTYPE_*, [rows, cols] packed; FP8 block scales [ceil(rows/br),
// ceil(cols/bc)]) into rows [row0, row0 + rows) of expert `expert` of m, in m's format.
void launch_convert(cudaStream_t st, const DMat &m, int expert, int64_t row0, int dtype, const void *src, int64_t rows,
                    int64_t cols, const float *src_scales, int br, int bc);
// Widens experts [expert0, expert0 + experts) of m (any format) to f32 [rows, ld] each.
void launch_dequant(cudaStream_t st, const DMat &m, int expert0, int experts, float *out);
// f32 activations as two bf16 halves (hi + lo), for the bf16 GEMMs.
void launch_split_bf16(cudaStream_t st, const float *x, __nv_bfloat16 *hi, __nv_bfloat16 *lo, int64_t n);
// Random bf16 [rows, cols] packed, uniform with standard deviation 1/sqrt(cols): element k of the
// output is element k0 + k of the matrix the seed stands for, so chunks of it give the same values.
void launch_random_bf16(cudaStream_t st, __nv_bfloat16 *out, int64_t rows, int cols, uint64_t seed, int64_t k0);
void launch_fill(cudaStream_t st, float *p, int64_t n, float v);

// ---- state.cu --------------------------------------------------------------------------------------------
void launch_set_state(cudaStream_t st, DState *state, int seq, int pos, int token);
// Holds the GPU for ns nanoseconds (profiling: the host queues a whole step meanwhile).
void launch_spin(cudaStream_t st, unsigned long long ns);

// ---- cublas.cu -------------------------------------------------------------------------------------------
struct Blas;
Blas *blas_open(cudaStream_t st);  // throws with the reason when cuBLAS cannot be loaded
void blas_close(Blas *b);
// Y[b][M, N] (row-major, ldy) = X[b][M, K] (ldx) . W[b]^T (+ beta Y): W rows N = out features.
// f32 W: pedantic f32 (no TF32); bf16 W with bf16 X (the prefill splits X into hi + lo halves).
void blas_gemm_f32(Blas *b, const float *W, int ldw, int64_t strideW, const float *X, int ldx, int64_t strideX,
                   float *Y, int ldy, int64_t strideY, int M, int N, int K, int batch, float beta);
void blas_gemm_bf16(Blas *b, const __nv_bfloat16 *W, int ldw, int64_t strideW, const __nv_bfloat16 *X, int ldx,
                    int64_t strideX, float *Y, int ldy, int64_t strideY, int M, int N, int K, int batch, float beta);
