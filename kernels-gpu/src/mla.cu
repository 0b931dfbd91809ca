// Multi-head latent attention in the absorbed form over a latent cache [c (rank) | k_rope (rope)]
// per position (assembly/blocks/mla.ts is the CPU twin). For head h with W_UK, W_UV its rows of
// kv_b_proj:
//   qabs_h = [W_UK^T q_nope_h | rope(q_rope_h)]          (absorb, which writes the cache row too)
//   s_t    = scale * qabs_h . cache_t,  p = softmax(s)   (attn: flash-decoding splits of positions)
//   o_h    = W_UV (sum_t p_t c_t)                         (uv: merges the splits, then W_UV)
// The same kernels serve decode (tokens = 1, positions split over nsplit blocks) and prefill
// (tokens = T, nsplit = 1) and the batched decode step (tokens = n, each with its own sequence and
// position: tseq, tpos). The sequence and the position of token 0 are read from the device-side
// state, so a captured decode graph replays for any sequence at any position; a sequence's cache
// rows lie at cache + seq * seq_stride.
#include "ops.cuh"
#include "dot.cuh"

namespace {

constexpr int MAXJ = 20;  // latent = rank + rope <= 640 (DeepSeek: 512 + 64)
constexpr int ATT_WARPS = 4;

// Token t's sequence and position: its own in a batched step (PT, per token), else the state's sequence
// from the state's position. A template parameter, so that the one-sequence kernels stay as they were.
template <bool PT>
__device__ __forceinline__ int tok_seq(const MlaParams &p, int t) {
  if constexpr (PT) return p.tseq[t];
  else return p.state->seq;
}
template <bool PT>
__device__ __forceinline__ int tok_pos(const MlaParams &p, int t) {
  if constexpr (PT) return p.tpos[t];
  else return p.state->pos + t;
}
template <bool PT>
__device__ __forceinline__ float *seq_cache(const MlaParams &p, int t) { return p.cache + tok_seq<PT>(p, t) * p.seq_stride; }

// The cache row of token t: the normalised latent, then the roped shared key. Any block size that
// is a multiple of 32 (at most 1024).
template <bool PT>
__device__ void write_cache_row(const MlaParams &p, int t, int pos) {
  __shared__ float red[32];
  __shared__ float inv_s;
  const int half = p.rope / 2;
  const float *cs = p.cos + (int64_t)pos * half;
  const float *sn = p.sin + (int64_t)pos * half;
  const float *kv = p.kv + (int64_t)t * p.kv_ld;
  float *row = seq_cache<PT>(p, t) + (int64_t)pos * (p.rank + p.rope);
  float ss = 0.f;
  for (int i = threadIdx.x; i < p.rank; i += blockDim.x) ss += kv[i] * kv[i];
  ss = warp_sum(ss);
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = ss;
  __syncthreads();
  if (threadIdx.x == 0) {
    float tot = 0.f;
    for (int w = 0; w < (int)(blockDim.x >> 5); w++) tot += red[w];
    inv_s = 1.0f / sqrtf(tot / (float)p.rank + p.eps);
  }
  __syncthreads();
  const float inv = inv_s;
  for (int i = threadIdx.x; i < p.rank; i += blockDim.x) row[i] = kv[i] * inv * p.kv_norm[i];
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    const float a = kv[p.rank + 2 * i], b = kv[p.rank + 2 * i + 1];
    row[p.rank + 2 * i] = a * cs[i] - b * sn[i];
    row[p.rank + 2 * i + 1] = a * sn[i] + b * cs[i];
  }
}

// The roped query part of head h (qabs[rank + j]), j < rope.
__device__ __forceinline__ float rope_q(const MlaParams &p, const float *qh, int j, int pos) {
  const int half = p.rope / 2, i = j >> 1;
  const float c = p.cos[(int64_t)pos * half + i], s = p.sin[(int64_t)pos * half + i];
  const float a = qh[p.nope + 2 * i], b = qh[p.nope + 2 * i + 1];
  return (j & 1) ? a * s + b * c : a * c - b * s;
}

// Absorbed query: qabs[h][r] = sum_i W_UK[h][i][r] q_nope[h][i]. A block takes 256 columns of one
// head: 32 threads x 8 columns (one 16-byte load per row for bf16) x 8 groups of rows, summed in
// shared memory; q_nope (nope floats of dynamic shared memory) is staged first. Block (heads, 0)
// writes the token's cache row instead.
template <int F, bool PT>
__global__ void __launch_bounds__(256) absorb_kernel(const __grid_constant__ MlaParams p) {
  __shared__ __align__(16) float red[8][256];
  extern __shared__ float qn[];
  const int h = blockIdx.x, t = blockIdx.z;
  const int cg = threadIdx.x & 31, rg = threadIdx.x >> 5;
  const int col = blockIdx.y * 256 + cg * 8;
  const int64_t row0 = (int64_t)h * (p.nope + p.v);
  if (h < p.heads && col < p.rank)
    for (int i = rg; i < p.nope; i += 8) prefetch_l2(p.kvb.w + (row0 + i) * p.kvb.ldb + (size_t)col * elem_bytes<F>);
  pdl_wait();
  pdl_trigger();
  const int pos = tok_pos<PT>(p, t);
  if (h == p.heads) {
    if (blockIdx.y == 0) write_cache_row<PT>(p, t, pos);
    return;
  }
  const int latent = p.rank + p.rope;
  const float *qh = p.q + (int64_t)t * p.q_ld + h * (p.nope + p.rope);
  for (int i = threadIdx.x; i < p.nope; i += blockDim.x) qn[i] = qh[i];
  __syncthreads();
  float acc[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
  if (col < p.rank) absorb_acc<F>(p.kvb, row0, p.nope, col, rg, qn, acc);
  float4 *dst = reinterpret_cast<float4 *>(&red[rg][cg * 8]);
  dst[0] = make_float4(acc[0], acc[1], acc[2], acc[3]);
  dst[1] = make_float4(acc[4], acc[5], acc[6], acc[7]);
  __syncthreads();
  float *out = p.qabs + ((int64_t)t * p.heads + h) * latent;
  const int r = blockIdx.y * 256 + threadIdx.x;
  if (r < p.rank) {
    float s = 0.f;
#pragma unroll
    for (int g = 0; g < 8; g++) s += red[g][threadIdx.x];
    out[r] = s;
  }
  if (blockIdx.y == 0)
    for (int j = threadIdx.x; j < p.rope; j += blockDim.x) out[p.rank + j] = rope_q(p, qh, j, pos);
}

template <bool PT>
__global__ void __launch_bounds__(ATT_WARPS * 32) attn_kernel(const __grid_constant__ MlaParams p) {
  extern __shared__ __align__(16) float sacc[];  // [ATT_WARPS][rank]
  __shared__ float sm[ATT_WARPS], sl[ATT_WARPS];
  pdl_wait();
  pdl_trigger();
  const int h = blockIdx.x, split = blockIdx.y, t = blockIdx.z;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int latent = p.rank + p.rope;
  const int n = tok_pos<PT>(p, t) + 1;
  const int chunk = ceil_div(n, p.nsplit);
  const int s0 = split * chunk, s1 = min(n, s0 + chunk);
  const float *qa = p.qabs + ((int64_t)t * p.heads + h) * latent;
  const float *cache = seq_cache<PT>(p, t);
  float q[MAXJ], acc[MAXJ];
#pragma unroll
  for (int j = 0; j < MAXJ; j++) {
    const int d = lane + 32 * j;
    q[j] = d < latent ? qa[d] : 0.f;
    acc[j] = 0.f;
  }
  float m = -INFINITY, l = 0.f;
  for (int s = s0 + warp; s < s1; s += ATT_WARPS) {
    const float *c = cache + (int64_t)s * latent;
    float cv[MAXJ];
#pragma unroll
    for (int j = 0; j < MAXJ; j++) {
      const int d = lane + 32 * j;
      cv[j] = d < latent ? c[d] : 0.f;
    }
    float dot = 0.f;
#pragma unroll
    for (int j = 0; j < MAXJ; j++) dot = fmaf(q[j], cv[j], dot);
    const float score = warp_sum(dot) * p.scale;
    const float mn = fmaxf(m, score);
    const float corr = expf(m - mn);
    const float e = expf(score - mn);
    l = l * corr + e;
#pragma unroll
    for (int j = 0; j < MAXJ; j++) {
      const int d = lane + 32 * j;
      if (d < p.rank) acc[j] = fmaf(e, cv[j], acc[j] * corr);
    }
    m = mn;
  }
#pragma unroll
  for (int j = 0; j < MAXJ; j++) {
    const int d = lane + 32 * j;
    if (d < p.rank) sacc[warp * p.rank + d] = acc[j];
  }
  if (lane == 0) {
    sm[warp] = m;
    sl[warp] = l;
  }
  __syncthreads();
  float M = -INFINITY;
  for (int w = 0; w < ATT_WARPS; w++)
    if (sl[w] > 0.f) M = fmaxf(M, sm[w]);
  float f[ATT_WARPS], L = 0.f;
#pragma unroll
  for (int w = 0; w < ATT_WARPS; w++) {
    f[w] = sl[w] > 0.f ? expf(sm[w] - M) : 0.f;
    L += f[w] * sl[w];
  }
  float *out = p.part + (((int64_t)t * p.heads + h) * p.nsplit + split) * (p.rank + 2);
  if (threadIdx.x == 0) {
    out[0] = M;
    out[1] = L;
  }
  for (int r = threadIdx.x; r < p.rank; r += blockDim.x) {
    float o = 0.f;
#pragma unroll
    for (int w = 0; w < ATT_WARPS; w++) o += f[w] * sacc[w * p.rank + r];
    out[2 + r] = o;
  }
}

template <int F>
__global__ void __launch_bounds__(256) uv_kernel(const __grid_constant__ MlaParams p) {
  extern __shared__ __align__(16) float olat[];
  const int h = blockIdx.x, t = blockIdx.z;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int j = blockIdx.y * 8 + warp;  // one W_UV row per warp
  if (j < p.v) prefetch_row<F>(p.kvb.w + ((int64_t)h * (p.nope + p.v) + p.nope + j) * p.kvb.ldb, p.rank);
  pdl_wait();
  pdl_trigger();
  const float *part = p.part + ((int64_t)t * p.heads + h) * p.nsplit * (p.rank + 2);
  // The splits' weights once, by one warp (nsplit <= 32), then a weighted sum whose loads do not
  // wait on each other (the merge used to walk the splits with a branch per load).
  __shared__ float fs[32];
  if (threadIdx.x < 32) {
    const int i = threadIdx.x;
    const float li = i < p.nsplit ? part[(int64_t)i * (p.rank + 2) + 1] : 0.f;
    const float mi = i < p.nsplit ? part[(int64_t)i * (p.rank + 2)] : -INFINITY;
    const float M = warp_max(li > 0.f ? mi : -INFINITY);
    const float e = li > 0.f ? expf(mi - M) : 0.f;
    const float L = warp_sum(e * li);
    fs[i] = e / L;
  }
  __syncthreads();
  const int r8 = round_up(p.rank, 8);
  for (int r = threadIdx.x; r < r8; r += blockDim.x) {
    float o = 0.f;
    if (r < p.rank) {
#pragma unroll 8
      for (int i = 0; i < p.nsplit; i++) o += fs[i] * part[(int64_t)i * (p.rank + 2) + 2 + r];
    }
    olat[r] = o;
  }
  __syncthreads();
  if (j < p.v) {
    const int64_t row = (int64_t)h * (p.nope + p.v) + p.nope + j;
    const float *srow = p.kvb.s ? p.kvb.s + row * p.kvb.sld : nullptr;
    const float d = row_dot<F>(p.kvb.w + row * p.kvb.ldb, srow, p.kvb.sblk, olat, p.rank);
    if (lane == 0) p.out[((int64_t)t * p.heads + h) * p.v + j] = d;
  }
}

}  // namespace

void launch_mla(cudaStream_t st, const MlaParams &p) {
  const int latent = p.rank + p.rope;
  if (latent > 32 * MAXJ) dw_fail("kv_lora_rank + qk_rope_head_dim > 640 is not supported by the attention kernel");
  if (p.nsplit > 32) dw_fail("internal: more than 32 attention splits");
  const size_t smem0 = (size_t)p.nope * 4;
  const bool pt = p.tseq != nullptr;
  const dim3 ga(p.heads + 1, ceil_div(p.rank, 256), p.tokens);
  FMT_DISPATCH(p.kvb_fmt, F, {
    auto k = pt ? absorb_kernel<F, true> : absorb_kernel<F, false>;
    dw_smem_limit(reinterpret_cast<const void *>(k), smem0);
    launch_k(k, ga, 256, smem0, st, p);
  });
  LAUNCHED("absorb", st);
  const size_t smem = (size_t)ATT_WARPS * p.rank * 4;
  auto ka = pt ? attn_kernel<true> : attn_kernel<false>;
  dw_smem_limit(reinterpret_cast<const void *>(ka), smem);
  launch_k(ka, dim3(p.heads, p.nsplit, p.tokens), ATT_WARPS * 32, smem, st, p);
  LAUNCHED("attn", st);
  const size_t smem2 = (size_t)round_up(p.rank, 8) * 4;
  FMT_DISPATCH(p.kvb_fmt, F, {
    dw_smem_limit(reinterpret_cast<const void *>(uv_kernel<F>), smem2);
    launch_k(uv_kernel<F>, dim3(p.heads, ceil_div(p.v, 8), p.tokens), 256, smem2, st, p);
  });
  LAUNCHED("uv", st);
}
