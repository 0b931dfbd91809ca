// Mixture-of-experts routing on the device, a thread per token, as assembly/kernels/route.ts does it on
// the CPU: greedy (top-k of the scores), group_limited_greedy (a group scores its best expert) and
// noaux_tc (choose by score + bias; a group scores the sum of its two best). The weights are the
// unbiased scores, normalised when norm_topk_prob, times routed_scaling_factor. Ties go to the lowest
// index. The expert and group counts are compiled in: the arrays are per thread.
import { ROUTE_GREEDY, ROUTE_NOAUX_TC, SCORE_SIGMOID } from '../../../runtime/constants.js';
import { WORKGROUP, type KernelDef } from './kernel.js';

export function routeKernel(experts: number, groups: number): KernelDef {
  return {
    name: `route_${experts}_${groups}`,
    params: ['tokens', 'k', 'keep_groups', 'method', 'scoring', 'normalize', 'has_bias', 'scale:f32'],
    bindings: [
      { name: 'L', type: 'f32' },
      { name: 'B', type: 'f32' },
      { name: 'ids', type: 'u32', write: true },
      { name: 'R', type: 'f32', write: true },
    ],
    body: `
const NE = ${experts}u;
const NG = ${groups}u;
fn run(wid: vec3u, lid: u32, gid: vec3u, nwg: vec3u) {
  let t = gid.x + gid.y * nwg.x * ${WORKGROUP}u;
  if (t >= p.tokens) { return; }
  var score: array<f32, NE>;
  var choice: array<f32, NE>;
  let l = t * NE;
  if (p.scoring == ${SCORE_SIGMOID}u) {
    for (var e = 0u; e < NE; e++) { score[e] = 1.0 / (1.0 + exp(-L[l + e])); }
  } else {
    var m = -3.4e38;
    for (var e = 0u; e < NE; e++) { m = max(m, L[l + e]); }
    var sum = 0.0;
    for (var e = 0u; e < NE; e++) { score[e] = exp(L[l + e] - m); sum += score[e]; }
    for (var e = 0u; e < NE; e++) { score[e] = score[e] / sum; }
  }
  for (var e = 0u; e < NE; e++) { choice[e] = score[e] + select(0.0, B[e], p.has_bias != 0u); }
  if (p.method != ${ROUTE_GREEDY}u && NG > 1u) {
    let per = NE / NG;
    var gs: array<f32, NG>;
    for (var g = 0u; g < NG; g++) {
      var a = -3.4e38;
      var b = -3.4e38;
      for (var e = g * per; e < (g + 1u) * per; e++) {
        let v = choice[e];
        if (v > a) { b = a; a = v; } else if (v > b) { b = v; }
      }
      gs[g] = select(a, select(a, a + b, per > 1u), p.method == ${ROUTE_NOAUX_TC}u);
    }
    for (var d = 0u; d < NG - p.keep_groups; d++) {
      var worst = 0u;
      for (var g = 1u; g < NG; g++) { if (gs[g] < gs[worst]) { worst = g; } }
      gs[worst] = 3.4e38;
      for (var e = worst * per; e < (worst + 1u) * per; e++) { choice[e] = -3.4e38; }
    }
  }
  var total = 0.0;
  for (var j = 0u; j < p.k; j++) {
    var best = 0u;
    for (var e = 1u; e < NE; e++) { if (choice[e] > choice[best]) { best = e; } }
    choice[best] = -3.4e38;
    ids[t * p.k + j] = best;
    R[t * p.k + j] = score[best];
    total += score[best];
  }
  let f = select(p.scale, p.scale / (total + 1e-20), p.normalize != 0u);
  for (var j = 0u; j < p.k; j++) { R[t * p.k + j] = R[t * p.k + j] * f; }
}`,
  };
}
