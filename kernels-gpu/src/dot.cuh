// The dot products of the kernels, each defined once for every weight format (format.cuh): a warp
// streams rows with each lane loading 8 weights at a time, U loads in flight before the first use
// (the role ggml's vecdotq.cuh plays). Activations are f32, in shared memory or read through L2.
#pragma once
#include "format.cuh"

constexpr int DOT_U = 8;  // 16-byte loads in flight per lane (bf16: 32 registers)

// sum_k w[k] * x[k] for x = (a, b), in the order every dot product of the library sums.
__device__ __forceinline__ float dot8(const float *w, const float4 a, const float4 b) {
  float s = w[0] * a.x;
  s = fmaf(w[1], a.y, s);
  s = fmaf(w[2], a.z, s);
  s = fmaf(w[3], a.w, s);
  s = fmaf(w[4], b.x, s);
  s = fmaf(w[5], b.y, s);
  s = fmaf(w[6], b.z, s);
  return fmaf(w[7], b.w, s);
}

// The 8 weights of r as f32 before a quantized format's scale r.s (f32 and bf16 have none).
template <int F>
__device__ __forceinline__ void raw_unscaled(const Raw<F> &r, float *w) {
  if constexpr (F == F_F32 || F == F_BF16) raw_to_f32<F>(r, w);
  else quant_to_f32(r, w);
}

// A dot8 of r's unscaled weights, scaled.
template <int F>
__device__ __forceinline__ float scaled(const Raw<F> &r, float s) {
  if constexpr (F == F_F32 || F == F_BF16) return s;
  else return s * r.s;
}

// sum_k w[k] * x[k] for the 8 weights of r and x = (a, b): dot8 of raw_unscaled, scaled (f32 and bf16
// written out, as the one-token kernels were tuned with).
template <int F>
__device__ __forceinline__ float dot_raw4(const Raw<F> &r, const float4 a, const float4 b) {
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
    raw_unscaled<F>(r, w);
    return scaled<F>(r, dot8(w, a, b));
  }
}

// sum_k w[k] * xs[k] for the 8 weights of r.
template <int F>
__device__ __forceinline__ float dot_raw(const Raw<F> &r, const float *xs) {
  const float4 a = *reinterpret_cast<const float4 *>(xs);
  const float4 b = *reinterpret_cast<const float4 *>(xs + 4);
  return dot_raw4<F>(r, a, b);
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

// Query absorption for one thread: acc[k] += sum over rows i = rg, rg + 8, ... < nope of
// W[row0 + i][col + k] * qn[i] (qn in shared memory), 8 rows' loads in flight at a time.
template <int F>
__device__ __forceinline__ void absorb_acc(const WRef &w, int64_t row0, int nope, int col, int rg, const float *qn,
                                           float *acc) {
  constexpr int AB = 8;
  for (int i0 = rg; i0 < nope; i0 += 8 * AB) {
    Raw<F> r[AB];
#pragma unroll
    for (int b = 0; b < AB; b++) {
      const int i = i0 + 8 * b;
      if (i < nope) {
        const int64_t row = row0 + i;
        r[b] = load_raw<F>(w.w + row * w.ldb, w.s ? w.s + row * w.sld : nullptr, col, w.sblk);
      }
    }
#pragma unroll
    for (int b = 0; b < AB; b++) {
      const int i = i0 + 8 * b;
      if (i < nope) {
        float v[8];
        raw_to_f32<F>(r[b], v);
        const float qi = qn[i];
#pragma unroll
        for (int k = 0; k < 8; k++) acc[k] = fmaf(v[k], qi, acc[k]);
      }
    }
  }
}

// The expert down projection for R output rows [j0, j0 + R): the activations of all slots lie
// side by side in act (slot s at s * inter8, the fixed MLP - shared experts or the dense MLP - at
// k * inter8); the 8 warps of the block split that concatenated vector, each lane streaming 2
// chunks of 8 columns for each of the R rows (2 * R loads in flight) with the activations read
// through L2 into registers; the partial sums meet in red[8][R] and thread r < R returns row r's
// sum (others return 0). base/sbase/wt: per slot, the rows' matrix, its scales, its router weight.
template <int F, int R, typename P>
__device__ __forceinline__ float down_rows(const P &p, int j0, const char *const *base, const float *const *sbase,
                                           const float *wt, float *red) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int routed = p.k * p.inter8;
  const int total = routed + (p.has_fixed ? round_up(p.finter, 8) : 0);
  const int nch = total >> 3;
  const int c_lo = warp * nch / 8, c_hi = (warp + 1) * nch / 8;
  constexpr int U = F == F_F32 ? 1 : 2;  // 2 chunks x R rows of 16-byte loads in flight
  float acc[R];
#pragma unroll
  for (int r = 0; r < R; r++) acc[r] = 0.f;
  for (int c0 = c_lo + lane; c0 < c_hi; c0 += 32 * U) {
    Raw<F> w[U][R];
    float4 xa[U], xb[U];
    float ws[U];
#pragma unroll
    for (int u = 0; u < U; u++) {
      const int c = c0 + 32 * u;
      ws[u] = 0.f;
      if (c < c_hi) {
        const int g = c * 8;
        const int s = g < routed ? g / p.inter8 : p.k;
        const int col = g - s * p.inter8;
        const bool fx = s == p.k;
        const int64_t ldb = fx ? p.fdn.ldb : p.dn.ldb;
        const int sld = fx ? p.fdn.sld : p.dn.sld;
        const int sblk = fx ? p.fdn.sblk : p.dn.sblk;
        const char *b = base[s];
        const float *sb = sbase[s];
        ws[u] = wt[s];
        xa[u] = __ldcg(reinterpret_cast<const float4 *>(p.act + g));
        xb[u] = __ldcg(reinterpret_cast<const float4 *>(p.act + g + 4));
#pragma unroll
        for (int r = 0; r < R; r++) {
          const int j = min(j0 + r, p.hidden - 1);  // rows past the end: read a real row, drop the sum
          w[u][r] = load_raw<F>(b + j * ldb, sb ? sb + (int64_t)j * sld : nullptr, col, sblk);
        }
      }
    }
#pragma unroll
    for (int u = 0; u < U; u++) {
      if (c0 + 32 * u < c_hi) {
#pragma unroll
        for (int r = 0; r < R; r++) acc[r] = fmaf(ws[u], dot_raw4<F>(w[u][r], xa[u], xb[u]), acc[r]);
      }
    }
  }
#pragma unroll
  for (int r = 0; r < R; r++) {
    const float v = warp_sum(acc[r]);
    if (lane == 0) red[warp * R + r] = v;
  }
  __syncthreads();
  float sum = 0.f;
  if (threadIdx.x < R) {
#pragma unroll
    for (int w = 0; w < 8; w++) sum += red[w * R + threadIdx.x];
  }
  return sum;
}

// ---------------------------------------------------------------------------------------------
// The batched decode step's dot products: each weight row is loaded once for all NB tokens of
// the step. Token b takes part when bit b of its mask is set.
// ---------------------------------------------------------------------------------------------

// R rows of one matrix (rowp[r], srow[r]) against NB vectors xs + b * xld (shared memory). The
// lanes' columns and the order of the sums are row_dot's, so token b's sum equals row_dot's of
// its vector bit for bit. Every lane gets every sum.
template <int F, int R, int NB>
__device__ __forceinline__ void rows_dot_nb(const char *const *rowp, const float *const *srow, int sblk,
                                            const float *xs, int xld, int cols, unsigned use, float (&out)[R][NB]) {
  const int lane = threadIdx.x & 31;
  constexpr int U = DOT_U / R > 0 ? DOT_U / R : 1;
  float acc[R][NB];
#pragma unroll
  for (int r = 0; r < R; r++)
#pragma unroll
    for (int b = 0; b < NB; b++) acc[r][b] = 0.f;
  for (int c0 = lane * 8; c0 < cols; c0 += 256 * U) {
    Raw<F> w[U][R];
#pragma unroll
    for (int u = 0; u < U; u++) {
      const int c = c0 + u * 256;
      if (c < cols) {
#pragma unroll
        for (int r = 0; r < R; r++) w[u][r] = load_raw<F>(rowp[r], srow[r], c, sblk);
      }
    }
#pragma unroll
    for (int u = 0; u < U; u++) {
      const int c = c0 + u * 256;
      if (c < cols) {
        float wf[R][8];
#pragma unroll
        for (int r = 0; r < R; r++) raw_unscaled<F>(w[u][r], wf[r]);
#pragma unroll
        for (int b = 0; b < NB; b++) {
          if (use >> b & 1u) {
            const float4 xa = *reinterpret_cast<const float4 *>(xs + b * xld + c);
            const float4 xb = *reinterpret_cast<const float4 *>(xs + b * xld + c + 4);
#pragma unroll
            for (int r = 0; r < R; r++) acc[r][b] += scaled<F>(w[u][r], dot8(wf[r], xa, xb));
          }
        }
      }
    }
  }
#pragma unroll
  for (int r = 0; r < R; r++)
#pragma unroll
    for (int b = 0; b < NB; b++) out[r][b] = warp_sum(acc[r][b]);
}

// The batched expert down projection for R output rows [j0, j0 + R), as down_rows but over the
// step's units: the distinct routed experts (unit u < nu, u.inter8 columns each) and then the fixed
// MLP (finter columns). Unit u's rows are base[u], sbase[u]; token b uses it when bit b of mask[u]
// is set, with router weight wt[u][b] and its activations at act + b * act_ld + aoff[u][b]. The 8
// warps split the units' concatenated columns; the partial sums meet in red[8][R * NB] and thread
// r * NB + b < R * NB returns row r's sum for token b (others return 0).
template <int F, int R, int NB, typename P>
__device__ __forceinline__ float down_rows_nb(const P &p, int j0, int nu, const char *const *base,
                                              const float *const *sbase, const float (*wt)[NB], const int (*aoff)[NB],
                                              const unsigned *mask, float *red) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int routed = nu * p.inter8;
  const int total = routed + (p.has_fixed ? round_up(p.finter, 8) : 0);
  const int nch = total >> 3;
  const int c_lo = warp * nch / 8, c_hi = (warp + 1) * nch / 8;
  float acc[R][NB];
#pragma unroll
  for (int r = 0; r < R; r++)
#pragma unroll
    for (int b = 0; b < NB; b++) acc[r][b] = 0.f;
  constexpr int U = F == F_F32 ? 1 : 2;  // U chunks x R rows of 16-byte loads in flight, as down_rows
  for (int c0 = c_lo + lane; c0 < c_hi; c0 += 32 * U) {
    Raw<F> w[U][R];
    int s[U], col[U], first[U];
    // The activations of each chunk's first token are loaded with the weights (most experts of a step
    // serve one token): only the others wait for a second round trip.
    float4 fa[U], fb[U];
#pragma unroll
    for (int u = 0; u < U; u++) {
      const int c = c0 + 32 * u;
      if (c < c_hi) {
        const int g = c * 8;
        s[u] = g < routed ? g / p.inter8 : nu;
        col[u] = g - s[u] * p.inter8;
        const bool fx = s[u] == nu;
        const int64_t ldb = fx ? p.fdn.ldb : p.dn.ldb;
        const int sld = fx ? p.fdn.sld : p.dn.sld;
        const int sblk = fx ? p.fdn.sblk : p.dn.sblk;
        const char *bs = base[s[u]];
        const float *sb = sbase[s[u]];
#pragma unroll
        for (int r = 0; r < R; r++) {
          const int j = min(j0 + r, p.hidden - 1);  // rows past the end: read a real row, drop the sum
          w[u][r] = load_raw<F>(bs + j * ldb, sb ? sb + (int64_t)j * sld : nullptr, col[u], sblk);
        }
        first[u] = __ffs(mask[s[u]]) - 1;
        const float *a = p.act + (int64_t)first[u] * p.act_ld + aoff[s[u]][first[u]] + col[u];
        fa[u] = __ldcg(reinterpret_cast<const float4 *>(a));
        fb[u] = __ldcg(reinterpret_cast<const float4 *>(a + 4));
      }
    }
#pragma unroll
    for (int u = 0; u < U; u++) {
      if (c0 + 32 * u < c_hi) {
        float wf[R][8];
#pragma unroll
        for (int r = 0; r < R; r++) raw_unscaled<F>(w[u][r], wf[r]);
        const unsigned m = mask[s[u]];
#pragma unroll
        for (int b = 0; b < NB; b++) {
          if (m >> b & 1u) {
            float4 xa = fa[u], xb = fb[u];
            if (b != first[u]) {
              const float *a = p.act + (int64_t)b * p.act_ld + aoff[s[u]][b] + col[u];
              xa = __ldcg(reinterpret_cast<const float4 *>(a));
              xb = __ldcg(reinterpret_cast<const float4 *>(a + 4));
            }
            const float ws = wt[s[u]][b];
#pragma unroll
            for (int r = 0; r < R; r++) acc[r][b] = fmaf(ws, scaled<F>(w[u][r], dot8(wf[r], xa, xb)), acc[r][b]);
          }
        }
      }
    }
  }
#pragma unroll
  for (int r = 0; r < R; r++)
#pragma unroll
    for (int b = 0; b < NB; b++) {
      const float v = warp_sum(acc[r][b]);
      if (lane == 0) red[warp * R * NB + r * NB + b] = v;
    }
  __syncthreads();
  float sum = 0.f;
  if (threadIdx.x < R * NB) {
#pragma unroll
    for (int w = 0; w < 8; w++) sum += red[w * R * NB + threadIdx.x];
  }
  return sum;
}
