// Shared by every translation unit: errors and checked launches, warp reductions, the decode state.
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
#define CK(call) dw_check((call), #call, __FILE__, __LINE__)

// How launches on this thread behave right now. The ABI entry points set them from the model's
// dw_config for the length of a call (LaunchScope in model.cuh), so no launch reads the environment.
struct LaunchFlags {
  bool pdl = false;   // programmatic dependent launch (inside the decode step only)
  bool sync = false;  // synchronise and check after every launch (dw_config.sync_launches)
};
LaunchFlags &launch_flags();

// After a kernel launch: the launch error and, with launch_flags().sync, the kernel's own error
// (a synchronize after every launch outside graph capture, naming the kernel: slow, for faults).
void dw_after_launch(const char *name, cudaStream_t s, const char *file, int line);
#define LAUNCHED(name, stream) dw_after_launch((name), (stream), __FILE__, __LINE__)

// Allows `bytes` of dynamic shared memory for a kernel (no-op under 48 KB or when already allowed).
void dw_smem_limit(const void *kernel, size_t bytes);

// ---------------------------------------------------------------------------------------------
// Programmatic dependent launch (decode step only). Every kernel that can run in the decode graph
// reads nothing that an earlier kernel wrote before pdl_wait() (only weights, which never change,
// may be prefetched before it), and lets its successor launch with pdl_trigger() after the wait.
// Launched without the attribute both are no-ops.
// ---------------------------------------------------------------------------------------------
__device__ __forceinline__ void pdl_wait() { asm volatile("griddepcontrol.wait;" ::: "memory"); }
__device__ __forceinline__ void pdl_trigger() { asm volatile("griddepcontrol.launch_dependents;" ::: "memory"); }
__device__ __forceinline__ void prefetch_l2(const void *p) { asm volatile("prefetch.global.L2 [%0];" ::"l"(p)); }

template <typename... KArgs, typename... Args>
void launch_k(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t st, Args &&...args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = st;
  cudaLaunchAttribute attr[1];
  if (launch_flags().pdl) {
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
  }
  CK(cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...));
}

// ---------------------------------------------------------------------------------------------
// Warp reductions and sizes
// ---------------------------------------------------------------------------------------------
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
// Blocks of a grid-stride loop over n elements.
inline int grid_for(int64_t n, int threads = 256) {
  const int64_t b = (n + threads - 1) / threads;
  return (int)(b < 1 ? 1 : b > 65536 ? 65536 : b);
}

// ---------------------------------------------------------------------------------------------
// The step's state on the device: what a captured decode graph reads instead of kernel arguments,
// so that one graph serves every sequence, position and token.
// ---------------------------------------------------------------------------------------------
struct DState {
  int token;  // the token being fed (decode), the argmax after the step
  int pos;    // position of the step's first token; the decode argmax advances it
  int seq;    // the sequence's slot in the KV-cache pool
  int count;  // ids logged since the last set_state
  int cap;    // room in log
  int *log;   // greedy ids of dw_generate
};
