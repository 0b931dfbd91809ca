// y = W x for every (row, output row) of one piece of a matrix: a workgroup per MATVEC_ROWS outputs, its
// threads over the rows' chunks (formats.ts's w_chunk: adjacent threads read adjacent 16-byte chunks), then
// one reduction. The input is read through xv: as it is, RMS-normed on the fly (`norm`: the workgroup sums
// x^2 over the same row and scales its dot product, so no normed copy is written), or SwiGLU'd (`silu`:
// silu(gate) * up from the gate_up product's row). Routed experts run through the same kernel: each input
// row names its expert (ids), the piece holds experts [expert_first, expert_first + experts) stacked, rows
// of other experts are skipped; with `fan` > 1 an output row sums its `fan` input rows weighted by R (a
// token's experts: the down projection and the combine in one dispatch). grp_* read row groups of a
// larger matrix (kv_b's value rows per head, each head its own input slice).
import { WORKGROUP, type KernelDef } from './kernel.js';

export type MatvecInput = 'plain' | 'norm' | 'silu';

/** Output rows per workgroup: each thread reads the same chunk of that many rows, so their loads are in flight at once and one reduction serves them. */
export const MATVEC_ROWS = 4;

const INPUT: Record<MatvecInput, string> = {
  plain: 'fn xv(xb: u32, k: u32) -> f32 { return X[xb + k]; }',
  norm: 'fn xv(xb: u32, k: u32) -> f32 { return X[xb + k] * G[k]; }',
  silu: 'fn xv(xb: u32, k: u32) -> f32 { let g = X[xb + k]; return g / (1.0 + exp(-g)) * X[xb + p.cols + k]; }',
};

const made = new Map<string, KernelDef>();

/**
 * The kernel for an input kind, word width and rows per workgroup (MATVEC_ROWS, or 1 for row groups of a
 * size it does not divide), made once (a step looks it up per dispatch).
 */
export function matmulKernel(input: MatvecInput, vec4: boolean, rows: number): KernelDef {
  const key = `${input}${vec4}${rows}`;
  let def = made.get(key);
  if (!def) made.set(key, (def = makeMatmul(input, vec4, rows)));
  return def;
}

function makeMatmul(input: MatvecInput, vec4: boolean, ROWS: number): KernelDef {
  const norm = input === 'norm';
  const acc = ROWS === 1 ? 'f32' : `vec${ROWS}f`;
  const sum = ROWS === 1 ? 'wg_sum' : 'wg_sum4';
  if (ROWS !== 1 && ROWS !== 4) throw new Error(`matmul: ${ROWS} rows per workgroup (1 or 4)`);
  return {
    name: `matmul_${input}${vec4 ? '_v4' : ''}_${ROWS}`,
    vec4,
    params: [
      'rows', 'cols', 'row_words', 'row_first', 'x_off', 'x_stride', 'in_div', 'y_off', 'y_stride', 'accumulate', 'routed', 'fan',
      'expert_first', 'experts', 'mat_words', 'grp_rows', 'grp_stride', 'grp_skip', 'grp_x', 'eps:f32',
    ],
    bindings: [
      { name: 'W', type: vec4 ? 'vec4<u32>' : 'u32' },
      { name: 'X', type: 'f32' },
      { name: 'ids', type: 'u32' },
      { name: 'R', type: 'f32' },
      { name: 'G', type: 'f32' },
      { name: 'Y', type: 'f32', write: true },
    ],
    body: `${INPUT[input]}
fn run(wid: vec3u, lid: u32, gid: vec3u, nwg: vec3u) {
  let r0 = (wid.x + wid.z * nwg.x) * ${ROWS}u;
  let o = wid.y;
  let full = p.cols / CW;
  // A workgroup's rows lie in one row group (grp_rows is a multiple of its rows): one input for all of them.
  let grp = r0 / p.grp_rows;
  var total = ${acc}(0.0);
  var any = false;
  for (var j = 0u; j < p.fan; j++) {
    let pr = o * p.fan + j;
    var off = 0u;
    var on = true;
    if (p.routed != 0u) {
      let e = ids[pr];
      on = e >= p.expert_first && e < p.expert_first + p.experts;
      off = (e - p.expert_first) * p.mat_words;
    }
    let xb = p.x_off + (pr / p.in_div) * p.x_stride + grp * p.grp_x;
    // Rows past the last are read as the last (and not written): the loops stay the same for every thread.
    var base: array<u32, ${ROWS}>;
    for (var i = 0u; i < ${ROWS}u; i++) {
      let r = min(r0 + i, p.rows - 1u);
      base[i] = off + (grp * p.grp_stride + p.grp_skip + r % p.grp_rows) * p.row_words;
    }
    var s = ${acc}(0.0);
    if (on) {
      for (var c = lid; c < full; c += ${WORKGROUP}u) {
        let x = x_chunk(xb, c);
        ${ROWS === 1 ? 's += w_chunk(base[0], c, x);' : `for (var i = 0u; i < ${ROWS}u; i++) { s[i] += w_chunk(base[i], c, x); }`}
      }
      for (var k = full * CW + lid; k < p.cols; k += ${WORKGROUP}u) {
        let x = xv(xb, k);
        ${ROWS === 1 ? 's += w_at(base[0], k) * x;' : `for (var i = 0u; i < ${ROWS}u; i++) { s[i] += w_at(base[i], k) * x; }`}
      }
    }
    any = any || on;
    total += select(s, s * R[pr], p.fan > 1u);
  }
  var t = ${sum}(total, lid);${
    norm
      ? `
  let xn = p.x_off + (o / p.in_div) * p.x_stride;
  var sq = 0.0;
  for (var k = lid; k < p.cols; k += ${WORKGROUP}u) { let v = X[xn + k]; sq += v * v; }
  t = t / sqrt(wg_sum(sq, lid) / f32(p.cols) + p.eps);`
      : ''
  }
  if (any && lid < ${ROWS}u && r0 + lid < p.rows) {
    let y = p.y_off + o * p.y_stride + p.row_first + r0 + lid;
    if (p.accumulate != 0u) { Y[y] += ${ROWS === 1 ? 't' : 't[lid]'}; } else { Y[y] = ${ROWS === 1 ? 't' : 't[lid]'}; }
  }
}`,
  };
}
