// TypeScript references for the quantized formats (docs/quantized-format.md): the same rounding as
// assembly/kernels/quantize.ts (float32 arithmetic, round half to even), so quantized values and scales
// must match bit for bit, and the matmuls in float64 from those integers and scales.

export const GROUP = 32;

const f = Math.fround;

/** Round half to even, as f32.nearest / f32x4.nearest. */
export function roundEven(x: number): number {
  const r = Math.round(x);
  return Math.abs(x - Math.trunc(x)) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

export function groupsOf(cols: number): number {
  return Math.ceil(cols / GROUP);
}

/** q8 weights or activations: q [rows, groups*32] in -127..127 (zero past cols), d [rows, groups]. */
export function quantizeQ8(x: Float32Array, rows: number, cols: number): { q: Int8Array; d: Float32Array } {
  const G = groupsOf(cols);
  const q = new Int8Array(rows * G * GROUP);
  const d = new Float32Array(rows * G);
  for (let r = 0; r < rows; r++) {
    for (let g = 0; g < G; g++) {
      const c0 = g * GROUP;
      const n = Math.min(GROUP, cols - c0);
      let amax = 0;
      for (let k = 0; k < n; k++) amax = Math.max(amax, Math.abs(x[r * cols + c0 + k]));
      const id = amax > 0 ? f(127 / amax) : 0;
      d[r * G + g] = amax > 0 ? f(amax / 127) : 0;
      for (let k = 0; k < n; k++) q[r * G * GROUP + c0 + k] = roundEven(f(x[r * cols + c0 + k] * id));
    }
  }
  return { q, d };
}

/** q4 weights: n [rows, groups*32] in 0..15 (q + 8; 8 past cols), d [rows, groups] (ggml Q4_0 rule). */
export function quantizeQ4(x: Float32Array, rows: number, cols: number): { n: Uint8Array; d: Float32Array } {
  const G = groupsOf(cols);
  const n = new Uint8Array(rows * G * GROUP).fill(8);
  const d = new Float32Array(rows * G);
  for (let r = 0; r < rows; r++) {
    for (let g = 0; g < G; g++) {
      const c0 = g * GROUP;
      const len = Math.min(GROUP, cols - c0);
      let hi = 0;
      let lo = 0;
      for (let k = 0; k < len; k++) {
        const v = x[r * cols + c0 + k];
        hi = Math.max(hi, v);
        lo = Math.min(lo, v);
      }
      const m = -lo > hi ? lo : hi;
      const dg = m !== 0 ? f(m / -8) : 0;
      const id = m !== 0 ? f(1 / dg) : 0;
      d[r * G + g] = dg;
      for (let k = 0; k < len; k++) {
        const q = Math.min(7, Math.max(-8, roundEven(f(x[r * cols + c0 + k] * id))));
        n[r * G * GROUP + c0 + k] = q + 8;
      }
    }
  }
  return { n, d };
}

/** The checkpoint layout of q4 (docs/quantized-format.md): 16 bytes per group, nibble k of u16 lane l = n[8k + l]. */
export function packQ4(n: Uint8Array, rows: number, groups: number): Uint8Array {
  const out = new Uint8Array(rows * groups * 16);
  for (let r = 0; r < rows; r++) {
    for (let g = 0; g < groups; g++) {
      const src = (r * groups + g) * GROUP;
      const dst = (r * groups + g) * 16;
      for (let l = 0; l < 8; l++) {
        const lane = n[src + l] | (n[src + 8 + l] << 4) | (n[src + 16 + l] << 8) | (n[src + 24 + l] << 12);
        out[dst + 2 * l] = lane & 0xff;
        out[dst + 2 * l + 1] = lane >>> 8;
      }
    }
  }
  return out;
}

export function unpackQ4(packed: Uint8Array, rows: number, groups: number): Uint8Array {
  const n = new Uint8Array(rows * groups * GROUP);
  for (let r = 0; r < rows; r++) {
    for (let g = 0; g < groups; g++) {
      const src = (r * groups + g) * 16;
      const dst = (r * groups + g) * GROUP;
      for (let l = 0; l < 8; l++) {
        const lane = packed[src + 2 * l] | (packed[src + 2 * l + 1] << 8);
        for (let k = 0; k < 4; k++) n[dst + 8 * k + l] = (lane >>> (4 * k)) & 15;
      }
    }
  }
  return n;
}

/**
 * out[t, r] = sum_g dw[r, g] dx[t, g] sum_k (qw - offset) qx in float64, with the bound the kernel's
 * float32 arithmetic must meet. The integer sums are exact in the kernel; what rounds is the product of
 * the two scales, each lane's partial term (the kernels scale the 4 lanes of a group's integer sum
 * before adding them, and a lane may hold the offset-free sum n * x), and the G additions:
 * |error| <= (G + 8) U sum_g |dw dx| sum_k (|qw - offset| + offset) |qx|   (U = 2^-24).
 */
export function quantMatmulRef(
  qw: ArrayLike<number>, dw: Float32Array, qx: ArrayLike<number>, dx: Float32Array,
  rows: number, groups: number, tokens: number, offset = 0,
): { out: Float64Array; bound: Float64Array } {
  const out = new Float64Array(tokens * rows);
  const bound = new Float64Array(tokens * rows);
  const U = 2 ** -24;
  for (let t = 0; t < tokens; t++) {
    for (let r = 0; r < rows; r++) {
      let s = 0;
      let abs = 0;
      for (let g = 0; g < groups; g++) {
        let acc = 0;
        let mag = 0;
        for (let k = 0; k < GROUP; k++) {
          const w = qw[(r * groups + g) * GROUP + k] - offset;
          const x = qx[(t * groups + g) * GROUP + k];
          acc += w * x;
          mag += (Math.abs(w) + offset) * Math.abs(x);
        }
        const scale = dw[r * groups + g] * dx[t * groups + g];
        s += scale * acc;
        abs += Math.abs(scale) * mag;
      }
      out[t * rows + r] = s;
      bound[t * rows + r] = (groups + 8) * U * abs + 1e-30;
    }
  }
  return { out, bound };
}
