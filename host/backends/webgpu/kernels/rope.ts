// Interleaved rotary embedding of each token's k_rope, from the kv_a product into the latent cache:
// pairs (x[2i], x[2i+1]) of token t rotate by the angle of position pos0 + t, from the host's cos/sin
// tables [positions, half] (YaRN included). The queries' rope is taken inside the attention kernel.
import { WORKGROUP, type KernelDef } from './kernel.js';

export const rope: KernelDef = {
  name: 'rope',
  params: ['x_off', 'x_stride', 'y_off', 'y_stride', 'pos0', 'half'],
  bindings: [
    { name: 'C', type: 'f32' },
    { name: 'S', type: 'f32' },
    { name: 'X', type: 'f32' },
    { name: 'Y', type: 'f32', write: true },
  ],
  body: `
fn run(wid: vec3u, lid: u32, gid: vec3u, nwg: vec3u) {
  let t = wid.x;
  let x = p.x_off + t * p.x_stride;
  let y = p.y_off + t * p.y_stride;
  let tab = (p.pos0 + t) * p.half;
  for (var i = lid; i < p.half; i += ${WORKGROUP}u) {
    let a = X[x + 2u * i];
    let b = X[x + 2u * i + 1u];
    let c = C[tab + i];
    let s = S[tab + i];
    Y[y + 2u * i] = a * c - b * s;
    Y[y + 2u * i + 1u] = a * s + b * c;
  }
}`,
};
