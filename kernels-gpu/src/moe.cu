// Decode feed-forward (one token), three launches per MoE layer and two per dense one:
//   moe_gateup<F, FR>  router logits and the routing of the token (the first blocks, router format
//                      FR; the last of them routes), with the shared experts' gate and up (the rest),
//                      writing silu(gate) * up
//   moe_gateup<F, -1>  gate and up of every chosen expert (their pointers from the device-side
//                      routing), or of the dense MLP
//   moe_down<F>        every output row sums all chosen experts' down rows weighted by the router, plus
//                      the shared experts (or the dense MLP's down), into the residual stream
#include "ops.cuh"
#include "dot.cuh"
#include "norm.cuh"

namespace {

constexpr int WARPS = 8;
constexpr int THREADS = WARPS * 32;
constexpr int GATEUP_RPW = 2;  // gate/up rows per warp
constexpr int DOWN_ROWS = 4;   // output rows per block of the down kernel (3 blocks per SM)

// Blocks [0, router_blocks): router rows (FR >= 0 only; the last of these blocks routes the token);
// then [0, k * bps_r): routed slot b / bps_r; the rest: the fixed MLP (shared experts or dense).
template <int F, int FR>
__global__ void __launch_bounds__(THREADS, 4) moe_gateup_kernel(const __grid_constant__ MoeParams p) {
  constexpr bool ROUTER = FR >= 0;
  extern __shared__ __align__(16) float smem[];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  int b = blockIdx.x;
  if (ROUTER) b -= p.router_blocks;
  if (b >= p.k * p.bps_r) {  // the fixed MLP's rows do not depend on the routing: prefetch them
    const int i0 = ((b - p.k * p.bps_r) * WARPS + warp) * GATEUP_RPW;
    if (i0 < p.finter) {
      prefetch_row<F>(p.fgu.w + i0 * p.fgu.ldb, p.hidden);
      prefetch_row<F>(p.fgu.w + (int64_t)(p.finter + i0) * p.fgu.ldb, p.hidden);
    }
  } else if constexpr (ROUTER) {
    const int r = (int)blockIdx.x * WARPS + warp;
    if (b < 0 && r < p.ra.E) prefetch_row<FR>(p.router.w + r * p.router.ldb, p.hidden);
  }
  pdl_wait();
  pdl_trigger();
  const float *xs = p.x;
  if (p.norm) {
    stage_rms<THREADS>(smem, p.x, p.norm, p.eps, p.hidden);
    xs = smem;
  }
  if constexpr (ROUTER) {
    if (p.h_out && blockIdx.x == 0)
      for (int i = threadIdx.x; i < round_up(p.hidden, 8); i += blockDim.x) p.h_out[i] = xs[i];
    if (b < 0) {
      const int r = (int)blockIdx.x * WARPS + warp;
      if (r < p.ra.E) {
        const float *srow = p.router.s ? p.router.s + (int64_t)r * p.router.sld : nullptr;
        const float d = row_dot<FR>(p.router.w + r * p.router.ldb, srow, p.router.sblk, xs, p.hidden);
        if (lane == 0) p.logits[r] = d;
      }
      // The last router block to finish routes the token: every block's logits are in memory by then.
      __shared__ int last;
      __threadfence();
      __syncthreads();
      if (threadIdx.x == 0) last = atomicAdd(p.counter, 1u) == (unsigned)p.router_blocks - 1;
      __syncthreads();
      if (last) {
        __threadfence();
        float *sc = smem + round_up(p.hidden, 8);
        float *ch = sc + p.ra.E;
        float *gs = ch + p.ra.E;
        if (warp == 0) route_warp(p.logits, p.ra, sc, ch, gs, p.route_e, p.route_w);
        if (threadIdx.x == 0) *p.counter = 0;
      }
      return;
    }
  }
  const char *W;
  const float *S;
  int I, chunk;
  float *out;
  int64_t ldb;
  int sld, sblk;
  if (b < p.k * p.bps_r) {
    const int slot = b / p.bps_r;
    chunk = b % p.bps_r;
    const int e = p.chosen[slot];
    W = p.gu.w + e * p.gu_estride;
    S = p.gu.s ? p.gu.s + e * p.gu_sestride : nullptr;
    I = p.inter;
    out = p.act + slot * p.inter8;
    ldb = p.gu.ldb;
    sld = p.gu.sld;
    sblk = p.gu.sblk;
  } else {
    chunk = b - p.k * p.bps_r;
    W = p.fgu.w;
    S = p.fgu.s;
    I = p.finter;
    out = p.act + p.fixed_off;
    ldb = p.fgu.ldb;
    sld = p.fgu.sld;
    sblk = p.fgu.sblk;
  }
  const int r0 = (chunk * WARPS + warp) * GATEUP_RPW;
  const int r1 = min(r0 + GATEUP_RPW, I);
#pragma unroll 1  // one row's loads in flight at a time: unrolled, the two rows' loads spill registers
  for (int i = r0; i < r1; i++) {
    float g, u;
    row_dot2<F>(W + i * ldb, S ? S + (int64_t)i * sld : nullptr, W + (int64_t)(I + i) * ldb,
                S ? S + (int64_t)(I + i) * sld : nullptr, sblk, xs, p.hidden, g, u);
    if (lane == 0) out[i] = g / (1.f + expf(-g)) * u;
  }
}

// DOWN_ROWS output rows per block, every slot at once (dot.cuh's down_rows: the 8 warps split the
// concatenated slots, 2 x DOWN_ROWS loads in flight per lane, activations through L2 into
// registers). No L2 prefetch of the rows before the wait: it cost 1.6% of a 16B decode step
// (bench/RESULTS.md, session 4).
template <int F>
__global__ void __launch_bounds__(THREADS, 3) moe_down_kernel(const __grid_constant__ MoeParams p) {
  __shared__ const char *base[33];
  __shared__ const float *sbase[33];
  __shared__ float wt[33];
  __shared__ float red[WARPS * DOWN_ROWS];
  const int j0 = blockIdx.x * DOWN_ROWS;
  const int nslot = p.k + p.has_fixed;
  pdl_wait();
  pdl_trigger();
  if (threadIdx.x < nslot) {
    const int s = threadIdx.x;
    if (s < p.k) {
      const int e = __ldcg(p.chosen + s);
      base[s] = p.dn.w + e * p.dn_estride;
      sbase[s] = p.dn.s ? p.dn.s + e * p.dn_sestride : nullptr;
      wt[s] = __ldcg(p.weights + s);
    } else {
      base[s] = p.fdn.w;  // its activations start at s * inter8 = fixed_off
      sbase[s] = p.fdn.s;
      wt[s] = 1.f;
    }
  }
  __syncthreads();
  const float sum = down_rows<F, DOWN_ROWS, MoeParams>(p, j0, base, sbase, wt, red);
  if (threadIdx.x < DOWN_ROWS && j0 + (int)threadIdx.x < p.hidden) p.xout[j0 + threadIdx.x] += sum;
}

template <int F, int FR>
void launch_gateup(cudaStream_t st, const MoeParams &p, int blocks, size_t smem) {
  dw_smem_limit(reinterpret_cast<const void *>(moe_gateup_kernel<F, FR>), smem);
  launch_k(moe_gateup_kernel<F, FR>, blocks, THREADS, smem, st, p);
}

}  // namespace

void launch_moe_gateup(cudaStream_t st, int fmt, MoeParams &p) {
  if (p.k > 32) dw_fail("internal: more than 32 experts per token");
  p.bps_r = p.k ? ceil_div(p.inter, WARPS * GATEUP_RPW) : 0;
  const int bps_f = p.has_fixed ? ceil_div(p.finter, WARPS * GATEUP_RPW) : 0;
  const bool router = p.router_blocks > 0;
  size_t smem = p.norm ? (size_t)round_up(p.hidden, 8) * 4 : 0;
  if (router) smem = (size_t)(round_up(p.hidden, 8) + 2 * p.ra.E + p.ra.groups + 8) * 4;
  const int blocks = p.router_blocks + p.k * p.bps_r + bps_f;
  if (router) {
    FMT_DISPATCH(fmt, F, FMT_DISPATCH(p.router_fmt, FR, launch_gateup<F, FR>(st, p, blocks, smem)));
  } else {
    FMT_DISPATCH(fmt, F, launch_gateup<F, -1>(st, p, blocks, smem));
  }
  LAUNCHED("moe_gateup", st);
}

void launch_moe_down(cudaStream_t st, int fmt, const MoeParams &p) {
  FMT_DISPATCH(fmt, F, { launch_k(moe_down_kernel<F>, ceil_div(p.hidden, DOWN_ROWS), THREADS, 0, st, p); });
  LAUNCHED("moe_down", st);
}
