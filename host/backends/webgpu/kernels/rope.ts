// Interleaved rotary embedding in place: pairs (x[2i], x[2i+1]) of each vector of token t rotate by the
// angle of position pos0 + t, from the host's cos/sin tables [positions, half] (YaRN included).
import { WORKGROUP, type KernelDef } from './kernel.js';

export const rope: KernelDef = {
  name: 'rope',
  params: ['x_off', 'x_stride', 'vec_stride', 'pos0', 'half'],
  bindings: [
    { name: 'C', type: 'f32' },
    { name: 'S', type: 'f32' },
    { name: 'X', type: 'f32', write: true },
  ],
  body: `
fn run(wid: vec3u, lid: u32, gid: vec3u, nwg: vec3u) {
  let t = wid.x;
  let base = p.x_off + t * p.x_stride + wid.y * p.vec_stride;
  let tab = (p.pos0 + t) * p.half;
  for (var i = lid; i < p.half; i += ${WORKGROUP}u) {
    let a = X[base + 2u * i];
    let b = X[base + 2u * i + 1u];
    let c = C[tab + i];
    let s = S[tab + i];
    X[base + 2u * i] = a * c - b * s;
    X[base + 2u * i + 1u] = a * s + b * c;
  }
}`,
};
