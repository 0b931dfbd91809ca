// MLA attention in the absorbed form over the latent cache (rows [c | k_rope] per position), as
// assembly/blocks/mla.ts computes it: kv_b's key half moves onto the query (absorb: q_lat = W_UK^T
// q_nope per head), each head attends over the cached latents (latent: scores q_lat . c + q_rope .
// k_rope, causal from the pass's first position, softmax, then the weighted sum of c), and kv_b's value
// half maps the result out (values: W_UV o_lat). kv_b is read in place as [heads * (nope + v), rank].
import { WORKGROUP, type KernelDef } from './kernel.js';

const shape = ['heads', 'nope', 'rope', 'v', 'rank', 'row_words', 'count'];
const index = `fn index(gid: vec3u, nwg: vec3u) -> u32 { return gid.x + gid.y * nwg.x * ${WORKGROUP}u; }`;

/** QA[t, h, r] = sum_d kv_b[h (nope + v) + d, r] Q[t, h (nope + rope) + d]. */
export const absorb: KernelDef = {
  name: 'mla_absorb',
  params: shape,
  bindings: [
    { name: 'W', type: 'u32' },
    { name: 'Q', type: 'f32' },
    { name: 'Y', type: 'f32', write: true },
  ],
  body: `${index}
fn run(wid: vec3u, lid: u32, gid: vec3u, nwg: vec3u) {
  let i = index(gid, nwg);
  if (i >= p.count) { return; }
  let r = i % p.rank;
  let h = (i / p.rank) % p.heads;
  let t = i / (p.rank * p.heads);
  let q = t * p.heads * (p.nope + p.rope) + h * (p.nope + p.rope);
  var s = 0.0;
  for (var d = 0u; d < p.nope; d++) { s += w_at((h * (p.nope + p.v) + d) * p.row_words, r) * Q[q + d]; }
  Y[i] = s;
}`,
};

/**
 * A workgroup per (head, token of this chunk): scores into the scratch S (one row of `ctx` per pair),
 * softmax, then OL[t, h] = sum_s p_s c_s. The cache of this sequence starts at cache_off.
 */
export const latent: KernelDef = {
  name: 'mla_latent',
  params: ['heads', 'nope', 'rope', 'rank', 'cache_off', 'pos0', 't0', 'ctx', 'scale:f32'],
  bindings: [
    { name: 'QA', type: 'f32' },
    { name: 'Q', type: 'f32' },
    { name: 'K', type: 'f32' },
    { name: 'S', type: 'f32', write: true },
    { name: 'Y', type: 'f32', write: true },
  ],
  body: `
fn run(wid: vec3u, lid: u32, gid: vec3u, nwg: vec3u) {
  let h = wid.x;
  let t = p.t0 + wid.y;
  let n = p.pos0 + t + 1u;
  let row = p.rank + p.rope;
  let qa = (t * p.heads + h) * p.rank;
  let qr = t * p.heads * (p.nope + p.rope) + h * (p.nope + p.rope) + p.nope;
  let sb = (wid.y * p.heads + h) * p.ctx;
  var m = -3.4e38;
  for (var s = lid; s < n; s += ${WORKGROUP}u) {
    let c = p.cache_off + s * row;
    var d = 0.0;
    for (var r = 0u; r < p.rank; r++) { d += QA[qa + r] * K[c + r]; }
    for (var j = 0u; j < p.rope; j++) { d += Q[qr + j] * K[c + p.rank + j]; }
    d = d * p.scale;
    S[sb + s] = d;
    m = max(m, d);
  }
  m = wg_max(m, lid);
  var sum = 0.0;
  for (var s = lid; s < n; s += ${WORKGROUP}u) {
    let e = exp(S[sb + s] - m);
    S[sb + s] = e;
    sum += e;
  }
  sum = wg_sum(sum, lid);
  storageBarrier();
  workgroupBarrier();
  for (var r = lid; r < p.rank; r += ${WORKGROUP}u) {
    var a = 0.0;
    for (var s = 0u; s < n; s++) { a += S[sb + s] * K[p.cache_off + s * row + r]; }
    Y[qa + r] = a / sum;
  }
}`,
};

/** O[t, h v + j] = sum_r kv_b[h (nope + v) + nope + j, r] OL[t, h, r]. */
export const values: KernelDef = {
  name: 'mla_values',
  params: shape,
  bindings: [
    { name: 'W', type: 'u32' },
    { name: 'OL', type: 'f32' },
    { name: 'Y', type: 'f32', write: true },
  ],
  body: `${index}
fn run(wid: vec3u, lid: u32, gid: vec3u, nwg: vec3u) {
  let i = index(gid, nwg);
  if (i >= p.count) { return; }
  let j = i % p.v;
  let h = (i / p.v) % p.heads;
  let t = i / (p.v * p.heads);
  let base = (h * (p.nope + p.v) + p.nope + j) * p.row_words;
  let ol = (t * p.heads + h) * p.rank;
  var s = 0.0;
  for (var r = 0u; r < p.rank; r++) { s += w_at(base, r) * OL[ol + r]; }
  Y[i] = s;
}`,
};
