// The model, described once: every weight a DeepSeek-V2/V3 checkpoint of a config holds, with its
// checkpoint names, its shape as a function of the config, its role and what format it may take. The wasm
// loader, the CUDA uploader, `synth`, `bench`'s counts, `convert` and the WASI image all walk this; none of
// them spells a tensor name or a shape of its own.
import { isMoeLayer, type DeepSeekConfig } from '../checkpoint/config.js';
import {
  ROLE_ATTN_NORM, ROLE_DOWN, ROLE_EMBED, ROLE_EXP_DOWN, ROLE_EXP_GATE_UP, ROLE_FFN_NORM, ROLE_FINAL_NORM, ROLE_GATE_UP,
  ROLE_KV_A, ROLE_KV_A_NORM, ROLE_KV_B, ROLE_LM_HEAD, ROLE_MTP_EH_PROJ, ROLE_MTP_EMBED, ROLE_MTP_ENORM, ROLE_MTP_HEAD,
  ROLE_MTP_HEAD_NORM, ROLE_MTP_HNORM, ROLE_O_PROJ, ROLE_Q_A, ROLE_Q_A_NORM, ROLE_Q_B, ROLE_Q_PROJ, ROLE_ROUTER,
  ROLE_ROUTER_BIAS, ROLE_SH_DOWN, ROLE_SH_GATE_UP,
} from '../runtime/constants.js';

/**
 * What format a weight may take: 'matrix' takes the load's format (f32, bf16, q8, q4, fp8); 'float' is
 * a matrix that stays f32 or bf16 whatever the load asks (the embeddings, read a row at a time; the
 * router, whose logits stay float32; kv_b, cut per head at load); 'vector' is always f32 (norms, biases).
 */
export type WeightKind = 'matrix' | 'float' | 'vector';

/** One tensor of the checkpoint. */
export interface TensorSpec {
  name: string;
  /** [rows, cols] for matrices, [n] for vectors. */
  shape: readonly number[];
  /** The shape in config.json's words, for errors: "vocab_size x hidden_size". */
  why: string;
}

/** A weight as the engine holds it: one checkpoint tensor, or several stacked by rows (gate and up). */
export interface Weight {
  /** ROLE_* (assembly/constants.ts): what the weight is; the CUDA library's load slot. */
  role: number;
  /** The layer (MTP layers follow the decoder layers), or -1 for the embedding, final norm and head. */
  layer: number;
  /** The routed expert's index for ROLE_EXP_*, else 0. */
  expert: number;
  kind: WeightKind;
  parts: readonly TensorSpec[];
  /** [rows, cols] or [n]: the parts' rows added up. */
  shape: readonly number[];
  /** Absent from DeepSeek's checkpoints of some configs (the routing bias): load it if it is there. */
  optional?: boolean;
  /** The head of a tie_word_embeddings model without lm_head.weight: the embedding's tensor, not a second copy. */
  tied?: boolean;
}

export interface MlpSchema {
  gateUp: Weight;
  down: Weight;
  inter: number;
}

export interface AttentionSchema {
  q: { proj: Weight } | { a: Weight; aNorm: Weight; b: Weight };
  kvA: Weight;
  kvANorm: Weight;
  kvB: Weight;
  o: Weight;
}

export interface MoeSchema {
  router: Weight;
  /** e_score_correction_bias: V3's noaux_tc routing; optional in the checkpoint. */
  bias: Weight | null;
  experts: MlpSchema[];
  shared: MlpSchema | null;
}

/** One transformer block: x += attn(norm(x)); x += ffn(norm(x)). */
export interface BlockSchema {
  layer: number;
  attnNorm: Weight;
  attn: AttentionSchema;
  ffnNorm: Weight;
  ffn: { mlp: MlpSchema } | { moe: MoeSchema };
}

/**
 * DeepSeek-V3's multi-token-prediction layer k (layer index num_hidden_layers + k): h' = block(eh_proj
 * [enorm(embed(t+1)) | hnorm(h)]), logits = head(norm(h')). A draft model for speculative decoding.
 */
export interface MtpSchema {
  embed: Weight;
  enorm: Weight;
  hnorm: Weight;
  ehProj: Weight;
  block: BlockSchema;
  headNorm: Weight;
  head: Weight;
}

export interface ModelSchema {
  config: DeepSeekConfig;
  embed: Weight;
  blocks: BlockSchema[];
  norm: Weight;
  head: Weight;
  mtp: MtpSchema[];
}

export interface SchemaOptions {
  /**
   * Whether the checkpoint has lm_head.weight: a tie_word_embeddings model without it uses the embedding
   * as its head (default: it has one unless the config ties them).
   */
  hasLmHead?: boolean;
}

/** The whole model of `cfg`. */
export function modelSchema(cfg: DeepSeekConfig, opts: SchemaOptions = {}): ModelSchema {
  const hidden = cfg.hiddenSize;
  const vocab = cfg.vocabSize;
  const embedTensor = { name: 'model.embed_tokens.weight', shape: [vocab, hidden], why: 'vocab_size x hidden_size' };
  const embed = weight(ROLE_EMBED, -1, 0, 'float', [embedTensor]);
  const blocks = Array.from({ length: cfg.numHiddenLayers }, (_, i) => block(cfg, i));
  const norm = vector(ROLE_FINAL_NORM, -1, 'model.norm.weight', hidden, 'hidden_size');
  const tied = cfg.tieWordEmbeddings && !(opts.hasLmHead ?? false);
  const head = tied
    ? { ...weight(ROLE_LM_HEAD, -1, 0, 'matrix', [embedTensor]), tied: true }
    : weight(ROLE_LM_HEAD, -1, 0, 'matrix', [{ name: 'lm_head.weight', shape: [vocab, hidden], why: 'vocab_size x hidden_size' }]);
  const mtp = Array.from({ length: cfg.numNextnPredictLayers }, (_, k) => mtpLayer(cfg, cfg.numHiddenLayers + k));
  return { config: cfg, embed, blocks, norm, head, mtp };
}

function block(cfg: DeepSeekConfig, layer: number): BlockSchema {
  const p = `model.layers.${layer}`;
  const hidden = cfg.hiddenSize;
  return {
    layer,
    attnNorm: vector(ROLE_ATTN_NORM, layer, `${p}.input_layernorm.weight`, hidden, 'hidden_size'),
    attn: attention(cfg, layer, `${p}.self_attn`),
    ffnNorm: vector(ROLE_FFN_NORM, layer, `${p}.post_attention_layernorm.weight`, hidden, 'hidden_size'),
    ffn: isMoeLayer(cfg, layer)
      ? { moe: moe(cfg, layer, `${p}.mlp`) }
      : { mlp: mlp(ROLE_GATE_UP, ROLE_DOWN, layer, 0, `${p}.mlp`, hidden, cfg.intermediateSize, 'intermediate_size') },
  };
}

function attention(cfg: DeepSeekConfig, layer: number, p: string): AttentionSchema {
  const { hiddenSize: hidden, numAttentionHeads: heads, qkNopeHeadDim: nope, qkRopeHeadDim: rope, vHeadDim: v, kvLoraRank: rank } = cfg;
  const qRows = heads * (nope + rope);
  const qWhy = 'num_attention_heads * (qk_nope_head_dim + qk_rope_head_dim)';
  const mat = (role: number, name: string, rows: number, cols: number, why: string, kind: WeightKind = 'matrix'): Weight =>
    weight(role, layer, 0, kind, [{ name: `${p}.${name}`, shape: [rows, cols], why }]);
  const q =
    cfg.qLoraRank === null
      ? { proj: mat(ROLE_Q_PROJ, 'q_proj.weight', qRows, hidden, `${qWhy} x hidden_size`) }
      : {
          a: mat(ROLE_Q_A, 'q_a_proj.weight', cfg.qLoraRank, hidden, 'q_lora_rank x hidden_size'),
          aNorm: vector(ROLE_Q_A_NORM, layer, `${p}.q_a_layernorm.weight`, cfg.qLoraRank, 'q_lora_rank'),
          b: mat(ROLE_Q_B, 'q_b_proj.weight', qRows, cfg.qLoraRank, `${qWhy} x q_lora_rank`),
        };
  return {
    q,
    kvA: mat(ROLE_KV_A, 'kv_a_proj_with_mqa.weight', rank + rope, hidden, '(kv_lora_rank + qk_rope_head_dim) x hidden_size'),
    kvANorm: vector(ROLE_KV_A_NORM, layer, `${p}.kv_a_layernorm.weight`, rank, 'kv_lora_rank'),
    // [heads * (nope + v), rank]: head h's rows h * (nope + v) + [0, nope) are W_UK, the next v rows W_UV.
    kvB: mat(ROLE_KV_B, 'kv_b_proj.weight', heads * (nope + v), rank, 'num_attention_heads * (qk_nope_head_dim + v_head_dim) x kv_lora_rank', 'float'),
    o: mat(ROLE_O_PROJ, 'o_proj.weight', hidden, heads * v, 'hidden_size x num_attention_heads * v_head_dim'),
  };
}

function moe(cfg: DeepSeekConfig, layer: number, p: string): MoeSchema {
  const { hiddenSize: hidden, nRoutedExperts: n, moeIntermediateSize: inter } = cfg;
  const router = weight(ROLE_ROUTER, layer, 0, 'float', [{ name: `${p}.gate.weight`, shape: [n, hidden], why: 'n_routed_experts x hidden_size' }]);
  // Only V3's noaux_tc routing reads the bias; DeepSeek's V3 checkpoints hold it in f32.
  const bias =
    cfg.topkMethod === 'noaux_tc'
      ? { ...vector(ROLE_ROUTER_BIAS, layer, `${p}.gate.e_score_correction_bias`, n, 'n_routed_experts'), optional: true }
      : null;
  const experts = Array.from({ length: n }, (_, e) =>
    mlp(ROLE_EXP_GATE_UP, ROLE_EXP_DOWN, layer, e, `${p}.experts.${e}`, hidden, inter, 'moe_intermediate_size'),
  );
  const shared =
    cfg.nSharedExperts > 0
      ? mlp(ROLE_SH_GATE_UP, ROLE_SH_DOWN, layer, 0, `${p}.shared_experts`, hidden, inter * cfg.nSharedExperts, 'moe_intermediate_size * n_shared_experts')
      : null;
  return { router, bias, experts, shared };
}

/** SwiGLU: gate and up stacked into one matrix [2 * inter, hidden], so one pass over x gives both. */
function mlp(gateUpRole: number, downRole: number, layer: number, expert: number, p: string, hidden: number, inter: number, why: string): MlpSchema {
  return {
    gateUp: weight(gateUpRole, layer, expert, 'matrix', [
      { name: `${p}.gate_proj.weight`, shape: [inter, hidden], why: `${why} x hidden_size` },
      { name: `${p}.up_proj.weight`, shape: [inter, hidden], why: `${why} x hidden_size` },
    ]),
    down: weight(downRole, layer, expert, 'matrix', [{ name: `${p}.down_proj.weight`, shape: [hidden, inter], why: `hidden_size x ${why}` }]),
    inter,
  };
}

function mtpLayer(cfg: DeepSeekConfig, layer: number): MtpSchema {
  const p = `model.layers.${layer}`;
  const hidden = cfg.hiddenSize;
  return {
    embed: weight(ROLE_MTP_EMBED, layer, 0, 'float', [{ name: `${p}.embed_tokens.weight`, shape: [cfg.vocabSize, hidden], why: 'vocab_size x hidden_size' }]),
    enorm: vector(ROLE_MTP_ENORM, layer, `${p}.enorm.weight`, hidden, 'hidden_size'),
    hnorm: vector(ROLE_MTP_HNORM, layer, `${p}.hnorm.weight`, hidden, 'hidden_size'),
    ehProj: weight(ROLE_MTP_EH_PROJ, layer, 0, 'matrix', [{ name: `${p}.eh_proj.weight`, shape: [hidden, 2 * hidden], why: 'hidden_size x 2 * hidden_size' }]),
    block: block(cfg, layer),
    headNorm: vector(ROLE_MTP_HEAD_NORM, layer, `${p}.shared_head.norm.weight`, hidden, 'hidden_size'),
    head: weight(ROLE_MTP_HEAD, layer, 0, 'matrix', [{ name: `${p}.shared_head.head.weight`, shape: [cfg.vocabSize, hidden], why: 'vocab_size x hidden_size' }]),
  };
}

function weight(role: number, layer: number, expert: number, kind: WeightKind, parts: TensorSpec[]): Weight {
  const cols = parts[0].shape[1];
  const rows = parts.reduce((n, t) => n + t.shape[0], 0);
  return { role, layer, expert, kind, parts, shape: [rows, cols] };
}

function vector(role: number, layer: number, name: string, n: number, why: string): Weight {
  return { role, layer, expert: 0, kind: 'vector', parts: [{ name, shape: [n], why }], shape: [n] };
}

/** Part i of a weight stacked from several tensors (gate and up) as a weight of its own: one checkpoint tensor. */
export function weightPart(w: Weight, i: number): Weight {
  const p = w.parts[i];
  return { ...w, parts: [p], shape: p.shape };
}

/** A block's weights in checkpoint order. */
export function blockWeights(b: BlockSchema): Weight[] {
  const a = b.attn;
  const q = 'proj' in a.q ? [a.q.proj] : [a.q.a, a.q.aNorm, a.q.b];
  const mlpWeights = (m: MlpSchema): Weight[] => [m.gateUp, m.down];
  const ffn =
    'mlp' in b.ffn
      ? mlpWeights(b.ffn.mlp)
      : [
          b.ffn.moe.router,
          ...(b.ffn.moe.bias ? [b.ffn.moe.bias] : []),
          ...b.ffn.moe.experts.flatMap(mlpWeights),
          ...(b.ffn.moe.shared ? mlpWeights(b.ffn.moe.shared) : []),
        ];
  return [b.attnNorm, ...q, a.kvA, a.kvANorm, a.kvB, a.o, b.ffnNorm, ...ffn];
}

/**
 * Every weight of the model in checkpoint order: the embedding, the decoder blocks, the final norm, the
 * head (also when tied: callers skip `tied` where a second copy would be wrong), and with `mtp` the MTP
 * layers.
 */
export function schemaWeights(s: ModelSchema, opts: { mtp?: boolean } = {}): Weight[] {
  const out = [s.embed, ...s.blocks.flatMap(blockWeights), s.norm, s.head];
  if (opts.mtp) {
    for (const m of s.mtp) out.push(m.embed, m.enorm, m.hnorm, m.ehProj, ...blockWeights(m.block), m.headNorm, m.head);
  }
  return out;
}

/** Bytes one layer caches per token: the normed latent c and the roped shared key, f32 (MLA, absorbed). */
export function kvRowBytes(cfg: DeepSeekConfig): number {
  return (cfg.kvLoraRank + cfg.qkRopeHeadDim) * 4;
}

/** Elements of a weight. */
export function weightSize(w: Weight): number {
  return w.shape.reduce((p, d) => p * d, 1);
}

/**
 * The share of a weight one decoded token reads: all of it, but for a routed expert the chance it was
 * chosen (k of E), and of the embedding only a row (counted as none). A tied head is read as the head.
 */
export function activeShare(cfg: DeepSeekConfig, w: Weight): number {
  if (w.role === ROLE_EMBED) return 0;
  return w.role === ROLE_EXP_GATE_UP || w.role === ROLE_EXP_DOWN ? cfg.numExpertsPerTok / cfg.nRoutedExperts : 1;
}

/**
 * Bytes of the model's weights (a tied head counted once), those one decoded token reads, and those of one
 * routed expert (the mean over the model's routed experts; 0 without any), with `bytesOf` sizing each weight
 * as a load holds it.
 */
export function weightTotals(s: ModelSchema, bytesOf: (w: Weight) => number): { weights: number; active: number; expert: number } {
  let weights = 0;
  let active = 0;
  let routed = 0;
  let experts = 0;
  for (const w of schemaWeights(s)) {
    const b = bytesOf(w.tied ? s.embed : w);
    if (!w.tied) weights += b;
    active += b * activeShare(s.config, w);
    if (w.role === ROLE_EXP_GATE_UP || w.role === ROLE_EXP_DOWN) routed += b;
    if (w.role === ROLE_EXP_DOWN) experts++;
  }
  return { weights, active, expert: experts > 0 ? routed / experts : 0 };
}

/** Parameters of the model (a tied head counted once; MTP left out), those one decoded token reads, and the embedding's. */
export function parameterCounts(s: ModelSchema): { total: number; active: number; embed: number } {
  let total = 0;
  let active = 0;
  for (const w of schemaWeights(s)) {
    const n = weightSize(w);
    if (!w.tied) total += n;
    active += n * activeShare(s.config, w);
  }
  return { total, active, embed: weightSize(s.embed) };
}
