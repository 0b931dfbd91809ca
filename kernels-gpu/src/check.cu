// Errors and checked launches (common.cuh): what a failure says, and the per-call launch flags.
#include <cstring>
#include <mutex>
#include <unordered_map>
#include "common.cuh"

void dw_fail(const std::string &msg) { throw DwError(msg); }

void dw_check(cudaError_t e, const char *what, const char *file, int line) {
  if (e == cudaSuccess) return;
  const char *base = strrchr(file, '/');
  throw DwError(std::string(what) + " failed at " + (base ? base + 1 : file) + ":" + std::to_string(line) + ": " +
                cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")");
}

LaunchFlags &launch_flags() {
  static thread_local LaunchFlags f;
  return f;
}

void dw_smem_limit(const void *kernel, size_t bytes) {
  // Raised once per kernel, outside graph capture (the uncaptured first decode step sets them all).
  static std::mutex mu;
  static std::unordered_map<const void *, size_t> done;
  std::lock_guard<std::mutex> lock(mu);
  size_t &have = done[kernel];
  if (bytes <= 48 * 1024 || bytes <= have) return;
  CK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
  have = bytes;
}

void dw_after_launch(const char *name, cudaStream_t s, const char *file, int line) {
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) dw_check(e, (std::string("launch of kernel ") + name).c_str(), file, line);
  if (!launch_flags().sync) return;
  cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
  CK(cudaStreamIsCapturing(s, &cs));
  if (cs != cudaStreamCaptureStatusNone) return;
  e = cudaStreamSynchronize(s);
  if (e != cudaSuccess) dw_check(e, (std::string("kernel ") + name).c_str(), file, line);
}
