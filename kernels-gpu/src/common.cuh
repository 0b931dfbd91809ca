// Shared by every translation unit: error checks, weight formats and their loads.
#pragma once
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>

#include "../include/dw_cuda.h"

// ---------------------------------------------------------------------------------------------
// Errors: every CUDA call goes through CK; a failure throws and the ABI entry point turns it into
// a negative return and dw_last_error().
// ---------------------------------------------------------------------------------------------
struct DwError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

[[noreturn]] void dw_fail(const std::string &msg);
void dw_check(cudaError_t e, const char *what, const char *file, int line);
// After a kernel launch: the launch error, and with DW_SYNC=1 in the environment the kernel's own
// error (a synchronize after every launch, naming the kernel: slow, for locating faults).
void dw_after_launch(const char *name, cudaStream_t s, const char *file, int line);

// Allows `bytes` of dynamic shared memory for a kernel (no-op under 48 KB or when already allowed).
void dw_smem_limit(const void *kernel, size_t bytes);

#define CK(call) dw_check((call), #call, __FILE__, __LINE__)

// ---------------------------------------------------------------------------------------------
// Programmatic dependent launch (decode step only). Every kernel that can run in the decode graph
// reads nothing that an earlier kernel wrote before pdl_wait() (only weights, which never change,
// may be prefetched before it), and lets its successor launch with pdl_trigger() after the wait.
// Launched without the attribute both are no-ops.
// ---------------------------------------------------------------------------------------------
__device__ __forceinline__ void pdl_wait() { asm volatile("griddepcontrol.wait;" ::: "memory"); }
__device__ __forceinline__ void pdl_trigger() { asm volatile("griddepcontrol.launch_dependents;" ::: "memory"); }
__device__ __forceinline__ void prefetch_l2(const void *p) { asm volatile("prefetch.global.L2 [%0];" ::"l"(p)); }

// Whether launches on this thread carry the programmatic-serialization attribute right now.
bool &pdl_now();

template <typename... KArgs, typename... Args>
void launch_k(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t st, Args &&...args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = st;
  cudaLaunchAttribute attr[1];
  if (pdl_now()) {
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
  }
  CK(cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...));
}
#define LAUNCHED(name, stream) dw_after_launch((name), (stream), __FILE__, __LINE__)

// ---------------------------------------------------------------------------------------------
// Weight formats on the device. Rows are padded to ld elements (a multiple of 64) with zeros, so
// 8-element vector loads at any multiple of 8 below cols stay aligned and inside the row.
// FP8 and Q8 carry one f32 scale per row and sblk columns: s[row * sld + col / sblk].
// ---------------------------------------------------------------------------------------------
enum Fmt { F_F32 = DW_F32, F_BF16 = DW_BF16, F_F16 = DW_F16, F_FP8 = DW_FP8, F_Q8 = DW_Q8 };

inline int fmt_size(int f) { return f == F_F32 ? 4 : f == F_BF16 || f == F_F16 ? 2 : 1; }
inline const char *fmt_name(int f) {
  switch (f) {
    case F_F32: return "f32";
    case F_BF16: return "bf16";
    case F_F16: return "f16";
    case F_FP8: return "fp8-e4m3";
    case F_Q8: return "q8";
  }
  return "?";
}

// One weight matrix, or `experts` matrices of the same shape stacked (routed experts).
struct DMat {
  int fmt = -1;
  int rows = 0, cols = 0, ld = 0, experts = 1;
  char *w = nullptr;
  float *s = nullptr;
  int sld = 0, sblk = 0;
  int64_t estride = 0;   // bytes between experts in w
  int64_t sestride = 0;  // floats between experts in s
  int64_t loaded = 0;    // rows loaded so far (all experts), to check completeness
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

// Eight consecutive weights of one row starting at col (a multiple of 8), widened to f32.
template <int F>
__device__ __forceinline__ void load8(const char *__restrict__ rowp, const float *__restrict__ srow, int col, int sblk,
                                      float *o) {
  if constexpr (F == F_F32) {
    const float4 *p = reinterpret_cast<const float4 *>(rowp + (size_t)col * 4);
    float4 a = __ldg(p), b = __ldg(p + 1);
    o[0] = a.x; o[1] = a.y; o[2] = a.z; o[3] = a.w; o[4] = b.x; o[5] = b.y; o[6] = b.z; o[7] = b.w;
  } else if constexpr (F == F_BF16) {
    uint4 u = __ldg(reinterpret_cast<const uint4 *>(rowp + (size_t)col * 2));
    o[0] = bf16_lo(u.x); o[1] = bf16_hi(u.x); o[2] = bf16_lo(u.y); o[3] = bf16_hi(u.y);
    o[4] = bf16_lo(u.z); o[5] = bf16_hi(u.z); o[6] = bf16_lo(u.w); o[7] = bf16_hi(u.w);
  } else if constexpr (F == F_FP8) {
    uint2 u = __ldg(reinterpret_cast<const uint2 *>(rowp + col));
    float sc = __ldg(srow + col / sblk);
    fp8x4_to_f32(u.x, o);
    fp8x4_to_f32(u.y, o + 4);
#pragma unroll
    for (int i = 0; i < 8; i++) o[i] *= sc;
  } else {  // Q8
    int2 u = __ldg(reinterpret_cast<const int2 *>(rowp + col));
    float sc = __ldg(srow + col / sblk);
#pragma unroll
    for (int i = 0; i < 4; i++) {
      o[i] = (float)(int8_t)((u.x >> (8 * i)) & 0xff) * sc;
      o[4 + i] = (float)(int8_t)((u.y >> (8 * i)) & 0xff) * sc;
    }
  }
}

// One weight, any format (fmt at run time): for the small, irregular reads.
__device__ __forceinline__ float load1(int fmt, const char *rowp, const float *srow, int col, int sblk) {
  switch (fmt) {
    case F_F32: return reinterpret_cast<const float *>(rowp)[col];
    case F_BF16: return __uint_as_float((uint32_t)reinterpret_cast<const uint16_t *>(rowp)[col] << 16);
    case F_FP8: return fp8_to_f32((uint8_t)rowp[col]) * srow[col / sblk];
    default: return (float)(int8_t)rowp[col] * srow[col / sblk];
  }
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
// Largest value, ties to the lowest index (as the CPU's argmax); every lane gets the answer.
__device__ __forceinline__ void warp_argmax(float &v, int &i) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    float ov = __shfl_xor_sync(0xffffffffu, v, o);
    int oi = __shfl_xor_sync(0xffffffffu, i, o);
    if (ov > v || (ov == v && oi < i)) {
      v = ov;
      i = oi;
    }
  }
}

__host__ __device__ inline int round_up(int x, int m) { return (x + m - 1) / m * m; }
__host__ __device__ inline int ceil_div(int x, int m) { return (x + m - 1) / m; }

// Selects the template instance for a run-time format.
#define FMT_DISPATCH(fmt, F, ...)                                       \
  switch (fmt) {                                                        \
    case F_F32: { constexpr int F = F_F32; __VA_ARGS__; } break;        \
    case F_BF16: { constexpr int F = F_BF16; __VA_ARGS__; } break;      \
    case F_FP8: { constexpr int F = F_FP8; __VA_ARGS__; } break;        \
    case F_Q8: { constexpr int F = F_Q8; __VA_ARGS__; } break;          \
    default: dw_fail(std::string("unsupported weight format ") + fmt_name(fmt)); \
  }

// Decode-step state on the device: the token being fed, its position, and a log of greedy ids.
struct DState {
  int token;
  int pos;
  int count;  // ids logged since the last set_state
  int cap;    // room in log
  int *log;
  // The one-launch decode (mega.cu): a wait that timed out (a bug, never expected) sets err, the
  // stage that waited, the stage it waited for and the counts; every later wait then gives up.
  int err, err_stage, err_dep, pad;
  unsigned long long err_have, err_need;
};

// Routing parameters (one token): as in assembly/kernels/route.ts.
struct RouteArgs {
  int E, k, groups, keep, method, scoring, normalize;
  float scale;
  const float *bias;  // may be null
};
