// The index of the largest logit of one row (ties to the lowest index, as the CPU sampler's argmax),
// so a greedy step reads back four bytes instead of the row. Two dispatches: `argmaxParts` has PARTS
// workgroups each take one contiguous slice and leave its best (value, index), `argmax` reduces those.
import { WORKGROUP, type KernelDef } from './kernel.js';

/** Workgroups of the first stage. */
export const ARGMAX_PARTS = 256;

/** The workgroup's best of (v, i) over its threads: larger value, then lower index. */
const reduce = `
var<workgroup> best_v: array<f32, ${WORKGROUP}>;
var<workgroup> best_i: array<u32, ${WORKGROUP}>;
fn best(v: f32, b: u32, lid: u32) -> vec2u {
  best_v[lid] = v;
  best_i[lid] = b;
  workgroupBarrier();
  for (var s = ${WORKGROUP / 2}u; s > 0u; s >>= 1u) {
    if (lid < s) {
      let ov = best_v[lid + s];
      let oi = best_i[lid + s];
      if (ov > best_v[lid] || (ov == best_v[lid] && oi < best_i[lid])) { best_v[lid] = ov; best_i[lid] = oi; }
    }
    workgroupBarrier();
  }
  return vec2u(bitcast<u32>(best_v[0]), best_i[0]);
}`;

export const argmaxParts: KernelDef = {
  name: 'argmax_parts',
  params: ['n', 'x_off'],
  bindings: [
    { name: 'X', type: 'f32' },
    { name: 'P', type: 'u32', write: true },
  ],
  body: `${reduce}
fn run(wid: vec3u, lid: u32, gid: vec3u, nwg: vec3u) {
  let per = (p.n + ${ARGMAX_PARTS - 1}u) / ${ARGMAX_PARTS}u;
  let lo = wid.x * per;
  let hi = min(p.n, lo + per);
  var v = -3.4e38;
  var b = 0xffffffffu;
  for (var i = lo + lid; i < hi; i += ${WORKGROUP}u) {
    let x = X[p.x_off + i];
    if (x > v || b == 0xffffffffu) { v = x; b = i; }
  }
  let r = best(v, b, lid);
  if (lid == 0u) { P[2u * wid.x] = r.x; P[2u * wid.x + 1u] = r.y; }
}`,
};

export const argmax: KernelDef = {
  name: 'argmax',
  params: ['out'],
  bindings: [
    { name: 'P', type: 'u32' },
    { name: 'Y', type: 'u32', write: true },
  ],
  body: `${reduce}
fn run(wid: vec3u, lid: u32, gid: vec3u, nwg: vec3u) {
  var v = -3.4e38;
  var b = 0xffffffffu;
  for (var i = lid; i < ${ARGMAX_PARTS}u; i += ${WORKGROUP}u) {
    let pv = bitcast<f32>(P[2u * i]);
    let pi = P[2u * i + 1u];
    if (pi != 0xffffffffu && (b == 0xffffffffu || pv > v || (pv == v && pi < b))) { v = pv; b = pi; }
  }
  let r = best(v, b, lid);
  if (lid == 0u) { Y[p.out] = r.y; }
}`,
};
