// out[t, r] = W[r, :] . x[t, :] for T tokens (T = 1 is the decode matvec). Split across threads by
// weight rows; prefill takes four tokens per pass over a row so the row is read from memory once.
import { BF16, bf16High, bf16Low, dotRow, hsum, rowBytes } from './format';
import { argI, argP, parallel, setI, setP } from '../pool';
import { OP_MATMUL } from '../ops';

export function matmul(fmt: i32, out: usize, w: usize, x: usize, rows: i32, cols: i32, tokens: i32): void {
  setI(0, fmt);
  setP(1, out);
  setP(2, w);
  setP(3, x);
  setI(4, rows);
  setI(5, cols);
  setI(6, tokens);
  parallel(OP_MATMUL, rows);
}

export function matmulTask(begin: i32, end: i32): void {
  const fmt = argI(0);
  const out = argP(1);
  const w = argP(2);
  const x = argP(3);
  const rows = argI(4);
  const cols = argI(5);
  const tokens = argI(6);
  const wStride = rowBytes(fmt, cols);
  const xStride = <usize>cols << 2;
  const outStride = <usize>rows << 2;
  for (let r = begin; r < end; r++) {
    const wr = w + <usize>r * wStride;
    const o = out + (<usize>r << 2);
    let t = 0;
    for (; t + 4 <= tokens; t += 4) {
      const x0 = x + <usize>t * xStride;
      const o0 = o + <usize>t * outStride;
      if (fmt == BF16) dot4BF16(wr, x0, xStride, cols, o0, outStride);
      else dot4F32(wr, x0, xStride, cols, o0, outStride);
    }
    for (; t < tokens; t++) store<f32>(o + <usize>t * outStride, dotRow(fmt, wr, x + <usize>t * xStride, cols));
  }
}

// One weight row against four consecutive token vectors.
function dot4F32(w: usize, x: usize, xStride: usize, n: i32, out: usize, outStride: usize): void {
  let s0 = f32x4.splat(0);
  let s1 = s0;
  let s2 = s0;
  let s3 = s0;
  const x1 = x + xStride;
  const x2 = x1 + xStride;
  const x3 = x2 + xStride;
  let i = 0;
  for (; i + 4 <= n; i += 4) {
    const o = <usize>i << 2;
    const v = v128.load(w + o);
    s0 = f32x4.add(s0, f32x4.mul(v, v128.load(x + o)));
    s1 = f32x4.add(s1, f32x4.mul(v, v128.load(x1 + o)));
    s2 = f32x4.add(s2, f32x4.mul(v, v128.load(x2 + o)));
    s3 = f32x4.add(s3, f32x4.mul(v, v128.load(x3 + o)));
  }
  let a0 = hsum(s0);
  let a1 = hsum(s1);
  let a2 = hsum(s2);
  let a3 = hsum(s3);
  for (; i < n; i++) {
    const o = <usize>i << 2;
    const v = load<f32>(w + o);
    a0 += v * load<f32>(x + o);
    a1 += v * load<f32>(x1 + o);
    a2 += v * load<f32>(x2 + o);
    a3 += v * load<f32>(x3 + o);
  }
  store4(out, outStride, a0, a1, a2, a3);
}

function dot4BF16(w: usize, x: usize, xStride: usize, n: i32, out: usize, outStride: usize): void {
  let s0 = f32x4.splat(0);
  let s1 = s0;
  let s2 = s0;
  let s3 = s0;
  const x1 = x + xStride;
  const x2 = x1 + xStride;
  const x3 = x2 + xStride;
  let i = 0;
  for (; i + 8 <= n; i += 8) {
    const o = <usize>i << 2;
    const v = v128.load(w + (<usize>i << 1));
    const lo = bf16Low(v);
    const hi = bf16High(v);
    s0 = f32x4.add(s0, f32x4.add(f32x4.mul(lo, v128.load(x + o)), f32x4.mul(hi, v128.load(x + o, 16))));
    s1 = f32x4.add(s1, f32x4.add(f32x4.mul(lo, v128.load(x1 + o)), f32x4.mul(hi, v128.load(x1 + o, 16))));
    s2 = f32x4.add(s2, f32x4.add(f32x4.mul(lo, v128.load(x2 + o)), f32x4.mul(hi, v128.load(x2 + o, 16))));
    s3 = f32x4.add(s3, f32x4.add(f32x4.mul(lo, v128.load(x3 + o)), f32x4.mul(hi, v128.load(x3 + o, 16))));
  }
  let a0 = hsum(s0);
  let a1 = hsum(s1);
  let a2 = hsum(s2);
  let a3 = hsum(s3);
  for (; i < n; i++) {
    const o = <usize>i << 2;
    const v = reinterpret<f32>(<u32>load<u16>(w + (<usize>i << 1)) << 16);
    a0 += v * load<f32>(x + o);
    a1 += v * load<f32>(x1 + o);
    a2 += v * load<f32>(x2 + o);
    a3 += v * load<f32>(x3 + o);
  }
  store4(out, outStride, a0, a1, a2, a3);
}

@inline function store4(out: usize, stride: usize, a0: f32, a1: f32, a2: f32, a3: f32): void {
  store<f32>(out, a0);
  store<f32>(out + stride, a1);
  store<f32>(out + 2 * stride, a2);
  store<f32>(out + 3 * stride, a3);
}

