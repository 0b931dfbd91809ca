import { argI, argP, parallel, setI, setP } from '../pool';
import { OP_SILU_MUL } from '../ops';

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

/** out[t, i] = silu(gu[t, i]) * gu[t, n + i]: the gate and up projections are fused row-wise, so
 * each token's row holds n gate values then n up values. Split across threads by chunks of a row. */
export function silu_mul(out: usize, gu: usize, n: i32, tokens: i32): void {
  setP(0, out);
  setP(1, gu);
  setI(2, n);
  parallel(OP_SILU_MUL, tokens * ((n + SILU_CHUNK - 1) / SILU_CHUNK));
}

export function siluMulTask(begin: i32, end: i32): void {
  const out = argP(0);
  const gu = argP(1);
  const n = argI(2);
  const chunks = (n + SILU_CHUNK - 1) / SILU_CHUNK;
  for (let item = begin; item < end; item++) {
    const t = item / chunks;
    const i0 = (item % chunks) * SILU_CHUNK;
    const i1 = min(n, i0 + SILU_CHUNK);
    const g = gu + (<usize>t * <usize>n << 3);
    const o = out + (<usize>t * <usize>n << 2);
    for (let i = i0; i < i1; i++) {
      const a = load<f32>(g + (<usize>i << 2));
      const b = load<f32>(g + (<usize>(n + i) << 2));
      store<f32>(o + (<usize>i << 2), (a / (1 + Mathf.exp(-a))) * b);
    }
  }
}
