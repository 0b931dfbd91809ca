// Weight formats on the device (the DW_FMT_* of dw_constants.h, one meaning with the wasm core's) and
// how a kernel reads them: 8 consecutive weights of a row per load, kept raw until used.
//   f32, bf16  as they are
//   q8         int8, one f32 scale per group of DW_QUANT_GROUP (32) consecutive weights of a row
//   fp8        e4m3, one f32 scale per row and block of sblk (the checkpoint's 128) columns
// Rows are padded with zeros to ld elements (a multiple of 64), so 8-element vector loads at any
// multiple of 8 below cols stay aligned and inside the row.
#pragma once
#include "common.cuh"

enum Fmt { F_F32 = DW_FMT_F32, F_BF16 = DW_FMT_BF16, F_Q8 = DW_FMT_Q8, F_FP8 = DW_FMT_FP8 };

constexpr int ROW_ALIGN = 64;  // elements

template <int F>
constexpr int elem_bytes = F == F_F32 ? 4 : F == F_BF16 ? 2 : 1;

inline bool fmt_on_device(int f) { return f == F_F32 || f == F_BF16 || f == F_Q8 || f == F_FP8; }
inline int fmt_size(int f) { return f == F_F32 ? 4 : f == F_BF16 ? 2 : 1; }
inline bool fmt_scaled(int f) { return f == F_Q8 || f == F_FP8; }
inline const char *fmt_name(int f) {
  switch (f) {
    case F_F32: return "f32";
    case F_BF16: return "bf16";
    case F_Q8: return "q8";
    case F_FP8: return "fp8";
  }
  return "?";
}
inline int dtype_size(int d) { return d == DW_DTYPE_F32 ? 4 : d == DW_DTYPE_F8_E4M3 ? 1 : 2; }
inline const char *dtype_name(int d) {
  switch (d) {
    case DW_DTYPE_F32: return "F32";
    case DW_DTYPE_BF16: return "BF16";
    case DW_DTYPE_F16: return "F16";
    case DW_DTYPE_F8_E4M3: return "F8_E4M3";
  }
  return "?";
}

// One weight matrix, or `experts` matrices of the same shape stacked (routed experts).
struct DMat {
  int fmt = -1;  // declared device format (-1: not declared)
  int rows = 0, cols = 0, ld = 0, experts = 1;
  char *w = nullptr;
  float *s = nullptr;
  int sld = 0, sblk = 0;  // scales per row, columns per scale
  int64_t estride = 0;    // bytes between experts in w
  int64_t sestride = 0;   // floats between experts in s
  int64_t loaded = 0;     // rows loaded so far (all experts), to check completeness
  int64_t ldb() const { return (int64_t)ld * fmt_size(fmt); }
  bool ok() const { return w != nullptr; }
};

// What a kernel needs to read rows of one matrix.
struct WRef {
  const char *w;
  const float *s;
  int64_t ldb;  // bytes per row
  int sld, sblk;
};
inline WRef wref(const DMat &m, int expert = 0) {
  return WRef{m.w + expert * m.estride, m.s ? m.s + expert * m.sestride : nullptr, m.ldb(), m.sld, m.sblk};
}

// Selects the template instance for a run-time format.
#define FMT_DISPATCH(fmt, F, ...)                                                \
  switch (fmt) {                                                                 \
    case F_F32: { constexpr int F = F_F32; __VA_ARGS__; } break;                 \
    case F_BF16: { constexpr int F = F_BF16; __VA_ARGS__; } break;               \
    case F_FP8: { constexpr int F = F_FP8; __VA_ARGS__; } break;                 \
    case F_Q8: { constexpr int F = F_Q8; __VA_ARGS__; } break;                   \
    default: dw_fail(std::string("unsupported weight format ") + fmt_name(fmt)); \
  }

// ---------------------------------------------------------------------------------------------
// Element conversions
// ---------------------------------------------------------------------------------------------
__device__ __forceinline__ float bf16_lo(uint32_t u) { return __uint_as_float(u << 16); }
__device__ __forceinline__ float bf16_hi(uint32_t u) { return __uint_as_float(u & 0xffff0000u); }

__device__ __forceinline__ float fp8_to_f32(uint8_t b) {
  __half_raw h = __nv_cvt_fp8_to_halfraw((__nv_fp8_storage_t)b, __NV_E4M3);
  return __half2float(__half(h));
}

__device__ __forceinline__ void fp8x4_to_f32(uint32_t u, float *o) {
  __half2_raw a = __nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)(u & 0xffff), __NV_E4M3);
  __half2_raw b = __nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)(u >> 16), __NV_E4M3);
  float2 fa = __half22float2(__half2(a));
  float2 fb = __half22float2(__half2(b));
  o[0] = fa.x; o[1] = fa.y; o[2] = fb.x; o[3] = fb.y;
}

__device__ __forceinline__ void i8x4_to_f32(uint32_t u, float *o) {
#pragma unroll
  for (int i = 0; i < 4; i++) o[i] = (float)(int8_t)((u >> (8 * i)) & 0xff);
}

// The scale of the weight at col of a scaled row: q8's group is a compile-time 32.
template <int F>
__device__ __forceinline__ float scale_at(const float *__restrict__ srow, int col, int sblk) {
  if constexpr (F == F_Q8) return __ldg(srow + col / DW_QUANT_GROUP);
  else return __ldg(srow + col / sblk);
}

// ---------------------------------------------------------------------------------------------
// Eight consecutive weights of a row, raw as loaded (converted only when used, so that many loads
// fit in registers). col is a multiple of 8.
// ---------------------------------------------------------------------------------------------
template <int F> struct Raw;
template <> struct Raw<F_F32> { float4 a, b; };
template <> struct Raw<F_BF16> { uint4 u; };
template <> struct Raw<F_FP8> { uint2 u; float s; };
template <> struct Raw<F_Q8> { int2 u; float s; };

template <int F>
__device__ __forceinline__ Raw<F> load_raw(const char *__restrict__ rowp, const float *__restrict__ srow, int col,
                                           int sblk) {
  Raw<F> r;
  if constexpr (F == F_F32) {
    const float4 *p = reinterpret_cast<const float4 *>(rowp + (size_t)col * 4);
    r.a = __ldg(p);
    r.b = __ldg(p + 1);
  } else if constexpr (F == F_BF16) {
    r.u = __ldg(reinterpret_cast<const uint4 *>(rowp + (size_t)col * 2));
  } else if constexpr (F == F_FP8) {
    r.u = __ldg(reinterpret_cast<const uint2 *>(rowp + col));
    r.s = scale_at<F>(srow, col, sblk);
  } else {
    r.u = __ldg(reinterpret_cast<const int2 *>(rowp + col));
    r.s = scale_at<F>(srow, col, sblk);
  }
  return r;
}

// The 8 weights of a quantized (fp8 or q8) r as f32, before their scale r.s.
template <int F>
__device__ __forceinline__ void quant_to_f32(const Raw<F> &r, float *o) {
  if constexpr (F == F_FP8) {
    fp8x4_to_f32(r.u.x, o);
    fp8x4_to_f32(r.u.y, o + 4);
  } else {
    i8x4_to_f32((uint32_t)r.u.x, o);
    i8x4_to_f32((uint32_t)r.u.y, o + 4);
  }
}

// The 8 weights of r as f32 (the scale applied).
template <int F>
__device__ __forceinline__ void raw_to_f32(const Raw<F> &r, float *o) {
  if constexpr (F == F_F32) {
    o[0] = r.a.x; o[1] = r.a.y; o[2] = r.a.z; o[3] = r.a.w; o[4] = r.b.x; o[5] = r.b.y; o[6] = r.b.z; o[7] = r.b.w;
  } else if constexpr (F == F_BF16) {
    o[0] = bf16_lo(r.u.x); o[1] = bf16_hi(r.u.x); o[2] = bf16_lo(r.u.y); o[3] = bf16_hi(r.u.y);
    o[4] = bf16_lo(r.u.z); o[5] = bf16_hi(r.u.z); o[6] = bf16_lo(r.u.w); o[7] = bf16_hi(r.u.w);
  } else {
    quant_to_f32(r, o);
#pragma unroll
    for (int i = 0; i < 8; i++) o[i] *= r.s;
  }
}

// Prefetch a row's first cols weights into L2 (before pdl_wait: weights only).
template <int F>
__device__ __forceinline__ void prefetch_row(const char *rowp, int cols) {
  const int lane = threadIdx.x & 31;
  for (int c = lane * 8; c < cols; c += 256) prefetch_l2(rowp + (size_t)c * elem_bytes<F>);
}

// One weight, format known at run time: for the small, irregular reads (embedding rows, dequant).
__device__ __forceinline__ float load1(int fmt, const char *rowp, const float *srow, int col, int sblk) {
  switch (fmt) {
    case F_F32: return reinterpret_cast<const float *>(rowp)[col];
    case F_BF16: return __uint_as_float((uint32_t)reinterpret_cast<const uint16_t *>(rowp)[col] << 16);
    case F_FP8: return fp8_to_f32((uint8_t)rowp[col]) * srow[col / sblk];
    default: return (float)(int8_t)rowp[col] * srow[col / DW_QUANT_GROUP];
  }
}
