/// <reference types="@webgpu/types" />
// Random weights made on the device, for benchmarks of full-size shapes without a checkpoint to read: every
// matrix bf16, each weight uniform with standard deviation 1/sqrt(cols) from a hash of (tensor, index),
// norm weights 1 and routing biases 0. The same seed gives the same weights.
import { fail } from '../../errors.js';
import type { Weight } from '../../model/schema.js';
import { FMT_BF16 } from '../../runtime/constants.js';
import { Kernels, Recorder, threadsGrid } from './dispatch.js';
import { rowWords, type GpuFormat } from './formats.js';
import { WORKGROUP, type KernelDef } from './kernels/kernel.js';
import { WeightSink } from './upload.js';

/** Y[dst + i] for i < words: two bf16 values, each (the hash of its index, in [-1, 1)) * scale. */
const fill: KernelDef = {
  name: 'fill_random',
  params: ['words', 'dst', 'first', 'seed', 'scale:f32'],
  bindings: [{ name: 'Y', type: 'u32', write: true }],
  body: `
fn mix(v: u32) -> u32 {
  var x = v;
  x ^= x >> 16u; x *= 0x7feb352du; x ^= x >> 15u; x *= 0x846ca68bu; x ^= x >> 16u;
  return x;
}
fn value(i: u32) -> u32 {
  let u = f32(mix(i ^ p.seed) >> 8u) / 8388608.0 - 1.0;
  return bitcast<u32>(u * p.scale) >> 16u;
}
fn run(wid: vec3u, lid: u32, gid: vec3u, nwg: vec3u) {
  let i = gid.x + gid.y * nwg.x * ${WORKGROUP}u;
  if (i >= p.words) { return; }
  let k = 2u * (p.first + i);
  Y[p.dst + i] = value(k) | (value(k + 1u) << 16u);
}`,
};

export class RandomWeights extends WeightSink {
  private readonly rec: Recorder;
  private tensors = 0;

  private constructor(
    device: GPUDevice,
    maxBinding: number,
    private readonly kernels: Kernels,
    private readonly seed: number,
  ) {
    super(device, maxBinding);
    this.rec = new Recorder(device);
  }

  static async create(device: GPUDevice, maxBinding: number, seed: number): Promise<RandomWeights> {
    const kernels = new Kernels(device, false);
    await kernels.compile(fill);
    return new RandomWeights(device, maxBinding, kernels, seed);
  }

  formatOf(): GpuFormat {
    return FMT_BF16;
  }

  has(): boolean {
    return true;
  }

  /** Norm weights 1, the routing bias 0. */
  vector(w: Weight): GPUBuffer {
    const bias = w.parts[0].name.endsWith('e_score_correction_bias');
    return this.buffer(new Float32Array(w.shape[0]).fill(bias ? 0 : 1));
  }

  protected fill(buf: GPUBuffer, at: number, w: Weight, fmt: GpuFormat, first: number, rows: number): void {
    const cols = w.shape[1];
    if (cols % 2 !== 0) fail(`random weights: ${w.parts[0].name} has an odd row (${cols} columns)`);
    const stride = rowWords(fmt, cols);
    const words = rows * stride;
    // A tensor's hash stream starts at a seed of its own; an expert is its own tensor.
    const seed = Math.imul(this.seed + ++this.tensors, 0x9e3779b9) >>> 0;
    const k = this.kernels.get(fill);
    const per = 1 << 28;
    for (let w0 = 0; w0 < words; w0 += per) {
      const n = Math.min(per, words - w0);
      this.rec.dispatch(k, [n, at / 4 + w0, first * stride + w0, seed, Math.sqrt(3 / cols)], [buf], threadsGrid(n));
      this.rec.submit();
    }
  }
}
