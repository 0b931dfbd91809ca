// The one-pass elementwise kernels: SwiGLU's silu(gate) * up, a strided copy of rows (into the KV
// cache), and the routed experts' rows added into x by their router weights. Each thread does one
// element; index() spreads the threads over two grid dimensions (a dimension holds at most 65535 groups).
import { WORKGROUP, type KernelDef } from './kernel.js';

const index = `fn index(gid: vec3u, nwg: vec3u) -> u32 { return gid.x + gid.y * nwg.x * ${WORKGROUP}u; }`;

/** h[p, i] = silu(gu[p, i]) * gu[p, inter + i]: gate and up are stacked in one matmul's output. */
export const siluMul: KernelDef = {
  name: 'silu_mul',
  params: ['inter', 'count'],
  bindings: [
    { name: 'GU', type: 'f32' },
    { name: 'Y', type: 'f32', write: true },
  ],
  body: `${index}
fn run(wid: vec3u, lid: u32, gid: vec3u, nwg: vec3u) {
  let i = index(gid, nwg);
  if (i >= p.count) { return; }
  let row = i / p.inter;
  let j = i % p.inter;
  let g = GU[row * 2u * p.inter + j];
  Y[i] = g / (1.0 + exp(-g)) * GU[row * 2u * p.inter + p.inter + j];
}`,
};

export const copyRows: KernelDef = {
  name: 'copy_rows',
  params: ['cols', 'count', 'x_off', 'x_stride', 'y_off', 'y_stride'],
  bindings: [
    { name: 'X', type: 'f32' },
    { name: 'Y', type: 'f32', write: true },
  ],
  body: `${index}
fn run(wid: vec3u, lid: u32, gid: vec3u, nwg: vec3u) {
  let i = index(gid, nwg);
  if (i >= p.count) { return; }
  let r = i / p.cols;
  let c = i % p.cols;
  Y[p.y_off + r * p.y_stride + c] = X[p.x_off + r * p.x_stride + c];
}`,
};

/** x[t] += sum over the token's k experts (in choice order) of weight * that expert's output row. */
export const combine: KernelDef = {
  name: 'combine',
  params: ['hidden', 'k', 'count'],
  bindings: [
    { name: 'E', type: 'f32' },
    { name: 'R', type: 'f32' },
    { name: 'Y', type: 'f32', write: true },
  ],
  body: `${index}
fn run(wid: vec3u, lid: u32, gid: vec3u, nwg: vec3u) {
  let i = index(gid, nwg);
  if (i >= p.count) { return; }
  let t = i / p.hidden;
  let c = i % p.hidden;
  var s = 0.0;
  for (var j = 0u; j < p.k; j++) { s += R[t * p.k + j] * E[(t * p.k + j) * p.hidden + c]; }
  Y[i] += s;
}`,
};
