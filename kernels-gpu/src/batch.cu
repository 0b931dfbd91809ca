// The batched decode step's kernels: n tokens (n <= BATCH_MAX), each of its own sequence, in one
// pass over the weights (decode_batch.cu schedules them). Every kernel stages the n tokens' inputs
// in shared memory and reads each weight row once for all of them (dot.cuh's rows_dot_nb and
// down_rows_nb). The MoE runs over the step's units, its distinct routed experts, each with the
// tokens that chose it; the attention is the decode kernels' (mla.cu) with a token grid dimension.
// The template's NB (2, 4 or 8) is the smallest that holds n.
#include "ops.cuh"
#include "dot.cuh"
#include "norm.cuh"

namespace {

constexpr int WARPS = 8;
constexpr int THREADS = WARPS * 32;
// Rows a warp takes at once (each x load serves them all): 4, or 2 where 4 would leave too few blocks
// for the SMs (o_proj, q|kv_a).
constexpr int GEMV_ROWS = 4;
constexpr int GATEUP_RPW = 2;  // gate/up rows per warp
constexpr int DOWN_ROWS = 4;   // output rows per block of the down kernel

// Calls body with NB the smallest of 2, 4, 8 that holds n.
#define NB_DISPATCH(n, NB, ...)                    \
  if ((n) <= 2) { constexpr int NB = 2; __VA_ARGS__; } \
  else if ((n) <= 4) { constexpr int NB = 4; __VA_ARGS__; } \
  else { constexpr int NB = 8; __VA_ARGS__; }

__device__ __forceinline__ const float *srow_of(const WRef &w, int64_t row) { return w.s ? w.s + row * w.sld : nullptr; }

// The inputs of the tokens in use (x + t * xld) in shared memory (round8(cols) apart, zero-padded),
// normalised with norm when given, each token's values exactly those stage_rms gives. When cols % 4 == 0
// every token's loads are in flight at once (one round trip for all of them, not one per token): each
// thread loads a float4 of the tokens' rows in turn, then warp t sums token t's squares in stage_rms's
// order (thread k of stage_rms summed float4s k, k + THREADS, ...; its warps' sums were added in order).
__device__ __forceinline__ void stage_tokens(float *xs, const float *x, int xld, int n, unsigned use, const float *norm,
                                             float eps, int cols) {
  const int c8 = round_up(cols, 8);
  if (cols & 3) {  // stage_rms's scalar path, which reads nothing past cols
    for (int t = 0; t < n; t++)
      if (use >> t & 1u) stage_rms<THREADS>(xs + t * c8, x + (int64_t)t * xld, norm, eps, cols);
    return;
  }
  __shared__ float inv[BATCH_MAX];
  const int n4 = c8 >> 2, c4 = cols >> 2, total = n * n4;
  constexpr int B = 8;
  for (int k0 = threadIdx.x; k0 < total; k0 += THREADS * B) {
    float4 v[B];
#pragma unroll
    for (int b = 0; b < B; b++) {
      const int k = k0 + b * THREADS, t = k / n4, i = k - t * n4;
      v[b] = k < total && (use >> t & 1u) && i < c4 ? __ldcg(reinterpret_cast<const float4 *>(x + (int64_t)t * xld) + i)
                                                    : make_float4(0.f, 0.f, 0.f, 0.f);
    }
#pragma unroll
    for (int b = 0; b < B; b++) {
      const int k = k0 + b * THREADS, t = k / n4, i = k - t * n4;
      if (k < total) reinterpret_cast<float4 *>(xs + t * c8)[i] = v[b];
    }
  }
  __syncthreads();
  if (!norm) return;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (warp < n && (use >> warp & 1u)) {
    const float4 *r4 = reinterpret_cast<const float4 *>(xs + warp * c8);
    float tot = 0.f;
#pragma unroll 1
    for (int w = 0; w < THREADS / 32; w++) {
      float ss = 0.f;
      for (int i = w * 32 + lane; i < n4; i += THREADS) ss += sq4(r4[i]);
      tot += warp_sum(ss);
    }
    if (lane == 0) inv[warp] = 1.0f / sqrtf(tot / (float)cols + eps);
  }
  __syncthreads();
  for (int k = threadIdx.x; k < n * c4; k += THREADS) {
    const int t = k / c4, i = k - t * c4;
    if (!(use >> t & 1u)) continue;
    const float4 w = __ldg(reinterpret_cast<const float4 *>(norm) + i);
    float4 *p = reinterpret_cast<float4 *>(xs + t * c8) + i;
    float4 v = *p;
    const float f = inv[t];
    v.x = v.x * f * w.x;
    v.y = v.y * f * w.y;
    v.z = v.z * f * w.z;
    v.w = v.w * f * w.w;
    *p = v;
  }
  __syncthreads();
}

template <int F, int NB, int GR>
__global__ void __launch_bounds__(THREADS) gemv_batch_kernel(const __grid_constant__ GemvParams p) {
  extern __shared__ __align__(16) float smem[];
  const int b = blockIdx.x;
  int si = 0;
  while (si + 1 < p.nseg && b >= p.seg[si + 1].block0) si++;
  const GemvSeg &sg = p.seg[si];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int r0 = ((b - sg.block0) * WARPS + warp) * p.rpw;
  const int r1 = min(r0 + p.rpw, sg.rows);
  if (r0 < r1) prefetch_row<F>(sg.w.w + r0 * sg.w.ldb, p.cols);  // weights: safe before the wait
  pdl_wait();
  pdl_trigger();
  const unsigned use = (1u << p.n) - 1;
  stage_tokens(smem, p.x, p.xld, p.n, use, p.norm, p.eps, p.cols);
  for (int r = r0; r < r1; r += GR) {
    const char *rp[GR];
    const float *sp[GR];
#pragma unroll
    for (int g = 0; g < GR; g++) {
      const int row = min(r + g, r1 - 1);  // rows past the warp's last: read a real row, drop the sum
      rp[g] = sg.w.w + row * sg.w.ldb;
      sp[g] = srow_of(sg.w, row);
    }
    float d[GR][NB];
    rows_dot_nb<F, GR, NB>(rp, sp, sg.w.sblk, smem, round_up(p.cols, 8), p.cols, use, d);
    if (lane == 0) {
#pragma unroll
      for (int g = 0; g < GR; g++) {
#pragma unroll
        for (int t = 0; t < NB; t++) {
          if (r + g < r1 && t < p.n) {
            float *y = sg.y + (int64_t)t * sg.yld + r + g;
            *y = sg.add ? *y + d[g][t] : d[g][t];
          }
        }
      }
    }
  }
}

// Block t: token t's input normalised as the single-token step's kernels stage it (stage_rms), so the
// routing and the experts' inputs are that step's to the bit.
__global__ void __launch_bounds__(THREADS) norm_rows_kernel(float *out, const float *x, int xld, const float *norm, float eps,
                                                            int cols) {
  extern __shared__ __align__(16) float smem[];
  pdl_wait();
  pdl_trigger();
  stage_rms<THREADS>(smem, x + (int64_t)blockIdx.x * xld, norm, eps, cols);
  for (int i = threadIdx.x; i < round_up(cols, 8); i += THREADS) out[(int64_t)blockIdx.x * xld + i] = smem[i];
}

// One warp per token routes it (route.cuh, as the single-token step), then warp 0 groups the
// n * k (token, expert) pairs into units, in the order of each expert's first pair.
__global__ void route_batch_kernel(const float *logits, int n, RouteArgs ra, int inter8, int *chosen, float *weights,
                                   Units *units, BState *state) {
  extern __shared__ float sh[];
  __shared__ int first_of[UNITS_MAX], unit_of[UNITS_MAX];
  pdl_wait();
  pdl_trigger();
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int per = 2 * ra.E + ra.groups + 8;
  if (warp < n) {
    float *s = sh + warp * per;
    route_warp(logits + (int64_t)warp * ra.E, ra, s, s + ra.E, s + 2 * ra.E, chosen + warp * ra.k, weights + warp * ra.k);
  }
  __syncthreads();
  if (warp != 0) return;
  const int P = n * ra.k;
  for (int q = lane; q < P; q += 32) {
    const int e = chosen[q];
    int f = q;
    for (int r = 0; r < q; r++)
      if (chosen[r] == e) {
        f = r;
        break;
      }
    first_of[q] = f;
  }
  __syncwarp();
  const unsigned b0 = __ballot_sync(0xffffffffu, lane < P && first_of[lane] == lane);
  const unsigned b1 = __ballot_sync(0xffffffffu, lane + 32 < P && first_of[lane + 32] == lane + 32);
  for (int q = lane; q < P; q += 32)
    if (first_of[q] == q) unit_of[q] = q < 32 ? __popc(b0 & ((1u << q) - 1)) : __popc(b0) + __popc(b1 & ((1u << (q - 32)) - 1));
  const int nu = __popc(b0) + __popc(b1);
  for (int u = lane; u < nu; u += 32) units->mask[u] = 0;
  __syncwarp();
  for (int q = lane; q < P; q += 32) {
    const int u = unit_of[first_of[q]];
    const int t = q / ra.k, j = q % ra.k;
    units->exp[u] = chosen[q];
    units->w[u][t] = weights[q];
    units->off[u][t] = j * inter8;
    atomicOr(&units->mask[u], 1u << t);
  }
  if (lane == 0) {
    units->n = nu;
    state->experts += nu;
  }
}

// Blocks [0, max_units * bps_r): unit b / bps_r (none past the step's count); the rest: the fixed
// MLP (shared experts or the dense MLP) for every token. Writes silu(gate) * up of each token that
// uses the rows into its activation row.
template <int F, int NB>
__global__ void __launch_bounds__(THREADS) moe_gateup_batch_kernel(const __grid_constant__ MoeParams p) {
  extern __shared__ __align__(16) float smem[];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int b = blockIdx.x;
  const int routed_blocks = p.max_units * p.bps_r;
  if (b >= routed_blocks) {  // the fixed MLP's rows do not depend on the routing: prefetch them
    const int i0 = ((b - routed_blocks) * WARPS + warp) * GATEUP_RPW;
    if (i0 < p.finter) {
      prefetch_row<F>(p.fgu.w + i0 * p.fgu.ldb, p.hidden);
      prefetch_row<F>(p.fgu.w + (int64_t)(p.finter + i0) * p.fgu.ldb, p.hidden);
    }
  }
  pdl_wait();
  pdl_trigger();
  const char *W;
  const float *S;
  int I, chunk, u = -1;
  int64_t ldb;
  int sld, sblk;
  unsigned use;
  if (b < routed_blocks) {
    u = b / p.bps_r;
    if (u >= p.units->n) return;
    chunk = b % p.bps_r;
    const int e = p.units->exp[u];
    W = p.gu.w + e * p.gu_estride;
    S = p.gu.s ? p.gu.s + e * p.gu_sestride : nullptr;
    I = p.inter;
    ldb = p.gu.ldb;
    sld = p.gu.sld;
    sblk = p.gu.sblk;
    use = p.units->mask[u];
  } else {
    chunk = b - routed_blocks;
    W = p.fgu.w;
    S = p.fgu.s;
    I = p.finter;
    ldb = p.fgu.ldb;
    sld = p.fgu.sld;
    sblk = p.fgu.sblk;
    use = (1u << p.n) - 1;
  }
  stage_tokens(smem, p.x, p.xld, p.n, use, nullptr, 0.f, p.hidden);
  const int r0 = (chunk * WARPS + warp) * GATEUP_RPW;
  const int r1 = min(r0 + GATEUP_RPW, I);
#pragma unroll 1
  for (int i = r0; i < r1; i++) {
    const char *rp[2] = {W + i * ldb, W + (int64_t)(I + i) * ldb};
    const float *sp[2] = {S ? S + (int64_t)i * sld : nullptr, S ? S + (int64_t)(I + i) * sld : nullptr};
    float d[2][NB];
    rows_dot_nb<F, 2, NB>(rp, sp, sblk, smem, round_up(p.hidden, 8), p.hidden, use, d);
    if (lane == 0) {
#pragma unroll
      for (int t = 0; t < NB; t++) {
        if (use >> t & 1u) {
          const int off = u >= 0 ? p.units->off[u][t] : p.fixed_off;
          const float g = d[0][t];
          p.act[(int64_t)t * p.act_ld + off + i] = g / (1.f + expf(-g)) * d[1][t];
        }
      }
    }
  }
}

// DOWN_ROWS output rows per block for every token: the step's units, then the fixed MLP.
template <int F, int NB>
__global__ void __launch_bounds__(THREADS, 2) moe_down_batch_kernel(const __grid_constant__ MoeParams p) {
  __shared__ const char *base[UNITS_MAX + 1];
  __shared__ const float *sbase[UNITS_MAX + 1];
  __shared__ float wt[UNITS_MAX + 1][NB];
  __shared__ int aoff[UNITS_MAX + 1][NB];
  __shared__ unsigned mask[UNITS_MAX + 1];
  __shared__ float red[WARPS * DOWN_ROWS * NB];
  const int j0 = blockIdx.x * DOWN_ROWS;
  pdl_wait();
  pdl_trigger();
  const int nu = p.units ? p.units->n : 0;
  for (int s = threadIdx.x; s < nu + p.has_fixed; s += blockDim.x) {
    if (s < nu) {
      const int e = p.units->exp[s];
      base[s] = p.dn.w + e * p.dn_estride;
      sbase[s] = p.dn.s ? p.dn.s + e * p.dn_sestride : nullptr;
      mask[s] = p.units->mask[s];
#pragma unroll
      for (int t = 0; t < NB; t++) {
        wt[s][t] = t < p.n ? p.units->w[s][t] : 0.f;
        aoff[s][t] = t < p.n ? p.units->off[s][t] : 0;
      }
    } else {
      base[s] = p.fdn.w;
      sbase[s] = p.fdn.s;
      mask[s] = (1u << p.n) - 1;
#pragma unroll
      for (int t = 0; t < NB; t++) {
        wt[s][t] = 1.f;
        aoff[s][t] = p.fixed_off;
      }
    }
  }
  __syncthreads();
  const float sum = down_rows_nb<F, DOWN_ROWS, NB, MoeParams>(p, j0, nu, base, sbase, wt, aoff, mask, red);
  if (threadIdx.x < DOWN_ROWS * NB) {
    const int r = threadIdx.x / NB, t = threadIdx.x % NB;
    if (t < p.n && j0 + r < p.hidden) p.xout[(int64_t)t * p.xld + j0 + r] += sum;
  }
}

}  // namespace

void launch_gemv_batch(cudaStream_t st, int fmt, GemvParams &p, int nsm) {
  if (p.n < 1 || p.n > BATCH_MAX) dw_fail("internal: batched gemv of " + std::to_string(p.n) + " tokens");
  int64_t rows = 0;
  for (int i = 0; i < p.nseg; i++) rows += p.seg[i].rows;
  const bool wide = rows / (WARPS * GEMV_ROWS) >= 2 * nsm;
  p.rpw = round_up(p.rpw, wide ? GEMV_ROWS : 2);
  int blocks = 0;
  for (int i = 0; i < p.nseg; i++) {
    p.seg[i].block0 = blocks;
    blocks += ceil_div(p.seg[i].rows, WARPS * p.rpw);
  }
  const size_t smem = (size_t)p.n * round_up(p.cols, 8) * 4;
  auto go = [&](auto kernel) {
    dw_smem_limit(reinterpret_cast<const void *>(kernel), smem);
    launch_k(kernel, blocks, THREADS, smem, st, p);
  };
  FMT_DISPATCH(fmt, F, NB_DISPATCH(p.n, NB, {
    if (wide) go(gemv_batch_kernel<F, NB, GEMV_ROWS>);
    else go(gemv_batch_kernel<F, NB, 2>);
  }));
  LAUNCHED("gemv_batch", st);
}

void launch_norm_batch(cudaStream_t st, float *out, const float *x, int xld, const float *norm, float eps, int cols, int n) {
  const size_t smem = (size_t)round_up(cols, 8) * 4;
  dw_smem_limit(reinterpret_cast<const void *>(norm_rows_kernel), smem);
  launch_k(norm_rows_kernel, n, THREADS, smem, st, out, x, xld, norm, eps, cols);
  LAUNCHED("norm_batch", st);
}

void launch_route_batch(cudaStream_t st, const float *logits, int n, const RouteArgs &ra, int inter8, int *chosen,
                        float *weights, Units *units, BState *state) {
  if (n * ra.k > UNITS_MAX) dw_fail("internal: more than 64 (token, expert) pairs in a batched step");
  const size_t smem = (size_t)n * (2 * ra.E + ra.groups + 8) * 4;
  dw_smem_limit(reinterpret_cast<const void *>(route_batch_kernel), smem);
  launch_k(route_batch_kernel, 1, 32 * n, smem, st, logits, n, ra, inter8, chosen, weights, units, state);
  LAUNCHED("route_batch", st);
}

void launch_moe_gateup_batch(cudaStream_t st, int fmt, MoeParams &p) {
  p.bps_r = p.max_units ? ceil_div(p.inter, WARPS * GATEUP_RPW) : 0;
  const int bps_f = p.has_fixed ? ceil_div(p.finter, WARPS * GATEUP_RPW) : 0;
  const int blocks = p.max_units * p.bps_r + bps_f;
  const size_t smem = (size_t)p.n * round_up(p.hidden, 8) * 4;
  FMT_DISPATCH(fmt, F, NB_DISPATCH(p.n, NB, {
    dw_smem_limit(reinterpret_cast<const void *>(moe_gateup_batch_kernel<F, NB>), smem);
    launch_k(moe_gateup_batch_kernel<F, NB>, blocks, THREADS, smem, st, p);
  }));
  LAUNCHED("moe_gateup_batch", st);
}

void launch_moe_down_batch(cudaStream_t st, int fmt, const MoeParams &p) {
  FMT_DISPATCH(fmt, F, NB_DISPATCH(p.n, NB, {
    launch_k(moe_down_batch_kernel<F, NB>, ceil_div(p.hidden, DOWN_ROWS), THREADS, 0, st, p);
  }));
  LAUNCHED("moe_down_batch", st);
}
