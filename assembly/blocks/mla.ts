// The latent core of multi-head latent attention in the absorbed form (DeepSeek-V2 paper, section
// 2.1.3). The cache holds per position only [c (rank) | k_rope (ropeDim)]: the normalised latent and
// the roped key shared by all heads. The host absorbs kv_b_proj with the matmul kernels
// (host/model/attention.ts): before this step q_lat = W_UK^T q_nope, after it out = W_UV o_lat.
// Here, for token t and head h:
//   score_s = (q_lat . c_s + q_rope . k_rope_s) * scale      for s = 0 .. pos0 + t
//   o_lat   = sum_s softmax(score)_s c_s
// which equals the expanded form without ever materialising per-head keys and values. The relaxed
// build fuses the multiply-adds (madd), so its results differ from the plain build's in the last bits.
import { hsum, madd } from '../kernels/format';
import { softmax } from '../kernels/activation';
import { argF, argI, argP, setF, setI, setP } from '../board';

/** Writes mla_attention's arguments (steps.ts) on the job board; returns the step's item count. */
@inline export function stageMla(
  oLat: usize, qLat: usize, q: usize, cache: usize, scratch: usize,
  tokens: i32, heads: i32, nope: i32, ropeDim: i32, rank: i32, pos0: i32, softmaxScale: f32,
): i32 {
  setP(0, oLat);
  setP(1, qLat);
  setP(2, q);
  setP(3, cache);
  setP(4, scratch);
  setI(5, tokens);
  setI(6, heads);
  setI(7, nope);
  setI(8, ropeDim);
  setI(9, rank);
  setI(10, pos0);
  setF(0, softmaxScale);
  return heads * tokens;
}

/** Scratch floats one thread needs: the scores over `positions` positions, padded to a cache line so
 * that threads do not share one. */
export function mla_scratch_floats(positions: i32): i32 {
  return (positions + 15) & ~15;
}

/**
 * Items are (head, token) pairs in qLat's row order. A thread's share is a run of them, so it holds
 * whole heads (or runs of one head's tokens) and shares cost about the same even in a causal prefill,
 * where later tokens see more positions. Every item runs the same code whatever the thread count.
 */
export function mlaTask(begin: i32, end: i32, tid: i32): void {
  const oLat = argP(0);
  const qLat = argP(1);
  const q = argP(2);
  const cache = argP(3);
  const tokens = argI(5);
  const heads = argI(6);
  const nope = argI(7);
  const ropeDim = argI(8);
  const rank = argI(9);
  const pos0 = argI(10);
  const scale = argF(0);
  const row = <usize>(rank + ropeDim) << 2;
  const scores = argP(4) + (<usize>(tid * mla_scratch_floats(pos0 + tokens)) << 2);

  for (let item = begin; item < end; item++) {
    const h = item / tokens;
    const t = item % tokens;
    const ql = qLat + (<usize>item * <usize>rank << 2);
    const qr = q + (<usize>((t * heads + h) * (nope + ropeDim) + nope) << 2);
    const seen = pos0 + t + 1;
    let s = 0;
    for (; s + 4 <= seen; s += 4) score4(ql, qr, cache + <usize>s * row, row, rank, ropeDim, scale, scores + (<usize>s << 2));
    for (; s < seen; s++) store<f32>(scores + (<usize>s << 2), score1(ql, qr, cache + <usize>s * row, rank, ropeDim) * scale);
    softmax(scores, seen);

    const o = oLat + (<usize>item * <usize>rank << 2);
    memory.fill(o, 0, <usize>rank << 2);
    s = 0;
    for (; s + 4 <= seen; s += 4) accumulate4(o, cache + <usize>s * row, row, scores + (<usize>s << 2), rank);
    for (; s < seen; s++) accumulate1(o, cache + <usize>s * row, load<f32>(scores + (<usize>s << 2)), rank);
  }
}

// The four-position forms below give each position the same accumulator chains, in the same order, as
// the one-position forms, so a score or an output does not depend on how positions were grouped. Two
// vectors a step with immediate offsets, and (for the scores) two chains per position: measured 10-15%
// faster than one vector and one chain, and no faster with eight positions at a time.

/** q_lat . c + q_rope . k_rope for the cache row at c: two accumulator chains (even and odd vectors). */
function score1(ql: usize, qr: usize, c: usize, rank: i32, ropeDim: i32): f32 {
  let a = f32x4.splat(0);
  let b = a;
  let i = 0;
  for (; i + 8 <= rank; i += 8) {
    const o = <usize>i << 2;
    a = madd(v128.load(ql + o), v128.load(c + o), a);
    b = madd(v128.load(ql + o, 16), v128.load(c + o, 16), b);
  }
  for (; i + 4 <= rank; i += 4) a = madd(v128.load(ql + (<usize>i << 2)), v128.load(c + (<usize>i << 2)), a);
  const k = c + (<usize>rank << 2);
  let j = 0;
  for (; j + 8 <= ropeDim; j += 8) {
    const o = <usize>j << 2;
    a = madd(v128.load(qr + o), v128.load(k + o), a);
    b = madd(v128.load(qr + o, 16), v128.load(k + o, 16), b);
  }
  for (; j + 4 <= ropeDim; j += 4) a = madd(v128.load(qr + (<usize>j << 2)), v128.load(k + (<usize>j << 2)), a);
  return tail(hsum(f32x4.add(a, b)), ql, qr, c, i, j, rank, ropeDim);
}

/** score1 for the four cache rows from c (row bytes apart), times scale, into out[0..3]. */
function score4(ql: usize, qr: usize, c: usize, row: usize, rank: i32, ropeDim: i32, scale: f32, out: usize): void {
  const c0 = c;
  const c1 = c0 + row;
  const c2 = c1 + row;
  const c3 = c2 + row;
  let a0 = f32x4.splat(0);
  let a1 = a0;
  let a2 = a0;
  let a3 = a0;
  let b0 = a0;
  let b1 = a0;
  let b2 = a0;
  let b3 = a0;
  let i = 0;
  for (; i + 8 <= rank; i += 8) {
    const o = <usize>i << 2;
    const x = v128.load(ql + o);
    const y = v128.load(ql + o, 16);
    const p0 = c0 + o;
    const p1 = c1 + o;
    const p2 = c2 + o;
    const p3 = c3 + o;
    a0 = madd(x, v128.load(p0), a0);
    b0 = madd(y, v128.load(p0, 16), b0);
    a1 = madd(x, v128.load(p1), a1);
    b1 = madd(y, v128.load(p1, 16), b1);
    a2 = madd(x, v128.load(p2), a2);
    b2 = madd(y, v128.load(p2, 16), b2);
    a3 = madd(x, v128.load(p3), a3);
    b3 = madd(y, v128.load(p3, 16), b3);
  }
  for (; i + 4 <= rank; i += 4) {
    const o = <usize>i << 2;
    const x = v128.load(ql + o);
    a0 = madd(x, v128.load(c0 + o), a0);
    a1 = madd(x, v128.load(c1 + o), a1);
    a2 = madd(x, v128.load(c2 + o), a2);
    a3 = madd(x, v128.load(c3 + o), a3);
  }
  const k = <usize>rank << 2;
  let j = 0;
  for (; j + 8 <= ropeDim; j += 8) {
    const o = k + (<usize>j << 2);
    const x = v128.load(qr + (<usize>j << 2));
    const y = v128.load(qr + (<usize>j << 2), 16);
    const p0 = c0 + o;
    const p1 = c1 + o;
    const p2 = c2 + o;
    const p3 = c3 + o;
    a0 = madd(x, v128.load(p0), a0);
    b0 = madd(y, v128.load(p0, 16), b0);
    a1 = madd(x, v128.load(p1), a1);
    b1 = madd(y, v128.load(p1, 16), b1);
    a2 = madd(x, v128.load(p2), a2);
    b2 = madd(y, v128.load(p2, 16), b2);
    a3 = madd(x, v128.load(p3), a3);
    b3 = madd(y, v128.load(p3, 16), b3);
  }
  for (; j + 4 <= ropeDim; j += 4) {
    const o = k + (<usize>j << 2);
    const x = v128.load(qr + (<usize>j << 2));
    a0 = madd(x, v128.load(c0 + o), a0);
    a1 = madd(x, v128.load(c1 + o), a1);
    a2 = madd(x, v128.load(c2 + o), a2);
    a3 = madd(x, v128.load(c3 + o), a3);
  }
  store<f32>(out, tail(hsum(f32x4.add(a0, b0)), ql, qr, c0, i, j, rank, ropeDim) * scale);
  store<f32>(out, tail(hsum(f32x4.add(a1, b1)), ql, qr, c1, i, j, rank, ropeDim) * scale, 4);
  store<f32>(out, tail(hsum(f32x4.add(a2, b2)), ql, qr, c2, i, j, rank, ropeDim) * scale, 8);
  store<f32>(out, tail(hsum(f32x4.add(a3, b3)), ql, qr, c3, i, j, rank, ropeDim) * scale, 12);
}

/** sum plus the products the vector loops left: latent from i, rope from j (fewer than four each). */
@inline function tail(sum: f32, ql: usize, qr: usize, c: usize, i: i32, j: i32, rank: i32, ropeDim: i32): f32 {
  for (; i < rank; i++) sum += load<f32>(ql + (<usize>i << 2)) * load<f32>(c + (<usize>i << 2));
  const k = c + (<usize>rank << 2);
  for (; j < ropeDim; j++) sum += load<f32>(qr + (<usize>j << 2)) * load<f32>(k + (<usize>j << 2));
  return sum;
}

/** o += p c over the latent (the first rank floats) of the cache row at c. */
function accumulate1(o: usize, c: usize, p: f32, rank: i32): void {
  const vp = f32x4.splat(p);
  let i = 0;
  for (; i + 4 <= rank; i += 4) {
    const po = o + (<usize>i << 2);
    v128.store(po, madd(vp, v128.load(c + (<usize>i << 2)), v128.load(po)));
  }
  for (; i < rank; i++) {
    const po = o + (<usize>i << 2);
    store<f32>(po, load<f32>(po) + p * load<f32>(c + (<usize>i << 2)));
  }
}

/** accumulate1 for the four cache rows from c (row bytes apart) with weights p[0..3], in that order. */
function accumulate4(o: usize, c: usize, row: usize, p: usize, rank: i32): void {
  const c0 = c;
  const c1 = c0 + row;
  const c2 = c1 + row;
  const c3 = c2 + row;
  const v0 = v128.load32_splat(p);
  const v1 = v128.load32_splat(p, 4);
  const v2 = v128.load32_splat(p, 8);
  const v3 = v128.load32_splat(p, 12);
  let i = 0;
  for (; i + 8 <= rank; i += 8) {
    const off = <usize>i << 2;
    const po = o + off;
    const p0 = c0 + off;
    const p1 = c1 + off;
    const p2 = c2 + off;
    const p3 = c3 + off;
    let a = madd(v0, v128.load(p0), v128.load(po));
    let b = madd(v0, v128.load(p0, 16), v128.load(po, 16));
    a = madd(v1, v128.load(p1), a);
    b = madd(v1, v128.load(p1, 16), b);
    a = madd(v2, v128.load(p2), a);
    b = madd(v2, v128.load(p2, 16), b);
    v128.store(po, madd(v3, v128.load(p3), a));
    v128.store(po, madd(v3, v128.load(p3, 16), b), 16);
  }
  for (; i + 4 <= rank; i += 4) {
    const off = <usize>i << 2;
    const po = o + off;
    let a = madd(v0, v128.load(c0 + off), v128.load(po));
    a = madd(v1, v128.load(c1 + off), a);
    a = madd(v2, v128.load(c2 + off), a);
    v128.store(po, madd(v3, v128.load(c3 + off), a));
  }
  for (; i < rank; i++) {
    const off = <usize>i << 2;
    const po = o + off;
    let a = load<f32>(po) + load<f32>(p) * load<f32>(c0 + off);
    a += load<f32>(p, 4) * load<f32>(c1 + off);
    a += load<f32>(p, 8) * load<f32>(c2 + off);
    store<f32>(po, a + load<f32>(p, 12) * load<f32>(c3 + off));
  }
}
