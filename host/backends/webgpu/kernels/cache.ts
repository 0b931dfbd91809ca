// The new positions' latent cache rows from the kv_a product, in one dispatch: c = RMSNorm(kv_a's first
// kv_lora_rank columns) * g, then k_rope (the rest) rotated by the position's angle (interleaved pairs,
// the host's cos/sin tables [positions, half], YaRN included), a workgroup per token. The queries' rope is
// taken inside the attention kernel.
import { WORKGROUP, type KernelDef } from './kernel.js';

export const cacheRows: KernelDef = {
  name: 'cache_rows',
  params: ['rank', 'x_off', 'x_stride', 'y_off', 'y_stride', 'pos0', 'half', 'eps:f32'],
  bindings: [
    { name: 'X', type: 'f32' },
    { name: 'G', type: 'f32' },
    { name: 'C', type: 'f32' },
    { name: 'S', type: 'f32' },
    { name: 'Y', type: 'f32', write: true },
  ],
  body: `
fn run(wid: vec3u, lid: u32, gid: vec3u, nwg: vec3u) {
  let t = wid.x;
  let x = p.x_off + t * p.x_stride;
  let y = p.y_off + t * p.y_stride;
  var s = 0.0;
  for (var i = lid; i < p.rank; i += ${WORKGROUP}u) { let v = X[x + i]; s += v * v; }
  let inv = 1.0 / sqrt(wg_sum(s, lid) / f32(p.rank) + p.eps);
  for (var i = lid; i < p.rank; i += ${WORKGROUP}u) { Y[y + i] = X[x + i] * inv * G[i]; }
  let tab = (p.pos0 + t) * p.half;
  for (var i = lid; i < p.half; i += ${WORKGROUP}u) {
    let a = X[x + p.rank + 2u * i];
    let b = X[x + p.rank + 2u * i + 1u];
    let c = C[tab + i];
    let sn = S[tab + i];
    Y[y + p.rank + 2u * i] = a * c - b * sn;
    Y[y + p.rank + 2u * i + 1u] = a * sn + b * c;
  }
}`,
};
