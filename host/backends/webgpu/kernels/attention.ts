// MLA attention in the absorbed form over the latent cache (rows [c | k_rope] per position), as
// assembly/blocks/mla.ts computes it: kv_b's key half moves onto the query (absorb: q_lat = W_UK^T
// q_nope per head), each head attends over the cached latents (scores q_lat . c + rope(q_rope) . k_rope,
// causal from the pass's first position, softmax, then the weighted sum of c), and kv_b's value half maps
// the result out (the matmul kernel's row groups: W_UV o_lat). kv_b is read in place as
// [heads * (nope + v), rank]. The attention is split over positions (flash decoding): a workgroup per
// (head, token, block of SPLIT positions) leaves its block's max, sum and unnormalized weighted sum of c,
// and merge combines a (head, token)'s blocks, so a decode step runs heads x blocks workgroups, not heads.
import { WORKGROUP, type KernelDef } from './kernel.js';

/** Most floats of a head's query in the latent space (kv_lora_rank + qk_rope_head_dim): the attention kernel keeps it in workgroup memory. */
export const MAX_LATENT = 1024;

/**
 * QA[t, h, r] = sum_d kv_b[h (nope + v) + d, r] Q[t q_stride + h (nope + rope) + d], a thread per (t, h, r); nope is
 * compiled in so that the loop over d unrolls and its loads are in flight together.
 */
export function absorbKernel(nope: number): KernelDef {
  return {
    name: `mla_absorb_${nope}`,
    params: ['heads', 'rope', 'v', 'rank', 'row_words', 'q_stride', 'count'],
    bindings: [
      { name: 'W', type: 'u32' },
      { name: 'Q', type: 'f32' },
      { name: 'Y', type: 'f32', write: true },
    ],
    body: `
const NOPE = ${nope}u;
fn run(wid: vec3u, lid: u32, gid: vec3u, nwg: vec3u) {
  let i = gid.x + gid.y * nwg.x * ${WORKGROUP}u;
  if (i >= p.count) { return; }
  let r = i % p.rank;
  let h = (i / p.rank) % p.heads;
  let t = i / (p.rank * p.heads);
  let q = t * p.q_stride + h * (NOPE + p.rope);
  let w0 = h * (NOPE + p.v) * p.row_words;
  var s = 0.0;
  for (var d = 0u; d < NOPE; d++) { s += w_at(w0 + d * p.row_words, r) * Q[q + d]; }
  Y[i] = s;
}`,
  };
}

/** Positions per attention block. */
export const SPLIT = 16;

/**
 * A workgroup per (head, token of this chunk, block of SPLIT positions): its query (q_lat, and q_rope roped
 * at the token's position from the host's tables) in workgroup memory; each position's score as the
 * workgroup's threads' partial dot products over interleaved columns (coalesced loads, rank and rope
 * compiled in so the loops unroll), summed per position; the block's softmax max and sum; then the block's
 * sum of e^(score - max) c over positions into OP, with [max, sum] into ML. Blocks past the token's causal
 * end are empty and write nothing.
 */
export function attendKernel(rank: number, rope: number): KernelDef {
  return {
    name: `mla_attend_${rank}_${rope}`,
    params: ['heads', 'nope', 'q_stride', 'cache_off', 'pos0', 't0', 'blocks', 'scale:f32'],
    bindings: [
      { name: 'QA', type: 'f32' },
      { name: 'Q', type: 'f32' },
      { name: 'K', type: 'f32' },
      { name: 'C', type: 'f32' },
      { name: 'S', type: 'f32' },
      { name: 'OP', type: 'f32', write: true },
      { name: 'ML', type: 'f32', write: true },
    ],
    body: `
const RANK = ${rank}u;
const ROPE = ${rope}u;
const ROW = RANK + ROPE;
const SPLIT = ${SPLIT}u;
var<workgroup> qs: array<f32, ROW>;
var<workgroup> part: array<f32, ${SPLIT * WORKGROUP}>;
var<workgroup> ws: array<f32, SPLIT>;
fn run(wid: vec3u, lid: u32, gid: vec3u, nwg: vec3u) {
  let h = wid.x;
  let t = p.t0 + wid.y;
  let b = wid.z;
  let n = p.pos0 + t + 1u;
  if (b * SPLIT >= n) { return; }
  let half = ROPE / 2u;
  let qa = (t * p.heads + h) * RANK;
  let qr = t * p.q_stride + h * (p.nope + ROPE) + p.nope;
  for (var r = lid; r < RANK; r += ${WORKGROUP}u) { qs[r] = QA[qa + r]; }
  let tab = (p.pos0 + t) * half;
  for (var i = lid; i < half; i += ${WORKGROUP}u) {
    let x = Q[qr + 2u * i];
    let y = Q[qr + 2u * i + 1u];
    let c = C[tab + i];
    let s = S[tab + i];
    qs[RANK + 2u * i] = x * c - y * s;
    qs[RANK + 2u * i + 1u] = x * s + y * c;
  }
  workgroupBarrier();
  let s0 = b * SPLIT;
  let cnt = min(SPLIT, n - s0);
  let k0 = p.cache_off + s0 * ROW;
  for (var j = 0u; j < SPLIT; j++) {
    var a = 0.0;
    if (j < cnt) {
      for (var r = lid; r < ROW; r += ${WORKGROUP}u) { a += qs[r] * K[k0 + j * ROW + r]; }
    }
    part[j * ${WORKGROUP}u + lid] = a;
  }
  workgroupBarrier();
  var d = -3.4e38;
  if (lid < cnt) {
    var a = 0.0;
    for (var i = 0u; i < ${WORKGROUP}u; i++) { a += part[lid * ${WORKGROUP}u + i]; }
    d = a * p.scale;
  }
  let m = wg_max(d, lid);
  let e = select(0.0, exp(d - m), lid < cnt);
  if (lid < SPLIT) { ws[lid] = e; }
  let l = wg_sum(e, lid);
  let pair = (wid.y * p.heads + h) * p.blocks + b;
  for (var r = lid; r < RANK; r += ${WORKGROUP}u) {
    var a = 0.0;
    for (var j = 0u; j < SPLIT; j++) {
      if (j < cnt) { a += ws[j] * K[k0 + j * ROW + r]; }
    }
    OP[pair * RANK + r] = a;
  }
  if (lid == 0u) { ML[pair * 2u] = m; ML[pair * 2u + 1u] = l; }
}`,
  };
}
/** Y[t, h] = sum over the blocks of e^(max_b - max) OP_b / sum over the blocks of e^(max_b - max) sum_b. */
export const merge: KernelDef = {
  name: 'mla_merge',
  params: ['heads', 'rank', 'pos0', 't0', 'blocks'],
  bindings: [
    { name: 'OP', type: 'f32' },
    { name: 'ML', type: 'f32' },
    { name: 'Y', type: 'f32', write: true },
  ],
  body: `
fn run(wid: vec3u, lid: u32, gid: vec3u, nwg: vec3u) {
  let h = wid.x;
  let t = p.t0 + wid.y;
  let nb = (p.pos0 + t + ${SPLIT}u) / ${SPLIT}u;
  let pair0 = (wid.y * p.heads + h) * p.blocks;
  var m = -3.4e38;
  for (var b = 0u; b < nb; b++) { m = max(m, ML[(pair0 + b) * 2u]); }
  var l = 0.0;
  for (var b = 0u; b < nb; b++) { l += exp(ML[(pair0 + b) * 2u] - m) * ML[(pair0 + b) * 2u + 1u]; }
  let y = (t * p.heads + h) * p.rank;
  for (var r = lid; r < p.rank; r += ${WORKGROUP}u) {
    var a = 0.0;
    for (var b = 0u; b < nb; b++) { a += exp(ML[(pair0 + b) * 2u] - m) * OP[(pair0 + b) * p.rank + r]; }
    Y[y + r] = a / l;
  }
}`,
};
