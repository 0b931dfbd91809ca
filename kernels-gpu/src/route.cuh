// Mixture-of-experts routing of one token by one warp, exactly as assembly/kernels/route.ts:
// scores by softmax or sigmoid; choice = score + correction bias; for group-limited methods the
// weakest groups are dropped (group score: best choice, or the sum of the two best for noaux_tc);
// top-k by choice, ties to the lowest index; weights are the unbiased scores, normalised to sum 1
// when asked, times routed_scaling_factor.
#pragma once
#include "common.cuh"

// Routing parameters (one token): config.json's, as dw_config holds them.
struct RouteArgs {
  int E, k, groups, keep, method /* DW_ROUTE_* */, scoring /* DW_SCORE_* */, normalize;
  float scale;
  const float *bias;  // e_score_correction_bias, or null
};

// logits: E floats (read through L2: other blocks of the same launch may have written them).
// sc, ch: E floats of scratch each, gs: `groups` floats (shared memory of the calling block).
__device__ inline void route_warp(const float *logits, const RouteArgs &a, float *sc, float *ch, float *gs,
                                  int *out_e, float *out_w) {
  const int lane = threadIdx.x & 31;
  const int E = a.E;
  if (a.scoring == DW_SCORE_SIGMOID) {
    for (int e = lane; e < E; e += 32) sc[e] = 1.f / (1.f + expf(-__ldcg(logits + e)));
  } else {
    float m = -INFINITY;
    for (int e = lane; e < E; e += 32) m = fmaxf(m, __ldcg(logits + e));
    m = warp_max(m);
    float sum = 0.f;
    for (int e = lane; e < E; e += 32) {
      float v = expf(__ldcg(logits + e) - m);
      sc[e] = v;
      sum += v;
    }
    sum = warp_sum(sum);
    for (int e = lane; e < E; e += 32) sc[e] = sc[e] / sum;
  }
  for (int e = lane; e < E; e += 32) ch[e] = sc[e] + (a.bias ? a.bias[e] : 0.f);
  __syncwarp();
  if (a.method != DW_ROUTE_GREEDY && a.groups > 1) {
    const int per = E / a.groups;
    for (int g = lane; g < a.groups; g += 32) {
      float best = -INFINITY, second = -INFINITY;
      for (int i = 0; i < per; i++) {
        float v = ch[g * per + i];
        if (v > best) {
          second = best;
          best = v;
        } else if (v > second) {
          second = v;
        }
      }
      gs[g] = a.method == DW_ROUTE_NOAUX_TC ? (per > 1 ? best + second : best) : best;
    }
    __syncwarp();
    if (lane == 0) {
      for (int d = 0; d < a.groups - a.keep; d++) {
        int gi = 0;
        float v = gs[0];
        for (int g = 1; g < a.groups; g++)
          if (gs[g] < v) {
            v = gs[g];
            gi = g;
          }
        gs[gi] = INFINITY;
        for (int e = gi * per; e < (gi + 1) * per; e++) ch[e] = -INFINITY;
      }
    }
    __syncwarp();
  }
  float sum = 0.f, myw = 0.f;
  int mye = 0;
  for (int j = 0; j < a.k; j++) {
    float v = -INFINITY;
    int idx = 0x7fffffff;
    for (int e = lane; e < E; e += 32) {
      float c = ch[e];
      if (idx == 0x7fffffff || c > v) {
        v = c;
        idx = e;
      }
    }
    warp_argmax(v, idx);
    const float w = sc[idx];
    __syncwarp();
    if (lane == 0) ch[idx] = -INFINITY;
    __syncwarp();
    if (lane == j) {
      mye = idx;
      myw = w;
    }
    sum += w;
  }
  const float f = a.normalize ? a.scale / (sum + 1e-20f) : a.scale;
  if (lane < a.k) {
    out_e[lane] = mye;
    out_w[lane] = myw * f;
  }
}
