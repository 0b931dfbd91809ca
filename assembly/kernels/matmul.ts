// out[t, r] = W[r, :] . x[t, :] for T tokens (T = 1 is the decode matvec). Split across threads by
// weight rows; prefill takes four tokens per pass over a row so the row is read from memory once.
// F32 and BF16 rows are read as stored; the quantized formats (q8, q4, fp8: q8.ts, q4.ts, fp8.ts) first
// bring the activations into the kernels' layout (quantize.ts) in a scratch area the host registers
// once with set_scratch, so a decode step allocates nothing. The exported matmul (steps.ts) stages
// each step with the functions here and runs it on the pool.
import { FMT_BF16, FMT_FP8, FMT_Q4, FMT_Q8, MAX_THREADS } from '../constants';
import { TILE_MAX, bf16At, bf16High, bf16Low, dotRow, hsum, paddedCols, rowBytes } from './format';
import { argI, argP, scratchBytes, scratchPtr, setI, setP } from '../board';
import {
  ACT_F32, ACT_Q4_I16, ACT_Q4_I8, ACT_Q8_I16, ACT_Q8_I8, ACT_Q8_PN, ACT_Q8_SIGNED, THREAD_SCRATCH, actGroupBytes, quantizeActivations,
  threadScratch,
} from './quantize';
import { q8Rows } from './q8';
import { q4Rows } from './q4';
import { fp8Rows } from './fp8';

/** Writes an f32 or bf16 matmul's arguments on the job board; returns the step's item count (rows). */
@inline export function stageMatmul(fmt: i32, out: usize, w: usize, x: usize, rows: i32, cols: i32, tokens: i32): i32 {
  setI(0, fmt);
  setP(1, out);
  setP(2, w);
  setP(3, x);
  setI(4, rows);
  setI(5, cols);
  setI(6, tokens);
  return rows;
}

/** Scratch bytes per token of a chunk: the activations in the layout, a scale and a correction per
 * group, and the same two again transposed by tiles of four tokens (prefill: q8-prefill.ts, q4-prefill.ts). */
@inline function tokenBytes(groups: i32, layout: i32): usize {
  return <usize>groups * <usize>(actGroupBytes(layout) + 16);
}

/** The scratch bytes a quantized matmul over `cols` columns needs for `tokens` tokens at a time. */
export function quant_scratch_bytes(cols: i32, tokens: i32): usize {
  return <usize>(MAX_THREADS * THREAD_SCRATCH) + <usize>tokens * tokenBytes(paddedCols(cols) >> 5, ACT_F32);
}

/** Most tokens a prefill chunk takes: more only re-reads the weights less often, already 1/64 of the time. */
const MAX_CHUNK: i32 = 256;

/** Tokens one step of a quantized matmul over `cols` columns takes: as many as the scratch holds, up to MAX_CHUNK. */
export function quantChunk(cols: i32, tokens: i32): i32 {
  const reserved = <usize>(MAX_THREADS * THREAD_SCRATCH);
  const widest = tokenBytes(paddedCols(cols) >> 5, ACT_F32);
  // The host sizes the scratch with quant_scratch_bytes for the widest matrix it loads.
  const base = scratchPtr();
  const bytes = scratchBytes();
  if (base == 0 || bytes < reserved + widest) unreachable();
  return min(tokens, min(MAX_CHUNK, <i32>((bytes - reserved) / widest)));
}

/**
 * Stages one step of a quantized matmul: tokens [t0, t0 + chunk) of x quantized into the scratch in
 * the layout of fmt's kernel, and the step's arguments on the job board; returns its item count (rows).
 */
export function stageQuantChunk(fmt: i32, out: usize, w: usize, x: usize, rows: i32, cols: i32, tokens: i32, t0: i32, chunk: i32): i32 {
  const cp = paddedCols(cols);
  const G = cp >> 5;
  const area = scratchPtr() + <usize>(MAX_THREADS * THREAD_SCRATCH);
  const tmp = threadScratch(0) + 64;
  const tc = min(chunk, tokens - t0);
  let layout = ACT_F32;
  if (fmt == FMT_Q4) layout = ASC_FEATURE_RELAXED_SIMD ? ACT_Q4_I8 : ACT_Q4_I16;
  else if (fmt == FMT_Q8) layout = ASC_FEATURE_RELAXED_SIMD ? (tc == 1 ? ACT_Q8_SIGNED : tc <= TILE_MAX ? ACT_Q8_PN : ACT_Q8_I8) : ACT_Q8_I16;
  const xRow = <usize>G * <usize>actGroupBytes(layout);
  const xq = area;
  const xs = xq + <usize>tc * xRow;
  const xc = xs + (<usize>(tc * G) << 2);
  const xsT = xc + (<usize>(tc * G) << 2);
  const xcT = xsT + (<usize>(tc * G) << 2);
  for (let t = 0; t < tc; t++) {
    const src = x + (<usize>(t0 + t) * <usize>cols << 2);
    quantizeActivations(layout, src, cols, cp, xq + <usize>t * xRow, xs + (<usize>(t * G) << 2), xc + (<usize>(t * G) << 2), tmp);
  }
  // For the prefill tiles of four tokens: tile k's scales and corrections as [g][4], at float index 4k * G.
  if (tc > TILE_MAX) {
    for (let t = 0; t + 4 <= tc; t += 4) {
      for (let g = 0; g < G; g++) {
        for (let j = 0; j < 4; j++) {
          const from = (<usize>((t + j) * G + g)) << 2;
          const to = (<usize>(t * G + 4 * g + j)) << 2;
          store<u32>(xsT + to, load<u32>(xs + from));
          store<u32>(xcT + to, load<u32>(xc + from));
        }
      }
    }
  }
  setI(0, fmt);
  setP(1, out + (<usize>t0 * <usize>rows << 2));
  setP(2, w);
  setP(3, xq);
  setI(4, rows);
  setI(5, cp);
  setI(6, tc);
  setP(7, xs);
  setP(8, xc);
  setI(10, layout);
  setI(11, <i32>xRow);
  setP(12, xsT);
  setP(13, xcT);
  return rows;
}

export function quantizedMatmulTask(begin: i32, end: i32, tid: i32): void {
  const fmt = argI(0);
  const out = argP(1);
  const w = argP(2);
  const xq = argP(3);
  const rows = argI(4);
  const cp = argI(5);
  const tc = argI(6);
  const xs = argP(7);
  const xc = argP(8);
  const fence = threadScratch(tid);
  const layout = argI(10);
  const xRow = <usize>argI(11);
  const xsT = argP(12);
  const xcT = argP(13);
  if (fmt == FMT_Q8) q8Rows(out, w, xq, xs, xsT, rows, cp, tc, xRow, begin, end, fence);
  else if (fmt == FMT_Q4) q4Rows(out, w, xq, xs, xc, xsT, xcT, rows, cp, tc, xRow, begin, end, fence);
  else if (fmt == FMT_FP8) fp8Rows(out, w, xq, rows, cp, tc, xRow, begin, end, fence);
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
  if (tokens == 1) {
    // Row r pairs with row r + half: two weight streams in different pages (see q8DecodeRows).
    const half = (end - begin) >> 1;
    for (let r = begin; r < begin + half; r++) {
      const a = w + <usize>r * wStride;
      const b = w + <usize>(r + half) * wStride;
      const o = out + (<usize>r << 2);
      const ob = out + (<usize>(r + half) << 2);
      if (fmt == FMT_BF16) dotPairBF16(a, b, x, cols, o, ob);
      else dotPairF32(a, b, x, cols, o, ob);
    }
    if ((end - begin) & 1) store<f32>(out + (<usize>(end - 1) << 2), dotRow(fmt, w + <usize>(end - 1) * wStride, x, cols));
    return;
  }
  if (tokens <= TILE_MAX) {
    // A few tokens (a batched decode step, a verify): each with dotRow's arithmetic, so each gets the
    // bits it gets alone (as the q8/q4 tiles do), two at a time to load each weight vector once for both.
    for (let r = begin; r < end; r++) {
      const wr = w + <usize>r * wStride;
      const o = out + (<usize>r << 2);
      let t = 0;
      for (; t + 2 <= tokens; t += 2) {
        const x0 = x + <usize>t * xStride;
        const o0 = o + <usize>t * outStride;
        if (fmt == FMT_BF16) dotTwoBF16(wr, x0, x0 + xStride, cols, o0, o0 + outStride);
        else dotPairF32(x0, x0 + xStride, wr, cols, o0, o0 + outStride);  // f32 products commute: two tokens are two rows
      }
      if (t < tokens) store<f32>(o + <usize>t * outStride, dotRow(fmt, wr, x + <usize>t * xStride, cols));
    }
    return;
  }
  for (let r = begin; r < end; r++) {
    const wr = w + <usize>r * wStride;
    const o = out + (<usize>r << 2);
    let t = 0;
    for (; t + 4 <= tokens; t += 4) {
      const x0 = x + <usize>t * xStride;
      const o0 = o + <usize>t * outStride;
      if (fmt == FMT_BF16) dot4BF16(wr, x0, xStride, cols, o0, outStride);
      else dot4F32(wr, x0, xStride, cols, o0, outStride);
    }
    for (; t < tokens; t++) store<f32>(o + <usize>t * outStride, dotRow(fmt, wr, x + <usize>t * xStride, cols));
  }
}

// Two weight rows against one token vector, each row with exactly dotF32's / dotBF16's arithmetic (so
// a row's result does not depend on which row it pairs with), the activations loaded once for both.
function dotPairF32(a: usize, b: usize, x: usize, n: i32, outA: usize, outB: usize): void {
  let a0 = f32x4.splat(0);
  let a1 = a0;
  let a2 = a0;
  let a3 = a0;
  let b0 = a0;
  let b1 = a0;
  let b2 = a0;
  let b3 = a0;
  let i = 0;
  for (; i + 16 <= n; i += 16) {
    const o = <usize>i << 2;
    const x0 = v128.load(x + o);
    const x1 = v128.load(x + o, 16);
    const x2 = v128.load(x + o, 32);
    const x3 = v128.load(x + o, 48);
    a0 = f32x4.add(a0, f32x4.mul(v128.load(a + o), x0));
    b0 = f32x4.add(b0, f32x4.mul(v128.load(b + o), x0));
    a1 = f32x4.add(a1, f32x4.mul(v128.load(a + o, 16), x1));
    b1 = f32x4.add(b1, f32x4.mul(v128.load(b + o, 16), x1));
    a2 = f32x4.add(a2, f32x4.mul(v128.load(a + o, 32), x2));
    b2 = f32x4.add(b2, f32x4.mul(v128.load(b + o, 32), x2));
    a3 = f32x4.add(a3, f32x4.mul(v128.load(a + o, 48), x3));
    b3 = f32x4.add(b3, f32x4.mul(v128.load(b + o, 48), x3));
  }
  for (; i + 4 <= n; i += 4) {
    const o = <usize>i << 2;
    const xv = v128.load(x + o);
    a0 = f32x4.add(a0, f32x4.mul(v128.load(a + o), xv));
    b0 = f32x4.add(b0, f32x4.mul(v128.load(b + o), xv));
  }
  let sa = hsum(f32x4.add(f32x4.add(a0, a1), f32x4.add(a2, a3)));
  let sb = hsum(f32x4.add(f32x4.add(b0, b1), f32x4.add(b2, b3)));
  for (; i < n; i++) {
    const o = <usize>i << 2;
    const xv = load<f32>(x + o);
    sa += load<f32>(a + o) * xv;
    sb += load<f32>(b + o) * xv;
  }
  store<f32>(outA, sa);
  store<f32>(outB, sb);
}

function dotPairBF16(a: usize, b: usize, x: usize, n: i32, outA: usize, outB: usize): void {
  let a0 = f32x4.splat(0);
  let a1 = a0;
  let a2 = a0;
  let a3 = a0;
  let b0 = a0;
  let b1 = a0;
  let b2 = a0;
  let b3 = a0;
  let i = 0;
  for (; i + 16 <= n; i += 16) {
    const pw = <usize>i << 1;
    const px = x + (<usize>i << 2);
    const x0 = v128.load(px);
    const x1 = v128.load(px, 16);
    const x2 = v128.load(px, 32);
    const x3 = v128.load(px, 48);
    const va0 = v128.load(a + pw);
    const vb0 = v128.load(b + pw);
    a0 = f32x4.add(a0, f32x4.mul(bf16Low(va0), x0));
    b0 = f32x4.add(b0, f32x4.mul(bf16Low(vb0), x0));
    a1 = f32x4.add(a1, f32x4.mul(bf16High(va0), x1));
    b1 = f32x4.add(b1, f32x4.mul(bf16High(vb0), x1));
    const va1 = v128.load(a + pw, 16);
    const vb1 = v128.load(b + pw, 16);
    a2 = f32x4.add(a2, f32x4.mul(bf16Low(va1), x2));
    b2 = f32x4.add(b2, f32x4.mul(bf16Low(vb1), x2));
    a3 = f32x4.add(a3, f32x4.mul(bf16High(va1), x3));
    b3 = f32x4.add(b3, f32x4.mul(bf16High(vb1), x3));
  }
  for (; i + 8 <= n; i += 8) {
    const pw = <usize>i << 1;
    const px = x + (<usize>i << 2);
    const x0 = v128.load(px);
    const x1 = v128.load(px, 16);
    const va = v128.load(a + pw);
    const vb = v128.load(b + pw);
    a0 = f32x4.add(a0, f32x4.mul(bf16Low(va), x0));
    b0 = f32x4.add(b0, f32x4.mul(bf16Low(vb), x0));
    a1 = f32x4.add(a1, f32x4.mul(bf16High(va), x1));
    b1 = f32x4.add(b1, f32x4.mul(bf16High(vb), x1));
  }
  let sa = hsum(f32x4.add(f32x4.add(a0, a1), f32x4.add(a2, a3)));
  let sb = hsum(f32x4.add(f32x4.add(b0, b1), f32x4.add(b2, b3)));
  for (; i < n; i++) {
    const xv = load<f32>(x + (<usize>i << 2));
    sa += bf16At(a + (<usize>i << 1)) * xv;
    sb += bf16At(b + (<usize>i << 1)) * xv;
  }
  store<f32>(outA, sa);
  store<f32>(outB, sb);
}

// One bf16 weight row against two token vectors, each token with exactly dotBF16's arithmetic, the weights
// loaded and widened once for both (the f32 case is dotPairF32 with the tokens as its rows).
function dotTwoBF16(w: usize, x: usize, y: usize, n: i32, outX: usize, outY: usize): void {
  let a0 = f32x4.splat(0);
  let a1 = a0;
  let a2 = a0;
  let a3 = a0;
  let b0 = a0;
  let b1 = a0;
  let b2 = a0;
  let b3 = a0;
  let i = 0;
  for (; i + 16 <= n; i += 16) {
    const pw = w + (<usize>i << 1);
    const o = <usize>i << 2;
    const v0 = v128.load(pw);
    const v1 = v128.load(pw, 16);
    const w0 = bf16Low(v0);
    const w1 = bf16High(v0);
    const w2 = bf16Low(v1);
    const w3 = bf16High(v1);
    a0 = f32x4.add(a0, f32x4.mul(w0, v128.load(x + o)));
    b0 = f32x4.add(b0, f32x4.mul(w0, v128.load(y + o)));
    a1 = f32x4.add(a1, f32x4.mul(w1, v128.load(x + o, 16)));
    b1 = f32x4.add(b1, f32x4.mul(w1, v128.load(y + o, 16)));
    a2 = f32x4.add(a2, f32x4.mul(w2, v128.load(x + o, 32)));
    b2 = f32x4.add(b2, f32x4.mul(w2, v128.load(y + o, 32)));
    a3 = f32x4.add(a3, f32x4.mul(w3, v128.load(x + o, 48)));
    b3 = f32x4.add(b3, f32x4.mul(w3, v128.load(y + o, 48)));
  }
  for (; i + 8 <= n; i += 8) {
    const v = v128.load(w + (<usize>i << 1));
    const o = <usize>i << 2;
    const lo = bf16Low(v);
    const hi = bf16High(v);
    a0 = f32x4.add(a0, f32x4.mul(lo, v128.load(x + o)));
    b0 = f32x4.add(b0, f32x4.mul(lo, v128.load(y + o)));
    a1 = f32x4.add(a1, f32x4.mul(hi, v128.load(x + o, 16)));
    b1 = f32x4.add(b1, f32x4.mul(hi, v128.load(y + o, 16)));
  }
  let sa = hsum(f32x4.add(f32x4.add(a0, a1), f32x4.add(a2, a3)));
  let sb = hsum(f32x4.add(f32x4.add(b0, b1), f32x4.add(b2, b3)));
  for (; i < n; i++) {
    const wv = bf16At(w + (<usize>i << 1));
    sa += wv * load<f32>(x + (<usize>i << 2));
    sb += wv * load<f32>(y + (<usize>i << 2));
  }
  store<f32>(outX, sa);
  store<f32>(outY, sb);
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

