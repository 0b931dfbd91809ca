// The WebGPU weight formats (host/backends/webgpu/formats.ts) hold the CPU's values: q8 and q4 groups
// unpacked from the packed words give exactly the scales and integers of the TypeScript references of
// docs/quantized-format.md (test/quant-reference.ts), partial groups included; bf16 is round-to-nearest-even.
// Pure TypeScript: no adapter needed.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { packRows, rowWords } from '../host/backends/webgpu/formats.js';
import { f32ToBf16 } from '../host/model/weights.js';
import { FMT_BF16, FMT_F32, FMT_Q4, FMT_Q8, QUANT_GROUP } from '../host/runtime/constants.js';
import { groupsOf, quantizeQ4, quantizeQ8 } from './quant-reference.js';

function random(n: number, seed: number): Float32Array {
  const x = new Float32Array(n);
  let s = seed;
  for (let i = 0; i < n; i++) {
    s = (s * 1103515245 + 12345) >>> 0;
    x[i] = (s / 2 ** 32 - 0.5) * 4;
  }
  // Ties of magnitude and exact halves, where the rounding rules matter.
  x[3] = 2;
  x[5] = -2;
  x[40] = 0.5;
  return x;
}

for (const cols of [32, 70, 7]) {
  const rows = 5;
  const x = random(rows * cols, cols);
  const G = groupsOf(cols);

  test(`q8, ${rows} x ${cols}: the packed scales and int8 values are the reference's`, () => {
    const words = packRows(FMT_Q8, x, rows, cols);
    assert.is(words.length, rows * rowWords(FMT_Q8, cols));
    const ref = quantizeQ8(x, rows, cols);
    const f = new Float32Array(words.buffer);
    const per = 1 + QUANT_GROUP / 4;
    for (let r = 0; r < rows; r++) {
      for (let g = 0; g < G; g++) {
        const w = r * G * per + g * per;
        assert.is(f[w], ref.d[r * G + g], `scale of row ${r} group ${g}`);
        const q = new Int8Array(words.buffer, (w + 1) * 4, QUANT_GROUP);
        assert.equal(Array.from(q), Array.from(ref.q.subarray((r * G + g) * QUANT_GROUP, (r * G + g + 1) * QUANT_GROUP)), `row ${r} group ${g}`);
      }
    }
  });

  test(`q4, ${rows} x ${cols}: the packed scales and nibbles are the reference's`, () => {
    const words = packRows(FMT_Q4, x, rows, cols);
    const ref = quantizeQ4(x, rows, cols);
    const f = new Float32Array(words.buffer);
    const per = 1 + QUANT_GROUP / 8;
    for (let r = 0; r < rows; r++) {
      for (let g = 0; g < G; g++) {
        const w = r * G * per + g * per;
        assert.is(f[w], ref.d[r * G + g], `scale of row ${r} group ${g}`);
        const n = Array.from({ length: QUANT_GROUP }, (_, j) => (words[w + 1 + (j >> 3)] >>> ((j & 7) * 4)) & 15);
        assert.equal(n, Array.from(ref.n.subarray((r * G + g) * QUANT_GROUP, (r * G + g + 1) * QUANT_GROUP)), `row ${r} group ${g}`);
      }
    }
  });

  test(`bf16 and f32, ${rows} x ${cols}: rows of whole words, the CPU's rounding`, () => {
    const bf = packRows(FMT_BF16, x, rows, cols);
    const ref = new Uint16Array(rows * cols);
    f32ToBf16(x, ref);
    const stride = rowWords(FMT_BF16, cols);
    for (let r = 0; r < rows; r++) {
      for (let k = 0; k < cols; k++) assert.is((bf[r * stride + (k >> 1)] >>> ((k & 1) * 16)) & 0xffff, ref[r * cols + k]);
    }
    assert.equal(new Float32Array(packRows(FMT_F32, x, rows, cols).buffer), x);
  });
}

test.run();
