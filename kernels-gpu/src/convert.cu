// Weights into their device format at load (f32, bf16, q8 quantised here, fp8 as stored), back to
// f32 for the prefill's cuBLAS GEMMs, random weights for benchmarks, and the bf16 split of f32
// activations.
#include "ops.cuh"

namespace {

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

// Element (r, c) of loaded data [rows, cols] of dtype DW_DTYPE_*, as f32 (FP8 with its block scale).
__device__ __forceinline__ float src_load(int dtype, const void *src, int64_t r, int64_t c, int64_t cols,
                                          const float *scales, int br, int bc) {
  const int64_t k = r * cols + c;
  switch (dtype) {
    case DW_DTYPE_F32: return reinterpret_cast<const float *>(src)[k];
    case DW_DTYPE_BF16: return __uint_as_float((uint32_t)reinterpret_cast<const uint16_t *>(src)[k] << 16);
    case DW_DTYPE_F16: return __half2float(reinterpret_cast<const __half *>(src)[k]);
    default: {
      const int64_t nbc = (cols + bc - 1) / bc;
      return fp8_to_f32(reinterpret_cast<const uint8_t *>(src)[k]) * scales[(r / br) * nbc + c / bc];
    }
  }
}

// Any dtype -> f32 or bf16 (rounded to nearest even) rows of the destination.
template <typename T>
__global__ void to_float_kernel(T *dst, int ld, int dtype, const void *src, int64_t rows, int64_t cols,
                                const float *scales, int br, int bc) {
  const int64_t total = rows * cols;
  for (int64_t k = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; k < total; k += (int64_t)gridDim.x * blockDim.x) {
    const int64_t r = k / cols, c = k % cols;
    const float v = src_load(dtype, src, r, c, cols, scales, br, bc);
    if constexpr (sizeof(T) == 4) dst[r * ld + c] = v;
    else dst[r * ld + c] = __float2bfloat16_rn(v);
  }
}

// Any dtype -> q8 by docs/quantized-format.md's rule, as assembly/kernels/quantize.ts computes it:
// per group of 32 consecutive values of a row, d = max|v| / 127 and q = nearest(v * (127 / max|v|))
// in f32, halves to even; a group of zeros has d = 0. One warp per (row, group), a value per lane.
__global__ void to_q8_kernel(int8_t *dst, int64_t ldb, float *dst_s, int sld, int dtype, const void *src, int64_t rows,
                             int64_t cols, const float *scales, int br, int bc) {
  const int lane = threadIdx.x & 31;
  const int64_t groups = (cols + DW_QUANT_GROUP - 1) / DW_QUANT_GROUP;
  const int64_t total = rows * groups;
  for (int64_t w = (blockIdx.x * (int64_t)blockDim.x + threadIdx.x) >> 5; w < total;
       w += ((int64_t)gridDim.x * blockDim.x) >> 5) {
    const int64_t r = w / groups, g = w % groups;
    const int64_t c = g * DW_QUANT_GROUP + lane;
    const float v = c < cols ? src_load(dtype, src, r, c, cols, scales, br, bc) : 0.f;
    const float amax = warp_max(fabsf(v));
    const float id = amax > 0.f ? 127.f / amax : 0.f;
    if (c < cols) dst[r * ldb + c] = (int8_t)rintf(v * id);
    if (lane == 0) dst_s[r * sld + g] = amax > 0.f ? amax / 127.f : 0.f;
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

__global__ void random_bf16_kernel(__nv_bfloat16 *w, int64_t n, float amp, uint64_t seed, int64_t k0) {
  for (int64_t k = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; k < n; k += (int64_t)gridDim.x * blockDim.x) {
    const uint64_t h = mix64(seed + 0x9e3779b97f4a7c15ull * (uint64_t)(k0 + k + 1));
    const float u = (float)(h >> 40) * (1.0f / 16777216.0f);  // [0, 1)
    w[k] = __float2bfloat16_rn((2.f * u - 1.f) * amp);
  }
}

__global__ void fill_kernel(float *p, int64_t n, float v) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) p[i] = v;
}

}  // namespace

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

void launch_convert(cudaStream_t st, const DMat &m, int expert, int64_t row0, int dtype, const void *src, int64_t rows,
                    int64_t cols, const float *src_scales, int br, int bc) {
  char *base = m.w + expert * m.estride + row0 * m.ldb();
  float *sbase = m.s ? m.s + expert * m.sestride + row0 * m.sld : nullptr;
  const bool same = (m.fmt == F_F32 && dtype == DW_DTYPE_F32) || (m.fmt == F_BF16 && dtype == DW_DTYPE_BF16) ||
                    (m.fmt == F_FP8 && dtype == DW_DTYPE_F8_E4M3);
  if (same) {
    const size_t width = (size_t)cols * dtype_size(dtype);
    CK(cudaMemcpy2DAsync(base, (size_t)m.ldb(), src, width, width, (size_t)rows, cudaMemcpyDeviceToDevice, st));
    if (m.fmt == F_FP8) {
      if (bc != m.sblk) dw_fail("FP8 block columns differ between parts of one matrix");
      const int nbc = ceil_div((int)cols, bc);
      expand_scales_kernel<<<grid_for(rows * nbc), 256, 0, st>>>(sbase, m.sld, src_scales, rows, nbc, br);
      LAUNCHED("expand_scales", st);
    }
    return;
  }
  const int blocks = grid_for(rows * cols);
  switch (m.fmt) {
    case F_F32:
      to_float_kernel<<<blocks, 256, 0, st>>>(reinterpret_cast<float *>(base), m.ld, dtype, src, rows, cols, src_scales,
                                              br, bc);
      break;
    case F_BF16:
      to_float_kernel<<<blocks, 256, 0, st>>>(reinterpret_cast<__nv_bfloat16 *>(base), m.ld, dtype, src, rows, cols,
                                              src_scales, br, bc);
      break;
    case F_Q8: {
      const int64_t warps = rows * ((cols + DW_QUANT_GROUP - 1) / DW_QUANT_GROUP);
      to_q8_kernel<<<grid_for(warps * 32), 256, 0, st>>>(reinterpret_cast<int8_t *>(base), m.ldb(), sbase, m.sld, dtype,
                                                         src, rows, cols, src_scales, br, bc);
      break;
    }
    default:
      dw_fail(std::string("fp8 weights are kept only from F8_E4M3 data, not ") + dtype_name(dtype));
  }
  LAUNCHED("convert", st);
}

void launch_random_bf16(cudaStream_t st, __nv_bfloat16 *out, int64_t rows, int cols, uint64_t seed, int64_t k0) {
  const float amp = sqrtf(3.0f / (float)cols);  // uniform with standard deviation 1/sqrt(cols)
  random_bf16_kernel<<<grid_for(rows * cols), 256, 0, st>>>(out, rows * cols, amp, seed, k0);
  LAUNCHED("random_bf16", st);
}

void launch_fill(cudaStream_t st, float *p, int64_t n, float v) {
  fill_kernel<<<grid_for(n), 256, 0, st>>>(p, n, v);
  LAUNCHED("fill", st);
}
