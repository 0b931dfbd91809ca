// The index of the largest logit of one row (ties to the lowest index, as the CPU sampler's argmax),
// so a greedy step reads back four bytes instead of the row.
import { WORKGROUP, type KernelDef } from './kernel.js';

export const argmax: KernelDef = {
  name: 'argmax',
  params: ['n', 'x_off', 'out'],
  bindings: [
    { name: 'X', type: 'f32' },
    { name: 'Y', type: 'u32', write: true },
  ],
  body: `
var<workgroup> best_v: array<f32, ${WORKGROUP}>;
var<workgroup> best_i: array<u32, ${WORKGROUP}>;
fn run(wid: vec3u, lid: u32, gid: vec3u, nwg: vec3u) {
  var v = -3.4e38;
  var b = 0u;
  for (var i = lid; i < p.n; i += ${WORKGROUP}u) {
    let x = X[p.x_off + i];
    if (x > v) { v = x; b = i; }
  }
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
  if (lid == 0u) { Y[p.out] = best_i[0]; }
}`,
};
