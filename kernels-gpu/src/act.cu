// SwiGLU's activation over rows of [gate | up] (prefill): silu(gate) * up.
#include "ops.cuh"

namespace {

__global__ void silu_mul_kernel(float *out, int out_ld, const float *gu, int gu_ld, int inter, int rows) {
  const int64_t total = (int64_t)rows * inter;
  for (int64_t k = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; k < total; k += (int64_t)gridDim.x * blockDim.x) {
    const int64_t r = k / inter;
    const int i = (int)(k % inter);
    const float g = gu[r * gu_ld + i], u = gu[r * gu_ld + inter + i];
    out[r * out_ld + i] = g / (1.f + expf(-g)) * u;
  }
}

}  // namespace

void launch_silu_mul(cudaStream_t st, float *out, int out_ld, const float *gu, int gu_ld, int inter, int rows) {
  silu_mul_kernel<<<grid_for((int64_t)rows * inter), 256, 0, st>>>(out, out_ld, gu, gu_ld, inter, rows);
  LAUNCHED("silu_mul", st);
}

