// Decode-step matrix-vector kernels (batch 1): one warp per output row, each lane streaming 8
// weights per load (16 bytes for bf16), U loads in flight before the first use. The input vector
// (RMS-normalised on the way in when a norm weight is given) is staged once per block in shared
// memory. Variants:
//   gemv        several matrices over the same input in one launch (q|kv_a, o_proj + residual,
//               router logits with routing done by the last block, lm_head)
//   moe_gateup  every chosen expert's (and the shared/dense MLP's) gate and up rows in one launch,
//               writing silu(gate) * up
//   moe_down    every output row sums all chosen experts' down rows weighted by the router, plus the
//               shared experts, and adds the result to the residual stream
#include "kernels.cuh"
#include "route.cuh"
#include "dot.cuh"
#include <cstdlib>

namespace {

constexpr int WARPS = 8;
constexpr int THREADS = WARPS * 32;

// Stage x (cols floats, zero-padded to a multiple of 8) in shared memory, RMS-normalised with norm
// when norm is not null (dot.cuh). Ends with a barrier.
__device__ __forceinline__ void stage_x(float *xs, const float *x, const float *norm, float eps, int cols) {
  stage_rms<THREADS>(xs, x, norm, eps, cols);
}

__device__ __forceinline__ const float *srow_of(const WRef &w, int64_t row) {
  return w.s ? w.s + row * w.sld : nullptr;
}

template <int F, bool ROUTE>
__global__ void __launch_bounds__(THREADS) gemv_kernel(const __grid_constant__ GemvParams p) {
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
  const float *xs = p.x;  // without a norm the input is read through L1 as it is
  if (p.norm) {
    stage_x(smem, p.x, p.norm, p.eps, p.cols);
    xs = smem;
    if (p.h_out && blockIdx.x == 0)
      for (int i = threadIdx.x; i < round_up(p.cols, 8); i += blockDim.x) p.h_out[i] = smem[i];
  }
  for (int r = r0; r < r1; r++) {
    const float d = row_dot<F>(sg.w.w + r * sg.w.ldb, srow_of(sg.w, r), sg.w.sblk, xs, p.cols);
    if (lane == 0) {
      if (sg.add) sg.y[r] += d;
      else sg.y[r] = d;
    }
  }
  if constexpr (ROUTE) {
    // The last block to finish routes the token: the logits of every block are in memory by then.
    __shared__ int last;
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) last = atomicAdd(p.counter, 1u) == gridDim.x - 1;
    __syncthreads();
    if (last) {
      __threadfence();
      float *sc = smem + round_up(p.cols, 8);
      float *ch = sc + p.ra.E;
      float *gs = ch + p.ra.E;
      if (warp == 0) route_warp(p.seg[0].y, p.ra, sc, ch, gs, p.chosen, p.weights);
      if (threadIdx.x == 0) *p.counter = 0;
    }
  }
}

// Blocks [0, router_blocks): router rows (ROUTER only; the last of these blocks routes the token);
// then [0, k * bps_r): routed slot b / bps_r; the rest: the fixed MLP (shared experts or dense).
template <int F, bool ROUTER>
__global__ void __launch_bounds__(THREADS, 4) moe_gateup_kernel(const __grid_constant__ MoeParams p) {
  extern __shared__ __align__(16) float smem[];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  int b = blockIdx.x;
  if (ROUTER) b -= p.router_blocks;
  if (b >= p.k * p.bps_r) {  // the fixed MLP's rows do not depend on the routing: prefetch them
    const int i0 = ((b - p.k * p.bps_r) * WARPS + warp) * p.rpw;
    if (i0 < p.finter) {
      prefetch_row<F>(p.fgu.w + i0 * p.fgu.ldb, p.hidden);
      prefetch_row<F>(p.fgu.w + (int64_t)(p.finter + i0) * p.fgu.ldb, p.hidden);
    }
  } else if (ROUTER && b < 0) {
    const int r = (int)blockIdx.x * WARPS + warp;
    if (r < p.ra.E) prefetch_row<F>(p.router.w + r * p.router.ldb, p.hidden);
  }
  pdl_wait();
  pdl_trigger();
  const float *xs = p.x;
  if (p.norm) {
    stage_x(smem, p.x, p.norm, p.eps, p.hidden);
    xs = smem;
  }
  if constexpr (ROUTER) {
    if (p.h_out && blockIdx.x == 0)
      for (int i = threadIdx.x; i < round_up(p.hidden, 8); i += blockDim.x) p.h_out[i] = xs[i];
    if (b < 0) {
      const int r = (int)blockIdx.x * WARPS + warp;
      if (r < p.ra.E) {
        const float d = row_dot<F>(p.router.w + r * p.router.ldb, srow_of(p.router, r), p.router.sblk, xs, p.hidden);
        if (lane == 0) p.logits[r] = d;
      }
      // The last router block to finish routes the token.
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
  const int r0 = (chunk * WARPS + warp) * p.rpw;
  const int r1 = min(r0 + p.rpw, I);
  for (int i = r0; i < r1; i++) {
    float g, u;
    row_dot2<F>(W + i * ldb, S ? S + (int64_t)i * sld : nullptr, W + (int64_t)(I + i) * ldb,
                S ? S + (int64_t)(I + i) * sld : nullptr, sblk, xs, p.hidden, g, u);
    if (lane == 0) out[i] = g / (1.f + expf(-g)) * u;
  }
}

// Each warp computes one output row over all slots at once: the slots' activations lie side by
// side in act (slot s at s * inter8, the fixed MLP after the routed ones), so the warp walks that
// concatenated vector, each 8-column chunk reading the row of the slot it falls in, weighted by
// the router, with DOT_U loads in flight and one reduction at the end. act is read through L1.
template <int F>
__global__ void __launch_bounds__(THREADS, 4) moe_down_kernel(const __grid_constant__ MoeParams p) {
  __shared__ const char *base[33];
  __shared__ const float *sbase[33];
  __shared__ float wt[33];
  pdl_wait();
  pdl_trigger();
  const int nslot = p.k + p.has_fixed;
  if (threadIdx.x < nslot) {
    const int s = threadIdx.x;
    if (s < p.k) {
      const int e = p.chosen[s];
      base[s] = p.dn.w + e * p.dn_estride;
      sbase[s] = p.dn.s ? p.dn.s + e * p.dn_sestride : nullptr;
      wt[s] = p.weights[s];
    } else {
      base[s] = p.fdn.w;  // its activations start at s * inter8 = fixed_off
      sbase[s] = p.fdn.s;
      wt[s] = 1.f;
    }
  }
  __syncthreads();
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int routed = p.k * p.inter8;
  const int total = routed + (p.has_fixed ? round_up(p.finter, 8) : 0);
  const int r0 = (blockIdx.x * WARPS + warp) * p.rpw_down;
  const int r1 = min(r0 + p.rpw_down, p.hidden);
  for (int j = r0; j < r1; j++) {
    float acc = 0.f;
    for (int g0 = lane * 8; g0 < total; g0 += 256 * DOT_U) {
      Raw<F> w[DOT_U];
      float ws[DOT_U];
#pragma unroll
      for (int u = 0; u < DOT_U; u++) {
        const int g = g0 + u * 256;
        ws[u] = 0.f;
        if (g < total) {
          const int s = g < routed ? g / p.inter8 : p.k;
          const int col = g - s * p.inter8;
          const bool fixed = s == p.k;
          const int64_t ldb = fixed ? p.fdn.ldb : p.dn.ldb;
          const int sld = fixed ? p.fdn.sld : p.dn.sld;
          const int sblk = fixed ? p.fdn.sblk : p.dn.sblk;
          const float *srow = sbase[s] ? sbase[s] + (int64_t)j * sld : nullptr;
          w[u] = load_raw<F>(base[s] + j * ldb, srow, col, sblk);
          ws[u] = wt[s];
        }
      }
#pragma unroll
      for (int u = 0; u < DOT_U; u++) {
        const int g = g0 + u * 256;
        if (g < total) acc = fmaf(ws[u], dot_raw<F>(w[u], p.act + g), acc);
      }
    }
    acc = warp_sum(acc);
    if (lane == 0) p.xout[j] += acc;
  }
}

// DOWN_R output rows per block, every slot at once (dot.cuh's down_rows: the 8 warps split the
// concatenated slots, U x DOWN_R loads in flight per lane, activations through L2 into registers).
// Before it waits, a block prefetches its rows of every slot into L2: the chosen experts are known
// by then (this kernel starts only after the routed gate/up kernel has passed its own wait, which
// the routing kernel's completion released).
// DOWN_R = 4 rows with 2 chunks per lane in flight (3 blocks per SM), or (DW_DOWN=2) 8 rows with one.
template <int F, int DOWN_R, int U, int MINB>
__global__ void __launch_bounds__(THREADS, MINB) moe_down_rows_kernel(const __grid_constant__ MoeParams p, int prefetch) {
  __shared__ const char *base[33];
  __shared__ const float *sbase[33];
  __shared__ float wt[33];
  __shared__ float red[WARPS * DOWN_R];
  const int warp = threadIdx.x >> 5;
  const int j0 = blockIdx.x * DOWN_R;
  const int nslot = p.k + p.has_fixed;
  if (prefetch) {
    for (int sr = warp; sr < nslot * DOWN_R; sr += WARPS) {
      const int s = sr / DOWN_R, j = min(j0 + sr % DOWN_R, p.hidden - 1);
      if (s < p.k) {
        const int e = __ldcg(p.chosen + s);
        prefetch_row<F>(p.dn.w + e * p.dn_estride + j * p.dn.ldb, p.inter);
      } else {
        prefetch_row<F>(p.fdn.w + j * p.fdn.ldb, p.finter);
      }
    }
  }
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
      base[s] = p.fdn.w;
      sbase[s] = p.fdn.s;
      wt[s] = 1.f;
    }
  }
  __syncthreads();
  const float sum = down_rows<F, DOWN_R, MoeParams, U>(p, j0, base, sbase, wt, red);
  if (threadIdx.x < DOWN_R && j0 + (int)threadIdx.x < p.hidden) p.xout[j0 + threadIdx.x] += sum;
}

static int env_flag(const char *name, int def) {
  const char *e = getenv(name);
  return e && *e ? atoi(e) : def;
}

template <typename K>
void allow_smem(K kernel, size_t bytes) {
  dw_smem_limit(reinterpret_cast<const void *>(kernel), bytes);
}

}  // namespace

int gemv_rows_per_warp(int64_t rows, int nsm) {
  // Enough blocks for about two waves, fewer restagings of the input for very tall matrices.
  int64_t rpw = rows / ((int64_t)WARPS * nsm * 2);
  return (int)std::max<int64_t>(1, std::min<int64_t>(rpw, 16));
}

void launch_gemv(cudaStream_t st, int fmt, GemvParams &p, bool route) {
  int blocks = 0;
  for (int i = 0; i < p.nseg; i++) {
    p.seg[i].block0 = blocks;
    blocks += ceil_div(p.seg[i].rows, WARPS * p.rpw);
  }
  size_t smem = p.norm || route ? (size_t)round_up(p.cols, 8) * 4 : 0;
  if (route) smem += (size_t)(2 * p.ra.E + p.ra.groups + 8) * 4;
  FMT_DISPATCH(fmt, F, {
    if (route) {
      allow_smem(gemv_kernel<F, true>, smem);
      launch_k(gemv_kernel<F, true>, blocks, THREADS, smem, st, p);
    } else {
      allow_smem(gemv_kernel<F, false>, smem);
      launch_k(gemv_kernel<F, false>, blocks, THREADS, smem, st, p);
    }
  });
  LAUNCHED("gemv", st);
}

void launch_moe_gateup(cudaStream_t st, int fmt, MoeParams &p) {
  p.bps_r = p.k ? ceil_div(p.inter, WARPS * p.rpw) : 0;
  const int bps_f = p.has_fixed ? ceil_div(p.finter, WARPS * p.rpw) : 0;
  size_t smem = p.norm ? (size_t)round_up(p.hidden, 8) * 4 : 0;
  const bool router = p.router_blocks > 0;
  if (router) smem = (size_t)(round_up(p.hidden, 8) + 2 * p.ra.E + p.ra.groups + 8) * 4;
  const int blocks = p.router_blocks + p.k * p.bps_r + bps_f;
  FMT_DISPATCH(fmt, F, {
    if (router) {
      allow_smem(moe_gateup_kernel<F, true>, smem);
      launch_k(moe_gateup_kernel<F, true>, blocks, THREADS, smem, st, p);
    } else {
      allow_smem(moe_gateup_kernel<F, false>, smem);
      launch_k(moe_gateup_kernel<F, false>, blocks, THREADS, smem, st, p);
    }
  });
  LAUNCHED("moe_gateup", st);
}

void launch_moe_down(cudaStream_t st, int fmt, MoeParams &p) {
  // DW_DOWN=0: the first kernel (one warp per output row); DW_DOWN=2: 8 rows per block, one chunk
  // per lane in flight per row; DW_DOWN_PREFETCH=0: no L2 prefetch.
  // Read at every launch (a decode graph captures them once), so each model can differ.
  const int rows = env_flag("DW_DOWN", 1), prefetch = env_flag("DW_DOWN_PREFETCH", 1);
  if (rows == 2) {
    FMT_DISPATCH(fmt, F, {
      launch_k(moe_down_rows_kernel<F, 8, 1, 4>, ceil_div(p.hidden, 8), THREADS, 0, st, p, prefetch);
    });
  } else if (rows) {
    FMT_DISPATCH(fmt, F, {
      launch_k(moe_down_rows_kernel<F, 4, 2, 3>, ceil_div(p.hidden, 4), THREADS, 0, st, p, prefetch);
    });
  } else {
    FMT_DISPATCH(fmt, F, { launch_k(moe_down_kernel<F>, ceil_div(p.hidden, WARPS * p.rpw_down), THREADS, 0, st, p); });
  }
  LAUNCHED("moe_down", st);
}
