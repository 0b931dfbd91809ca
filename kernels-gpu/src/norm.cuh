// RMSNorm of an input vector on its way into shared memory, where the dot kernels read it.
#pragma once
#include "common.cuh"

// x.x^2 + y^2 + z^2 + w^2, as every staging sums its squares.
__device__ __forceinline__ float sq4(const float4 v) { return v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w; }

// Stages x (cols floats; the buffer is zero-padded to a multiple of 8) in shared memory, RMS-
// normalised with norm when given: xs = x * (1 / rms) * norm. Every load of a thread is issued
// before the first use (16-byte loads through L2 when cols % 4 == 0). NT threads; ends with a
// barrier. (The batched step stages its tokens with batch.cu's stage_tokens, in the same order.)
template <int NT>
__device__ void stage_rms(float *xs, const float *x, const float *norm, float eps, int cols) {
  __shared__ float red[NT / 32];
  const int n8 = round_up(cols, 8);
  float ss = 0.f;
  if ((cols & 3) == 0) {
    const int n4 = n8 >> 2;
    const float4 *x4 = reinterpret_cast<const float4 *>(x);
    float4 *xs4 = reinterpret_cast<float4 *>(xs);
    constexpr int B = 4;
    for (int i0 = threadIdx.x; i0 < n4; i0 += NT * B) {
      float4 v[B];
#pragma unroll
      for (int b = 0; b < B; b++) {
        const int i = i0 + b * NT;
        v[b] = i < n4 ? __ldcg(x4 + i) : make_float4(0.f, 0.f, 0.f, 0.f);
      }
#pragma unroll
      for (int b = 0; b < B; b++) {
        const int i = i0 + b * NT;
        if (i < n4) {
          xs4[i] = v[b];
          ss += sq4(v[b]);
        }
      }
    }
  } else {
    for (int i = threadIdx.x; i < n8; i += NT) {
      const float v = i < cols ? __ldcg(x + i) : 0.f;
      xs[i] = v;
      ss += v * v;
    }
  }
  if (norm) {
    ss = warp_sum(ss);
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = ss;
    __syncthreads();
    float tot = 0.f;
#pragma unroll
    for (int w = 0; w < NT / 32; w++) tot += red[w];
    const float inv = 1.0f / sqrtf(tot / (float)cols + eps);
    if ((cols & 3) == 0) {
      const float4 *n4p = reinterpret_cast<const float4 *>(norm);
      float4 *xs4 = reinterpret_cast<float4 *>(xs);
      for (int i = threadIdx.x; i < (cols >> 2); i += NT) {
        const float4 w = __ldg(n4p + i);
        float4 v = xs4[i];
        v.x = v.x * inv * w.x;
        v.y = v.y * inv * w.y;
        v.z = v.z * inv * w.z;
        v.w = v.w * inv * w.w;
        xs4[i] = v;
      }
    } else {
      for (int i = threadIdx.x; i < cols; i += NT) xs[i] = xs[i] * inv * norm[i];
    }
  }
  __syncthreads();
}
