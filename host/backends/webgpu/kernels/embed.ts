// Rows of the embedding for each token id, as f32; one dispatch per piece of the table (rows
// [row_first, row_first + rows)), tokens whose row lies in another piece are left to its dispatch.
import { WORKGROUP, type KernelDef } from './kernel.js';

export const embed: KernelDef = {
  name: 'embed',
  params: ['cols', 'row_words', 'row_first', 'rows', 'ids_off'],
  bindings: [
    { name: 'W', type: 'u32' },
    { name: 'ids', type: 'u32' },
    { name: 'Y', type: 'f32', write: true },
  ],
  body: `
fn run(wid: vec3u, lid: u32, gid: vec3u, nwg: vec3u) {
  let t = wid.x;
  let id = ids[p.ids_off + t];
  if (id < p.row_first || id >= p.row_first + p.rows) { return; }
  let base = (id - p.row_first) * p.row_words;
  for (var i = lid; i < p.cols; i += ${WORKGROUP}u) { Y[t * p.cols + i] = w_at(base, i); }
}`,
};
