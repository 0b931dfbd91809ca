// Decode matrix-vector products (one token): several matrices of one format over the same input in
// one launch (q|kv_a, q_b, o_proj + residual, lm_head). One warp per output row (rpw rows each),
// the row streamed by dot.cuh's row_dot; the input, RMS-normalised on the way in when a norm weight
// is given, is staged once per block in shared memory.
#include "ops.cuh"
#include "dot.cuh"
#include "norm.cuh"

namespace {

constexpr int WARPS = 8;
constexpr int THREADS = WARPS * 32;

__device__ __forceinline__ const float *srow_of(const WRef &w, int64_t row) {
  return w.s ? w.s + row * w.sld : nullptr;
}

template <int F>
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
    stage_rms<THREADS>(smem, p.x, p.norm, p.eps, p.cols);
    xs = smem;
  }
  for (int r = r0; r < r1; r++) {
    const float d = row_dot<F>(sg.w.w + r * sg.w.ldb, srow_of(sg.w, r), sg.w.sblk, xs, p.cols);
    if (lane == 0) {
      if (sg.add) sg.y[r] += d;
      else sg.y[r] = d;
    }
  }
}

}  // namespace

int gemv_rows_per_warp(int64_t rows, int nsm) {
  // Enough blocks for about two waves, fewer restagings of the input for very tall matrices.
  int64_t rpw = rows / ((int64_t)WARPS * nsm * 2);
  return (int)std::max<int64_t>(1, std::min<int64_t>(rpw, 16));
}

void launch_gemv(cudaStream_t st, int fmt, GemvParams &p) {
  int blocks = 0;
  for (int i = 0; i < p.nseg; i++) {
    p.seg[i].block0 = blocks;
    blocks += ceil_div(p.seg[i].rows, WARPS * p.rpw);
  }
  const size_t smem = p.norm ? (size_t)round_up(p.cols, 8) * 4 : 0;
  FMT_DISPATCH(fmt, F, {
    dw_smem_limit(reinterpret_cast<const void *>(gemv_kernel<F>), smem);
    launch_k(gemv_kernel<F>, blocks, THREADS, smem, st, p);
  });
  LAUNCHED("gemv", st);
}
