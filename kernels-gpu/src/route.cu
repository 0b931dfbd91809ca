// Prefill routing: every token routed by one warp (route.cuh, the decode step's routing), then
// the (token, expert) pairs grouped per expert on the device, so the experts' GEMMs need no host
// round trip: gather the tokens' inputs per expert, and combine the experts' outputs per token.
#include "ops.cuh"

namespace {

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

}  // namespace

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

