// Model shapes for `deepwasm synth`, written as the config.json a Hugging Face checkpoint carries.
// The official ones copy DeepSeek's published configs (the HF config.json of DeepSeek-V2-Lite,
// DeepSeek-V2 and DeepSeek-V3, which match inference/configs/config_{16B,236B,671B}.json in the
// DeepSeek-V3 repository); only the weights are made up.

type RawConfig = Record<string, unknown>;

/** YaRN as DeepSeek ships it: 4K pretraining context stretched 40x to 160K. */
const yarn = (mscale: number, mscaleAllDim: number): RawConfig => ({
  type: 'yarn',
  factor: 40,
  original_max_position_embeddings: 4096,
  beta_fast: 32,
  beta_slow: 1,
  mscale,
  mscale_all_dim: mscaleAllDim,
});

/** Fields every DeepSeek config.json has in common. */
const common: RawConfig = {
  attention_bias: false,
  attention_dropout: 0.0,
  hidden_act: 'silu',
  initializer_range: 0.02,
  kv_lora_rank: 512,
  qk_nope_head_dim: 128,
  qk_rope_head_dim: 64,
  v_head_dim: 128,
  max_position_embeddings: 163840,
  moe_layer_freq: 1,
  rms_norm_eps: 1e-6,
  rope_theta: 10000,
  tie_word_embeddings: false,
  use_cache: true,
};

/** DeepSeek-V2-Lite (inference/configs/config_16B.json): one q_proj, softmax greedy routing. */
const v2Lite: RawConfig = {
  ...common,
  architectures: ['DeepseekV2ForCausalLM'],
  model_type: 'deepseek_v2',
  vocab_size: 102400,
  bos_token_id: 100000,
  eos_token_id: 100001,
  hidden_size: 2048,
  intermediate_size: 10944,
  moe_intermediate_size: 1408,
  num_hidden_layers: 27,
  first_k_dense_replace: 1,
  num_attention_heads: 16,
  num_key_value_heads: 16,
  q_lora_rank: null,
  n_routed_experts: 64,
  n_shared_experts: 2,
  num_experts_per_tok: 6,
  n_group: 1,
  topk_group: 1,
  topk_method: 'greedy',
  scoring_func: 'softmax',
  norm_topk_prob: false,
  routed_scaling_factor: 1.0,
  rope_scaling: yarn(0.707, 0.707),
};

/** DeepSeek-V2 (config_236B.json): group-limited greedy routing over 160 experts. */
const v2: RawConfig = {
  ...v2Lite,
  hidden_size: 5120,
  intermediate_size: 12288,
  moe_intermediate_size: 1536,
  num_hidden_layers: 60,
  num_attention_heads: 128,
  num_key_value_heads: 128,
  q_lora_rank: 1536,
  n_routed_experts: 160,
  n_shared_experts: 2,
  num_experts_per_tok: 6,
  n_group: 8,
  topk_group: 3,
  topk_method: 'group_limited_greedy',
  routed_scaling_factor: 16.0,
};

/** DeepSeek-V3 (config_671B.json): sigmoid scores with a correction bias (noaux_tc). The released
 * weights are FP8; a synthetic checkpoint is bf16 or f32, so there is no quantization_config. */
const v3: RawConfig = {
  ...common,
  architectures: ['DeepseekV3ForCausalLM'],
  model_type: 'deepseek_v3',
  vocab_size: 129280,
  bos_token_id: 0,
  eos_token_id: 1,
  hidden_size: 7168,
  intermediate_size: 18432,
  moe_intermediate_size: 2048,
  num_hidden_layers: 61,
  first_k_dense_replace: 3,
  num_attention_heads: 128,
  num_key_value_heads: 128,
  q_lora_rank: 1536,
  n_routed_experts: 256,
  n_shared_experts: 1,
  num_experts_per_tok: 8,
  n_group: 8,
  topk_group: 4,
  topk_method: 'noaux_tc',
  scoring_func: 'sigmoid',
  norm_topk_prob: true,
  routed_scaling_factor: 2.5,
  num_nextn_predict_layers: 1,
  rope_scaling: yarn(1.0, 1.0),
};

/**
 * A V3-shaped model small enough for one machine: 2048 wide, 6 layers (1 dense), 64 experts top-6,
 * 2.57 B parameters of which ~0.53 B are active per token. The shape the GUIDE's llama.cpp and
 * wllama numbers were measured on.
 */
const v3_2k6: RawConfig = {
  ...v3,
  vocab_size: 102400,
  bos_token_id: 100000,
  eos_token_id: 100001,
  hidden_size: 2048,
  intermediate_size: 5632,
  moe_intermediate_size: 1024,
  num_hidden_layers: 6,
  first_k_dense_replace: 1,
  num_attention_heads: 16,
  num_key_value_heads: 16,
  q_lora_rank: 768,
  n_routed_experts: 64,
  n_shared_experts: 1,
  num_experts_per_tok: 6,
  n_group: 8,
  topk_group: 4,
  num_nextn_predict_layers: 0,
};

const PRESETS: Readonly<Record<string, RawConfig>> = {
  'v3-2k6': v3_2k6,
  '16B': v2Lite,
  '236B': v2,
  '671B': v3,
};

export const PRESET_NAMES: readonly string[] = Object.keys(PRESETS);

/** A fresh copy of a preset's config.json, or undefined for an unknown name. */
export function presetConfig(name: string): RawConfig | undefined {
  const p = Object.hasOwn(PRESETS, name) ? PRESETS[name] : undefined;
  return p === undefined ? undefined : structuredClone(p);
}
