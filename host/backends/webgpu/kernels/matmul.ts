// y = W x for every (row, token) of one piece of a matrix: a workgroup per output row and input row, its
// threads over the row's groups of QUANT_GROUP weights (w_block: the format's dot product), then one
// reduction. Routed experts run through the same kernel: each input row names its expert (ids), the
// piece holds experts [expert_first, expert_first + experts) stacked, and rows of other experts are
// skipped, so a layer's experts run in one dispatch per piece whatever the router chose.
import { QUANT_GROUP } from '../../../runtime/constants.js';
import { WORKGROUP, type KernelDef } from './kernel.js';

export const matmul: KernelDef = {
  name: 'matmul',
  params: ['rows', 'cols', 'row_words', 'row_first', 'x_off', 'x_stride', 'in_div', 'y_off', 'y_stride', 'accumulate', 'routed', 'ids_off', 'expert_first', 'experts', 'mat_words'],
  bindings: [
    { name: 'W', type: 'u32' },
    { name: 'X', type: 'f32' },
    { name: 'ids', type: 'u32' },
    { name: 'Y', type: 'f32', write: true },
  ],
  body: `
fn run(wid: vec3u, lid: u32, gid: vec3u, nwg: vec3u) {
  let r = wid.x + wid.z * nwg.x;
  let pr = wid.y;
  var base = r * p.row_words;
  var live = r < p.rows;
  if (p.routed != 0u) {
    let e = ids[p.ids_off + pr];
    live = live && e >= p.expert_first && e < p.expert_first + p.experts;
    base += (e - p.expert_first) * p.mat_words;
  }
  let xb = p.x_off + (pr / p.in_div) * p.x_stride;
  let groups = select(0u, (p.cols + ${QUANT_GROUP - 1}u) / ${QUANT_GROUP}u, live);
  var s = 0.0;
  for (var b = lid; b < groups; b += ${WORKGROUP}u) {
    s += w_block(base, b, xb, min(${QUANT_GROUP}u, p.cols - b * ${QUANT_GROUP}u));
  }
  let t = wg_sum(s, lid);
  if (live && lid == 0u) {
    let o = p.y_off + pr * p.y_stride + p.row_first + r;
    if (p.accumulate != 0u) { Y[o] += t; } else { Y[o] = t; }
  }
}`,
};
