// The weight formats on the GPU, each defined once: how a row lies in u32 words, how the host packs f32
// rows into it, and the WGSL that reads it (w_at: one weight; w_chunk: a chunk of a row dotted with the
// input, for the matrix-vector kernel). Rows are whole words, so a matrix splits at any row and
// experts stack end to end. q8 and q4 keep each group's f32 scale before its weights, rounded and
// clamped as docs/quantized-format.md says, so they hold the CPU's values.
import { fail } from '../../errors.js';
import { FMT_BF16, FMT_F32, FMT_Q4, FMT_Q8, QUANT_GROUP } from '../../runtime/constants.js';

export type GpuFormat = typeof FMT_F32 | typeof FMT_BF16 | typeof FMT_Q8 | typeof FMT_Q4;

const Q8_GROUP_WORDS = 1 + QUANT_GROUP / 4;
const Q4_GROUP_WORDS = 1 + QUANT_GROUP / 8;

export const FORMAT_NAMES: Record<GpuFormat, string> = { [FMT_F32]: 'f32', [FMT_BF16]: 'bf16', [FMT_Q8]: 'q8', [FMT_Q4]: 'q4' };

/** u32 words one row of `cols` weights takes. */
export function rowWords(fmt: GpuFormat, cols: number): number {
  const groups = Math.ceil(cols / QUANT_GROUP);
  switch (fmt) {
    case FMT_F32:
      return cols;
    case FMT_BF16:
      return Math.ceil(cols / 2);
    case FMT_Q8:
      return groups * Q8_GROUP_WORDS;
    case FMT_Q4:
      return groups * Q4_GROUP_WORDS;
  }
}

/** Round half to even, as wasm's f32.nearest: the CPU's quantizer rounds so. */
function nearest(v: number): number {
  const r = Math.round(v);
  return r - v === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** `rows` rows of `cols` f32 values packed in the format. */
export function packRows(fmt: GpuFormat, src: Float32Array, rows: number, cols: number): Uint32Array {
  const stride = rowWords(fmt, cols);
  const out = new Uint32Array(rows * stride);
  const f = new Float32Array(out.buffer);
  const bits = new Uint32Array(src.buffer, src.byteOffset, src.length);
  for (let r = 0; r < rows; r++) {
    const o = r * stride;
    const s = r * cols;
    if (fmt === FMT_F32) {
      out.set(bits.subarray(s, s + cols), o);
      continue;
    }
    if (fmt === FMT_BF16) {
      for (let k = 0; k < cols; k++) {
        const u = bits[s + k];
        const h = (u & 0x7fffffff) > 0x7f800000 ? (u >>> 16) | 0x40 : ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) & 0xffff;
        out[o + (k >> 1)] |= h << ((k & 1) * 16);
      }
      continue;
    }
    const groupWords = fmt === FMT_Q8 ? Q8_GROUP_WORDS : Q4_GROUP_WORDS;
    for (let g = 0; g * QUANT_GROUP < cols; g++) {
      const k0 = g * QUANT_GROUP;
      const n = Math.min(QUANT_GROUP, cols - k0);
      const w = o + g * groupWords;
      if (fmt === FMT_Q8) {
        let amax = 0;
        for (let j = 0; j < n; j++) amax = Math.max(amax, Math.abs(src[s + k0 + j]));
        const d = Math.fround(amax / 127);
        const inv = amax === 0 ? 0 : Math.fround(127 / amax);
        f[w] = d;
        for (let j = 0; j < n; j++) out[w + 1 + (j >> 2)] |= (nearest(Math.fround(src[s + k0 + j] * inv)) & 0xff) << ((j & 3) * 8);
      } else {
        // The value of largest magnitude, the positive one on a tie (as the CPU's quantizer).
        let hi = 0;
        let lo = 0;
        for (let j = 0; j < n; j++) {
          hi = Math.max(hi, src[s + k0 + j]);
          lo = Math.min(lo, src[s + k0 + j]);
        }
        const m = -lo > hi ? lo : hi;
        const d = Math.fround(m / -8);
        const inv = d === 0 ? 0 : Math.fround(1 / d);
        f[w] = d;
        for (let j = 0; j < QUANT_GROUP; j++) {
          const q = j < n ? Math.min(7, Math.max(-8, nearest(Math.fround(src[s + k0 + j] * inv)))) : 0;
          out[w + 1 + (j >> 3)] |= (q + 8) << ((j & 7) * 4);
        }
      }
    }
  }
  return out;
}

/** Whether rows of `words` u32 words of the format are read 16 bytes at a time (W bound as vec4<u32>). */
export function vec4Rows(fmt: GpuFormat, words: number): boolean {
  return (fmt === FMT_F32 || fmt === FMT_BF16) && words % 4 === 0;
}

/**
 * WGSL reading weights of the format from W (u32 words, or vec4<u32> with `vec4`): `word(i)` one word,
 * `w_at(row base word, column)` one weight. With `dot`, also a matrix-vector product's inner step: rows
 * are read a chunk at a time, adjacent threads on adjacent chunks so loads coalesce: `const CW` weights
 * per chunk, `x_chunk(xb, c)` chunk c of the input (type XC, read once for all the rows a thread sums,
 * through the kernel's `xv(xb, column)`: plain, normed or SwiGLU'd) and `w_chunk(base, c, x)`, a row's
 * chunk c dotted with it. bf16 takes 8 weights (one 16-byte load) with vec4, else 2; f32 4 with vec4,
 * else 1; q8 and q4 one group (scale, then 8 or 4 words), their input read inside w_chunk (XC: the row's
 * input base and the chunk's first column).
 */
export function formatWgsl(fmt: GpuFormat, dot: boolean, vec4 = false): string {
  const G = QUANT_GROUP;
  if (vec4 && !vec4Rows(fmt, 4)) fail(`${FORMAT_NAMES[fmt]} rows are read a word at a time`);
  const word = vec4 ? 'fn word(i: u32) -> u32 { return W[i >> 2u][i & 3u]; }' : 'fn word(i: u32) -> u32 { return W[i]; }';
  const x4 = (k: string) => `vec4f(xv(xb, ${k}), xv(xb, ${k} + 1u), xv(xb, ${k} + 2u), xv(xb, ${k} + 3u))`;
  let at: string;
  let chunk: string;
  switch (fmt) {
    case FMT_F32:
      at = `fn w_at(base: u32, k: u32) -> f32 { return bitcast<f32>(word(base + k)); }`;
      chunk = vec4
        ? `const CW = 4u;
alias XC = vec4f;
fn x_chunk(xb: u32, c: u32) -> XC { return ${x4('c * 4u')}; }
fn w_chunk(base: u32, c: u32, x: XC) -> f32 { return dot(bitcast<vec4f>(W[(base >> 2u) + c]), x); }`
        : `const CW = 1u;
alias XC = f32;
fn x_chunk(xb: u32, c: u32) -> XC { return xv(xb, c); }
fn w_chunk(base: u32, c: u32, x: XC) -> f32 { return w_at(base, c) * x; }`;
      break;
    case FMT_BF16: {
      const lo = (w: string) => `bitcast<f32>(${w} << 16u)`;
      const hi = (w: string) => `bitcast<f32>(${w} & 0xffff0000u)`;
      at = `fn w_at(base: u32, k: u32) -> f32 {
  let w = word(base + (k >> 1u));
  return bitcast<f32>(select(w << 16u, w & 0xffff0000u, (k & 1u) == 1u));
}`;
      chunk = vec4
        ? `const CW = 8u;
alias XC = mat2x4f;
fn x_chunk(xb: u32, c: u32) -> XC { return XC(${x4('c * 8u')}, ${x4('c * 8u + 4u')}); }
fn w_chunk(base: u32, c: u32, x: XC) -> f32 {
  let w = W[(base >> 2u) + c];
  return dot(vec4f(${lo('w.x')}, ${hi('w.x')}, ${lo('w.y')}, ${hi('w.y')}), x[0])
       + dot(vec4f(${lo('w.z')}, ${hi('w.z')}, ${lo('w.w')}, ${hi('w.w')}), x[1]);
}`
        : `const CW = 2u;
alias XC = vec2f;
fn x_chunk(xb: u32, c: u32) -> XC { return vec2f(xv(xb, 2u * c), xv(xb, 2u * c + 1u)); }
fn w_chunk(base: u32, c: u32, x: XC) -> f32 {
  let w = word(base + c);
  return ${lo('w')} * x.x + ${hi('w')} * x.y;
}`;
      break;
    }
    case FMT_Q8:
    case FMT_Q4: {
      const q8 = fmt === FMT_Q8;
      const words = q8 ? Q8_GROUP_WORDS : Q4_GROUP_WORDS;
      const per = q8 ? 4 : 8;
      const value = (w: string, i: string) => (q8 ? `f32(extractBits(i32(${w}), ${i} * 8u, 8u))` : `f32(extractBits(${w}, ${i} * 4u, 4u)) - 8.0`);
      at = `fn w_at(base: u32, k: u32) -> f32 {
  let g = base + (k / ${G}u) * ${words}u;
  let j = k % ${G}u;
  return bitcast<f32>(word(g)) * (${value(`word(g + 1u + j / ${per}u)`, `(j % ${per}u)`)});
}`;
      chunk = `const CW = ${G}u;
alias XC = vec2u;
fn x_chunk(xb: u32, c: u32) -> XC { return vec2u(xb, c * ${G}u); }
fn w_chunk(base: u32, c: u32, x: XC) -> f32 {
  let g = base + c * ${words}u;
  var s = 0.0;
  for (var j = 0u; j < ${G / per}u; j++) {
    let w = word(g + 1u + j);
    for (var i = 0u; i < ${per}u; i++) { s += (${value('w', 'i')}) * xv(x.x, x.y + j * ${per}u + i); }
  }
  return bitcast<f32>(word(g)) * s;
}`;
      break;
    }
    default:
      fail(`weight format ${String(fmt)} has no WebGPU kernels`);
  }
  return dot ? `${word}\n${at}\n${chunk}` : `${word}\n${at}`;
}
