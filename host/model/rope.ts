import type { DeepSeekConfig, YarnScaling } from '../checkpoint/config.js';

/** YaRN's attention temperature: m(s, k) = 0.1 k ln s + 1 (1 for s <= 1). */
function yarnMscale(factor: number, mscale: number): number {
  return factor <= 1 ? 1 : 0.1 * mscale * Math.log(factor) + 1;
}

/**
 * Inverse frequencies 1 / theta^(2i/d) for the d rotary dims, blended by YaRN between the
 * interpolated (divided by factor) and extrapolated frequencies with a linear ramp over the pair
 * index, exactly as transformers' _compute_yarn_parameters does (floor/ceil-truncated range).
 */
function inverseFrequencies(dim: number, theta: number, yarn: YarnScaling | null): Float64Array {
  const half = dim / 2;
  const inv = new Float64Array(half);
  for (let i = 0; i < half; i++) inv[i] = 1 / Math.fround(theta ** Math.fround((2 * i) / dim));
  if (!yarn) return inv;
  const correctionDim = (rotations: number) =>
    (dim * Math.log(yarn.originalMaxPositionEmbeddings / (rotations * 2 * Math.PI))) / (2 * Math.log(theta));
  const low = Math.max(Math.floor(correctionDim(yarn.betaFast)), 0);
  let high = Math.min(Math.ceil(correctionDim(yarn.betaSlow)), dim - 1);
  if (low === high) high += 0.001;
  for (let i = 0; i < half; i++) {
    const ramp = Math.min(Math.max((i - low) / (high - low), 0), 1);
    const extrapolation = 1 - ramp;
    inv[i] = (inv[i] / yarn.factor) * (1 - extrapolation) + inv[i] * extrapolation;
  }
  return inv;
}

/** transformers' attention_factor: scales cos and sin; 1 for DeepSeek's released configs. */
function attentionFactor(yarn: YarnScaling | null): number {
  if (!yarn) return 1;
  if (yarn.mscale && yarn.mscaleAllDim) return yarnMscale(yarn.factor, yarn.mscale) / yarnMscale(yarn.factor, yarn.mscaleAllDim);
  return yarnMscale(yarn.factor, 1);
}

export interface RopeTables {
  cos: Float32Array;
  sin: Float32Array;
  half: number;
}

/** cos and sin for every position < positions and pair < qk_rope_head_dim / 2, [positions, half]. */
export function ropeTables(cfg: DeepSeekConfig, positions: number): RopeTables {
  const half = cfg.qkRopeHeadDim / 2;
  const inv = inverseFrequencies(cfg.qkRopeHeadDim, cfg.ropeTheta, cfg.ropeScaling);
  const factor = attentionFactor(cfg.ropeScaling);
  const cos = new Float32Array(positions * half);
  const sin = new Float32Array(positions * half);
  for (let p = 0; p < positions; p++) {
    for (let i = 0; i < half; i++) {
      // The references form the angle in float32; so do we, to land on the same rounding.
      const angle = Math.fround(p * Math.fround(inv[i]));
      cos[p * half + i] = Math.cos(angle) * factor;
      sin[p * half + i] = Math.sin(angle) * factor;
    }
  }
  return { cos, sin, half };
}

/** 1/sqrt(qk head dim), times m(factor, mscale_all_dim)^2 under YaRN. */
export function softmaxScale(cfg: DeepSeekConfig): number {
  let scale = (cfg.qkNopeHeadDim + cfg.qkRopeHeadDim) ** -0.5;
  const yarn = cfg.ropeScaling;
  if (yarn && yarn.mscaleAllDim) scale *= yarnMscale(yarn.factor, yarn.mscaleAllDim) ** 2;
  return scale;
}
