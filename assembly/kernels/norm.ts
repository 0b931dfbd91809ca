import { hsum } from './format';

/** RMSNorm of T rows: out = x / sqrt(mean(x^2) + eps) * w. Strides are in floats, so a norm can read
 * one part of a wider row (the latent c of kv_a's output) and write it straight into the KV cache. */
export function rmsnorm(
  out: usize, outStride: i32, x: usize, xStride: i32, w: usize, n: i32, tokens: i32, eps: f32,
): void {
  for (let t = 0; t < tokens; t++) {
    const xr = x + <usize>t * (<usize>xStride << 2);
    const or = out + <usize>t * (<usize>outStride << 2);
    let acc = f32x4.splat(0);
    let i = 0;
    for (; i + 4 <= n; i += 4) {
      const v = v128.load(xr + (<usize>i << 2));
      acc = f32x4.add(acc, f32x4.mul(v, v));
    }
    let ss = hsum(acc);
    for (; i < n; i++) {
      const v = load<f32>(xr + (<usize>i << 2));
      ss += v * v;
    }
    const inv = <f32>(1.0 / Math.sqrt(<f64>(ss / <f32>n + eps)));
    const vinv = f32x4.splat(inv);
    i = 0;
    for (; i + 4 <= n; i += 4) {
      const o = <usize>i << 2;
      v128.store(or + o, f32x4.mul(f32x4.mul(v128.load(xr + o), vinv), v128.load(w + o)));
    }
    for (; i < n; i++) {
      const o = <usize>i << 2;
      store<f32>(or + o, load<f32>(xr + o) * inv * load<f32>(w + o));
    }
  }
}
