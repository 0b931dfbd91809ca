// Warp dot products of weight rows (any format) with an f32 vector in shared memory: each lane
// streams 8 weights per load, U loads in flight before the first use.
#pragma once
#include "common.cuh"

constexpr int DOT_U = 8;  // 16-byte loads in flight per lane (bf16: 32 registers)

__device__ __forceinline__ float dot8(const float *w, const float *xs) {
  const float4 a = *reinterpret_cast<const float4 *>(xs);
  const float4 b = *reinterpret_cast<const float4 *>(xs + 4);
  float s = w[0] * a.x;
  s = fmaf(w[1], a.y, s);
  s = fmaf(w[2], a.z, s);
  s = fmaf(w[3], a.w, s);
  s = fmaf(w[4], b.x, s);
  s = fmaf(w[5], b.y, s);
  s = fmaf(w[6], b.z, s);
  s = fmaf(w[7], b.w, s);
  return s;
}

// Prefetch the first `chunks` 8-column groups of a row into L2 (before pdl_wait: weights only).
template <int F>
__device__ __forceinline__ void prefetch_row(const char *rowp, int cols) {
  const int lane = threadIdx.x & 31;
  constexpr int esz = F == F_F32 ? 4 : F == F_BF16 ? 2 : 1;
  for (int c = lane * 8; c < cols; c += 256) prefetch_l2(rowp + (size_t)c * esz);
}

// Raw weights as loaded (converted only when used, so that many loads fit in registers).
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
    r.s = __ldg(srow + col / sblk);
  } else {
    r.u = __ldg(reinterpret_cast<const int2 *>(rowp + col));
    r.s = __ldg(srow + col / sblk);
  }
  return r;
}

// sum_k w[k] * xs[k] for the 8 weights of r.
template <int F>
__device__ __forceinline__ float dot_raw(const Raw<F> &r, const float *xs) {
  const float4 a = *reinterpret_cast<const float4 *>(xs);
  const float4 b = *reinterpret_cast<const float4 *>(xs + 4);
  if constexpr (F == F_F32) {
    float s = r.a.x * a.x;
    s = fmaf(r.a.y, a.y, s);
    s = fmaf(r.a.z, a.z, s);
    s = fmaf(r.a.w, a.w, s);
    s = fmaf(r.b.x, b.x, s);
    s = fmaf(r.b.y, b.y, s);
    s = fmaf(r.b.z, b.z, s);
    return fmaf(r.b.w, b.w, s);
  } else if constexpr (F == F_BF16) {
    float s = bf16_lo(r.u.x) * a.x;
    s = fmaf(bf16_hi(r.u.x), a.y, s);
    s = fmaf(bf16_lo(r.u.y), a.z, s);
    s = fmaf(bf16_hi(r.u.y), a.w, s);
    s = fmaf(bf16_lo(r.u.z), b.x, s);
    s = fmaf(bf16_hi(r.u.z), b.y, s);
    s = fmaf(bf16_lo(r.u.w), b.z, s);
    return fmaf(bf16_hi(r.u.w), b.w, s);
  } else {
    float w[8];
    if constexpr (F == F_FP8) {
      fp8x4_to_f32(r.u.x, w);
      fp8x4_to_f32(r.u.y, w + 4);
    } else {
#pragma unroll
      for (int i = 0; i < 4; i++) {
        w[i] = (float)(int8_t)((r.u.x >> (8 * i)) & 0xff);
        w[4 + i] = (float)(int8_t)((r.u.y >> (8 * i)) & 0xff);
      }
    }
    float s = w[0] * a.x;
    s = fmaf(w[1], a.y, s);
    s = fmaf(w[2], a.z, s);
    s = fmaf(w[3], a.w, s);
    s = fmaf(w[4], b.x, s);
    s = fmaf(w[5], b.y, s);
    s = fmaf(w[6], b.z, s);
    s = fmaf(w[7], b.w, s);
    return s * r.s;
  }
}

// Dot of one row (cols weights) with xs; the whole warp calls it and every lane gets the sum.
template <int F>
__device__ __forceinline__ float row_dot(const char *rowp, const float *srow, int sblk, const float *xs, int cols) {
  const int lane = threadIdx.x & 31;
  float acc = 0.f;
  for (int c0 = lane * 8; c0 < cols; c0 += 256 * DOT_U) {
    Raw<F> w[DOT_U];
#pragma unroll
    for (int u = 0; u < DOT_U; u++) {
      const int c = c0 + u * 256;
      if (c < cols) w[u] = load_raw<F>(rowp, srow, c, sblk);
    }
#pragma unroll
    for (int u = 0; u < DOT_U; u++) {
      const int c = c0 + u * 256;
      if (c < cols) acc += dot_raw<F>(w[u], xs + c);
    }
  }
  return warp_sum(acc);
}

// Two rows of the same matrix against the same xs (gate and up), loads interleaved.
template <int F>
__device__ __forceinline__ void row_dot2(const char *ra, const float *sa, const char *rb, const float *sb, int sblk,
                                         const float *xs, int cols, float &oa, float &ob) {
  const int lane = threadIdx.x & 31;
  float acc_a = 0.f, acc_b = 0.f;
  constexpr int V = DOT_U / 2;
  for (int c0 = lane * 8; c0 < cols; c0 += 256 * V) {
    Raw<F> wa[V], wb[V];
#pragma unroll
    for (int u = 0; u < V; u++) {
      const int c = c0 + u * 256;
      if (c < cols) {
        wa[u] = load_raw<F>(ra, sa, c, sblk);
        wb[u] = load_raw<F>(rb, sb, c, sblk);
      }
    }
#pragma unroll
    for (int u = 0; u < V; u++) {
      const int c = c0 + u * 256;
      if (c < cols) {
        acc_a += dot_raw<F>(wa[u], xs + c);
        acc_b += dot_raw<F>(wb[u], xs + c);
      }
    }
  }
  oa = warp_sum(acc_a);
  ob = warp_sum(acc_b);
}
