// Mixture-of-experts routing on the device, a workgroup per token, as assembly/kernels/route.ts does it on
// the CPU: greedy (top-k of the scores), group_limited_greedy (a group scores its best expert) and
// noaux_tc (choose by score + bias; a group scores the sum of its two best). The weights are the
// unbiased scores, normalised when norm_topk_prob, times routed_scaling_factor. Ties go to the lowest
// index. The expert and group counts are compiled in (the workgroup's arrays); the threads share the experts
// for the scores and each of the k choices, the group scores by group.
import { ROUTE_GREEDY, ROUTE_NOAUX_TC, SCORE_SIGMOID } from '../../../runtime/constants.js';
import { WORKGROUP, type KernelDef } from './kernel.js';

export function routeKernel(experts: number, groups: number): KernelDef {
  return {
    name: `route_${experts}_${groups}`,
    params: ['k', 'keep_groups', 'method', 'scoring', 'normalize', 'has_bias', 'scale:f32'],
    bindings: [
      { name: 'L', type: 'f32' },
      { name: 'B', type: 'f32' },
      { name: 'ids', type: 'u32', write: true },
      { name: 'R', type: 'f32', write: true },
    ],
    body: `
const NE = ${experts}u;
const NG = ${groups}u;
var<workgroup> score: array<f32, NE>;
var<workgroup> choice: array<f32, NE>;
var<workgroup> gs: array<f32, NG>;
var<workgroup> best_v: array<f32, ${WORKGROUP}>;
var<workgroup> best_i: array<u32, ${WORKGROUP}>;
fn run(wid: vec3u, lid: u32, gid: vec3u, nwg: vec3u) {
  let t = wid.x;
  let l = t * NE;
  if (p.scoring == ${SCORE_SIGMOID}u) {
    for (var e = lid; e < NE; e += ${WORKGROUP}u) { score[e] = 1.0 / (1.0 + exp(-L[l + e])); }
  } else {
    var m = -3.4e38;
    for (var e = lid; e < NE; e += ${WORKGROUP}u) { m = max(m, L[l + e]); }
    m = wg_max(m, lid);
    var sum = 0.0;
    for (var e = lid; e < NE; e += ${WORKGROUP}u) { let x = exp(L[l + e] - m); score[e] = x; sum += x; }
    sum = wg_sum(sum, lid);
    for (var e = lid; e < NE; e += ${WORKGROUP}u) { score[e] = score[e] / sum; }
  }
  for (var e = lid; e < NE; e += ${WORKGROUP}u) { choice[e] = score[e] + select(0.0, B[e], p.has_bias != 0u); }
  workgroupBarrier();
  if (p.method != ${ROUTE_GREEDY}u && NG > 1u) {
    let per = NE / NG;
    for (var g = lid; g < NG; g += ${WORKGROUP}u) {
      var a = -3.4e38;
      var b = -3.4e38;
      for (var e = g * per; e < (g + 1u) * per; e++) {
        let v = choice[e];
        if (v > a) { b = a; a = v; } else if (v > b) { b = v; }
      }
      gs[g] = select(a, select(a, a + b, per > 1u), p.method == ${ROUTE_NOAUX_TC}u);
    }
    workgroupBarrier();
    if (lid == 0u) {
      for (var d = 0u; d < NG - p.keep_groups; d++) {
        var worst = 0u;
        for (var g = 1u; g < NG; g++) { if (gs[g] < gs[worst]) { worst = g; } }
        gs[worst] = 3.4e38;
        for (var e = worst * per; e < (worst + 1u) * per; e++) { choice[e] = -3.4e38; }
      }
    }
    workgroupBarrier();
  }
  // k rounds of the workgroup's first largest choice (ties to the lowest index, as a scan from 0 would).
  var total = 0.0;
  for (var j = 0u; j < p.k; j++) {
    var v = -3.4e38;
    var b = 0xffffffffu;
    for (var e = lid; e < NE; e += ${WORKGROUP}u) {
      if (b == 0xffffffffu || choice[e] > v) { v = choice[e]; b = e; }
    }
    best_v[lid] = v;
    best_i[lid] = b;
    workgroupBarrier();
    for (var s = ${WORKGROUP / 2}u; s > 0u; s >>= 1u) {
      if (lid < s) {
        let ov = best_v[lid + s];
        let oi = best_i[lid + s];
        let mine = best_i[lid];
        if (oi != 0xffffffffu && (mine == 0xffffffffu || ov > best_v[lid] || (ov == best_v[lid] && oi < mine))) { best_v[lid] = ov; best_i[lid] = oi; }
      }
      workgroupBarrier();
    }
    let best = best_i[0];
    if (lid == 0u) {
      choice[best] = -3.4e38;
      ids[t * p.k + j] = best;
      R[t * p.k + j] = score[best];
    }
    total += score[best];
    workgroupBarrier();
  }
  if (lid == 0u) {
    let f = select(p.scale, p.scale / (total + 1e-20), p.normalize != 0u);
    for (var j = 0u; j < p.k; j++) { R[t * p.k + j] = R[t * p.k + j] * f; }
  }
}`,
  };
}
