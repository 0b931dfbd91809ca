import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { openCheckpoint } from '../host/checkpoint/checkpoint.js';
import { parseConfig } from '../host/checkpoint/config.js';
import { PRESET_NAMES, presetConfig } from '../host/checkpoint/presets.js';
import { openSafetensors, readTensorInto } from '../host/checkpoint/safetensors.js';
import { planTensors, synthCheckpoint, synthConfig } from '../host/model/synth.js';
import { planShards } from '../host/checkpoint/shards.js';
import { DEFAULT_MODEL_DIR } from '../host/index.js';
import { loadTokenizer } from '../host/tokenizer/load.js';
import { loadOne } from './helpers.js';

const CLI = fileURLToPath(new URL('../host/cli/main.js', import.meta.url));
const tmp = fs.mkdtempSync(join(tmpdir(), 'deepwasm-synth-'));
process.on('exit', () => fs.rmSync(tmp, { recursive: true, force: true }));

/** A V3-shaped config small enough to write and run in milliseconds. */
const TINY_V3 = {
  model_type: 'deepseek_v3',
  vocab_size: 300,
  hidden_size: 64,
  intermediate_size: 96,
  moe_intermediate_size: 32,
  num_hidden_layers: 3,
  first_k_dense_replace: 1,
  num_attention_heads: 4,
  q_lora_rank: 32,
  kv_lora_rank: 32,
  qk_nope_head_dim: 16,
  qk_rope_head_dim: 8,
  v_head_dim: 16,
  n_routed_experts: 8,
  n_shared_experts: 1,
  num_experts_per_tok: 2,
  n_group: 4,
  topk_group: 2,
  topk_method: 'noaux_tc',
  scoring_func: 'sigmoid',
  norm_topk_prob: true,
  routed_scaling_factor: 2.5,
  max_position_embeddings: 256,
  rope_scaling: { type: 'yarn', factor: 4, original_max_position_embeddings: 64, beta_fast: 32, beta_slow: 1, mscale: 1, mscale_all_dim: 1 },
  bos_token_id: 0,
  eos_token_id: 1,
};

/** V2-Lite-shaped: one q_proj, softmax greedy routing, two shared experts, odd sizes (odd element counts). */
const TINY_V2 = {
  model_type: 'deepseek_v2',
  vocab_size: 301,
  hidden_size: 47,
  intermediate_size: 72,
  moe_intermediate_size: 24,
  num_hidden_layers: 2,
  first_k_dense_replace: 1,
  num_attention_heads: 3,
  q_lora_rank: null,
  kv_lora_rank: 23,
  qk_nope_head_dim: 8,
  qk_rope_head_dim: 4,
  v_head_dim: 8,
  n_routed_experts: 6,
  n_shared_experts: 2,
  num_experts_per_tok: 3,
  topk_method: 'greedy',
  scoring_func: 'softmax',
  max_position_embeddings: 128,
};

let dirs = 0;
const freshDir = (): string => join(tmp, `ckpt-${dirs++}`);

function filesOf(dir: string): Map<string, Buffer> {
  return new Map(fs.readdirSync(dir).sort().map((n) => [n, fs.readFileSync(join(dir, n))]));
}

function tensorBytes(dir: string): Map<string, Buffer> {
  const ckpt = openCheckpoint(dir);
  const out = new Map<string, Buffer>();
  for (const [name, e] of ckpt.tensors) {
    const b = Buffer.alloc(e.nbytes);
    readTensorInto(e, b);
    out.set(name, b);
  }
  ckpt.close();
  return out;
}

function cli(...args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8' });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

test('same seed, same bytes; another seed, other weights but the same config and layout', async () => {
  const a = freshDir();
  const b = freshDir();
  const c = freshDir();
  await synthCheckpoint({ config: TINY_V3, source: 'tiny', out: a, seed: 42 });
  await synthCheckpoint({ config: TINY_V3, source: 'tiny', out: b, seed: 42 });
  await synthCheckpoint({ config: TINY_V3, source: 'tiny', out: c, seed: 43 });
  const fa = filesOf(a);
  const fb = filesOf(b);
  assert.equal([...fa.keys()], [...fb.keys()]);
  for (const [name, bytes] of fa) assert.ok(bytes.equals(fb.get(name)!), `${name} differs between two runs with seed 42`);

  const fc = filesOf(c);
  assert.ok(fa.get('config.json')!.equals(fc.get('config.json')!));
  assert.ok(fa.get('model.safetensors.index.json')!.equals(fc.get('model.safetensors.index.json')!));
  const ta = tensorBytes(a);
  const tc = tensorBytes(c);
  for (const [name, bytes] of ta) {
    const ones = name.endsWith('norm.weight') || name.endsWith('layernorm.weight');
    assert.is(bytes.equals(tc.get(name)!), ones, `${name}: seeds 42 and 43 should ${ones ? 'both give ones' : 'give different values'}`);
  }
  // Different tensors of one shape draw from different streams.
  assert.not.ok(ta.get('model.layers.1.mlp.experts.0.gate_proj.weight')!.equals(ta.get('model.layers.1.mlp.experts.1.gate_proj.weight')!));
});

for (const dtype of ['f32', 'bf16'] as const) {
  test(`${dtype}: a tensor's bytes do not depend on the shard size or the generation chunk`, async () => {
    const one = freshDir();
    const many = freshDir();
    await synthCheckpoint({ config: TINY_V2, source: 'tiny v2', out: one, seed: 5, dtype });
    const r = await synthCheckpoint({ config: TINY_V2, source: 'tiny v2', out: many, seed: 5, dtype, shardBytes: 40_000, chunkValues: 1000 });
    assert.ok(r.shards.length > 3, `expected several shards, got ${r.shards.length}`);
    const ta = tensorBytes(one);
    const tb = tensorBytes(many);
    assert.equal([...ta.keys()].sort(), [...tb.keys()].sort());
    // 27 x 47 values: the last draw of the stream yields one value, not two.
    assert.is((ta.get('model.layers.0.self_attn.kv_a_proj_with_mqa.weight')!.length / (dtype === 'f32' ? 4 : 2)) % 2, 1);
    for (const [name, bytes] of ta) assert.ok(bytes.equals(tb.get(name)!), `${name} changed with the shard size or chunk`);
  });
}

test('config, shapes, shards and index agree', async () => {
  const dir = freshDir();
  const r = await synthCheckpoint({ config: TINY_V3, source: 'tiny', out: dir, seed: 1, layers: 2, shardBytes: 100_000 });
  const config = JSON.parse(fs.readFileSync(join(dir, 'config.json'), 'utf8'));
  assert.is(config.num_hidden_layers, 2);
  assert.is(config.torch_dtype, 'bfloat16');
  const cfg = parseConfig(config, 'config.json');
  const plan = planTensors(cfg, 'bf16');
  assert.is(r.tensors, plan.length);

  const index = JSON.parse(fs.readFileSync(join(dir, 'model.safetensors.index.json'), 'utf8'));
  const shardFiles = fs.readdirSync(dir).filter((n) => n.endsWith('.safetensors')).sort();
  assert.equal(shardFiles, r.shards);
  shardFiles.forEach((n, k) => assert.is(n, `model-${String(k + 1).padStart(5, '0')}-of-${String(shardFiles.length).padStart(5, '0')}.safetensors`));
  assert.equal(Object.keys(index.weight_map).sort(), plan.map((t) => t.name).sort());
  assert.is(index.metadata.total_size, plan.reduce((n, t) => n + t.nbytes, 0));
  assert.is(index.metadata.total_size, r.totalBytes);

  for (const file of shardFiles) {
    const st = openSafetensors(join(dir, file));
    assert.is(st.metadata.format, 'pt');
    for (const [name, e] of st.tensors) {
      assert.is(index.weight_map[name], file, `${name} is in ${file}, the index says ${index.weight_map[name]}`);
      const t = plan.find((p) => p.name === name)!;
      assert.equal(e.shape, t.shape, name);
      assert.is(e.dtype, name.endsWith('e_score_correction_bias') ? 'F32' : 'BF16', name);
    }
    const size = fs.statSync(join(dir, file)).size;
    if (st.tensors.size > 1) assert.ok(size - 8 < 100_000 + 64 * 1024, `${file} is ${size} bytes, over the shard size`);
  }
  // Every tensor a DeepSeek checkpoint needs, and the dense/MoE split of first_k_dense_replace.
  const ckpt = openCheckpoint(dir);
  for (const name of [
    'model.embed_tokens.weight', 'lm_head.weight', 'model.norm.weight',
    'model.layers.0.mlp.gate_proj.weight', 'model.layers.1.mlp.gate.weight', 'model.layers.1.mlp.gate.e_score_correction_bias',
    'model.layers.1.mlp.experts.7.down_proj.weight', 'model.layers.1.mlp.shared_experts.up_proj.weight',
    'model.layers.1.self_attn.q_a_proj.weight', 'model.layers.1.self_attn.q_a_layernorm.weight', 'model.layers.1.self_attn.q_b_proj.weight',
    'model.layers.1.self_attn.kv_a_proj_with_mqa.weight', 'model.layers.1.self_attn.kv_a_layernorm.weight',
    'model.layers.1.self_attn.kv_b_proj.weight', 'model.layers.1.self_attn.o_proj.weight',
  ]) assert.ok(ckpt.has(name), `missing ${name}`);
  assert.not.ok(ckpt.has('model.layers.0.mlp.experts.0.gate_proj.weight'));
  assert.not.ok(ckpt.has('model.layers.2.input_layernorm.weight'));
  assert.equal(ckpt.get('model.layers.1.self_attn.kv_b_proj.weight').shape, [4 * (16 + 16), 32]);
  ckpt.close();
});

test('values look like an initializer: unit-spread embeddings, 1/sqrt(fan_in) linears, ones for norms', async () => {
  const dir = freshDir();
  await synthCheckpoint({ config: TINY_V3, source: 'tiny', out: dir, seed: 9, dtype: 'f32' });
  const t = tensorBytes(dir);
  const stats = (name: string): { mean: number; std: number } => {
    const b = t.get(name)!;
    const v = new Float32Array(b.buffer, b.byteOffset, b.length / 4);
    const mean = v.reduce((s, x) => s + x, 0) / v.length;
    return { mean, std: Math.sqrt(v.reduce((s, x) => s + (x - mean) ** 2, 0) / v.length) };
  };
  const emb = stats('model.embed_tokens.weight');
  assert.ok(Math.abs(emb.std - 1) < 0.05 && Math.abs(emb.mean) < 0.05, JSON.stringify(emb));
  const down = stats('model.layers.1.mlp.experts.3.down_proj.weight');
  assert.ok(Math.abs(down.std - 1 / Math.sqrt(32)) < 0.02, JSON.stringify(down));
  const norm = stats('model.layers.0.input_layernorm.weight');
  assert.equal(norm, { mean: 1, std: 0 });
  const bias = stats('model.layers.2.mlp.gate.e_score_correction_bias');
  assert.ok(bias.std > 0 && bias.std < 0.05, JSON.stringify(bias));
});

for (const [label, config, dtype] of [
  ['V3 bf16', TINY_V3, 'bf16'],
  ['V2 f32', TINY_V2, 'f32'],
] as const) {
  test(`${label}: loads with Model.load and gives finite, varied logits through prefill and decode`, async () => {
    const dir = freshDir();
    await synthCheckpoint({ config, source: label, out: dir, seed: 3, dtype });
    const model = await loadOne(dir, { threads: 2 });
    try {
      const vocab = model.config.vocabSize;
      const prompt = [0, 17, 42, 99, 5, 250];
      const all = model.forward(prompt, { allLogits: true });
      assert.is(all.length, prompt.length * vocab);
      for (let i = 0; i < all.length; i++) if (!Number.isFinite(all[i])) assert.unreachable(`logit ${i} is ${all[i]}`);
      let max = 0;
      for (const x of all) max = Math.max(max, Math.abs(x));
      // O(1) activations: logits of a few units, not 0 and not thousands.
      assert.ok(max > 0.5 && max < 100, `largest |logit| ${max}`);
      const rows = new Set(prompt.map((_, p) => all.subarray(p * vocab, p * vocab + 8).join(',')));
      assert.is(rows.size, prompt.length, 'each position should have its own logits');
      let logits = all.subarray((prompt.length - 1) * vocab);
      for (let k = 0; k < 5; k++) {
        let best = 0;
        for (let i = 1; i < vocab; i++) if (logits[i] > logits[best]) best = i;
        logits = model.forward([best]);
        assert.ok(logits.every(Number.isFinite), `decode step ${k} gave non-finite logits`);
      }
    } finally {
      await model.close();
    }
  });
}

test('presets: v3-2k6 has the shape the issue asks for', () => {
  const raw = presetConfig('v3-2k6')!;
  const { config: c, raw: written } = synthConfig(raw, 'preset v3-2k6', 'bf16');
  assert.equal(
    {
      modelType: c.modelType, hidden: c.hiddenSize, layers: c.numHiddenLayers, dense: c.firstKDenseReplace, inter: c.intermediateSize,
      heads: c.numAttentionHeads, qLora: c.qLoraRank, kvLora: c.kvLoraRank, nope: c.qkNopeHeadDim, rope: c.qkRopeHeadDim, v: c.vHeadDim,
      experts: c.nRoutedExperts, topk: c.numExpertsPerTok, moeInter: c.moeIntermediateSize, shared: c.nSharedExperts,
      groups: c.nGroup, keep: c.topkGroup, scoring: c.scoringFunc, method: c.topkMethod, scale: c.routedScalingFactor,
      norm: c.normTopkProb, vocab: c.vocabSize, bos: c.bosTokenId, eos: c.eosTokenIds,
    },
    {
      modelType: 'deepseek_v3', hidden: 2048, layers: 6, dense: 1, inter: 5632,
      heads: 16, qLora: 768, kvLora: 512, nope: 128, rope: 64, v: 128,
      experts: 64, topk: 6, moeInter: 1024, shared: 1,
      groups: 8, keep: 4, scoring: 'sigmoid', method: 'noaux_tc', scale: 2.5,
      norm: true, vocab: 102400, bos: 100000, eos: [100001],
    },
  );
  assert.equal(c.ropeScaling, { factor: 40, originalMaxPositionEmbeddings: 4096, betaFast: 32, betaSlow: 1, mscale: 1, mscaleAllDim: 1 });
  assert.is(c.maxPositionEmbeddings, 163840);
  assert.is(written.torch_dtype, 'bfloat16');
  const plan = planTensors(c, 'bf16');
  const params = plan.reduce((n, t) => n + t.shape.reduce((p, d) => p * d, 1), 0);
  assert.ok(Math.abs(params / 1e9 - 2.57) < 0.01, `v3-2k6 has ${params} parameters, expected ~2.57 B`);
  // ~2 GiB shards.
  const shards = planShards(plan);
  assert.is(shards.length, 3);
  for (const s of shards) assert.ok(s.reduce((n, t) => n + t.nbytes, 0) <= 2 * 1024 ** 3);
});

test('presets: the official shapes follow DeepSeek\'s configs, and --layers cuts them', () => {
  assert.equal([...PRESET_NAMES].sort(), ['16B', '236B', '671B', 'v3-2k6']);
  const cfg = (name: string, layers?: number) => synthConfig(presetConfig(name)!, name, 'bf16', layers).config;
  const lite = cfg('16B');
  assert.equal(
    [lite.modelType, lite.hiddenSize, lite.numHiddenLayers, lite.numAttentionHeads, lite.qLoraRank, lite.nRoutedExperts, lite.numExpertsPerTok, lite.nSharedExperts, lite.moeIntermediateSize, lite.intermediateSize, lite.topkMethod, lite.scoringFunc, lite.routedScalingFactor, lite.vocabSize],
    ['deepseek_v2', 2048, 27, 16, null, 64, 6, 2, 1408, 10944, 'greedy', 'softmax', 1, 102400],
  );
  assert.equal(lite.ropeScaling, { factor: 40, originalMaxPositionEmbeddings: 4096, betaFast: 32, betaSlow: 1, mscale: 0.707, mscaleAllDim: 0.707 });
  const v2 = cfg('236B');
  assert.equal(
    [v2.hiddenSize, v2.numHiddenLayers, v2.numAttentionHeads, v2.qLoraRank, v2.nRoutedExperts, v2.numExpertsPerTok, v2.nSharedExperts, v2.moeIntermediateSize, v2.intermediateSize, v2.nGroup, v2.topkGroup, v2.topkMethod, v2.routedScalingFactor],
    [5120, 60, 128, 1536, 160, 6, 2, 1536, 12288, 8, 3, 'group_limited_greedy', 16],
  );
  const v3 = cfg('671B', 1);
  assert.equal(
    [v3.modelType, v3.hiddenSize, v3.numHiddenLayers, v3.numAttentionHeads, v3.qLoraRank, v3.nRoutedExperts, v3.numExpertsPerTok, v3.nSharedExperts, v3.moeIntermediateSize, v3.intermediateSize, v3.firstKDenseReplace, v3.nGroup, v3.topkGroup, v3.topkMethod, v3.scoringFunc, v3.routedScalingFactor, v3.vocabSize, v3.maxPositionEmbeddings],
    ['deepseek_v3', 7168, 1, 128, 1536, 256, 8, 1, 2048, 18432, 3, 8, 4, 'noaux_tc', 'sigmoid', 2.5, 129280, 163840],
  );
  // Cut to one layer, 671B is its embeddings, one dense layer and the head: shapes as released.
  const plan = planTensors(v3, 'bf16');
  assert.equal(plan[0], { name: 'model.embed_tokens.weight', dtype: 'BF16', shape: [129280, 7168], init: { kind: 'normal', std: 1 }, nbytes: 129280 * 7168 * 2 });
  assert.equal(plan.find((t) => t.name === 'model.layers.0.mlp.gate_proj.weight')!.shape, [18432, 7168]);
  assert.equal(plan.find((t) => t.name === 'model.layers.0.self_attn.q_b_proj.weight')!.shape, [128 * 192, 1536]);
  // In f32 the embeddings alone pass 2 GiB: they get a shard of their own.
  const f32Shards = planShards(planTensors(v3, 'f32'));
  assert.equal(f32Shards[0].map((t) => t.name), ['model.embed_tokens.weight']);
  // The FP8 release's MTP layer is not written, so the config does not promise it.
  assert.is(synthConfig(presetConfig('671B')!, '671B', 'bf16').raw.num_nextn_predict_layers, 0);
});

test('deepwasm synth writes a checkpoint from --config and refuses to overwrite without --force', () => {
  const cfgFile = join(tmp, 'tiny-config.json');
  fs.writeFileSync(cfgFile, JSON.stringify(TINY_V3));
  const out = freshDir();
  const ok = cli('synth', '--config', cfgFile, '--out', out, '--seed', '7', '--layers', '2', '--dtype', 'f32');
  assert.is(ok.status, 0, ok.stderr);
  assert.match(ok.stdout, /^wrote .*: \d+\.\d\d M parameters, \d+ tensors, [\d.]+ MB in 1 shard, [\d.]+ s \([\d.]+ [MG]B\/s\); tokenizer: the embedded model's, cut to vocab_size\n$/);
  assert.is(JSON.parse(fs.readFileSync(join(out, 'config.json'), 'utf8')).num_hidden_layers, 2);
  // Its tokenizer holds no id past vocab_size, and the text commands run on it.
  const tok = JSON.parse(fs.readFileSync(join(out, 'tokenizer.json'), 'utf8')) as { model: { vocab: Record<string, number> }; added_tokens: { id: number }[] };
  const ids = [...Object.values(tok.model.vocab), ...tok.added_tokens.map((t) => t.id)];
  assert.is(Math.max(...ids), TINY_V3.vocab_size - 1);
  const run = cli('run', '--model', out, '--prompt', 'Once upon a time, a whale', '--max-tokens', '5', '--threads', '1');
  assert.is(run.status, 0, run.stderr);
  assert.match(run.stderr, /^\d+ tokens, prefill/m);
  const again = cli('synth', '--config', cfgFile, '--out', out);
  assert.is(again.status, 1);
  assert.match(again.stderr, /already holds a checkpoint.*--force/);
  const forced = cli('synth', '--config', cfgFile, '--out', out, '--seed', '7', '--force');
  assert.is(forced.status, 0, forced.stderr);
  assert.is(JSON.parse(fs.readFileSync(join(out, 'config.json'), 'utf8')).num_hidden_layers, 3);
  assert.is(fs.readdirSync(out).filter((n) => n.endsWith('.safetensors')).length, 1);
});

test('deepwasm synth pads the tokenizer to a vocabulary larger than its own, so sampled ids decode to text', () => {
  const cfgFile = join(tmp, 'big-vocab-config.json');
  const vocab = 6000;
  fs.writeFileSync(cfgFile, JSON.stringify({ ...TINY_V3, vocab_size: vocab }));
  const out = freshDir();
  const ok = cli('synth', '--config', cfgFile, '--out', out, '--layers', '1');
  assert.is(ok.status, 0, ok.stderr);
  assert.match(ok.stdout, /tokenizer: the embedded model's, padded to vocab_size\n$/);
  const tok = loadTokenizer(out);
  assert.is(tok.vocabSize, vocab);
  for (const id of [4200, 5000, vocab - 1]) assert.match(tok.decode([id]), /^ \S+$/, `id ${id}`);
  // The new ids come from no merge: text encodes to the embedded model's ids, every one below its own size.
  const embedded = loadTokenizer(DEFAULT_MODEL_DIR);
  assert.equal(tok.encode('Once upon a time, a whale'), embedded.encode('Once upon a time, a whale'));
  // Deterministic: a second synth writes the same file.
  const again = freshDir();
  assert.is(cli('synth', '--config', cfgFile, '--out', again, '--layers', '1').status, 0);
  assert.ok(fs.readFileSync(join(out, 'tokenizer.json')).equals(fs.readFileSync(join(again, 'tokenizer.json'))));
});

test('deepwasm synth: bad flags give one clear error line each', () => {
  const cfgFile = join(tmp, 'bad-config.json');
  fs.writeFileSync(cfgFile, JSON.stringify({ ...TINY_V3, hidden_size: undefined }));
  const notJson = join(tmp, 'not-json.json');
  fs.writeFileSync(notJson, '{ "model_type": ');
  const out = freshDir();
  const cases: [string[], RegExp][] = [
    [['--out', out], /exactly one of --preset NAME or --config FILE/],
    [['--preset', 'v3-2k6', '--config', cfgFile, '--out', out], /exactly one of --preset NAME or --config FILE/],
    [['--preset', 'v4-huge', '--out', out], /unknown preset "v4-huge"; presets: v3-2k6, 16B, 236B, 671B/],
    [['--preset', 'v3-2k6'], /needs --out DIR/],
    [['--preset', 'v3-2k6', '--out', out, '--dtype', 'f16'], /--dtype must be one of bf16, f32, got "f16"/],
    [['--preset', 'v3-2k6', '--out', out, '--layers', '0'], /--layers must be at least 1, got 0/],
    [['--preset', 'v3-2k6', '--out', out, '--layers', 'two'], /--layers expects a whole number, got "two"/],
    [['--preset', 'v3-2k6', '--out', out, '--seed', '-1'], /--seed must be at least 0/],
    [['--preset', 'v3-2k6', '--out', out, '--seed', '4294967296'], /--seed must be at most 4294967295/],
    [['--config', join(tmp, 'nope.json'), '--out', out], /--config .*nope\.json: cannot read/],
    [['--config', notJson, '--out', out], /--config .*not-json\.json: not valid JSON/],
    [['--config', cfgFile, '--out', out], /bad-config\.json: missing required field "hidden_size"/],
    [['--preset', 'v3-2k6', '--out', out, '--shards', '3'], /unknown flag --shards/],
  ];
  for (const [args, expected] of cases) {
    const r = cli('synth', ...args);
    assert.is(r.status, 1, `synth ${args.join(' ')}: exit ${r.status}, stderr ${r.stderr}`);
    assert.match(r.stderr, /^error: /, `synth ${args.join(' ')}`);
    assert.match(r.stderr, expected, `synth ${args.join(' ')}`);
    assert.is(r.stderr.trim().split('\n').length, 1, `synth ${args.join(' ')}: ${r.stderr}`);
  }
  assert.not.ok(fs.existsSync(join(out, 'config.json')), 'a failed synth must not leave a config.json');
});

test('deepwasm bench: prefill and decode speed, peak memory, and a JSON last line', () => {
  const dir = freshDir();
  const cfgFile = join(tmp, 'bench-config.json');
  fs.writeFileSync(cfgFile, JSON.stringify(TINY_V3));
  execFileSync(process.execPath, [CLI, 'synth', '--config', cfgFile, '--out', dir]);
  const r = cli('bench', '--model', dir, '--prompt-tokens', '12', '--gen-tokens', '6', '--threads', '2', '--json');
  assert.is(r.status, 0, r.stderr);
  const lines = r.stdout.trim().split('\n');
  assert.match(r.stdout, /prefill +12 tokens in .* tok\/s/);
  assert.match(r.stdout, /decode +6 tokens in .* tok\/s/);
  assert.match(r.stdout, /peak RSS \d+ MB/);
  const json = JSON.parse(lines[lines.length - 1]);
  assert.match(r.stdout, /read +[\d.]+ GB\/s read probe around decode .*: decode streams \d+% of it/);
  assert.equal(Object.keys(json), [
    'prefill_tok_s', 'decode_tok_s', 'peak_rss_mb', 'decode_gb_s', 'read_probe_gb_s',
    'load_s', 'load_bytes', 'load_gb_s', 'load_peak_rss_bytes', 'weight_bytes', 'active_bytes', 'peak_rss_bytes', 'memories',
  ]);
  for (const v of Object.values(json)) assert.ok(typeof v === 'number' && v > 0, JSON.stringify(json));
  // Every byte of the checkpoint is read once; the load's peak is part of the whole run's.
  assert.is(json.load_bytes, openCheckpoint(dir).totalBytes);
  assert.ok(json.load_peak_rss_bytes >= json.weight_bytes && json.load_peak_rss_bytes <= json.peak_rss_bytes, JSON.stringify(json));
  assert.match(r.stdout, /load +[\d.]+ s, [\d.]+ GB of checkpoint read at [\d.]+ GB\/s; peak RSS [\d.]+ GB for [\d.]+ GB of weights/);

  const plain = cli('bench', '--model', dir, '--prompt-tokens', '4', '--gen-tokens', '2', '--threads', '1');
  assert.is(plain.status, 0, plain.stderr);
  assert.not.match(plain.stdout, /^\{/m);
  assert.match(plain.stdout, /weights as stored, CPU \(WebAssembly (SIMD128|relaxed SIMD), 1 thread\)\n/);
  const q8 = cli('bench', '--model', dir, '--prompt-tokens', '4', '--gen-tokens', '2', '--quant', 'q8');
  assert.is(q8.status, 0, q8.stderr);
  assert.match(q8.stdout, /weights q8, /);
  // The profile's per-kernel rows add up to its total, and every decode token runs each layer's attention.
  const prof = cli('bench', '--model', dir, '--prompt-tokens', '4', '--gen-tokens', '3', '--profile');
  assert.is(prof.status, 0, prof.stderr);
  const total = Number(/profile +([\d.]+) ms\/token inside kernels/.exec(prof.stdout)?.[1]);
  const rows = [...prof.stdout.matchAll(/^ {2}(\w+) +([\d.]+) ms\/token +([\d.]+) calls\/token$/gm)];
  const byName = new Map(rows.map((m) => [m[1], Number(m[3])]));
  const byMs = new Map(rows.map((m) => [m[1], Number(m[2])]));
  assert.is(byName.get('mla_attention'), TINY_V3.num_hidden_layers, 'one attention call per layer per token');
  const sum = rows.reduce((n, m) => n + Number(m[2]), 0);
  assert.ok(Math.abs(sum - total) < 0.01 * rows.length + 1e-9, `rows sum to ${sum}, total says ${total}`);
  // The same matmul calls again by weights: they add up to the matmul kernels' rows, and the head
  // (vocab x hidden, as stored: synth's default bf16) runs once per token.
  const matrices = [...prof.stdout.matchAll(/^ {2}(.+?) +([\d.]+) ms\/token +([\d.]+) calls\/token +([\d.]+) MB\/token +([\d.]+) GB\/s +\d+%$/gm)];
  const matmulMs = (byMs.get('matmul') ?? 0) + (byMs.get('matmul_grouped') ?? 0);
  const matrixMs = matrices.reduce((n, m) => n + Number(m[2]), 0);
  assert.ok(Math.abs(matrixMs - matmulMs) < 0.001 * (matrices.length + 2), `matrices sum to ${matrixMs} ms, the matmul kernels to ${matmulMs}`);
  const head = matrices.find((m) => m[1] === `bf16 ${TINY_V3.vocab_size}x${TINY_V3.hidden_size}`);
  assert.ok(head, `a row for the head in:\n${prof.stdout}`);
  assert.is(Number(head![3]), 1);
  assert.ok(Math.abs(Number(head![4]) - (TINY_V3.vocab_size * TINY_V3.hidden_size * 2) / 1e6) < 0.06, `head MB/token: ${head![4]}`);
  const badQuant = cli('bench', '--model', dir, '--quant', 'q3');
  assert.is(badQuant.status, 1);
  assert.match(badQuant.stderr, /--quant is "q3": expected one of f32, bf16, q8, q4, fp8/);
  const tooLong = cli('bench', '--model', dir, '--prompt-tokens', '250', '--gen-tokens', '10');
  assert.is(tooLong.status, 1);
  assert.match(tooLong.stderr, /--prompt-tokens \+ --gen-tokens \(260\) is more than this model's context/);
  const noModel = cli('bench', '--prompt-tokens', '4');
  assert.match(noModel.stderr, /needs --model DIR/);
});

test.run();
