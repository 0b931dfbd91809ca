import { FMT_BF16 } from '../constants';
import { bf16At } from './format';

/** y += x over n floats. */
export function add(y: usize, x: usize, n: i32): void {
  let i = 0;
  for (; i + 4 <= n; i += 4) {
    const o = <usize>i << 2;
    v128.store(y + o, f32x4.add(v128.load(y + o), v128.load(x + o)));
  }
  for (; i < n; i++) {
    const o = <usize>i << 2;
    store<f32>(y + o, load<f32>(y + o) + load<f32>(x + o));
  }
}

/** y *= a over n floats. */
export function scale(y: usize, a: f32, n: i32): void {
  const va = f32x4.splat(a);
  let i = 0;
  for (; i + 4 <= n; i += 4) {
    const o = <usize>i << 2;
    v128.store(y + o, f32x4.mul(v128.load(y + o), va));
  }
  for (; i < n; i++) {
    const o = <usize>i << 2;
    store<f32>(y + o, load<f32>(y + o) * a);
  }
}

/** out[t] = table[ids[t]] widened to f32; the host has checked every id against the vocabulary. */
export function embed(fmt: i32, out: usize, table: usize, ids: usize, tokens: i32, dim: i32): void {
  for (let t = 0; t < tokens; t++) {
    const id = <usize>load<i32>(ids + (<usize>t << 2));
    const o = out + (<usize>t * <usize>dim << 2);
    if (fmt == FMT_BF16) {
      const row = table + (id * <usize>dim << 1);
      for (let i = 0; i < dim; i++) store<f32>(o + (<usize>i << 2), bf16At(row + (<usize>i << 1)));
    } else {
      memory.copy(o, table + (id * <usize>dim << 2), <usize>dim << 2);
    }
  }
}

/** dst[j] = src[rows[j]] for n rows of dim floats: gathers the tokens routed to one expert. */
export function gather_rows(dst: usize, src: usize, rows: usize, n: i32, dim: i32): void {
  const bytes = <usize>dim << 2;
  for (let j = 0; j < n; j++) {
    memory.copy(dst + <usize>j * bytes, src + <usize>load<i32>(rows + (<usize>j << 2)) * bytes, bytes);
  }
}

/** dst[rows[j]] += weights[j] * src[j]: adds one expert's outputs back to its tokens. */
export function scatter_add(dst: usize, src: usize, rows: usize, weights: usize, n: i32, dim: i32): void {
  const bytes = <usize>dim << 2;
  for (let j = 0; j < n; j++) {
    const y = dst + <usize>load<i32>(rows + (<usize>j << 2)) * bytes;
    const x = src + <usize>j * bytes;
    const a = load<f32>(weights + (<usize>j << 2));
    const va = f32x4.splat(a);
    let i = 0;
    for (; i + 4 <= dim; i += 4) {
      const o = <usize>i << 2;
      v128.store(y + o, f32x4.add(v128.load(y + o), f32x4.mul(va, v128.load(x + o))));
    }
    for (; i < dim; i++) {
      const o = <usize>i << 2;
      store<f32>(y + o, load<f32>(y + o) + a * load<f32>(x + o));
    }
  }
}

/** Copies T rows of n floats between strided buffers (strides in floats). */
export function copy_rows(dst: usize, dstStride: i32, src: usize, srcStride: i32, n: i32, tokens: i32): void {
  for (let t = 0; t < tokens; t++) {
    memory.copy(dst + (<usize>t * <usize>dstStride << 2), src + (<usize>t * <usize>srcStride << 2), <usize>n << 2);
  }
}
