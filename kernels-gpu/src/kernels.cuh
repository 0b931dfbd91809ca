// Launch wrappers of every kernel, as the model (model.cu) calls them. Each checks its launch.
#pragma once
#include <algorithm>
#include "common.cuh"

// ---- gemv.cu: decode matrix-vector products ----------------------------------------------------
constexpr int GEMV_MAXSEG = 4;
struct GemvSeg {
  WRef w;
  int rows;
  int add;   // y += W x instead of y = W x
  float *y;
  int block0;
  int fmt;   // weight format (read by the one-launch decode, mega.cu)
};
struct GemvParams {
  GemvSeg seg[GEMV_MAXSEG];
  int nseg;
  const float *x;
  const float *norm;  // RMS-normalise x with this weight first (null: use x as is)
  float eps;
  int cols;
  int rpw;  // rows per warp
  float *h_out;  // if set (with norm), block 0 also writes the normalised input here
  // Routing by the last block (router logits): seg[0] holds the logits.
  RouteArgs ra;
  int *chosen;
  float *weights;
  unsigned *counter;
};
int gemv_rows_per_warp(int64_t rows, int nsm);
void launch_gemv(cudaStream_t st, int fmt, GemvParams &p, bool route);

struct MoeParams {
  WRef gu, dn;  // routed experts (expert 0), offsets per expert below
  int64_t gu_estride, dn_estride, gu_sestride, dn_sestride;
  int inter, inter8, k;
  const int *chosen;
  const float *weights;
  WRef fgu, fdn;  // shared experts or the dense MLP
  int finter, has_fixed;
  int hidden;
  const float *x;     // input (already normalised when norm is null), zero-padded to a multiple of 8
  const float *norm;  // RMS-normalise x with this weight first (staged in shared memory)
  float eps;
  float *act;   // [k * inter8 + round8(finter)], pads zero
  int fixed_off;  // where the fixed MLP's activations start in act (k * inter8)
  float *xout;  // residual stream: += sum of experts
  int rpw, rpw_down, bps_r;
  // Router folded into the gate/up launch of the fixed MLP (moe_gateup with router_blocks > 0):
  // blocks [0, router_blocks) compute the router logits and the last of them routes the token.
  WRef router;
  int router_blocks;
  float *logits;
  RouteArgs ra;
  int *route_e;
  float *route_w;
  unsigned *counter;
  float *h_out;  // block 0 writes the normalised input here
};
// gate/up (+ silu) of the chosen experts and the fixed MLP; with p.router_blocks > 0 also the router.
void launch_moe_gateup(cudaStream_t st, int fmt, MoeParams &p);
// down of every slot, weighted, added to the residual stream.
void launch_moe_down(cudaStream_t st, int fmt, MoeParams &p);

// ---- mla.cu: absorbed multi-head latent attention ---------------------------------------------
struct MlaParams {
  // inputs
  const float *q;   // [T, heads * (nope + rope)]
  int q_ld;
  const float *kv;  // [T, rank + rope]  (kv_a output)
  int kv_ld;
  WRef kvb;         // kv_b_proj [heads * (nope + v), rank]
  int kvb_fmt;
  const float *kv_norm;  // [rank]
  const float *cos, *sin;  // [ctx, rope/2]
  float *cache;     // this layer's [ctx, rank + rope]
  float *qabs;      // [T, heads, rank + rope]
  float *part;      // [T, heads, nsplit, rank + 2]
  float *out;       // [T, heads * v]
  const int *pos;   // position of token 0 (device)
  int heads, nope, rope, v, rank, nsplit;
  float eps, scale;
  int tokens;
};
void launch_mla(cudaStream_t st, const MlaParams &p);

// ---- mega.cu: every layer of a decode step in one launch ------------------------------------------
// Each block takes a ticket (an atomic counter) and runs the work item the ticket names: items are
// numbered stage by stage in the order of the forward pass, so a block only ever waits for items
// with smaller tickets, which have already started: there is no deadlock whatever the occupancy.
// Before it waits, a block prefetches its weights into L2 (cp.async.bulk.prefetch); stages signal
// completion through per-stage counters that only grow (a step adds `target` to each).
enum MStageType { MS_GEMV = 0, MS_ABSORB, MS_ATTN, MS_UV, MS_ROUTER, MS_GATEUP, MS_DOWN };
constexpr int MS_MAXDEP = 3;
constexpr int MS_STRIDE = 16;  // u64 per counter: one 128-byte line each
struct alignas(16) MStage {
  int type, nitems, first, target;  // target: increments of done[] per step (nitems; 1 for the router)
  int ndep, dep[MS_MAXDEP];
  int pre_dep;  // stage whose completion makes the weight addresses known (routed experts), or -1
  int fmt;      // weight format (MS_GEMV/MS_ROUTER: per segment)
  int layer, kind;  // kind: row of the profile table
  GemvParams g;  // MS_GEMV, MS_ROUTER
  MlaParams a;   // MS_ABSORB, MS_ATTN, MS_UV (a.nsplit: splits of the attention)
  MoeParams m;   // MS_GATEUP, MS_DOWN
};
struct MegaArgs {
  const MStage *stages;
  const int *stage_of;  // [total]: the stage of each ticket
  int nstages, total;
  unsigned long long *ticket, *done, *aux;  // done/aux: [nstages * MS_STRIDE]
  unsigned long long *prof;                 // null, or [nstages] end times and the start time
  DState *state;                            // error report (err fields)
  int prefetch;                             // L2 prefetch of each item's weights before it waits
  int evict_routed;                         // the routed experts' gate/up prefetched as evict-first
};
constexpr int MEGA_DOWN_ROWS = 4;  // output rows per down item
constexpr int MEGA_THREADS = 256;
// Launches the step's layers; fix = the one weight format of every stage (specialised kernel) or -1.
// minb: blocks per multiprocessor the bf16 kernel is compiled for (2 or 3; registers 128 or 80).
void launch_mega(cudaStream_t st, const MegaArgs &a, int fix, size_t smem, int minb);

// ---- misc.cu -----------------------------------------------------------------------------------
void launch_embed(cudaStream_t st, const DMat &emb, const int *ids, const DState *state, float *x, int tokens, int hidden);
void launch_rmsnorm_rows(cudaStream_t st, float *out, int out_ld, const float *x, int x_ld, const float *w, int n,
                         int rows, float eps);
void launch_silu_mul(cudaStream_t st, float *out, int out_ld, const float *gu, int gu_ld, int inter, int rows);
// Scratch of the multi-block argmax (v, i: 128 entries each; counter zero between launches). With
// counter null, or for rows under 256 logits, one block of 1024 threads walks the row.
struct ArgmaxScratch {
  float *v;
  int *i;
  unsigned *counter;
};
void launch_argmax(cudaStream_t st, const float *logits, int n, DState *state, int advance, ArgmaxScratch s);
void launch_topk(cudaStream_t st, const float *logits, int n, int k, float *scratch, float *vals, int *ids);
void launch_set_state(cudaStream_t st, DState *state, int token, int pos);
void launch_route(cudaStream_t st, const float *logits, int tokens, const RouteArgs &ra, int *chosen, float *weights);
// Groups the T*k (token, expert) pairs by expert: list[e][c] = pair, slot[pair] = c, counts[e].
void launch_dispatch(cudaStream_t st, const int *chosen, int pairs, int E, int cap, int *counts, int *list, int *slot);
// xd[e][c] = h[list[e][c] / k] for c < counts[e].
void launch_gather(cudaStream_t st, const float *h, int hidden, const int *counts, const int *list, int k, int E,
                   int cap, float *xd);
// x[t] += add[t] (if add) + sum_j w[t,j] * yd[e_tj][slot(t,j)].
void launch_combine(cudaStream_t st, float *x, const float *add, const float *yd, const int *chosen,
                    const float *weights, const int *slot, int tokens, int k, int hidden, int cap);
void launch_split_bf16(cudaStream_t st, const float *x, __nv_bfloat16 *hi, __nv_bfloat16 *lo, int64_t n);
// Widens rows of a weight matrix (any format) to f32 [rows, ld].
void launch_dequant(cudaStream_t st, const DMat &m, int expert0, int experts, float *out);
// Converts loaded data (src type, [rows, cols] packed, FP8 scales [ceil(rows/br), ceil(cols/bc)])
// into rows [row0, row0 + rows) of expert `expert` of m.
void launch_convert(cudaStream_t st, const DMat &m, int expert, int64_t row0, int src_fmt, const void *src,
                    int64_t rows, int64_t cols, const float *src_scales, int br, int bc);
void launch_random(cudaStream_t st, DMat &m, uint64_t seed);
void launch_spin(cudaStream_t st, unsigned long long ns);
void launch_fill(cudaStream_t st, float *p, int64_t n, float v);

// ---- cublas.cu -----------------------------------------------------------------------------------
struct Blas;
Blas *blas_open(cudaStream_t st);  // throws with the reason when cuBLAS cannot be loaded
void blas_close(Blas *b);
// Y[b][M, N] (row-major, ldy) = X[b][M, K] (ldx) . W[b]^T (+ beta Y): W rows N = out features.
// bf16 W: X is split into two bf16 halves (hi + lo) so that the products keep ~16 mantissa bits of
// the f32 activations; f32 W: pedantic f32 (no TF32). Others: dequantised to f32 scratch first.
void blas_gemm_f32(Blas *b, const float *W, int ldw, int64_t strideW, const float *X, int ldx, int64_t strideX,
                   float *Y, int ldy, int64_t strideY, int M, int N, int K, int batch, float beta);
void blas_gemm_bf16(Blas *b, const __nv_bfloat16 *W, int ldw, int64_t strideW, const __nv_bfloat16 *X, int ldx,
                    int64_t strideX, float *Y, int ldy, int64_t strideY, int M, int N, int K, int batch, float beta);
