// The model schema against real checkpoints: every fixture (made by transformers and DeepSeek's code) holds
// exactly the tensors the schema names, with the shapes it gives; a synthesized checkpoint of each preset's
// structure (its dims shrunk, its layer kinds, attention and routing kept) likewise; the parameter counts
// of the presets at full size are DeepSeek's published ones; and the MTP layer is named as DeepSeek-V3's.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { openCheckpoint } from '../host/checkpoint/checkpoint.js';
import { parseConfig } from '../host/checkpoint/config.js';
import { PRESET_NAMES, presetConfig } from '../host/checkpoint/presets.js';
import { modelSchema, parameterCounts, schemaWeights } from '../host/model/schema.js';
import { synthCheckpoint } from '../host/model/synth.js';
import { FIXTURES, MODEL_FIXTURES } from './helpers.js';

/** Every tensor of the checkpoint in `dir` is in the schema (or is an FP8 block scale) and every schema tensor is in it, with its shape. */
function walk(dir: string): { tensors: number; weights: number } {
  const ckpt = openCheckpoint(dir);
  try {
    const schema = modelSchema(ckpt.config, { hasLmHead: ckpt.has('lm_head.weight') });
    const named = new Map<string, readonly number[]>();
    let weights = 0;
    for (const w of schemaWeights(schema, { mtp: true })) {
      weights++;
      for (const t of w.parts) {
        if (w.tied) continue;
        if (w.optional && !ckpt.has(t.name)) continue;
        assert.ok(ckpt.has(t.name), `${dir}: the schema's ${t.name} is not in the checkpoint`);
        assert.equal(ckpt.get(t.name).shape, [...t.shape], `${dir}: ${t.name} (${t.why})`);
        named.set(t.name, t.shape);
      }
    }
    for (const name of ckpt.tensors.keys()) {
      const scaleOf = name.endsWith('.weight_scale_inv') ? name.replace(/_scale_inv$/, '') : null;
      assert.ok(named.has(name) || (scaleOf !== null && named.has(scaleOf)), `${dir}: ${name} is in the checkpoint but not in the schema`);
    }
    return { tensors: ckpt.tensors.size, weights };
  } finally {
    ckpt.close();
  }
}

for (const name of MODEL_FIXTURES) {
  test(`fixture ${name}: the schema names every tensor with its shape`, () => {
    const r = walk(`${FIXTURES}models/${name}`);
    assert.ok(r.tensors > 10 && r.weights > 10);
  });
}

/** A preset's structure at toy size: the same layer kinds, attention (q_lora or q_proj) and routing. */
function shrunk(raw: Record<string, unknown>): Record<string, unknown> {
  const moe = (raw.n_routed_experts as number) > 0;
  const groups = (raw.n_group as number | undefined) ?? 1;
  return {
    ...raw,
    vocab_size: 96,
    hidden_size: 32,
    intermediate_size: 48,
    moe_intermediate_size: 16,
    num_attention_heads: 2,
    num_key_value_heads: 2,
    q_lora_rank: raw.q_lora_rank === null || raw.q_lora_rank === undefined ? raw.q_lora_rank : 24,
    kv_lora_rank: 16,
    qk_nope_head_dim: 8,
    qk_rope_head_dim: 4,
    v_head_dim: 8,
    num_hidden_layers: ((raw.first_k_dense_replace as number | undefined) ?? 0) + 2,
    ...(moe ? { n_routed_experts: groups * 2, num_experts_per_tok: Math.min(raw.num_experts_per_tok as number, 2) } : {}),
  };
}

for (const preset of PRESET_NAMES) {
  test(`preset ${preset}: a synthesized checkpoint of its structure holds exactly the schema's tensors`, async () => {
    const out = mkdtempSync(join(tmpdir(), `deepwasm-schema-${preset}-`));
    try {
      await synthCheckpoint({ config: shrunk(presetConfig(preset)!), source: preset, out, overwrite: true });
      const r = walk(out);
      assert.ok(r.tensors > 0);
    } finally {
      rmSync(out, { recursive: true, force: true });
    }
  });
}

test('presets at full size: DeepSeek\'s published parameter counts', () => {
  const billions = (name: string) => parameterCounts(modelSchema(parseConfig(presetConfig(name), name))).total / 1e9;
  // DeepSeek-V2-Lite 15.7 B, DeepSeek-V2 236 B, DeepSeek-V3 671 B (the MTP layer's 14 B not counted).
  for (const [name, want] of [['16B', 15.7], ['236B', 236], ['671B', 671]] as const) {
    const got = billions(name);
    assert.ok(Math.abs(got - want) / want < 0.01, `${name}: ${got.toFixed(2)} B parameters, DeepSeek says ${want} B`);
  }
  const v3 = parameterCounts(modelSchema(parseConfig(presetConfig('671B'), '671B')));
  assert.ok(Math.abs(v3.active / 1e9 - 37) < 1.5, `671B reads ${(v3.active / 1e9).toFixed(1)} B per token; DeepSeek says 37 B activated`);
});

test('the MTP layer of DeepSeek-V3 is named as its checkpoint names it (model.layers.61.*)', () => {
  const cfg = parseConfig({ ...presetConfig('671B'), num_nextn_predict_layers: 1 }, '671B');
  const [mtp] = modelSchema(cfg).mtp;
  const names = [mtp.embed, mtp.enorm, mtp.hnorm, mtp.ehProj, mtp.headNorm, mtp.head].map((w) => w.parts[0].name);
  assert.equal(names, [
    'model.layers.61.embed_tokens.weight', 'model.layers.61.enorm.weight', 'model.layers.61.hnorm.weight',
    'model.layers.61.eh_proj.weight', 'model.layers.61.shared_head.norm.weight', 'model.layers.61.shared_head.head.weight',
  ]);
  assert.equal(mtp.ehProj.shape, [7168, 2 * 7168]);
  assert.is(mtp.block.attnNorm.parts[0].name, 'model.layers.61.input_layernorm.weight');
  assert.ok('moe' in mtp.block.ffn && mtp.block.ffn.moe.experts.length === 256);
  // 14 B parameters, as DeepSeek-V3's model card counts the MTP module (embedding and head included).
  const all = schemaWeights(modelSchema(cfg), { mtp: true }).reduce((n, w) => n + w.shape.reduce((p, d) => p * d, 1), 0);
  const main = schemaWeights(modelSchema(cfg)).reduce((n, w) => n + w.shape.reduce((p, d) => p * d, 1), 0);
  assert.ok(Math.abs((all - main) / 1e9 - 14) < 1, `MTP: ${((all - main) / 1e9).toFixed(1)} B`);
});

test.run();
