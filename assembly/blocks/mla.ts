// Multi-head latent attention in the absorbed form (DeepSeek-V2 paper, section 2.1.3). The cache holds
// per position only [c (rank) | k_rope (ropeDim)]: the normalised latent and the roped shared key.
// For head h, with W_UK / W_UV the head's rows of kv_b_proj:
//   score_s = (W_UK^T q_nope) . c_s + q_rope . k_rope_s      (one dot over rank + ropeDim)
//   out     = W_UV (sum_s p_s c_s)
// which equals the expanded form without ever materialising per-head keys and values.
import { axpyRow, dotF32, dotRow, rowBytes } from '../kernels/format';
import { softmax } from '../kernels/activation';
import { argF, argI, argP, parallel, setF, setI, setP } from '../pool';
import { OP_MLA } from '../ops';

/**
 * q [T, heads, nope + ropeDim] (rope part already rotated), cache [pos0 + T, rank + ropeDim],
 * kvB [heads * (nope + vDim), rank] in format fmt, out [T, heads, vDim]. Token t sits at position
 * pos0 + t and sees positions 0..pos0 + t. scratch: threads * scratchFloats(...) floats.
 */
export function mla_attention(
  fmt: i32, out: usize, q: usize, kvB: usize, cache: usize, scratch: usize,
  tokens: i32, heads: i32, nope: i32, ropeDim: i32, vDim: i32, rank: i32, pos0: i32, softmaxScale: f32,
): void {
  setI(0, fmt);
  setP(1, out);
  setP(2, q);
  setP(3, kvB);
  setP(4, cache);
  setP(5, scratch);
  setI(6, tokens);
  setI(7, heads);
  setI(8, nope);
  setI(9, ropeDim);
  setI(10, vDim);
  setI(11, rank);
  setI(12, pos0);
  setF(0, softmaxScale);
  parallel(OP_MLA, tokens * heads);
}

/** Scratch floats one thread needs: the absorbed query, the scores, the latent output. */
export function mla_scratch_floats(rank: i32, ropeDim: i32, positions: i32): i32 {
  return align4(rank + ropeDim) + align4(positions) + align4(rank);
}

@inline function align4(n: i32): i32 {
  return (n + 3) & ~3;
}

export function mlaTask(begin: i32, end: i32, tid: i32): void {
  const fmt = argI(0);
  const out = argP(1);
  const q = argP(2);
  const kvB = argP(3);
  const cache = argP(4);
  const heads = argI(7);
  const nope = argI(8);
  const ropeDim = argI(9);
  const vDim = argI(10);
  const rank = argI(11);
  const pos0 = argI(12);
  const scale = argF(0);
  const tokens = argI(6);
  const latent = rank + ropeDim;
  const wRow = rowBytes(fmt, rank);
  const cacheRow = <usize>latent << 2;
  const qAbs = argP(5) + (<usize>(tid * mla_scratch_floats(rank, ropeDim, pos0 + tokens)) << 2);
  const scores = qAbs + (<usize>align4(latent) << 2);
  const oLat = scores + (<usize>align4(pos0 + tokens) << 2);

  for (let item = begin; item < end; item++) {
    const t = item / heads;
    const h = item % heads;
    const qh = q + (<usize>(item * (nope + ropeDim)) << 2);
    const wUK = kvB + <usize>(h * (nope + vDim)) * wRow;
    const wUV = wUK + <usize>nope * wRow;

    memory.fill(qAbs, 0, <usize>rank << 2);
    for (let i = 0; i < nope; i++) axpyRow(fmt, qAbs, wUK + <usize>i * wRow, load<f32>(qh + (<usize>i << 2)), rank);
    memory.copy(qAbs + (<usize>rank << 2), qh + (<usize>nope << 2), <usize>ropeDim << 2);

    const seen = pos0 + t + 1;
    for (let s = 0; s < seen; s++) {
      store<f32>(scores + (<usize>s << 2), dotF32(qAbs, cache + <usize>s * cacheRow, latent) * scale);
    }
    softmax(scores, seen);

    memory.fill(oLat, 0, <usize>rank << 2);
    for (let s = 0; s < seen; s++) axpyRow(0, oLat, cache + <usize>s * cacheRow, load<f32>(scores + (<usize>s << 2)), rank);

    const oh = out + (<usize>(item * vDim) << 2);
    for (let j = 0; j < vDim; j++) store<f32>(oh + (<usize>j << 2), dotRow(fmt, wUV + <usize>j * wRow, oLat, rank));
  }
}
