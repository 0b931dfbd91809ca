// RMSNorm of strided rows: y = x / sqrt(mean(x^2) + eps) * g, a workgroup per row.
import { WORKGROUP, type KernelDef } from './kernel.js';

export const rmsnorm: KernelDef = {
  name: 'rmsnorm',
  params: ['cols', 'x_off', 'x_stride', 'y_off', 'y_stride', 'eps:f32'],
  bindings: [
    { name: 'X', type: 'f32' },
    { name: 'G', type: 'f32' },
    { name: 'Y', type: 'f32', write: true },
  ],
  body: `
fn run(wid: vec3u, lid: u32, gid: vec3u, nwg: vec3u) {
  let xb = p.x_off + wid.x * p.x_stride;
  let yb = p.y_off + wid.x * p.y_stride;
  var s = 0.0;
  for (var i = lid; i < p.cols; i += ${WORKGROUP}u) { let v = X[xb + i]; s += v * v; }
  let inv = 1.0 / sqrt(wg_sum(s, lid) / f32(p.cols) + p.eps);
  for (var i = lid; i < p.cols; i += ${WORKGROUP}u) { Y[yb + i] = X[xb + i] * inv * G[i]; }
}`,
};
