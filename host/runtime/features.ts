// Which SIMD the running WebAssembly engine really has. Relaxed SIMD is detected by running it, not
// by validating it: Node 20 accepts i32x4.relaxed_dot_i8x16_i7x16_add_s behind
// --experimental-wasm-relaxed-simd and returns sums without the accumulator (GUIDE §1). The probe is a
// module of two functions, written out below instruction by instruction, each returning 1 only when
// the instruction gives the known answer:
//   dot:   i32x4.relaxed_dot_i8x16_i7x16_add_s(a, b, c) == expected, with a nonzero accumulator c and
//          negative, large and small a (b in 0..127, the range the instruction defines)
//   dot16: i16x8.relaxed_dot_i8x16_i7x16_s(a, b) == expected (the q4 kernels use it)
//   madd: f32x4.relaxed_madd(a, b, c) == a * b + c, on values where fused and unfused agree exactly

import { fail } from '../errors.js';

export type SimdLevel = 'relaxed' | 'simd128';

const DOT_A = [-128, 127, -1, 5, 7, -9, 100, -100, 1, 2, 3, 4, -50, 60, -70, 80];
const DOT_B = [127, 1, 2, 3, 4, 5, 6, 7, 127, 126, 125, 124, 0, 10, 20, 30];
const DOT_C = [1000, -7, 3, 123456];
const MADD = { a: [2, 3, -4, 0.5], b: [3, 5, 0.25, 8], c: [1, -1, 2, 0] };

function dotExpected(): number[] {
  return DOT_C.map((c, i) => c + [0, 1, 2, 3].reduce((s, j) => s + DOT_A[4 * i + j] * DOT_B[4 * i + j], 0));
}

function dot16Expected(): number[] {
  return [0, 1, 2, 3, 4, 5, 6, 7].map((i) => DOT_A[2 * i] * DOT_B[2 * i] + DOT_A[2 * i + 1] * DOT_B[2 * i + 1]);
}

// Opcodes (WebAssembly core, SIMD and relaxed-SIMD specifications).
const SIMD = 0xfd;
const V128_CONST = [SIMD, 0x0c];
const I32X4_EQ = [SIMD, 0x37];
const F32X4_EQ = [SIMD, 0x41];
const I32X4_ALL_TRUE = [SIMD, 0xa3, 0x01]; // 0x83, LEB128
const I32X4_RELAXED_DOT_I8X16_I7X16_ADD_S = [SIMD, 0x93, 0x02]; // 0x113
const I16X8_RELAXED_DOT_I8X16_I7X16_S = [SIMD, 0x92, 0x02]; // 0x112
const I16X8_EQ = [SIMD, 0x2d];
const I16X8_ALL_TRUE = [SIMD, 0x83, 0x01]; // 0x83
const F32X4_RELAXED_MADD = [SIMD, 0x85, 0x02]; // 0x105
const END = 0x0b;

function v128(values: number[], kind: 'i8' | 'i16' | 'i32' | 'f32'): number[] {
  const bytes = new Uint8Array(16);
  const view = new DataView(bytes.buffer);
  values.forEach((v, i) => {
    if (kind === 'i8') view.setInt8(i, v);
    else if (kind === 'i16') view.setInt16(2 * i, v, true);
    else if (kind === 'i32') view.setInt32(4 * i, v, true);
    else view.setFloat32(4 * i, v, true);
  });
  return [...V128_CONST, ...bytes];
}

function section(id: number, body: number[]): number[] {
  return [id, ...leb(body.length), ...body];
}

function leb(n: number): number[] {
  const out: number[] = [];
  do {
    let b = n & 0x7f;
    n >>>= 7;
    if (n !== 0) b |= 0x80;
    out.push(b);
  } while (n !== 0);
  return out;
}

function name(s: string): number[] {
  return [s.length, ...new TextEncoder().encode(s)];
}

/** The probe module's bytes: three exported functions () -> i32. */
export function probeModuleBytes(): Uint8Array<ArrayBuffer> {
  const dot = [
    ...v128(DOT_A, 'i8'), ...v128(DOT_B, 'i8'), ...v128(DOT_C, 'i32'), ...I32X4_RELAXED_DOT_I8X16_I7X16_ADD_S,
    ...v128(dotExpected(), 'i32'), ...I32X4_EQ, ...I32X4_ALL_TRUE, END,
  ];
  const dot16 = [
    ...v128(DOT_A, 'i8'), ...v128(DOT_B, 'i8'), ...I16X8_RELAXED_DOT_I8X16_I7X16_S,
    ...v128(dot16Expected(), 'i16'), ...I16X8_EQ, ...I16X8_ALL_TRUE, END,
  ];
  const madd = [
    ...v128(MADD.a, 'f32'), ...v128(MADD.b, 'f32'), ...v128(MADD.c, 'f32'), ...F32X4_RELAXED_MADD,
    ...v128(MADD.a.map((a, i) => a * MADD.b[i] + MADD.c[i]), 'f32'), ...F32X4_EQ, ...I32X4_ALL_TRUE, END,
  ];
  const body = (code: number[]) => [...leb(code.length + 1), 0 /* no locals */, ...code];
  return new Uint8Array([
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // magic, version 1
    ...section(1, [1, 0x60, 0, 1, 0x7f]), // types: () -> i32
    ...section(3, [3, 0, 0, 0]), // functions: three of type 0
    ...section(7, [3, ...name('dot'), 0, 0, ...name('dot16'), 0, 1, ...name('madd'), 0, 2]), // exports
    ...section(10, [3, ...body(dot), ...body(dot16), ...body(madd)]), // code
  ]);
}

export interface SimdReport {
  /** Both relaxed instructions validate and give the known answers. */
  relaxed: boolean;
  /** Why relaxed SIMD is not used, when it is not. */
  reason?: string;
}

let cached: SimdReport | undefined;

/** Runs the probe once per process. */
export function detectRelaxedSimd(): SimdReport {
  if (cached) return cached;
  let exports: { dot(): number; dot16(): number; madd(): number };
  try {
    const bytes = probeModuleBytes();
    exports = new WebAssembly.Instance(new WebAssembly.Module(bytes), {}).exports as typeof exports;
  } catch (e) {
    return (cached = { relaxed: false, reason: `the engine does not accept relaxed SIMD (${(e as Error).message})` });
  }
  if (exports.dot() !== 1) {
    return (cached = { relaxed: false, reason: 'i32x4.relaxed_dot_i8x16_i7x16_add_s gives a wrong answer (Node 20 drops the accumulator)' });
  }
  if (exports.dot16() !== 1) return (cached = { relaxed: false, reason: 'i16x8.relaxed_dot_i8x16_i7x16_s gives a wrong answer' });
  if (exports.madd() !== 1) return (cached = { relaxed: false, reason: 'f32x4.relaxed_madd gives a wrong answer' });
  return (cached = { relaxed: true });
}

export type SimdChoice = 'auto' | 'relaxed' | 'plain';

/** DEEPWASM_SIMD=plain|relaxed|auto (default auto) unless the caller says otherwise. */
export function simdChoiceFromEnv(): SimdChoice {
  const v = process.env.DEEPWASM_SIMD;
  if (v === undefined || v === '' || v === 'auto') return 'auto';
  if (v === 'plain' || v === 'simd128') return 'plain';
  if (v === 'relaxed') return 'relaxed';
  fail(`DEEPWASM_SIMD is "${v}"; expected plain, relaxed or auto`);
}
