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

/** Threads of an absorb workgroup that share one pair of columns, each over every ABSORB_PARTS-th row of W_UK. */
const ABSORB_PARTS = 4;
const ABSORB_PAIRS = WORKGROUP / ABSORB_PARTS;

/**
 * QA[t, h, r] = sum_d kv_b[h (nope + v) + d, r] Q[t q_stride + h (nope + rope) + d]. A workgroup per
 * (ABSORB_PAIRS pairs of columns r, head, token): adjacent threads on adjacent columns (coalesced rows of
 * W_UK), the rows d split ABSORB_PARTS ways between threads, their partial sums added in workgroup memory,
 * so a decode step has heads x rank / 32 workgroups with short loops (nope compiled in, so they unroll).
 */
export function absorbKernel(nope: number): KernelDef {
  return {
    name: `mla_absorb_${nope}`,
    params: ['heads', 'rope', 'v', 'rank', 'row_words', 'q_stride'],
    bindings: [
      { name: 'W', type: 'u32' },
      { name: 'Q', type: 'f32' },
      { name: 'Y', type: 'f32', write: true },
    ],
    body: `
const NOPE = ${nope}u;
var<workgroup> part: array<vec2f, ${WORKGROUP}>;
fn run(wid: vec3u, lid: u32, gid: vec3u, nwg: vec3u) {
  let h = wid.y;
  let t = wid.z;
  let r0 = 2u * (wid.x * ${ABSORB_PAIRS}u + lid % ${ABSORB_PAIRS}u);
  let dp = lid / ${ABSORB_PAIRS}u;
  let q = t * p.q_stride + h * (NOPE + p.rope);
  let w0 = h * (NOPE + p.v) * p.row_words;
  let r1 = min(r0 + 1u, p.rank - 1u);
  var s = vec2f(0.0);
  if (r0 < p.rank) {
    for (var d = dp; d < NOPE; d += ${ABSORB_PARTS}u) {
      let qd = Q[q + d];
      let row = w0 + d * p.row_words;
      s += vec2f(w_at(row, r0), w_at(row, r1)) * qd;
    }
  }
  part[lid] = s;
  workgroupBarrier();
  if (dp == 0u && r0 < p.rank) {
    var a = s;
    for (var k = 1u; k < ${ABSORB_PARTS}u; k++) { a += part[lid + k * ${ABSORB_PAIRS}u]; }
    let y = (t * p.heads + h) * p.rank;
    Y[y + r0] = a.x;
    if (r0 + 1u < p.rank) { Y[y + r0 + 1u] = a.y; }
  }
}`,
  };
}

/** Columns of one absorb workgroup (its grid's x: ceil(rank / ABSORB_COLUMNS)). */
export const ABSORB_COLUMNS = 2 * ABSORB_PAIRS;

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
/** Blocks whose weights a merge workgroup holds at once. */
const MERGE_CHUNK = 256;

/**
 * Y[t, h] = sum over the blocks of e^(max_b - max) OP_b / sum over the blocks of e^(max_b - max) sum_b: a
 * workgroup per (head, token), the blocks' max and weights taken by all its threads (the weights kept in
 * workgroup memory, MERGE_CHUNK at a time), each thread summing its columns (rank compiled in).
 */
export function mergeKernel(rank: number): KernelDef {
  const per = Math.ceil(rank / WORKGROUP);
  return {
    name: `mla_merge_${rank}`,
    params: ['heads', 'pos0', 't0', 'blocks'],
    bindings: [
      { name: 'OP', type: 'f32' },
      { name: 'ML', type: 'f32' },
      { name: 'Y', type: 'f32', write: true },
    ],
    body: `
const RANK = ${rank}u;
const PER = ${per}u;
var<workgroup> wb: array<f32, ${MERGE_CHUNK}>;
fn run(wid: vec3u, lid: u32, gid: vec3u, nwg: vec3u) {
  let h = wid.x;
  let t = p.t0 + wid.y;
  let nb = (p.pos0 + t + ${SPLIT}u) / ${SPLIT}u;
  let pair0 = (wid.y * p.heads + h) * p.blocks;
  var m = -3.4e38;
  for (var b = lid; b < nb; b += ${WORKGROUP}u) { m = max(m, ML[(pair0 + b) * 2u]); }
  m = wg_max(m, lid);
  var l = 0.0;
  for (var b = lid; b < nb; b += ${WORKGROUP}u) { l += exp(ML[(pair0 + b) * 2u] - m) * ML[(pair0 + b) * 2u + 1u]; }
  l = wg_sum(l, lid);
  var acc: array<f32, PER>;
  for (var c0 = 0u; c0 < nb; c0 += ${MERGE_CHUNK}u) {
    let cnt = min(${MERGE_CHUNK}u, nb - c0);
    for (var b = lid; b < cnt; b += ${WORKGROUP}u) { wb[b] = exp(ML[(pair0 + c0 + b) * 2u] - m); }
    workgroupBarrier();
    for (var i = 0u; i < PER; i++) {
      let r = lid + i * ${WORKGROUP}u;
      if (r < RANK) {
        var a = acc[i];
        for (var b = 0u; b < cnt; b++) { a += wb[b] * OP[(pair0 + c0 + b) * RANK + r]; }
        acc[i] = a;
      }
    }
    workgroupBarrier();
  }
  let y = (t * p.heads + h) * RANK;
  for (var i = 0u; i < PER; i++) {
    let r = lid + i * ${WORKGROUP}u;
    if (r < RANK) { Y[y + r] = acc[i] / l; }
  }
}`,
  };
}
