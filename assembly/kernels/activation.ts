import { argI, argP, setI, setP } from '../board';

/** In-place softmax over n values (max-subtracted, so large logits do not overflow). */
export function softmax(x: usize, n: i32): void {
  let m = -Infinity as f32;
  for (let i = 0; i < n; i++) m = max(m, load<f32>(x + (<usize>i << 2)));
  let sum: f32 = 0;
  for (let i = 0; i < n; i++) {
    const p = x + (<usize>i << 2);
    const e = Mathf.exp(load<f32>(p) - m);
    store<f32>(p, e);
    sum += e;
  }
  const inv: f32 = 1 / sum;
  for (let i = 0; i < n; i++) {
    const p = x + (<usize>i << 2);
    store<f32>(p, load<f32>(p) * inv);
  }
}

/** Values one silu_mul item takes: enough to outweigh a step's hand-off, small enough that a decode
 * step's handful of rows splits evenly across threads. */
const SILU_CHUNK: i32 = 256;

/** Writes silu_mul's arguments (steps.ts) on the job board; returns the step's item count: chunks of
 * SILU_CHUNK values of each token's row. */
@inline export function stageSiluMul(out: usize, gu: usize, n: i32, tokens: i32): i32 {
  setP(0, out);
  setP(1, gu);
  setI(2, n);
  return tokens * ((n + SILU_CHUNK - 1) / SILU_CHUNK);
}

export function siluMulTask(begin: i32, end: i32): void {
  const out = argP(0);
  const gu = argP(1);
  const n = argI(2);
  const chunks = (n + SILU_CHUNK - 1) / SILU_CHUNK;
  const one = f32x4.splat(1);
  for (let item = begin; item < end; item++) {
    const t = item / chunks;
    const i0 = (item % chunks) * SILU_CHUNK;
    const i1 = min(n, i0 + SILU_CHUNK);
    const g = gu + (<usize>t * <usize>n << 3);
    const u = g + (<usize>n << 2);
    const o = out + (<usize>t * <usize>n << 2);
    let i = i0;
    for (; i + 4 <= i1; i += 4) {
      const k = <usize>i << 2;
      const a = v128.load(g + k);
      v128.store(o + k, f32x4.mul(f32x4.div(a, f32x4.add(one, exp4(f32x4.neg(a)))), v128.load(u + k)));
    }
    for (; i < i1; i++) {
      const k = <usize>i << 2;
      const a = load<f32>(g + k);
      store<f32>(o + k, (a / (1 + exp1(-a))) * load<f32>(u + k));
    }
  }
}

// exp for silu, four lanes at a time: Cephes' expf (range reduction by ln 2 in two parts, a degree-7
// polynomial), within 1.4 U of exp over [-87.3, 88.7]; Mathf.exp, one value per call, made silu_mul the
// slowest step of a decode token after the matmuls. Arguments are clamped to that range, which silu
// cannot tell from the true value (1 + exp(-a) is 1 or overflows either way). exp1 is the same
// arithmetic on one value, for the tail, so every element gets the same result wherever it falls.
const EXP_LO: f32 = -87.33654;
const EXP_HI: f32 = 88.72283;
const LOG2E: f32 = 1.44269504088896341;
const LN2_HI: f32 = 0.693359375;
const LN2_LO: f32 = -2.12194440e-4;
const P0: f32 = 1.9875691500e-4;
const P1: f32 = 1.3981999507e-3;
const P2: f32 = 8.3334519073e-3;
const P3: f32 = 4.1665795894e-2;
const P4: f32 = 1.6666665459e-1;
const P5: f32 = 5.0000001201e-1;

@inline function exp4(v: v128): v128 {
  const x = f32x4.max(f32x4.min(v, f32x4.splat(EXP_HI)), f32x4.splat(EXP_LO));
  const n = f32x4.nearest(f32x4.mul(x, f32x4.splat(LOG2E)));
  const r = f32x4.sub(f32x4.sub(x, f32x4.mul(n, f32x4.splat(LN2_HI))), f32x4.mul(n, f32x4.splat(LN2_LO)));
  let p = f32x4.add(f32x4.mul(f32x4.splat(P0), r), f32x4.splat(P1));
  p = f32x4.add(f32x4.mul(p, r), f32x4.splat(P2));
  p = f32x4.add(f32x4.mul(p, r), f32x4.splat(P3));
  p = f32x4.add(f32x4.mul(p, r), f32x4.splat(P4));
  p = f32x4.add(f32x4.mul(p, r), f32x4.splat(P5));
  const y = f32x4.add(f32x4.add(f32x4.mul(p, f32x4.mul(r, r)), r), f32x4.splat(1));
  return f32x4.mul(y, i32x4.shl(i32x4.add(i32x4.trunc_sat_f32x4_s(n), i32x4.splat(127)), 23));
}

@inline function exp1(v: f32): f32 {
  const x = max(min(v, EXP_HI), EXP_LO);
  const n = nearest<f32>(x * LOG2E);
  const r = x - n * LN2_HI - n * LN2_LO;
  let p = P0 * r + P1;
  p = p * r + P2;
  p = p * r + P3;
  p = p * r + P4;
  p = p * r + P5;
  return (p * (r * r) + r + 1) * reinterpret<f32>((<i32>n + 127) << 23);
}
