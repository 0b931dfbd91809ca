import * as fs from 'node:fs';
import { join } from 'node:path';
import { fail } from '../errors.js';

export type ModelType = 'deepseek_v2' | 'deepseek_v3';
export type TopkMethod = 'greedy' | 'group_limited_greedy' | 'noaux_tc';
export type ScoringFunc = 'softmax' | 'sigmoid';

export interface YarnScaling {
  factor: number;
  originalMaxPositionEmbeddings: number;
  betaFast: number;
  betaSlow: number;
  mscale: number;
  mscaleAllDim: number;
}

export interface Fp8Quantization {
  method: 'fp8';
  /** [rows, cols] of one weight_scale_inv tile. */
  blockSize: [number, number];
}

/** A checkpoint written by `deepwasm convert` (docs/quantized-format.md). */
export interface DeepwasmQuantization {
  method: 'deepwasm';
  format: 'q8' | 'q4';
  groupSize: number;
}

export interface DeepSeekConfig {
  modelType: ModelType;
  vocabSize: number;
  hiddenSize: number;
  intermediateSize: number;
  moeIntermediateSize: number;
  numHiddenLayers: number;
  /** DeepSeek-V3's multi-token-prediction layers (num_nextn_predict_layers), after the decoder layers. */
  numNextnPredictLayers: number;
  numAttentionHeads: number;
  /** null: one q_proj (V2-Lite); else q_a_proj -> q_a_layernorm -> q_b_proj. */
  qLoraRank: number | null;
  kvLoraRank: number;
  qkNopeHeadDim: number;
  qkRopeHeadDim: number;
  vHeadDim: number;
  /** 0: no MoE layers at all. */
  nRoutedExperts: number;
  nSharedExperts: number;
  numExpertsPerTok: number;
  firstKDenseReplace: number;
  moeLayerFreq: number;
  nGroup: number;
  topkGroup: number;
  topkMethod: TopkMethod;
  scoringFunc: ScoringFunc;
  normTopkProb: boolean;
  routedScalingFactor: number;
  rmsNormEps: number;
  ropeTheta: number;
  /** null: plain RoPE. */
  ropeScaling: YarnScaling | null;
  maxPositionEmbeddings: number;
  bosTokenId: number | null;
  eosTokenIds: number[];
  tieWordEmbeddings: boolean;
  quantization: Fp8Quantization | null;
  /** Present only for checkpoints written by `deepwasm convert`: their matrices are already q8 or q4. */
  deepwasmQuantization?: DeepwasmQuantization;
}

const MODEL_TYPES: readonly ModelType[] = ['deepseek_v2', 'deepseek_v3'];
const TOPK_METHODS: readonly TopkMethod[] = ['greedy', 'group_limited_greedy', 'noaux_tc'];
const SCORING_FUNCS: readonly ScoringFunc[] = ['softmax', 'sigmoid'];

type Json = Record<string, unknown>;
const isObject = (v: unknown): v is Json => typeof v === 'object' && v !== null && !Array.isArray(v);

/** Typed access to one JSON object; every error names the config file and the key path. */
class Fields {
  constructor(
    readonly raw: Json,
    readonly path: string,
    readonly prefix = '',
  ) {}

  private where(key: string): string {
    return `${this.path}: "${this.prefix}${key}"`;
  }

  private value(key: string): unknown {
    return Object.hasOwn(this.raw, key) ? this.raw[key] : undefined;
  }

  /** Absent and null read the same: HF configs write null for "not set". */
  isSet(key: string): boolean {
    const v = this.value(key);
    return v !== undefined && v !== null;
  }

  require(key: string, why = ''): unknown {
    if (!this.isSet(key)) fail(`${this.path}: missing required field "${this.prefix}${key}"${why}`);
    return this.value(key);
  }

  int(key: string, opts: { min?: number; default?: number; why?: string } = {}): number {
    const { min = 1 } = opts;
    const v = opts.default !== undefined && !this.isSet(key) ? opts.default : this.require(key, opts.why);
    if (typeof v !== 'number' || !Number.isInteger(v)) fail(`${this.where(key)} must be an integer, got ${JSON.stringify(v)}`);
    if (v < min) fail(`${this.where(key)} must be ${min === 1 ? 'positive' : `at least ${min}`}, got ${v}`);
    return v;
  }

  num(key: string, opts: { default?: number; positive?: boolean; min?: number } = {}): number {
    const v = opts.default !== undefined && !this.isSet(key) ? opts.default : this.require(key);
    if (typeof v !== 'number' || !Number.isFinite(v)) fail(`${this.where(key)} must be a number, got ${JSON.stringify(v)}`);
    if (opts.positive && v <= 0) fail(`${this.where(key)} must be positive, got ${v}`);
    if (opts.min !== undefined && v < opts.min) fail(`${this.where(key)} must be at least ${opts.min}, got ${v}`);
    return v;
  }

  bool(key: string, dflt: boolean): boolean {
    if (!this.isSet(key)) return dflt;
    const v = this.value(key);
    if (typeof v !== 'boolean') fail(`${this.where(key)} must be true or false, got ${JSON.stringify(v)}`);
    return v;
  }

  oneOf<T extends string>(key: string, allowed: readonly T[], dflt: T): T {
    if (!this.isSet(key)) return dflt;
    const v = this.value(key);
    if (!allowed.includes(v as T)) fail(`${this.where(key)} is ${JSON.stringify(v)}; supported: ${allowed.join(', ')}`);
    return v as T;
  }

  object(key: string): Fields | null {
    if (!this.isSet(key)) return null;
    const v = this.value(key);
    if (!isObject(v)) fail(`${this.where(key)} must be an object or null, got ${JSON.stringify(v)}`);
    return new Fields(v, this.path, `${this.prefix}${key}.`);
  }

  /** eos_token_id: one id or a list of them. */
  ids(key: string): number[] {
    if (!this.isSet(key)) return [];
    const v = this.value(key);
    const list = Array.isArray(v) ? v : [v];
    for (const id of list) {
      if (typeof id !== 'number' || !Number.isInteger(id) || id < 0) fail(`${this.where(key)} must be a token id or a list of them, got ${JSON.stringify(v)}`);
    }
    return list as number[];
  }
}

function parseRope(f: Fields, path: string): { theta: number; scaling: YarnScaling | null } {
  // transformers >= 5 writes rope_parameters (theta inside); DeepSeek's own configs write rope_scaling.
  const params = f.object('rope_parameters') ?? f.object('rope_scaling');
  const theta = params?.isSet('rope_theta') ? params.num('rope_theta', { positive: true }) : f.num('rope_theta', { default: 10000, positive: true });
  if (params === null) return { theta, scaling: null };
  const typeKey = params.isSet('rope_type') ? 'rope_type' : 'type';
  const type = params.isSet(typeKey) ? params.raw[typeKey] : 'default';
  if (type === 'default') {
    if (params.isSet('factor')) fail(`${path}: "${params.prefix}factor" is set but the rope type is missing or "default"; expected "yarn"`);
    return { theta, scaling: null };
  }
  if (type !== 'yarn') {
    fail(`${path}: "${params.prefix}${typeKey}" is ${JSON.stringify(type)}; DeepSeek models use "yarn" or no rope scaling ("linear", "dynamic" and others are unsupported)`);
  }
  return {
    theta,
    scaling: {
      factor: params.num('factor', { positive: true }),
      originalMaxPositionEmbeddings: params.int('original_max_position_embeddings', { default: 4096 }),
      betaFast: params.num('beta_fast', { default: 32 }),
      betaSlow: params.num('beta_slow', { default: 1 }),
      mscale: params.num('mscale', { default: 1 }),
      mscaleAllDim: params.num('mscale_all_dim', { default: 0 }),
    },
  };
}

function parseDeepwasmQuantization(f: Fields, path: string): DeepwasmQuantization | null {
  const q = f.object('quantization_config');
  if (q === null || q.raw.quant_method !== 'deepwasm') return null;
  const format = q.oneOf('format', ['q8', 'q4'] as const, 'q8');
  const groupSize = q.int('group_size', { default: 32 });
  if (groupSize !== 32) fail(`${path}: "quantization_config.group_size" is ${groupSize}; deepwasm checkpoints use groups of 32`);
  return { method: 'deepwasm', format, groupSize };
}

function parseQuantization(f: Fields, path: string): Fp8Quantization | null {
  const q = f.object('quantization_config');
  if (q === null || q.raw.quant_method === 'deepwasm') return null;
  const method = q.require('quant_method');
  if (method !== 'fp8') fail(`${path}: "quantization_config.quant_method" is ${JSON.stringify(method)}; only "fp8" (block-scaled e4m3) and "deepwasm" (deepwasm convert) are supported`);
  if (q.isSet('fmt') && q.raw.fmt !== 'e4m3') fail(`${path}: "quantization_config.fmt" is ${JSON.stringify(q.raw.fmt)}; only "e4m3" is supported`);
  if (!q.isSet('weight_block_size')) return { method: 'fp8', blockSize: [128, 128] };
  const bs = q.raw.weight_block_size;
  if (!Array.isArray(bs) || bs.length !== 2 || !bs.every((d) => Number.isInteger(d) && d > 0)) {
    fail(`${path}: "quantization_config.weight_block_size" must be two positive integers, got ${JSON.stringify(bs)}`);
  }
  return { method: 'fp8', blockSize: [bs[0], bs[1]] };
}

/** Normalises a DeepSeek-V2/V3 config.json; defaults follow the Hugging Face config classes. */
export function parseConfig(raw: unknown, path: string): DeepSeekConfig {
  if (!isObject(raw)) fail(`${path}: expected a JSON object`);
  const f = new Fields(raw, path);
  const modelType = f.require('model_type');
  if (!MODEL_TYPES.includes(modelType as ModelType)) {
    fail(`${path}: "model_type" is ${JSON.stringify(modelType)}; supported: ${MODEL_TYPES.join(', ')}`);
  }
  const v3 = modelType === 'deepseek_v3';

  const nRoutedExperts = f.int('n_routed_experts', { min: 0, default: 0 });
  const moe = nRoutedExperts > 0;
  const moeWhy = ` (needed because n_routed_experts is ${nRoutedExperts})`;
  const moeInt = (key: string, min = 1): number => (moe ? f.int(key, { min, why: moeWhy }) : f.int(key, { min: 0, default: 0 }));
  // HF V2 treats n_shared_experts null as "none".
  const nSharedExperts = f.raw.n_shared_experts === null ? 0 : moeInt('n_shared_experts', 0);
  const rope = parseRope(f, path);

  const cfg: DeepSeekConfig = {
    modelType: modelType as ModelType,
    vocabSize: f.int('vocab_size'),
    hiddenSize: f.int('hidden_size'),
    intermediateSize: f.int('intermediate_size'),
    moeIntermediateSize: moeInt('moe_intermediate_size'),
    numHiddenLayers: f.int('num_hidden_layers'),
    numNextnPredictLayers: f.int('num_nextn_predict_layers', { min: 0, default: 0 }),
    numAttentionHeads: f.int('num_attention_heads'),
    qLoraRank: f.isSet('q_lora_rank') ? f.int('q_lora_rank') : null,
    kvLoraRank: f.int('kv_lora_rank'),
    qkNopeHeadDim: f.int('qk_nope_head_dim'),
    qkRopeHeadDim: f.int('qk_rope_head_dim'),
    vHeadDim: f.int('v_head_dim'),
    nRoutedExperts,
    nSharedExperts,
    numExpertsPerTok: moeInt('num_experts_per_tok'),
    firstKDenseReplace: f.int('first_k_dense_replace', { min: 0, default: 0 }),
    moeLayerFreq: f.int('moe_layer_freq', { default: 1 }),
    nGroup: f.int('n_group', { default: 1 }),
    topkGroup: f.int('topk_group', { default: 1 }),
    topkMethod: f.oneOf('topk_method', TOPK_METHODS, v3 ? 'noaux_tc' : 'greedy'),
    scoringFunc: f.oneOf('scoring_func', SCORING_FUNCS, v3 ? 'sigmoid' : 'softmax'),
    normTopkProb: f.bool('norm_topk_prob', v3),
    routedScalingFactor: f.num('routed_scaling_factor', { default: 1, positive: true }),
    rmsNormEps: f.num('rms_norm_eps', { default: 1e-6, positive: true }),
    ropeTheta: rope.theta,
    ropeScaling: rope.scaling,
    maxPositionEmbeddings: f.int('max_position_embeddings', { default: 4096 }),
    bosTokenId: f.isSet('bos_token_id') ? f.int('bos_token_id', { min: 0 }) : null,
    eosTokenIds: f.ids('eos_token_id'),
    tieWordEmbeddings: f.bool('tie_word_embeddings', false),
    quantization: parseQuantization(f, path),
  };
  const deepwasm = parseDeepwasmQuantization(f, path);
  if (deepwasm) cfg.deepwasmQuantization = deepwasm;
  checkConsistency(cfg, path);
  return cfg;
}

/** Relations between fields that the engine relies on; the HF code would fail later and less clearly. */
function checkConsistency(c: DeepSeekConfig, path: string): void {
  if (c.qkRopeHeadDim % 2 !== 0) fail(`${path}: "qk_rope_head_dim" is ${c.qkRopeHeadDim}; RoPE rotates pairs, so it must be even`);
  if (c.nRoutedExperts === 0) return;
  if (c.numExpertsPerTok > c.nRoutedExperts) {
    fail(`${path}: "num_experts_per_tok" (${c.numExpertsPerTok}) exceeds "n_routed_experts" (${c.nRoutedExperts})`);
  }
  if (c.topkMethod === 'greedy') return;
  if (c.nRoutedExperts % c.nGroup !== 0) fail(`${path}: "n_routed_experts" (${c.nRoutedExperts}) is not divisible by "n_group" (${c.nGroup})`);
  if (c.topkGroup > c.nGroup) fail(`${path}: "topk_group" (${c.topkGroup}) exceeds "n_group" (${c.nGroup})`);
  if (c.numExpertsPerTok > (c.nRoutedExperts / c.nGroup) * c.topkGroup) {
    fail(`${path}: "num_experts_per_tok" (${c.numExpertsPerTok}) exceeds the experts in the kept groups (${c.topkGroup} of ${c.nGroup} groups of ${c.nRoutedExperts / c.nGroup})`);
  }
}

export function readConfig(dir: string): DeepSeekConfig {
  const path = join(dir, 'config.json');
  let text: string;
  try {
    text = fs.readFileSync(path, 'utf8');
  } catch (e) {
    fail(`${path}: cannot read config (${(e as Error).message})`);
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    fail(`${path}: not valid JSON (${(e as Error).message})`);
  }
  return parseConfig(raw, path);
}

/** DeepSeek's rule (modeling_deepseek.py): dense for the first k layers, then MoE every moe_layer_freq-th layer. */
export function isMoeLayer(cfg: DeepSeekConfig, i: number): boolean {
  return cfg.nRoutedExperts > 0 && i >= cfg.firstKDenseReplace && i % cfg.moeLayerFreq === 0;
}
