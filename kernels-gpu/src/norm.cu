// RMSNorm of rows (prefill); the decode kernels normalise their input as they stage it (norm.cuh).
#include "ops.cuh"

namespace {

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

}  // namespace

void launch_rmsnorm_rows(cudaStream_t st, float *out, int out_ld, const float *x, int x_ld, const float *w, int n, int rows,
                         float eps) {
  rmsnorm_rows_kernel<<<rows, 256, 0, st>>>(out, out_ld, x, x_ld, w, n, eps);
  LAUNCHED("rmsnorm_rows", st);
}

