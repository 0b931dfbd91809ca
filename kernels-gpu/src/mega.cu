// Every layer of a decode step in one launch: a dataflow over tickets.
//
// The host (model.cu, build_mega) lists the step's stages in the order of the forward pass, each a
// number of independent work items for one block of 256 threads:
//   GEMV    rows of one or two matrices over an (RMS-normalised) input: q|kv_a, q_b, o_proj
//   ABSORB  q_abs = W_UK^T q_nope for 256 latent columns of one head; one more item writes the
//           token's cache row (normalised latent, roped key)
//   ATTN    flash-decoding over one split of the positions for one head
//   UV      merge of one head's splits, then rows of W_UV
//   ROUTER  router rows; the last router item to finish routes the token (route.cuh)
//   GATEUP  silu(gate) * up rows of the shared experts, the dense MLP, or one chosen expert
//   DOWN    MEGA_DOWN_ROWS output rows over every slot (chosen experts weighted, shared experts),
//           added to the residual stream
// A block takes a ticket from a counter; ticket t runs item t of the concatenated list. It
// prefetches its weights into L2 with the bulk-copy engine, waits until the stages it reads are
// complete (per-stage counters), computes, and adds one to its stage's counter. Tickets are taken
// when blocks start, so a block waits only for items that have started: no deadlock, at any
// occupancy. Counters only grow (a step adds `target` to each, and tickets / total is the step's
// epoch), so nothing is reset between steps or graph replays.
//
// Everything an earlier item of the same launch wrote is read through L2 (ld.global.cg): another
// multiprocessor wrote it, and L1 is not coherent. Weights, norms and rope tables never change.
#include "kernels.cuh"
#include "route.cuh"
#include "dot.cuh"
#include <type_traits>

namespace {

constexpr int WARPS = MEGA_THREADS / 32;
constexpr int MAXJ = 20;  // latent <= 640
constexpr int DN_R = MEGA_DOWN_ROWS;

__device__ __forceinline__ unsigned long long now_ns() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}
// Polling load (no L1 invalidation per poll); the waiter fences once it sees the count.
__device__ __forceinline__ unsigned long long ld_relaxed(const unsigned long long *p) {
  unsigned long long v;
  asm volatile("ld.relaxed.gpu.global.u64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");
  return v;
}
__device__ __forceinline__ int ld_volatile(const int *p) { return *(const volatile int *)p; }

// L2 prefetch of [p, p + bytes) with the bulk-copy engine: chunks of 4 KB over the block's threads.
// p must be 16-byte aligned; the size is rounded up to 16 (every range here ends inside its
// allocation rounded up to 16 bytes: rows are multiples of 64 bytes, scale arrays are padded).
// evict_first: mark the lines first to go (data read once, right away: the routed experts' gate/up).
__device__ __forceinline__ void block_prefetch(const void *p, int64_t bytes, bool evict_first = false) {
  constexpr int CH = 4096;
  const char *c = static_cast<const char *>(p);
  uint64_t pol = 0;
  if (evict_first) asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(pol));
  for (int64_t off = (int64_t)threadIdx.x * CH; off < bytes; off += (int64_t)MEGA_THREADS * CH) {
    const int64_t left = bytes - off;
    const uint32_t n = ((uint32_t)(left < CH ? left : CH) + 15u) & ~15u;
    if (evict_first)
      asm volatile("cp.async.bulk.prefetch.L2.global.L2::cache_hint [%0], %1, %2;" ::"l"(c + off), "r"(n), "l"(pol)
                   : "memory");
    else
      asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(c + off), "r"(n) : "memory");
  }
}
// Rows [r0, r1) of a weight matrix (and their scales).
__device__ __forceinline__ void prefetch_rows(const char *w, const float *s, int64_t ldb, int sld, int64_t r0,
                                              int64_t r1, bool evict_first = false) {
  if (r1 <= r0) return;
  block_prefetch(w + r0 * ldb, (r1 - r0) * ldb, evict_first);
  if (s) {
    // 16-byte aligned start (the allocation itself is 256-aligned)
    const float *a = s + r0 * sld;
    const uintptr_t lo = reinterpret_cast<uintptr_t>(a) & ~(uintptr_t)15;
    const uintptr_t hi = reinterpret_cast<uintptr_t>(s + r1 * sld);
    block_prefetch(reinterpret_cast<const void *>(lo), (int64_t)(hi - lo), evict_first);
  }
}

// x (zero-padded to a multiple of 8) into shared memory through L2, RMS-normalised with norm when
// given (dot.cuh). Ends with a barrier.
__device__ __forceinline__ void stage_vec(float *xs, const float *x, const float *norm, float eps, int cols) {
  stage_rms<MEGA_THREADS>(xs, x, norm, eps, cols);
}

__device__ __forceinline__ const float *srow_of(const WRef &w, int64_t row) {
  return w.s ? w.s + row * w.sld : nullptr;
}

// Calls fn(std::integral_constant<int, F>) for the weight format: fixed at compile time (FIX >= 0)
// or dispatched at run time.
template <int FIX, typename Fn>
__device__ __forceinline__ void with_fmt(int fmt, Fn &&fn) {
  if constexpr (FIX >= 0) {
    fn(std::integral_constant<int, FIX>{});
  } else {
    switch (fmt) {
      case F_F32: fn(std::integral_constant<int, F_F32>{}); break;
      case F_BF16: fn(std::integral_constant<int, F_BF16>{}); break;
      case F_FP8: fn(std::integral_constant<int, F_FP8>{}); break;
      default: fn(std::integral_constant<int, F_Q8>{}); break;
    }
  }
}

// ---- GEMV / ROUTER ------------------------------------------------------------------------------
__device__ __forceinline__ int gemv_seg_of(const GemvParams &p, int item) {
  int si = 0;
  while (si + 1 < p.nseg && item >= p.seg[si + 1].block0) si++;
  return si;
}

__device__ void gemv_prefetch(const GemvParams &p, int item) {
  const GemvSeg &sg = p.seg[gemv_seg_of(p, item)];
  const int64_t r0 = (int64_t)(item - sg.block0) * WARPS * p.rpw;
  const int64_t r1 = std::min<int64_t>(r0 + WARPS * p.rpw, sg.rows);
  prefetch_rows(sg.w.w, sg.w.s, sg.w.ldb, sg.w.sld, r0, r1);
}

template <int FIX>
__device__ void gemv_item(const GemvParams &p, int item, float *xs) {
  const GemvSeg &sg = p.seg[gemv_seg_of(p, item)];
  stage_vec(xs, p.x, p.norm, p.eps, p.cols);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int r0 = ((item - sg.block0) * WARPS + warp) * p.rpw;
  const int r1 = min(r0 + p.rpw, sg.rows);
  with_fmt<FIX>(sg.fmt, [&](auto fc) {
    constexpr int F = decltype(fc)::value;
    for (int r = r0; r < r1; r++) {
      const float d = row_dot<F>(sg.w.w + r * sg.w.ldb, srow_of(sg.w, r), sg.w.sblk, xs, p.cols);
      if (lane == 0) sg.y[r] = sg.add ? __ldcg(sg.y + r) + d : d;
    }
  });
}

// Router rows (one per warp); the last router item to finish routes the token. Returns whether
// this item routed (only that one counts as the stage's completion).
template <int FIX>
__device__ bool router_item(const GemvParams &p, int item, int nitems, float *sm, unsigned long long *aux) {
  __shared__ int last;
  const GemvSeg &sg = p.seg[0];
  stage_vec(sm, p.x, p.norm, p.eps, p.cols);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int r = item * WARPS + warp;
  if (r < sg.rows) {
    with_fmt<FIX>(sg.fmt, [&](auto fc) {
      constexpr int F = decltype(fc)::value;
      const float d = row_dot<F>(sg.w.w + r * sg.w.ldb, srow_of(sg.w, r), sg.w.sblk, sm, p.cols);
      if (lane == 0) sg.y[r] = d;
    });
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence();
    const unsigned long long old = atomicAdd(aux, 1ull);
    last = (old + 1) % (unsigned long long)nitems == 0;
  }
  __syncthreads();
  if (!last) return false;
  __threadfence();
  float *sc = sm + round_up(p.cols, 8);
  float *ch = sc + p.ra.E;
  float *gs = ch + p.ra.E;
  if (warp == 0) route_warp(sg.y, p.ra, sc, ch, gs, p.chosen, p.weights);
  return true;
}

// ---- MLA ----------------------------------------------------------------------------------------
__device__ __forceinline__ float rope_q_cg(const MlaParams &p, const float *qh, int j, int pos) {
  const int half = p.rope / 2, i = j >> 1;
  const float c = p.cos[(int64_t)pos * half + i], s = p.sin[(int64_t)pos * half + i];
  const float a = __ldcg(qh + p.nope + 2 * i), b = __ldcg(qh + p.nope + 2 * i + 1);
  return (j & 1) ? a * s + b * c : a * c - b * s;
}

// The token's cache row: the normalised latent, then the roped shared key (mla.cu's twin).
__device__ void cache_row_item(const MlaParams &p, int pos) {
  __shared__ float red[WARPS];
  const int half = p.rope / 2;
  const float *cs = p.cos + (int64_t)pos * half;
  const float *sn = p.sin + (int64_t)pos * half;
  const float *kv = p.kv;
  float *row = p.cache + (int64_t)pos * (p.rank + p.rope);
  float ss = 0.f;
  for (int i = threadIdx.x; i < p.rank; i += MEGA_THREADS) {
    const float v = __ldcg(kv + i);
    ss += v * v;
  }
  ss = warp_sum(ss);
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = ss;
  __syncthreads();
  float tot = 0.f;
  for (int w = 0; w < WARPS; w++) tot += red[w];
  const float inv = 1.0f / sqrtf(tot / (float)p.rank + p.eps);
  for (int i = threadIdx.x; i < p.rank; i += MEGA_THREADS) row[i] = __ldcg(kv + i) * inv * p.kv_norm[i];
  for (int i = threadIdx.x; i < half; i += MEGA_THREADS) {
    const float a = __ldcg(kv + p.rank + 2 * i), b = __ldcg(kv + p.rank + 2 * i + 1);
    row[p.rank + 2 * i] = a * cs[i] - b * sn[i];
    row[p.rank + 2 * i + 1] = a * sn[i] + b * cs[i];
  }
}

__device__ void absorb_prefetch(const MlaParams &p, int item) {
  const int ncb = ceil_div(p.rank, 256);
  const int h = item / ncb, cb = item % ncb;
  if (h >= p.heads || cb != 0) return;
  // the head's whole block of kv_b: W_UK (read here) and W_UV (read by the UV items)
  const int64_t r0 = (int64_t)h * (p.nope + p.v);
  prefetch_rows(p.kvb.w, p.kvb.s, p.kvb.ldb, p.kvb.sld, r0, r0 + p.nope + p.v);
}

// absorb_kernel of mla.cu for one (head, 256 columns), or the cache row.
template <int FIX>
__device__ void absorb_item(const MlaParams &p, int item, float *sm) {
  const int ncb = ceil_div(p.rank, 256);
  const int h = item / ncb, cb = item % ncb;
  const int pos = __ldcg(p.pos);
  if (h >= p.heads) {
    cache_row_item(p, pos);
    return;
  }
  float *red = sm;          // [8][256]
  float *qn = sm + 8 * 256;  // [nope]
  const int cg = threadIdx.x & 31, rg = threadIdx.x >> 5;
  const int col = cb * 256 + cg * 8;
  const int64_t row0 = (int64_t)h * (p.nope + p.v);
  const int latent = p.rank + p.rope;
  const float *qh = p.q + h * (p.nope + p.rope);
  for (int i = threadIdx.x; i < p.nope; i += MEGA_THREADS) qn[i] = __ldcg(qh + i);
  __syncthreads();
  float acc[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
  if (col < p.rank) {
    with_fmt<FIX>(p.kvb_fmt, [&](auto fc) {
      constexpr int F = decltype(fc)::value;
      absorb_acc<F>(p.kvb, row0, p.nope, col, rg, qn, acc);
    });
  }
  float4 *dst = reinterpret_cast<float4 *>(&red[rg * 256 + cg * 8]);
  dst[0] = make_float4(acc[0], acc[1], acc[2], acc[3]);
  dst[1] = make_float4(acc[4], acc[5], acc[6], acc[7]);
  __syncthreads();
  float *out = p.qabs + (int64_t)h * latent;
  const int r = cb * 256 + threadIdx.x;
  if (r < p.rank) {
    float s = 0.f;
#pragma unroll
    for (int g = 0; g < 8; g++) s += red[g * 256 + threadIdx.x];
    out[r] = s;
  }
  if (cb == 0 && threadIdx.x < p.rope) out[p.rank + threadIdx.x] = rope_q_cg(p, qh, threadIdx.x, pos);
}

__device__ __forceinline__ void attn_range(const MlaParams &p, int split, int n, int &s0, int &s1) {
  const int chunk = ceil_div(n, p.nsplit);
  s0 = split * chunk;
  s1 = min(n, s0 + chunk);
}

__device__ void attn_prefetch(const MlaParams &p, int item) {
  const int split = item % p.nsplit;
  const int pos = __ldcg(p.pos);  // written before this launch
  int s0, s1;
  attn_range(p, split, pos + 1, s0, s1);
  s1 = min(s1, pos);  // the current row is written in this launch
  const int latent = p.rank + p.rope;
  if (s1 <= s0) return;
  const uintptr_t lo = reinterpret_cast<uintptr_t>(p.cache + (int64_t)s0 * latent) & ~(uintptr_t)15;
  const uintptr_t hi = reinterpret_cast<uintptr_t>(p.cache + (int64_t)s1 * latent);  // row pos and on: still inside
  block_prefetch(reinterpret_cast<const void *>(lo), (int64_t)(hi - lo));
}

// attn_kernel of mla.cu with 8 warps, the query in shared memory.
__device__ void attn_item(const MlaParams &p, int item, float *sm) {
  __shared__ float smx[WARPS], slx[WARPS];
  const int h = item / p.nsplit, split = item % p.nsplit;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int latent = p.rank + p.rope;
  float *qs = sm;                             // [latent]
  float *sacc = sm + round_up(latent, 4);     // [WARPS][rank]
  const int n = __ldcg(p.pos) + 1;
  int s0, s1;
  attn_range(p, split, n, s0, s1);
  const float *qa = p.qabs + (int64_t)h * latent;
  for (int i = threadIdx.x; i < latent; i += MEGA_THREADS) qs[i] = __ldcg(qa + i);
  __syncthreads();
  // The warp's accumulator lives in its row of sacc (each lane owns columns lane + 32 j).
  float *acc = sacc + warp * p.rank;
  for (int d = lane; d < p.rank; d += 32) acc[d] = 0.f;
  float m = -INFINITY, l = 0.f;
  for (int s = s0 + warp; s < s1; s += WARPS) {
    const float *c = p.cache + (int64_t)s * latent;
    float cv[MAXJ];
#pragma unroll
    for (int j = 0; j < MAXJ; j++) {
      const int d = lane + 32 * j;
      cv[j] = d < latent ? __ldcg(c + d) : 0.f;
    }
    float dot = 0.f;
#pragma unroll
    for (int j = 0; j < MAXJ; j++) {
      const int d = lane + 32 * j;
      if (d < latent) dot = fmaf(qs[d], cv[j], dot);
    }
    const float score = warp_sum(dot) * p.scale;
    const float mn = fmaxf(m, score);
    const float corr = expf(m - mn);
    const float e = expf(score - mn);
    l = l * corr + e;
#pragma unroll
    for (int j = 0; j < MAXJ; j++) {
      const int d = lane + 32 * j;
      if (d < p.rank) acc[d] = fmaf(e, cv[j], acc[d] * corr);
    }
    m = mn;
  }
  if (lane == 0) {
    smx[warp] = m;
    slx[warp] = l;
  }
  __syncthreads();
  float M = -INFINITY;
  for (int w = 0; w < WARPS; w++)
    if (slx[w] > 0.f) M = fmaxf(M, smx[w]);
  float f[WARPS], L = 0.f;
#pragma unroll
  for (int w = 0; w < WARPS; w++) {
    f[w] = slx[w] > 0.f ? expf(smx[w] - M) : 0.f;
    L += f[w] * slx[w];
  }
  float *out = p.part + ((int64_t)h * p.nsplit + split) * (p.rank + 2);
  if (threadIdx.x == 0) {
    out[0] = M;
    out[1] = L;
  }
  for (int r = threadIdx.x; r < p.rank; r += MEGA_THREADS) {
    float o = 0.f;
#pragma unroll
    for (int w = 0; w < WARPS; w++) o += f[w] * sacc[w * p.rank + r];
    out[2 + r] = o;
  }
}

// UV items: heads x ceil(v / (8 * rpw)); p.tokens carries rpw (rows of W_UV per warp).
__device__ void uv_prefetch(const MlaParams &p, int item) {
  const int rpw = p.tokens, nvb = ceil_div(p.v, WARPS * rpw);
  const int h = item / nvb, vb = item % nvb;
  const int j0 = vb * WARPS * rpw, j1 = min(j0 + WARPS * rpw, p.v);
  const int64_t base = (int64_t)h * (p.nope + p.v) + p.nope;
  prefetch_rows(p.kvb.w, p.kvb.s, p.kvb.ldb, p.kvb.sld, base + j0, base + j1);
}

template <int FIX>
__device__ void uv_item(const MlaParams &p, int item, float *sm) {
  __shared__ float fs[32];
  const int rpw = p.tokens, nvb = ceil_div(p.v, WARPS * rpw);
  const int h = item / nvb, vb = item % nvb;
  const int r8 = round_up(p.rank, 8);
  float *olat = sm;  // [r8]
  const float *part = p.part + (int64_t)h * p.nsplit * (p.rank + 2);
  // The splits' scales once (nsplit <= 32), then a weighted sum with independent loads.
  if (threadIdx.x < 32) {
    const int i = threadIdx.x;
    const float li = i < p.nsplit ? __ldcg(part + (int64_t)i * (p.rank + 2) + 1) : 0.f;
    const float mi = i < p.nsplit ? __ldcg(part + (int64_t)i * (p.rank + 2)) : -INFINITY;
    const float M = warp_max(li > 0.f ? mi : -INFINITY);
    const float e = li > 0.f ? expf(mi - M) : 0.f;
    const float L = warp_sum(e * li);
    fs[i] = e / L;
  }
  __syncthreads();
  for (int r = threadIdx.x; r < r8; r += MEGA_THREADS) {
    float o = 0.f;
    if (r < p.rank) {
#pragma unroll 8
      for (int i = 0; i < p.nsplit; i++) o += fs[i] * __ldcg(part + (int64_t)i * (p.rank + 2) + 2 + r);
    }
    olat[r] = o;
  }
  __syncthreads();
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int j0 = (vb * WARPS + warp) * rpw, j1 = min(j0 + rpw, p.v);
  with_fmt<FIX>(p.kvb_fmt, [&](auto fc) {
    constexpr int F = decltype(fc)::value;
    for (int j = j0; j < j1; j++) {
      const int64_t row = (int64_t)h * (p.nope + p.v) + p.nope + j;
      const float d = row_dot<F>(p.kvb.w + row * p.kvb.ldb, srow_of(p.kvb, row), p.kvb.sblk, olat, p.rank);
      if (lane == 0) p.out[(int64_t)h * p.v + j] = d;
    }
  });
}

// ---- experts ------------------------------------------------------------------------------------
// GATEUP items: with p.k > 0 the chosen experts (slot = item / bps_r), else the fixed MLP (shared
// experts or the dense MLP) writing at act + fixed_off. Rows per warp: p.rpw.
struct GuRows {
  const char *W;
  const float *S;
  int I, r0, r1;  // the item's pairs [r0, r1)
  float *out;
  int64_t ldb;
  int sld, sblk;
};

__device__ __forceinline__ GuRows gateup_rows(const MoeParams &p, int item) {
  GuRows g;
  int chunk;
  if (p.k > 0) {
    const int slot = item / p.bps_r;
    chunk = item % p.bps_r;
    const int e = __ldcg(p.chosen + slot);
    g.W = p.gu.w + e * p.gu_estride;
    g.S = p.gu.s ? p.gu.s + e * p.gu_sestride : nullptr;
    g.I = p.inter;
    g.out = p.act + slot * p.inter8;
    g.ldb = p.gu.ldb;
    g.sld = p.gu.sld;
    g.sblk = p.gu.sblk;
  } else {
    chunk = item;
    g.W = p.fgu.w;
    g.S = p.fgu.s;
    g.I = p.finter;
    g.out = p.act + p.fixed_off;
    g.ldb = p.fgu.ldb;
    g.sld = p.fgu.sld;
    g.sblk = p.fgu.sblk;
  }
  g.r0 = chunk * WARPS * p.rpw;
  g.r1 = min(g.r0 + WARPS * p.rpw, g.I);
  return g;
}

__device__ void gateup_prefetch(const MoeParams &p, int item, bool evict_first) {
  const GuRows g = gateup_rows(p, item);
  prefetch_rows(g.W, g.S, g.ldb, g.sld, g.r0, g.r1, evict_first);
  prefetch_rows(g.W, g.S, g.ldb, g.sld, (int64_t)g.I + g.r0, (int64_t)g.I + g.r1, evict_first);
}

template <int FIX>
__device__ void gateup_item(const MoeParams &p, int fmt, int item, float *xs) {
  stage_vec(xs, p.x, p.norm, p.eps, p.hidden);
  const GuRows g = gateup_rows(p, item);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int i0 = g.r0 + warp * p.rpw, i1 = min(i0 + p.rpw, g.r1);
  with_fmt<FIX>(fmt, [&](auto fc) {
    constexpr int F = decltype(fc)::value;
    for (int i = i0; i < i1; i++) {
      float a, b;
      row_dot2<F>(g.W + i * g.ldb, g.S ? g.S + (int64_t)i * g.sld : nullptr, g.W + (int64_t)(g.I + i) * g.ldb,
                  g.S ? g.S + (int64_t)(g.I + i) * g.sld : nullptr, g.sblk, xs, p.hidden, a, b);
      if (lane == 0) g.out[i] = a / (1.f + expf(-a)) * b;
    }
  });
}

// The slots of a down item: 0..k-1 the chosen experts, k the fixed MLP.
struct DnSlots {
  const char *base[33];
  const float *sbase[33];
  float wt[33];
};

__device__ __forceinline__ void down_slot(const MoeParams &p, int s, const char *&b, const float *&sb, float &wt) {
  if (s < p.k) {
    const int e = __ldcg(p.chosen + s);
    b = p.dn.w + e * p.dn_estride;
    sb = p.dn.s ? p.dn.s + e * p.dn_sestride : nullptr;
    wt = __ldcg(p.weights + s);
  } else {
    b = p.fdn.w;
    sb = p.fdn.s;
    wt = 1.f;
  }
}

// Only the slots whose weights are known: routed ones after routing (routed = true).
__device__ void down_prefetch(const MoeParams &p, int item, bool routed, bool fixed) {
  const int j0 = item * DN_R, j1 = min(j0 + DN_R, p.hidden);
  const int nslot = p.k + p.has_fixed;
  for (int s = 0; s < nslot; s++) {
    if (s < p.k ? !routed : !fixed) continue;
    const char *b;
    const float *sb;
    float wt;
    down_slot(p, s, b, sb, wt);
    const bool fx = s == p.k;
    prefetch_rows(b, sb, fx ? p.fdn.ldb : p.dn.ldb, fx ? p.fdn.sld : p.dn.sld, j0, j1);
  }
}

// DN_R output rows over every slot (dot.cuh's down_rows), added to the residual stream.
template <int FIX>
__device__ void down_item(const MoeParams &p, int fmt, int item, float *sm) {
  __shared__ DnSlots sl;
  const int nslot = p.k + p.has_fixed;
  if (threadIdx.x < nslot) {
    const int s = threadIdx.x;
    down_slot(p, s, sl.base[s], sl.sbase[s], sl.wt[s]);
  }
  __syncthreads();
  const int j0 = item * DN_R;
  float sum = 0.f;
  with_fmt<FIX>(fmt, [&](auto fc) {
    constexpr int F = decltype(fc)::value;
    sum = down_rows<F, DN_R>(p, j0, sl.base, sl.sbase, sl.wt, sm);
  });
  if (threadIdx.x < DN_R && j0 + (int)threadIdx.x < p.hidden)
    p.xout[j0 + threadIdx.x] = __ldcg(p.xout + j0 + threadIdx.x) + sum;
}

// ---- the kernel ---------------------------------------------------------------------------------
// Thread 0 waits until stage s has completed `need` items in all (epochs included), then fences
// (acquire: the stage's writes are visible to this block after its next barrier). The polls back
// off from 64 to 512 ns, so that hundreds of waiting blocks do not crowd one L2 line.
__device__ void wait_stage(const MegaArgs &a, int waiter, int s, unsigned long long need) {
  const unsigned long long *c = a.done + (int64_t)s * MS_STRIDE;
  if (ld_relaxed(c) >= need) {
    __threadfence();
    return;
  }
  const unsigned long long t0 = now_ns();
  int *err = &a.state->err;
  unsigned ns = 64;
  for (;;) {
    __nanosleep(ns);
    if (ns < 512) ns <<= 1;
    const unsigned long long v = ld_relaxed(c);
    if (v >= need) {
      __threadfence();
      return;
    }
    if (ld_volatile(err) != 0) return;
    if (now_ns() - t0 > 2000000000ull) {  // 2 s: a bug; report it and let every wait give up
      if (atomicCAS(err, 0, 1) == 0) {
        a.state->err_stage = waiter;
        a.state->err_dep = s;
        a.state->err_have = v;
        a.state->err_need = need;
        __threadfence();
      }
      return;
    }
  }
}

template <int FIX>
__device__ void prefetch_item(const MegaArgs &a, const MStage &S, int item, bool routed_known) {
  switch (S.type) {
    case MS_GEMV:
    case MS_ROUTER: gemv_prefetch(S.g, item); break;
    case MS_ABSORB: absorb_prefetch(S.a, item); break;
    case MS_ATTN: attn_prefetch(S.a, item); break;
    case MS_UV: uv_prefetch(S.a, item); break;
    case MS_GATEUP:
      if (S.m.k == 0 || routed_known) gateup_prefetch(S.m, item, S.m.k > 0 && a.evict_routed);
      break;
    case MS_DOWN: down_prefetch(S.m, item, routed_known, !routed_known || S.pre_dep < 0); break;
  }
}

template <int FIX, int MINB>
__global__ void __launch_bounds__(MEGA_THREADS, MINB) mega_kernel(const __grid_constant__ MegaArgs a) {
  extern __shared__ __align__(16) float sm[];
  __shared__ __align__(16) MStage S;
  __shared__ unsigned long long s_ticket;
  __shared__ int s_stage;
  if (threadIdx.x == 0) s_ticket = atomicAdd(a.ticket, 1ull);
  __syncthreads();
  const unsigned long long tk = s_ticket;
  const unsigned long long epoch = tk / (unsigned long long)a.total;
  const int t = (int)(tk % (unsigned long long)a.total);
  if (threadIdx.x == 0) {
    s_stage = __ldg(a.stage_of + t);
    if (a.prof && t == 0) a.prof[a.nstages] = now_ns();
  }
  __syncthreads();
  const int si = s_stage;
  {
    const int4 *src = reinterpret_cast<const int4 *>(a.stages + si);
    int4 *dst = reinterpret_cast<int4 *>(&S);
    for (int i = threadIdx.x; i < (int)(sizeof(MStage) / 16); i += MEGA_THREADS) dst[i] = src[i];
  }
  __syncthreads();
  const int item = t - S.first;
  // 1. weights whose addresses are known now (all but the chosen experts')
  if (a.prefetch) prefetch_item<FIX>(a, S, item, false);
  pdl_wait();  // the embedding (launched with programmatic dependent launch)
  // 2. the chosen experts' weights, once the token is routed
  if (S.pre_dep >= 0) {
    if (threadIdx.x == 0) wait_stage(a, si, S.pre_dep, (epoch + 1) * (unsigned long long)a.stages[S.pre_dep].target);
    __syncthreads();
    if (a.prefetch) prefetch_item<FIX>(a, S, item, true);
  }
  // 3. the inputs
  if (threadIdx.x == 0) {
    for (int d = 0; d < S.ndep; d++) wait_stage(a, si, S.dep[d], (epoch + 1) * (unsigned long long)a.stages[S.dep[d]].target);
    __threadfence();
  }
  __syncthreads();
  bool signal = true;
  switch (S.type) {
    case MS_GEMV: gemv_item<FIX>(S.g, item, sm); break;
    case MS_ROUTER: signal = router_item<FIX>(S.g, item, S.nitems, sm, a.aux + (int64_t)si * MS_STRIDE); break;
    case MS_ABSORB: absorb_item<FIX>(S.a, item, sm); break;
    case MS_ATTN: attn_item(S.a, item, sm); break;
    case MS_UV: uv_item<FIX>(S.a, item, sm); break;
    case MS_GATEUP: gateup_item<FIX>(S.m, S.fmt, item, sm); break;
    case MS_DOWN: down_item<FIX>(S.m, S.fmt, item, sm); break;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence();  // as cooperative groups' grid barrier: the block's writes, then the count
    if (signal) atomicAdd(a.done + (int64_t)si * MS_STRIDE, 1ull);
    if (a.prof) atomicMax(a.prof + si, now_ns());
  }
}

}  // namespace

void launch_mega(cudaStream_t st, const MegaArgs &a, int fix, size_t smem, int minb) {
  if (fix == F_BF16 && minb == 2) {
    dw_smem_limit(reinterpret_cast<const void *>(mega_kernel<F_BF16, 2>), smem);
    launch_k(mega_kernel<F_BF16, 2>, a.total, MEGA_THREADS, smem, st, a);
  } else if (fix == F_BF16) {
    dw_smem_limit(reinterpret_cast<const void *>(mega_kernel<F_BF16, 3>), smem);
    launch_k(mega_kernel<F_BF16, 3>, a.total, MEGA_THREADS, smem, st, a);
  } else {
    dw_smem_limit(reinterpret_cast<const void *>(mega_kernel<-1, 2>), smem);
    launch_k(mega_kernel<-1, 2>, a.total, MEGA_THREADS, smem, st, a);
  }
  LAUNCHED("mega (decode layers)", st);
}
