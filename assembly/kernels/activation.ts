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

/** out[t, i] = silu(gu[t, i]) * gu[t, n + i]: the gate and up projections are fused row-wise, so
 * each token's row holds n gate values then n up values. */
export function silu_mul(out: usize, gu: usize, n: i32, tokens: i32): void {
  for (let t = 0; t < tokens; t++) {
    const g = gu + (<usize>t * <usize>n << 3);
    const o = out + (<usize>t * <usize>n << 2);
    for (let i = 0; i < n; i++) {
      const a = load<f32>(g + (<usize>i << 2));
      const b = load<f32>(g + (<usize>(n + i) << 2));
      store<f32>(o + (<usize>i << 2), (a / (1 + Mathf.exp(-a))) * b);
    }
  }
}
