// dw_config (kernels-gpu/include/dw_cuda.h) from a DeepSeek config, the pool's size and how the decode
// step runs.
import type { DeepSeekConfig } from '../../checkpoint/config.js';
import { softmaxScale } from '../../model/rope.js';
import {
  ROUTE_GREEDY, ROUTE_GROUP_LIMITED_GREEDY, ROUTE_NOAUX_TC, SCORE_SIGMOID, SCORE_SOFTMAX,
} from '../../runtime/constants.js';
import { CONFIG_BYTES, CONFIG_INTS } from './ffi.js';
import type { PoolShape } from '../../model/sequences.js';

const TOPK_METHOD = { greedy: ROUTE_GREEDY, group_limited_greedy: ROUTE_GROUP_LIMITED_GREEDY, noaux_tc: ROUTE_NOAUX_TC } as const;

/** How the library runs a decode step; the defaults are the measured fastest (bench/RESULTS.md). */
export interface DecodeTuning {
  /** Programmatic dependent launch between the kernels of the decode graph (default true). */
  pdl?: boolean;
  /** Splits of a decode step's attention over positions, 1 to 32 (default: 2 x SMs / heads, at most 32). */
  attnSplits?: number;
  /** Programmatic dependent launch in the batched decode step's graphs too (default true; off: only the one-sequence graph has it). */
  batchPdl?: boolean;
  /** Synchronise and check after every kernel, so a fault names its kernel (slow; default: DW_SYNC=1 in the environment). */
  syncLaunches?: boolean;
}

/** mtp: the model holds its MTP layer (dw_config.nextn). */
export function packConfig(cfg: DeepSeekConfig, pool: PoolShape, tuning: DecodeTuning = {}, mtp = false): ArrayBuffer {
  const buf = new ArrayBuffer(CONFIG_BYTES);
  const ints = new Int32Array(buf, 0, CONFIG_INTS);
  const floats = new Float32Array(buf, CONFIG_INTS * 4, 4);
  const sync = tuning.syncLaunches ?? (typeof process !== 'undefined' && process.env.DW_SYNC === '1');
  ints.set([
    cfg.vocabSize, cfg.hiddenSize, cfg.intermediateSize, cfg.moeIntermediateSize,
    cfg.numHiddenLayers, cfg.numAttentionHeads, cfg.qLoraRank ?? 0, cfg.kvLoraRank,
    cfg.qkNopeHeadDim, cfg.qkRopeHeadDim, cfg.vHeadDim, cfg.nRoutedExperts,
    cfg.nSharedExperts, cfg.numExpertsPerTok, cfg.firstKDenseReplace, cfg.moeLayerFreq,
    cfg.nGroup, cfg.topkGroup, TOPK_METHOD[cfg.topkMethod], cfg.scoringFunc === 'sigmoid' ? SCORE_SIGMOID : SCORE_SOFTMAX,
    cfg.normTopkProb ? 1 : 0, pool.contextLength, pool.maxSequences, pool.passTokens,
    tuning.pdl === false ? 0 : 1, tuning.attnSplits ?? 0, sync ? 1 : 0, tuning.batchPdl === false ? 1 : 0,
    mtp ? 1 : 0,
  ]);
  floats.set([cfg.routedScalingFactor, cfg.rmsNormEps, softmaxScale(cfg), 0]);
  return buf;
}
