// The small kernels: embedding, norms, activations, argmax/top-k, prefill routing and expert
// dispatch, format conversion on load, random weights.
#include "kernels.cuh"
#include "route.cuh"

namespace {

__global__ void embed_kernel(WRef w, int fmt, const int *ids, const DState *state, float *x, int hidden) {
  pdl_wait();
  pdl_trigger();
  const int t = blockIdx.x;
  const int id = ids ? ids[t] : state->token;
  const char *rowp = w.w + (int64_t)id * w.ldb;
  const float *srow = w.s ? w.s + (int64_t)id * w.sld : nullptr;
  for (int i = threadIdx.x; i < hidden; i += blockDim.x) x[(int64_t)t * hidden + i] = load1(fmt, rowp, srow, i, w.sblk);
}

__global__ void rmsnorm_rows_kernel(float *out, int out_ld, const float *x, int x_ld, const float *w, int n, float eps) {
  __shared__ float red[32];
  __shared__ float inv_s;
  const float *xr = x + (int64_t)blockIdx.x * x_ld;
  float *orow = out + (int64_t)blockIdx.x * out_ld;
  float ss = 0.f;
  for (int i = threadIdx.x; i < n; i += blockDim.x) ss += xr[i] * xr[i];
  ss = warp_sum(ss);
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = ss;
  __syncthreads();
  if (threadIdx.x == 0) {
    float tot = 0.f;
    for (int i = 0; i < (int)(blockDim.x >> 5); i++) tot += red[i];
    inv_s = 1.0f / sqrtf(tot / (float)n + eps);
  }
  __syncthreads();
  const float inv = inv_s;
  for (int i = threadIdx.x; i < n; i += blockDim.x) orow[i] = xr[i] * inv * w[i];
}

__global__ void silu_mul_kernel(float *out, int out_ld, const float *gu, int gu_ld, int inter, int rows) {
  const int64_t total = (int64_t)rows * inter;
  for (int64_t k = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; k < total; k += (int64_t)gridDim.x * blockDim.x) {
    const int64_t r = k / inter;
    const int i = (int)(k % inter);
    const float g = gu[r * gu_ld + i], u = gu[r * gu_ld + inter + i];
    out[r * out_ld + i] = g / (1.f + expf(-g)) * u;
  }
}

// Block-wide argmax, ties to the lowest index. 1024 threads.
__device__ void block_argmax(float &v, int &i) {
  __shared__ float sv[32];
  __shared__ int si[32];
  warp_argmax(v, i);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (lane == 0) {
    sv[warp] = v;
    si[warp] = i;
  }
  __syncthreads();
  if (warp == 0) {
    const int nw = blockDim.x >> 5;
    v = lane < nw ? sv[lane] : -INFINITY;
    i = lane < nw ? si[lane] : 0x7fffffff;
    warp_argmax(v, i);
    if (lane == 0) {
      sv[0] = v;
      si[0] = i;
    }
  }
  __syncthreads();
  v = sv[0];
  i = si[0];
  __syncthreads();
}

__device__ void thread_argmax(const float *x, int n, float &v, int &i) {
  v = -INFINITY;
  i = 0x7fffffff;
  for (int k = threadIdx.x; k < n; k += blockDim.x) {
    const float c = x[k];
    if (i == 0x7fffffff || c > v) {
      v = c;
      i = k;
    }
  }
}

__global__ void __launch_bounds__(1024) argmax_kernel(const float *logits, int n, DState *state, int advance) {
  pdl_wait();
  pdl_trigger();
  float v;
  int i;
  thread_argmax(logits, n, v, i);
  block_argmax(v, i);
  if (threadIdx.x == 0) {
    state->token = i;
    state->pos += advance;
    if (state->log && state->count < state->cap) state->log[state->count] = i;
    state->count++;
  }
}

// The same over ARGMAX_BLOCKS blocks: each takes a contiguous chunk (one load per thread in flight,
// where one block walked the whole row), and the last block to finish combines the winners (ties
// to the lowest index, as above) and updates the state.
constexpr int ARGMAX_BLOCKS = 128;
__global__ void __launch_bounds__(256) argmax_blocks_kernel(const float *logits, int n, DState *state, int advance,
                                                            float *cv, int *ci, unsigned *counter) {
  __shared__ int last;
  pdl_wait();
  pdl_trigger();
  const int chunk = ceil_div(n, (int)gridDim.x);
  const int lo = blockIdx.x * chunk, hi = min(n, lo + chunk);
  float v = -INFINITY;
  int i = 0x7fffffff;
  for (int k = lo + threadIdx.x; k < hi; k += blockDim.x) {
    const float c = logits[k];
    if (i == 0x7fffffff || c > v) {
      v = c;
      i = k;
    }
  }
  block_argmax(v, i);
  if (threadIdx.x == 0) {
    cv[blockIdx.x] = v;
    ci[blockIdx.x] = i;
    __threadfence();
    last = atomicAdd(counter, 1u) == gridDim.x - 1;
  }
  __syncthreads();
  if (!last) return;
  __threadfence();
  v = -INFINITY;
  i = 0x7fffffff;
  for (int b = threadIdx.x; b < (int)gridDim.x; b += blockDim.x) {
    const float c = __ldcg(cv + b);
    const int k = __ldcg(ci + b);
    if (k != 0x7fffffff && (i == 0x7fffffff || c > v || (c == v && k < i))) {
      v = c;
      i = k;
    }
  }
  block_argmax(v, i);
  if (threadIdx.x == 0) {
    state->token = i;
    state->pos += advance;
    if (state->log && state->count < state->cap) state->log[state->count] = i;
    state->count++;
    *counter = 0;
  }
}

__global__ void __launch_bounds__(1024) topk_kernel(const float *logits, int n, int k, float *scratch, float *vals, int *ids) {
  for (int j = threadIdx.x; j < n; j += blockDim.x) scratch[j] = logits[j];
  __syncthreads();
  for (int r = 0; r < k; r++) {
    float v;
    int i;
    thread_argmax(scratch, n, v, i);
    block_argmax(v, i);
    if (threadIdx.x == 0) {
      vals[r] = v;
      ids[r] = i;
      scratch[i] = -INFINITY;
    }
    __syncthreads();
  }
}

__global__ void set_state_kernel(DState *state, int token, int pos) {
  state->token = token;
  state->pos = pos;
  state->count = 0;
}

__global__ void route_kernel(const float *logits, RouteArgs ra, int *chosen, float *weights) {
  extern __shared__ float sh[];
  const int t = blockIdx.x;
  route_warp(logits + (int64_t)t * ra.E, ra, sh, sh + ra.E, sh + 2 * ra.E, chosen + t * ra.k, weights + t * ra.k);
}

__global__ void dispatch_kernel(const int *chosen, int pairs, int E, int cap, int *counts, int *list, int *slot) {
  for (int e = threadIdx.x; e < E; e += blockDim.x) {
    int c = 0;
    for (int p = 0; p < pairs; p++) {
      if (chosen[p] == e) {
        list[(int64_t)e * cap + c] = p;
        slot[p] = c;
        c++;
      }
    }
    counts[e] = c;
  }
}

__global__ void gather_kernel(const float *h, int hidden, const int *counts, const int *list, int k, int cap, float *xd) {
  const int c = blockIdx.x, e = blockIdx.y;
  if (c >= counts[e]) return;
  const int t = list[(int64_t)e * cap + c] / k;
  const float *src = h + (int64_t)t * hidden;
  float *dst = xd + ((int64_t)e * cap + c) * hidden;
  for (int i = threadIdx.x; i < hidden; i += blockDim.x) dst[i] = src[i];
}

__global__ void combine_kernel(float *x, const float *add, const float *yd, const int *chosen, const float *weights,
                               const int *slot, int k, int hidden, int cap) {
  const int t = blockIdx.x;
  for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
    float o = add ? add[(int64_t)t * hidden + i] : 0.f;
    for (int j = 0; j < k; j++) {
      const int p = t * k + j;
      o += weights[p] * yd[((int64_t)chosen[p] * cap + slot[p]) * hidden + i];
    }
    x[(int64_t)t * hidden + i] += o;
  }
}

__global__ void split_bf16_kernel(const float *x, __nv_bfloat16 *hi, __nv_bfloat16 *lo, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    const float v = x[i];
    const __nv_bfloat16 h = __float2bfloat16_rn(v);
    hi[i] = h;
    lo[i] = __float2bfloat16_rn(v - __bfloat162float(h));
  }
}

__global__ void dequant_kernel(WRef w, int fmt, int rows, int cols, int ld, int64_t estride, int64_t sestride, int experts,
                               float *out) {
  const int64_t total = (int64_t)experts * rows * ld;
  for (int64_t k = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; k < total; k += (int64_t)gridDim.x * blockDim.x) {
    const int c = (int)(k % ld);
    const int64_t er = k / ld;
    const int e = (int)(er / rows);
    const int64_t r = er % rows;
    float v = 0.f;
    if (c < cols) {
      const char *rowp = w.w + e * estride + r * w.ldb;
      const float *srow = w.s ? w.s + e * sestride + r * w.sld : nullptr;
      v = load1(fmt, rowp, srow, c, w.sblk);
    }
    out[k] = v;
  }
}

__device__ __forceinline__ float src_load(int fmt, const void *src, int64_t r, int64_t c, int64_t cols,
                                          const float *scales, int br, int bc) {
  const int64_t k = r * cols + c;
  switch (fmt) {
    case F_F32: return reinterpret_cast<const float *>(src)[k];
    case F_BF16: return __uint_as_float((uint32_t)reinterpret_cast<const uint16_t *>(src)[k] << 16);
    case F_F16: return __half2float(reinterpret_cast<const __half *>(src)[k]);
    default: {
      const int64_t nbc = (cols + bc - 1) / bc;
      return fp8_to_f32(reinterpret_cast<const uint8_t *>(src)[k]) * scales[(r / br) * nbc + c / bc];
    }
  }
}

// Any source type -> f32 rows of the destination.
__global__ void to_f32_kernel(float *dst, int ld, int src_fmt, const void *src, int64_t rows, int64_t cols,
                              const float *scales, int br, int bc) {
  const int64_t total = rows * cols;
  for (int64_t k = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; k < total; k += (int64_t)gridDim.x * blockDim.x) {
    const int64_t r = k / cols, c = k % cols;
    dst[r * ld + c] = src_load(src_fmt, src, r, c, cols, scales, br, bc);
  }
}

// Any source type -> q8: one warp per (row, 64 columns), scale = absmax / 127.
__global__ void to_q8_kernel(int8_t *dst, int64_t ldb, float *dst_s, int sld, int src_fmt, const void *src, int64_t rows,
                             int64_t cols, const float *scales, int br, int bc) {
  const int lane = threadIdx.x & 31;
  const int64_t nblk = (cols + 63) / 64;
  const int64_t total = rows * nblk;
  for (int64_t w = (blockIdx.x * (int64_t)blockDim.x + threadIdx.x) >> 5; w < total;
       w += ((int64_t)gridDim.x * blockDim.x) >> 5) {
    const int64_t r = w / nblk, b = w % nblk;
    const int64_t c0 = b * 64 + lane * 2;
    const float v0 = c0 < cols ? src_load(src_fmt, src, r, c0, cols, scales, br, bc) : 0.f;
    const float v1 = c0 + 1 < cols ? src_load(src_fmt, src, r, c0 + 1, cols, scales, br, bc) : 0.f;
    const float amax = warp_max(fmaxf(fabsf(v0), fabsf(v1)));
    const float sc = amax > 0.f ? amax / 127.f : 1.f;
    if (c0 < cols) dst[r * ldb + c0] = (int8_t)fmaxf(-127.f, fminf(127.f, rintf(v0 / sc)));
    if (c0 + 1 < cols) dst[r * ldb + c0 + 1] = (int8_t)fmaxf(-127.f, fminf(127.f, rintf(v1 / sc)));
    if (lane == 0) dst_s[r * sld + b] = sc;
  }
}

// FP8 block scales [ceil(rows/br), nbc] -> one scale per row and block column.
__global__ void expand_scales_kernel(float *dst, int sld, const float *src, int64_t rows, int nbc, int br) {
  const int64_t total = rows * nbc;
  for (int64_t k = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; k < total; k += (int64_t)gridDim.x * blockDim.x) {
    const int64_t r = k / nbc;
    const int b = (int)(k % nbc);
    dst[r * sld + b] = src[(r / br) * nbc + b];
  }
}

__device__ __forceinline__ uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

__global__ void random_bf16_kernel(__nv_bfloat16 *w, int64_t rows_total, int cols, int ld, float amp, uint64_t seed) {
  const int64_t total = rows_total * cols;
  for (int64_t k = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; k < total; k += (int64_t)gridDim.x * blockDim.x) {
    const int64_t r = k / cols, c = k % cols;
    const uint64_t h = mix64(seed + 0x9e3779b97f4a7c15ull * (uint64_t)(k + 1));
    const float u = (float)(h >> 40) * (1.0f / 16777216.0f);  // [0, 1)
    w[r * ld + c] = __float2bfloat16_rn((2.f * u - 1.f) * amp);
  }
}

__global__ void fill_kernel(float *p, int64_t n, float v) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) p[i] = v;
}

__global__ void spin_kernel(unsigned long long ns) {
  unsigned long long t0, t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
  do {
    __nanosleep(1000);
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  } while (t - t0 < ns);
}

int grid_for(int64_t n, int threads = 256) { return (int)std::max<int64_t>(1, std::min<int64_t>((n + threads - 1) / threads, 65536)); }

}  // namespace

void launch_embed(cudaStream_t st, const DMat &emb, const int *ids, const DState *state, float *x, int tokens, int hidden) {
  launch_k(embed_kernel, tokens, 256, 0, st, wref(emb), emb.fmt, ids, state, x, hidden);
  LAUNCHED("embed", st);
}

void launch_rmsnorm_rows(cudaStream_t st, float *out, int out_ld, const float *x, int x_ld, const float *w, int n, int rows,
                         float eps) {
  rmsnorm_rows_kernel<<<rows, 256, 0, st>>>(out, out_ld, x, x_ld, w, n, eps);
  LAUNCHED("rmsnorm_rows", st);
}

void launch_silu_mul(cudaStream_t st, float *out, int out_ld, const float *gu, int gu_ld, int inter, int rows) {
  silu_mul_kernel<<<grid_for((int64_t)rows * inter), 256, 0, st>>>(out, out_ld, gu, gu_ld, inter, rows);
  LAUNCHED("silu_mul", st);
}

void launch_argmax(cudaStream_t st, const float *logits, int n, DState *state, int advance, ArgmaxScratch s) {
  if (s.counter && n >= 2 * ARGMAX_BLOCKS) {
    launch_k(argmax_blocks_kernel, ARGMAX_BLOCKS, 256, 0, st, logits, n, state, advance, s.v, s.i, s.counter);
  } else {
    launch_k(argmax_kernel, 1, 1024, 0, st, logits, n, state, advance);
  }
  LAUNCHED("argmax", st);
}

void launch_topk(cudaStream_t st, const float *logits, int n, int k, float *scratch, float *vals, int *ids) {
  topk_kernel<<<1, 1024, 0, st>>>(logits, n, k, scratch, vals, ids);
  LAUNCHED("topk", st);
}

void launch_set_state(cudaStream_t st, DState *state, int token, int pos) {
  set_state_kernel<<<1, 1, 0, st>>>(state, token, pos);
  LAUNCHED("set_state", st);
}

void launch_route(cudaStream_t st, const float *logits, int tokens, const RouteArgs &ra, int *chosen, float *weights) {
  const size_t smem = (size_t)(2 * ra.E + ra.groups + 8) * 4;
  route_kernel<<<tokens, 32, smem, st>>>(logits, ra, chosen, weights);
  LAUNCHED("route", st);
}

void launch_dispatch(cudaStream_t st, const int *chosen, int pairs, int E, int cap, int *counts, int *list, int *slot) {
  dispatch_kernel<<<1, std::min(1024, round_up(E, 32)), 0, st>>>(chosen, pairs, E, cap, counts, list, slot);
  LAUNCHED("dispatch", st);
}

void launch_gather(cudaStream_t st, const float *h, int hidden, const int *counts, const int *list, int k, int E, int cap,
                   float *xd) {
  gather_kernel<<<dim3(cap, E), 256, 0, st>>>(h, hidden, counts, list, k, cap, xd);
  LAUNCHED("gather", st);
}

void launch_combine(cudaStream_t st, float *x, const float *add, const float *yd, const int *chosen, const float *weights,
                    const int *slot, int tokens, int k, int hidden, int cap) {
  combine_kernel<<<tokens, 256, 0, st>>>(x, add, yd, chosen, weights, slot, k, hidden, cap);
  LAUNCHED("combine", st);
}

void launch_split_bf16(cudaStream_t st, const float *x, __nv_bfloat16 *hi, __nv_bfloat16 *lo, int64_t n) {
  split_bf16_kernel<<<grid_for(n), 256, 0, st>>>(x, hi, lo, n);
  LAUNCHED("split_bf16", st);
}

void launch_dequant(cudaStream_t st, const DMat &m, int expert0, int experts, float *out) {
  WRef w = wref(m, expert0);
  dequant_kernel<<<grid_for((int64_t)experts * m.rows * m.ld), 256, 0, st>>>(w, m.fmt, m.rows, m.cols, m.ld, m.estride,
                                                                            m.sestride, experts, out);
  LAUNCHED("dequant", st);
}

void launch_convert(cudaStream_t st, const DMat &m, int expert, int64_t row0, int src_fmt, const void *src, int64_t rows,
                    int64_t cols, const float *src_scales, int br, int bc) {
  char *base = m.w + expert * m.estride + row0 * m.ldb();
  float *sbase = m.s ? m.s + expert * m.sestride + row0 * m.sld : nullptr;
  if (m.fmt == src_fmt && (src_fmt == F_F32 || src_fmt == F_BF16 || src_fmt == F_FP8)) {
    const size_t width = (size_t)cols * fmt_size(src_fmt);
    CK(cudaMemcpy2DAsync(base, (size_t)m.ldb(), src, width, width, (size_t)rows, cudaMemcpyDeviceToDevice, st));
    if (src_fmt == F_FP8) {
      if (bc != m.sblk) dw_fail("FP8 block columns differ between parts of one matrix");
      const int nbc = ceil_div((int)cols, bc);
      expand_scales_kernel<<<grid_for(rows * nbc), 256, 0, st>>>(sbase, m.sld, src_scales, rows, nbc, br);
      LAUNCHED("expand_scales", st);
    }
    return;
  }
  if (m.fmt == F_F32) {
    to_f32_kernel<<<grid_for(rows * cols), 256, 0, st>>>(reinterpret_cast<float *>(base), m.ld, src_fmt, src, rows, cols,
                                                        src_scales, br, bc);
    LAUNCHED("to_f32", st);
    return;
  }
  if (m.fmt == F_Q8) {
    const int64_t warps = rows * ((cols + 63) / 64);
    to_q8_kernel<<<grid_for(warps * 32), 256, 0, st>>>(reinterpret_cast<int8_t *>(base), m.ldb(), sbase, m.sld, src_fmt,
                                                       src, rows, cols, src_scales, br, bc);
    LAUNCHED("to_q8", st);
    return;
  }
  dw_fail(std::string("cannot store ") + fmt_name(src_fmt) + " data in a " + fmt_name(m.fmt) +
          " matrix (parts of one stacked matrix must share a dtype)");
}

void launch_random(cudaStream_t st, DMat &m, uint64_t seed) {
  const int64_t rows_total = (int64_t)m.rows * m.experts;
  const float amp = sqrtf(3.0f / (float)m.cols);  // uniform with standard deviation 1/sqrt(cols)
  random_bf16_kernel<<<grid_for(rows_total * m.cols), 256, 0, st>>>(reinterpret_cast<__nv_bfloat16 *>(m.w), rows_total,
                                                                    m.cols, m.ld, amp, seed);
  LAUNCHED("random_bf16", st);
}

void launch_spin(cudaStream_t st, unsigned long long ns) {
  spin_kernel<<<1, 1, 0, st>>>(ns);
  LAUNCHED("spin", st);
}

void launch_fill(cudaStream_t st, float *p, int64_t n, float v) {
  fill_kernel<<<grid_for(n), 256, 0, st>>>(p, n, v);
  LAUNCHED("fill", st);
}
