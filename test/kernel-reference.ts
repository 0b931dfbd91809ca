// Plain TypeScript references for the wasm kernels, written from the definitions (DeepSeek's
// inference/model.py and GUIDE.md §2), computed in float64, with no SIMD, blocking or absorption.
// Each reference that sums also returns a rounding-error bound for the float32 kernel, so the tests
// can be strict without being flaky (see ERROR BOUNDS below).

/** Unit roundoff of float32: |fl(a op b) - (a op b)| <= U * |a op b|. */
export const U = 2 ** -24;

// ERROR BOUNDS. A float32 sum of n products computed in any order (sequential, four SIMD lanes, a
// horizontal add, four tokens at a time) satisfies the textbook bound
//   |fl(sum a_i b_i) - sum a_i b_i| <= gamma_n * sum |a_i b_i|,   gamma_n = n U / (1 - n U)
// (Higham, Accuracy and Stability of Numerical Algorithms, §3.1). We use 2 n U * sum |a_i b_i|:
// it holds for every input, so a seed never makes a test fail through rounding, and it is still
// tight: a dropped, duplicated or misplaced term moves a result by about sum |a_i b_i| / n, which is
// larger than the bound by a factor of 1 / (2 n^2 U), above 100 for every size tested here.

/** Seeded PRNG (mulberry32): the same numbers on every run and every machine. */
export class Rng {
  private s: number;
  constructor(seed: number) {
    this.s = seed >>> 0;
  }
  /** Uniform in [0, 1). */
  next(): number {
    let t = (this.s = (this.s + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  uniform(lo: number, hi: number): number {
    return lo + (hi - lo) * this.next();
  }
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
  /** Standard normal (Box-Muller). */
  normal(): number {
    const u = 1 - this.next();
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * this.next());
  }
  f32(n: number, lo = -1, hi = 1): Float32Array {
    const a = new Float32Array(n);
    for (let i = 0; i < n; i++) a[i] = this.uniform(lo, hi);
    return a;
  }
  normals(n: number, sd = 1): Float32Array {
    const a = new Float32Array(n);
    for (let i = 0; i < n; i++) a[i] = sd * this.normal();
    return a;
  }
}

const f32buf = new Float32Array(1);
const u32buf = new Uint32Array(f32buf.buffer);

export function f32Bits(x: number): number {
  f32buf[0] = x;
  return u32buf[0];
}

/** float32 -> bfloat16 bits, round to nearest, ties to even (NaN stays a quiet NaN). */
export function toBf16(x: number): number {
  const b = f32Bits(x);
  if ((b & 0x7f800000) === 0x7f800000 && (b & 0x7fffff) !== 0) return (b >>> 16) | 0x40;
  return ((b + 0x7fff + ((b >>> 16) & 1)) >>> 16) & 0xffff;
}

export function bf16ToF32(h: number): number {
  u32buf[0] = (h & 0xffff) << 16;
  return f32buf[0];
}

/** Rounds every value to bf16: the bits (what the kernel reads) and their exact widened values. */
export function bf16Matrix(values: Float32Array): { bits: Uint16Array; widened: Float32Array } {
  const bits = new Uint16Array(values.length);
  const widened = new Float32Array(values.length);
  for (let i = 0; i < values.length; i++) {
    bits[i] = toBf16(values[i]);
    widened[i] = bf16ToF32(bits[i]);
  }
  return { bits, widened };
}

/** A reference result with, per value, the largest error a correct float32 kernel can make. */
export interface Ref {
  value: Float64Array;
  bound: Float64Array;
}

/** out[t, r] = W[r, :] . x[t, :]: W [rows, cols], x [T, cols], out [T, rows]. */
export function matmulRef(w: ArrayLike<number>, x: ArrayLike<number>, rows: number, cols: number, tokens: number): Ref {
  const value = new Float64Array(tokens * rows);
  const bound = new Float64Array(tokens * rows);
  for (let t = 0; t < tokens; t++) {
    for (let r = 0; r < rows; r++) {
      let s = 0;
      let m = 0;
      for (let c = 0; c < cols; c++) {
        const p = w[r * cols + c] * x[t * cols + c];
        s += p;
        m += Math.abs(p);
      }
      value[t * rows + r] = s;
      bound[t * rows + r] = 2 * cols * U * m;
    }
  }
  return { value, bound };
}

/**
 * RMSNorm of each of T rows (strides in floats): x / sqrt(mean(x^2) + eps) * w. The kernel's sum of
 * squares has relative error <= n U (all terms positive), halved by the square root, plus a few
 * roundings for eps, the reciprocal and the two products: (n + 8) U relative bounds it.
 */
export function rmsnormRef(x: ArrayLike<number>, xStride: number, w: ArrayLike<number>, n: number, tokens: number, eps: number): Ref {
  const value = new Float64Array(tokens * n);
  const bound = new Float64Array(tokens * n);
  for (let t = 0; t < tokens; t++) {
    let ss = 0;
    for (let i = 0; i < n; i++) ss += x[t * xStride + i] ** 2;
    const inv = 1 / Math.sqrt(ss / n + eps);
    for (let i = 0; i < n; i++) {
      const v = x[t * xStride + i] * inv * w[i];
      value[t * n + i] = v;
      bound[t * n + i] = (n + 8) * U * Math.abs(v) + 1e-37;
    }
  }
  return { value, bound };
}

/**
 * Interleaved RoPE (GUIDE.md §2): pair (x[2i], x[2i+1]) of a vector at position p becomes
 * (a cos - b sin, a sin + b cos) with cos/sin = table[p, i]. Returns the whole rotated buffer (other
 * floats unchanged) and bounds of 4 U (|a cos| + |b sin|): two products and one sum.
 */
export function ropeRef(
  x: ArrayLike<number>, tokens: number, vecs: number, tokenStride: number, vecStride: number,
  cos: ArrayLike<number>, sin: ArrayLike<number>, pos0: number, half: number,
): Ref {
  const value = Float64Array.from(x);
  const bound = new Float64Array(x.length);
  for (let t = 0; t < tokens; t++) {
    for (let v = 0; v < vecs; v++) {
      const base = t * tokenStride + v * vecStride;
      for (let i = 0; i < half; i++) {
        const a = x[base + 2 * i];
        const b = x[base + 2 * i + 1];
        const c = cos[(pos0 + t) * half + i];
        const s = sin[(pos0 + t) * half + i];
        value[base + 2 * i] = a * c - b * s;
        value[base + 2 * i + 1] = a * s + b * c;
        bound[base + 2 * i] = 4 * U * (Math.abs(a * c) + Math.abs(b * s)) + 1e-37;
        bound[base + 2 * i + 1] = 4 * U * (Math.abs(a * s) + Math.abs(b * c)) + 1e-37;
      }
    }
  }
  return { value, bound };
}

/**
 * softmax(x)_i = exp(x_i) / sum_j exp(x_j), evaluated in float64 as exp(x_i - max) (mathematically
 * the same; float64 would overflow too without it past x = 709). Bound: the float32 kernel rounds
 * x_i - max (absolute error U |x_i - max| in the exponent, at most U / e in p_i since
 * p_i <= exp(-|x_i - max|)), exp (<= 2 U), a sum of n positive terms (n U) and two more roundings:
 * 2 U + (2 n + 8) U p_i covers it.
 */
export function softmaxRef(x: ArrayLike<number>): Ref {
  const n = x.length;
  let m = -Infinity;
  for (let i = 0; i < n; i++) m = Math.max(m, x[i]);
  let sum = 0;
  const value = new Float64Array(n);
  for (let i = 0; i < n; i++) sum += value[i] = Math.exp(x[i] - m);
  const bound = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    value[i] /= sum;
    bound[i] = 2 * U + (2 * n + 8) * U * value[i];
  }
  return { value, bound };
}

/** out[t, i] = silu(g) * u with g = gu[t, i], u = gu[t, n + i]; a few roundings: 8 U relative. */
export function siluMulRef(gu: ArrayLike<number>, n: number, tokens: number): Ref {
  const value = new Float64Array(tokens * n);
  const bound = new Float64Array(tokens * n);
  for (let t = 0; t < tokens; t++) {
    for (let i = 0; i < n; i++) {
      const g = gu[t * 2 * n + i];
      const u = gu[t * 2 * n + n + i];
      const v = (g / (1 + Math.exp(-g))) * u;
      value[t * n + i] = v;
      // exp(-g) overflows float32 for g < -88.7, where the kernel's silu is -0 and the true value is
      // below 1e-36 * |u|: the absolute term covers that.
      bound[t * n + i] = 8 * U * Math.abs(v) + 1e-35 * (1 + Math.abs(u));
    }
  }
  return { value, bound };
}

export type RouteMethod = 'greedy' | 'group_limited_greedy' | 'noaux_tc';
export type Scoring = 'softmax' | 'sigmoid';

export interface RouteCase {
  tokens: number;
  experts: number;
  method: RouteMethod;
  scoring: Scoring;
  groups: number;
  keepGroups: number;
  k: number;
  normalize: boolean;
  routedScale: number;
}

export interface RouteChoice {
  /** Chosen experts, strongest first. */
  experts: number[];
  weights: number[];
  /** Relative bound on each weight's float32 error. */
  relBound: number;
  /**
   * Smallest gap between a chosen and a rejected candidate (expert choice value or group score):
   * below ~1e-6 the float32 kernel may legitimately choose differently, and the token is skipped.
   */
  margin: number;
}

/**
 * DeepSeek's gate (GUIDE.md §2, inference/model.py Gate.forward): scores = softmax or sigmoid of the
 * logits; choice = scores + bias; for the grouped methods, keep the keepGroups groups with the best
 * group score (greedy: none dropped; group_limited_greedy: the group's max; noaux_tc: the sum of the
 * group's two largest choice values); pick the top k by choice; the weights are the unbiased scores
 * at those experts, divided by their sum when normalize, then multiplied by routedScale.
 */
export function routeRef(logits: ArrayLike<number>, bias: ArrayLike<number> | null, c: RouteCase): RouteChoice[] {
  const E = c.experts;
  const out: RouteChoice[] = [];
  for (let t = 0; t < c.tokens; t++) {
    const l = Array.from({ length: E }, (_, e) => logits[t * E + e]);
    let scores: number[];
    if (c.scoring === 'sigmoid') scores = l.map((v) => 1 / (1 + Math.exp(-v)));
    else {
      const m = Math.max(...l);
      const ex = l.map((v) => Math.exp(v - m));
      const s = ex.reduce((a, b) => a + b, 0);
      scores = ex.map((v) => v / s);
    }
    const choice = scores.map((s, e) => s + (bias ? bias[e] : 0));
    let margin = Infinity;
    const allowed = new Array<boolean>(E).fill(true);
    if (c.method !== 'greedy' && c.groups > 1) {
      const per = E / c.groups;
      const groupScore: number[] = [];
      for (let g = 0; g < c.groups; g++) {
        const members = choice.slice(g * per, (g + 1) * per).sort((a, b) => b - a);
        groupScore.push(c.method === 'noaux_tc' ? members[0] + (per > 1 ? members[1] : 0) : members[0]);
      }
      const order = groupScore.map((s, g) => ({ s, g })).sort((a, b) => b.s - a.s || a.g - b.g);
      if (c.keepGroups < c.groups) margin = Math.min(margin, order[c.keepGroups - 1].s - order[c.keepGroups].s);
      for (let j = c.keepGroups; j < c.groups; j++) {
        for (let e = order[j].g * per; e < (order[j].g + 1) * per; e++) allowed[e] = false;
      }
    }
    const candidates = choice
      .map((s, e) => ({ s, e }))
      .filter((x) => allowed[x.e])
      .sort((a, b) => b.s - a.s || a.e - b.e);
    if (candidates.length > c.k) margin = Math.min(margin, candidates[c.k - 1].s - candidates[c.k].s);
    const experts = candidates.slice(0, c.k).map((x) => x.e);
    let weights = experts.map((e) => scores[e]);
    if (c.normalize) {
      const sum = weights.reduce((a, b) => a + b, 0);
      weights = weights.map((w) => w / (sum + 1e-20));
    }
    weights = weights.map((w) => w * c.routedScale);
    // The kernel's float32 scores carry U |l - max| from the rounded subtraction (softmax) and a few
    // roundings; the sum over k and the scale factor add k + 4.
    const spread = Math.max(...l) - Math.min(...l);
    out.push({ experts, weights, relBound: (2 * c.k + 16 + 2 * spread) * U, margin });
  }
  return out;
}

export interface MlaCase {
  tokens: number;
  heads: number;
  nope: number;
  ropeDim: number;
  vDim: number;
  rank: number;
  pos0: number;
  scale: number;
}

/**
 * Multi-head latent attention in the NAIVE (expanded) form of the DeepSeek-V2 paper, eq. 9-11, with
 * the cache's latent c_s and shared roped key k_rope_s for positions s = 0 .. pos0 + T - 1:
 *   k_nope_s = W_UK c_s, v_s = W_UV c_s       (W_UK, W_UV: head h's rows of kv_b, [nope|v] x rank)
 *   score_s  = (q_nope . k_nope_s + q_rope . k_rope_s) * scale,  s <= pos0 + t (causal)
 *   out      = sum_s softmax(score)_s v_s
 * q [T, heads, nope + ropeDim], kvB [heads * (nope + vDim), rank], cache [>= pos0 + T, rank + ropeDim],
 * out [T, heads, vDim].
 *
 * Bound, for the float32 absorbed path (qAbs = W_UK^T q_nope by matmul; score = qAbs . c + q_rope . k_rope;
 * oLat = sum p_s c_s; out = W_UV oLat): each score is a sum over nope * rank + ropeDim products, so its
 * error is at most D = (nope + rank + ropeDim + 4) U scale (sum_r A_r |c_sr| + sum |q_rope k_rope|)
 * with A_r = sum_i |q_i W_UK[i, r]|. Score errors D change p_s by at most p_s (2 D + (2 n + 8) U)
 * + U (softmax bound above); oLat_r adds (n + 1) U sum_s p_s |c_sr|; the last dot adds
 * (rank + 1) U. Summed: sum_r |W_UV[j, r]| ((rank + 3 n + 12) U B_r + 2 D B_r + U C_r) with
 * B_r = sum_s p_s |c_sr|, C_r = sum_s |c_sr|; we allow twice that.
 */
export function mlaNaiveRef(q: ArrayLike<number>, kvB: ArrayLike<number>, cache: ArrayLike<number>, c: MlaCase): Ref {
  const { tokens, heads, nope, ropeDim, vDim, rank, pos0, scale } = c;
  const qDim = nope + ropeDim;
  const latent = rank + ropeDim;
  const positions = pos0 + tokens;
  const value = new Float64Array(tokens * heads * vDim);
  const bound = new Float64Array(tokens * heads * vDim);
  // Expanded keys and values of every head at every position: what the absorbed path never builds.
  const kNope = new Float64Array(heads * positions * nope);
  const vals = new Float64Array(heads * positions * vDim);
  for (let h = 0; h < heads; h++) {
    const wk = h * (nope + vDim) * rank;
    const wv = wk + nope * rank;
    for (let s = 0; s < positions; s++) {
      for (let i = 0; i < nope; i++) {
        let acc = 0;
        for (let r = 0; r < rank; r++) acc += kvB[wk + i * rank + r] * cache[s * latent + r];
        kNope[(h * positions + s) * nope + i] = acc;
      }
      for (let j = 0; j < vDim; j++) {
        let acc = 0;
        for (let r = 0; r < rank; r++) acc += kvB[wv + j * rank + r] * cache[s * latent + r];
        vals[(h * positions + s) * vDim + j] = acc;
      }
    }
  }
  for (let t = 0; t < tokens; t++) {
    const seen = pos0 + t + 1;
    for (let h = 0; h < heads; h++) {
      const qh = (t * heads + h) * qDim;
      const wk = h * (nope + vDim) * rank;
      const wv = wk + nope * rank;
      const scores = new Float64Array(seen);
      let worst = 0; // D: the largest score error
      const A = new Float64Array(rank);
      for (let r = 0; r < rank; r++) for (let i = 0; i < nope; i++) A[r] += Math.abs(q[qh + i] * kvB[wk + i * rank + r]);
      for (let s = 0; s < seen; s++) {
        let dot = 0;
        for (let i = 0; i < nope; i++) dot += q[qh + i] * kNope[(h * positions + s) * nope + i];
        let mag = 0;
        for (let j = 0; j < ropeDim; j++) {
          const p = q[qh + nope + j] * cache[s * latent + rank + j];
          dot += p;
          mag += Math.abs(p);
        }
        for (let r = 0; r < rank; r++) mag += A[r] * Math.abs(cache[s * latent + r]);
        scores[s] = dot * scale;
        worst = Math.max(worst, (nope + rank + ropeDim + 4) * U * scale * mag);
      }
      const p = softmaxRef(scores).value;
      const B = new Float64Array(rank);
      const C = new Float64Array(rank);
      for (let s = 0; s < seen; s++) {
        for (let r = 0; r < rank; r++) {
          B[r] += p[s] * Math.abs(cache[s * latent + r]);
          C[r] += Math.abs(cache[s * latent + r]);
        }
      }
      for (let j = 0; j < vDim; j++) {
        let acc = 0;
        for (let s = 0; s < seen; s++) acc += p[s] * vals[(h * positions + s) * vDim + j];
        let b = 0;
        for (let r = 0; r < rank; r++) {
          b += Math.abs(kvB[wv + j * rank + r]) * ((rank + 3 * seen + 12) * U * B[r] + 2 * worst * B[r] + U * C[r]);
        }
        value[(t * heads + h) * vDim + j] = acc;
        bound[(t * heads + h) * vDim + j] = 2 * b + 1e-37;
      }
    }
  }
  return { value, bound };
}
