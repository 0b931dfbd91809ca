import { test } from 'uvu';
import * as assert from 'uvu/assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { DeepWasmError } from '../host/errors.js';
import {
  DTYPE_SIZE,
  bf16ToF32,
  closeAll,
  dequantFp8Blocks,
  expectShape,
  f16ToF32,
  fp8e4m3ToF32,
  isMoeLayer,
  openCheckpoint,
  openSafetensors,
  parseConfig,
  readConfig,
  readTensorInto,
  writeSafetensors,
  type TensorEntry,
} from '../host/checkpoint/index.js';
import { createProgress } from '../host/cli/progress.js';

// Compiled to dist/test/, so the fixtures are two levels up.
const MODELS = fileURLToPath(new URL('../../test/fixtures/models/', import.meta.url));
const model = (name: string): string => join(MODELS, name);

function throwsDW(fn: () => unknown, ...needles: string[]): string {
  try {
    fn();
  } catch (e) {
    assert.instance(e, DeepWasmError, `expected DeepWasmError, got ${String(e)}`);
    const msg = (e as Error).message;
    for (const n of needles) assert.ok(msg.includes(n), `message ${JSON.stringify(msg)} should mention ${JSON.stringify(n)}`);
    return msg;
  }
  assert.unreachable('expected a DeepWasmError');
  return '';
}

let tmp = '';
const tmpFile = (name: string): string => join(tmp, name);
test.before(() => {
  tmp = fs.mkdtempSync(join(os.tmpdir(), 'deepwasm-ckpt-'));
});
test.after(() => {
  closeAll();
  fs.rmSync(tmp, { recursive: true, force: true });
});

/** A safetensors file from raw parts, to build headers writeSafetensors refuses to write. */
function rawFile(name: string, header: string | object, data = new Uint8Array(0), headerLen?: bigint): string {
  const json = Buffer.from(typeof header === 'string' ? header : JSON.stringify(header));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(headerLen ?? BigInt(json.length));
  const path = tmpFile(name);
  fs.writeFileSync(path, Buffer.concat([len, json, data]));
  return path;
}

function readAll(entry: TensorEntry): Uint8Array {
  const buf = new Uint8Array(entry.nbytes);
  readTensorInto(entry, buf);
  return buf;
}

function v3Config(): Record<string, unknown> {
  return JSON.parse(fs.readFileSync(join(model('v3-tiny'), 'config.json'), 'utf8'));
}

// ---------------------------------------------------------------- dtypes

test('dtype sizes', () => {
  assert.is(DTYPE_SIZE.F32, 4);
  assert.is(DTYPE_SIZE.BF16, 2);
  assert.is(DTYPE_SIZE.F8_E4M3, 1);
  assert.is(DTYPE_SIZE.I64, 8);
  assert.is(DTYPE_SIZE.BOOL, 1);
});

test('bf16ToF32 against hand-computed values', () => {
  const src = Uint16Array.of(0x3f80, 0xc000, 0x4049, 0x0000, 0x8000, 0x7f80, 0x0001, 0x3e80);
  const dst = new Float32Array(src.length);
  bf16ToF32(src, dst);
  assert.equal([...dst.slice(0, 3)], [1, -2, 3.140625]);
  assert.ok(Object.is(dst[3], 0) && Object.is(dst[4], -0));
  assert.is(dst[5], Infinity);
  assert.is(dst[6], 2 ** -133);
  assert.is(dst[7], 0.25);
  // Unaligned source (byteOffset 2) and odd lengths take the scalar path and the tail.
  const unaligned = new Float32Array(7);
  bf16ToF32(src.subarray(1), unaligned);
  assert.equal([...unaligned], [...dst.subarray(1)]);
  const oddLen = new Float32Array(7);
  bf16ToF32(src.subarray(0, 7), oddLen);
  assert.equal([...oddLen], [...dst.subarray(0, 7)]);
});

test('f16ToF32 against hand-computed values', () => {
  const src = Uint16Array.of(0x3c00, 0xc000, 0x7bff, 0x0001, 0x0400, 0x8000, 0x7c00, 0xfc00, 0x3555);
  const dst = new Float32Array(src.length);
  f16ToF32(src, dst);
  assert.equal([...dst.slice(0, 5)], [1, -2, 65504, 2 ** -24, 2 ** -14]);
  assert.ok(Object.is(dst[5], -0));
  assert.is(dst[6], Infinity);
  assert.is(dst[7], -Infinity);
  assert.is(dst[8], 0.333251953125);
  const nan = new Float32Array(1);
  f16ToF32(Uint16Array.of(0x7e00), nan);
  assert.ok(Number.isNaN(nan[0]));
});

test('fp8 e4m3fn decoding: normals, subnormals, sign, NaN, max 448', () => {
  const dst = new Float32Array(256);
  fp8e4m3ToF32(Uint8Array.from({ length: 256 }, (_, i) => i), dst);
  assert.is(dst[0x38], 1);
  assert.is(dst[0x3c], 1.5);
  assert.is(dst[0x40], 2);
  assert.is(dst[0x7e], 448);
  assert.is(dst[0x01], 2 ** -9);
  assert.is(dst[0x07], 7 * 2 ** -9);
  assert.is(dst[0x08], 2 ** -6);
  assert.is(dst[0xb8], -1);
  assert.ok(Object.is(dst[0x00], 0) && Object.is(dst[0x80], -0));
  assert.ok(Number.isNaN(dst[0x7f]) && Number.isNaN(dst[0xff]));
  // No infinities, and the 127 non-negative codes are strictly increasing (a mirror image for negatives).
  for (let b = 1; b < 0x7f; b++) {
    assert.ok(dst[b]! > dst[b - 1]!, `code ${b}`);
    assert.ok(Object.is(dst[b | 0x80], -dst[b]!), `sign of code ${b}`);
  }
});

test('fp8e4m3ToF32 refuses a short destination', () => {
  throwsDW(() => fp8e4m3ToF32(new Uint8Array(4), new Float32Array(3)), 'fp8e4m3ToF32', '3', '4');
});

function checkDequant(rows: number, cols: number, bRows: number, bCols: number): void {
  let seed = 12345;
  const rand = (): number => ((seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32);
  const src = Uint8Array.from({ length: rows * cols }, () => Math.floor(rand() * 256) & 0xf7); // avoid the NaN codes
  const sr = Math.ceil(rows / bRows);
  const sc = Math.ceil(cols / bCols);
  const scale = Float32Array.from({ length: sr * sc }, () => 0.01 + rand());
  const dst = new Float32Array(rows * cols);
  dequantFp8Blocks(src, scale, rows, cols, dst, bRows, bCols);
  const lut = new Float32Array(256);
  fp8e4m3ToF32(Uint8Array.from({ length: 256 }, (_, i) => i), lut);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      const want = Math.fround(lut[src[r * cols + c]!]! * scale[Math.floor(r / bRows) * sc + Math.floor(c / bCols)]!);
      if (dst[r * cols + c] !== want) assert.unreachable(`(${r}, ${c}): ${dst[r * cols + c]} != ${want}`);
    }
  }
}

test('dequantFp8Blocks 130x260 with partial edge blocks matches a naive reference', () => {
  checkDequant(130, 260, 128, 128);
});

test('dequantFp8Blocks with non-square blocks', () => {
  checkDequant(37, 50, 16, 8);
});

test('dequantFp8Blocks refuses a scale_inv that is too small', () => {
  throwsDW(() => dequantFp8Blocks(new Uint8Array(130 * 260), new Float32Array(4), 130, 260, new Float32Array(130 * 260)), 'scale_inv', '2 x 3');
});

// ---------------------------------------------------------------- fixtures

test('v3-tiny opens: counts, shapes, dtypes, bytes', () => {
  const ck = openCheckpoint(model('v3-tiny'));
  try {
    assert.is(ck.tensors.size, 139);
    const embed = ck.get('model.embed_tokens.weight');
    assert.is(embed.dtype, 'F32');
    assert.equal(embed.shape, [1000, 64]);
    assert.equal(ck.get('model.layers.0.self_attn.q_a_proj.weight').shape, [48, 64]);
    assert.equal(ck.get('model.layers.1.mlp.gate.weight').shape, [16, 64]);
    assert.ok(ck.has('model.layers.1.mlp.gate.e_score_correction_bias'));
    assert.not.ok(ck.has('model.layers.0.mlp.gate.weight'));
    const fileSize = fs.statSync(join(model('v3-tiny'), 'model.safetensors')).size;
    const header = openSafetensors(join(model('v3-tiny'), 'model.safetensors'));
    assert.is(header.metadata.format, 'pt');
    assert.ok(ck.totalBytes > 1_700_000 && ck.totalBytes < fileSize);
    assert.is(ck.totalBytes, [...ck.tensors.values()].reduce((s, e) => s + e.nbytes, 0));
  } finally {
    ck.close();
  }
});

test('readTensorInto returns the bytes at the entry offset', () => {
  const path = join(model('v3-tiny'), 'model.safetensors');
  const entry = openSafetensors(path).tensors.get('model.norm.weight')!;
  assert.equal(entry.shape, [64]);
  const got = new Float32Array(readAll(entry).buffer);
  const whole = fs.readFileSync(path);
  const want = new Float32Array(whole.buffer.slice(whole.byteOffset + entry.offset, whole.byteOffset + entry.offset + entry.nbytes));
  assert.equal([...got], [...want]);
  assert.ok(got.every(Number.isFinite));
  // A larger destination is filled at the front; a smaller one is refused.
  const big = new Uint8Array(entry.nbytes + 16);
  readTensorInto(entry, big);
  assert.equal([...big.subarray(0, entry.nbytes)], [...new Uint8Array(got.buffer)]);
  throwsDW(() => readTensorInto(entry, new Uint8Array(entry.nbytes - 1)), 'model.safetensors', 'model.norm.weight', String(entry.nbytes));
});

test('v2-lite-tiny opens: q_proj instead of q_a_proj', () => {
  const ck = openCheckpoint(model('v2-lite-tiny'));
  assert.is(ck.tensors.size, 83);
  assert.equal(ck.get('model.layers.0.self_attn.q_proj.weight').shape, [96, 64]);
  assert.not.ok(ck.has('model.layers.0.self_attn.q_a_proj.weight'));
  assert.equal(ck.get('model.embed_tokens.weight').shape, [800, 64]);
  ck.close();
});

test('v3-odd-bf16-sharded opens through its index', () => {
  const dir = model('v3-odd-bf16-sharded');
  const ck = openCheckpoint(dir);
  assert.is(ck.tensors.size, 127);
  const index = JSON.parse(fs.readFileSync(join(dir, 'model.safetensors.index.json'), 'utf8'));
  assert.is(ck.totalBytes, index.metadata.total_size);
  const embed = ck.get('model.embed_tokens.weight');
  assert.is(embed.dtype, 'BF16');
  assert.equal(embed.shape, [997, 72]);
  const bias = ck.get('model.layers.2.mlp.gate.e_score_correction_bias');
  assert.is(bias.dtype, 'F32');
  assert.equal(bias.shape, [12]);
  assert.ok(bias.path.endsWith('model-00002-of-00003.safetensors'));
  const norm = ck.get('model.layers.2.self_attn.kv_a_layernorm.weight');
  const bytes = readAll(norm);
  const f32 = new Float32Array(24);
  bf16ToF32(new Uint16Array(bytes.buffer), f32);
  assert.ok(f32.every((v) => Number.isFinite(v) && Math.abs(v) < 10));
  assert.ok(f32.some((v) => v !== 0));
  ck.close();
});

test('v3-fp8-blocks: F8_E4M3 weights with block scales dequantize to plausible values', () => {
  const ck = openCheckpoint(model('v3-fp8-blocks'));
  assert.is(ck.tensors.size, 93);
  assert.equal(ck.config.quantization, { method: 'fp8', blockSize: [128, 128] });
  const w = ck.get('model.layers.0.self_attn.q_a_proj.weight');
  const s = ck.get('model.layers.0.self_attn.q_a_proj.weight_scale_inv');
  assert.is(w.dtype, 'F8_E4M3');
  assert.equal(w.shape, [192, 256]);
  assert.is(s.dtype, 'F32');
  assert.equal(s.shape, [2, 2]);
  assert.is(ck.get('model.embed_tokens.weight').dtype, 'BF16');
  const [rows, cols] = w.shape as [number, number];
  const out = new Float32Array(rows * cols);
  dequantFp8Blocks(readAll(w), new Float32Array(readAll(s).buffer), rows, cols, out);
  let sumAbs = 0;
  let maxAbs = 0;
  for (const v of out) {
    assert.ok(Number.isFinite(v));
    sumAbs += Math.abs(v);
    maxAbs = Math.max(maxAbs, Math.abs(v));
  }
  const meanAbs = sumAbs / out.length;
  assert.ok(meanAbs > 1e-3 && meanAbs < 1, `mean |w| = ${meanAbs}`);
  assert.ok(maxAbs < 10, `max |w| = ${maxAbs}`);
  ck.close();
});

// ---------------------------------------------------------------- config

test('config: v3-tiny', () => {
  const c = readConfig(model('v3-tiny'));
  assert.equal(c, {
    modelType: 'deepseek_v3',
    vocabSize: 1000,
    hiddenSize: 64,
    intermediateSize: 160,
    moeIntermediateSize: 32,
    numHiddenLayers: 3,
    numNextnPredictLayers: 0,
    numAttentionHeads: 4,
    qLoraRank: 48,
    kvLoraRank: 32,
    qkNopeHeadDim: 16,
    qkRopeHeadDim: 8,
    vHeadDim: 16,
    nRoutedExperts: 16,
    nSharedExperts: 1,
    numExpertsPerTok: 4,
    firstKDenseReplace: 1,
    moeLayerFreq: 1,
    nGroup: 4,
    topkGroup: 2,
    topkMethod: 'noaux_tc',
    scoringFunc: 'sigmoid',
    normTopkProb: true,
    routedScalingFactor: 2.5,
    rmsNormEps: 1e-6,
    ropeTheta: 10000,
    ropeScaling: { factor: 4, originalMaxPositionEmbeddings: 64, betaFast: 32, betaSlow: 1, mscale: 1, mscaleAllDim: 1 },
    maxPositionEmbeddings: 256,
    bosTokenId: 0,
    eosTokenIds: [1],
    tieWordEmbeddings: false,
    quantization: null,
  });
  assert.equal([0, 1, 2].map((i) => isMoeLayer(c, i)), [false, true, true]);
});

test('config: v2-lite-tiny', () => {
  const c = readConfig(model('v2-lite-tiny'));
  assert.is(c.modelType, 'deepseek_v2');
  assert.is(c.qLoraRank, null);
  assert.is(c.ropeScaling, null);
  assert.is(c.topkMethod, 'greedy');
  assert.is(c.scoringFunc, 'softmax');
  assert.is(c.normTopkProb, false);
  assert.is(c.nSharedExperts, 2);
  assert.is(c.numExpertsPerTok, 3);
  assert.is(c.nRoutedExperts, 8);
  assert.is(c.moeIntermediateSize, 24);
  assert.is(c.routedScalingFactor, 1);
  assert.is(c.vocabSize, 800);
  assert.equal([0, 1, 2].map((i) => isMoeLayer(c, i)), [false, true, true]);
});

test('config: v3-odd-bf16-sharded and v3-fp8-blocks', () => {
  const odd = readConfig(model('v3-odd-bf16-sharded'));
  assert.is(odd.hiddenSize, 72);
  assert.is(odd.numAttentionHeads, 3);
  assert.is(odd.qkRopeHeadDim, 6);
  assert.is(odd.vHeadDim, 10);
  assert.is(odd.vocabSize, 997);
  assert.is(odd.nGroup, 3);
  assert.is(odd.topkGroup, 2);
  assert.is(odd.firstKDenseReplace, 2);
  assert.equal([0, 1, 2, 3].map((i) => isMoeLayer(odd, i)), [false, false, true, true]);
  const fp8 = readConfig(model('v3-fp8-blocks'));
  assert.is(fp8.qLoraRank, 192);
  assert.is(fp8.kvLoraRank, 128);
  assert.is(fp8.nGroup, 2);
  assert.is(fp8.topkGroup, 1);
  assert.is(fp8.numExpertsPerTok, 2);
  assert.equal(fp8.quantization, { method: 'fp8', blockSize: [128, 128] });
});

test('config: rope_parameters spelling (transformers 5), theta inside wins', () => {
  const raw = v3Config();
  delete raw.rope_scaling;
  raw.rope_theta = 10000;
  raw.rope_parameters = { rope_type: 'yarn', rope_theta: 50000, factor: 40, original_max_position_embeddings: 4096, mscale: 1, mscale_all_dim: 1 };
  const c = parseConfig(raw, 'rp/config.json');
  assert.is(c.ropeTheta, 50000);
  assert.equal(c.ropeScaling, { factor: 40, originalMaxPositionEmbeddings: 4096, betaFast: 32, betaSlow: 1, mscale: 1, mscaleAllDim: 1 });
  raw.rope_parameters = { rope_type: 'default', rope_theta: 1e6 };
  const plain = parseConfig(raw, 'rp/config.json');
  assert.is(plain.ropeTheta, 1e6);
  assert.is(plain.ropeScaling, null);
});

test('config: deepseek_v2 with nulls and absent keys takes the defaults', () => {
  const c = parseConfig(
    {
      model_type: 'deepseek_v2',
      vocab_size: 100,
      hidden_size: 32,
      intermediate_size: 64,
      num_hidden_layers: 2,
      num_attention_heads: 2,
      q_lora_rank: null,
      kv_lora_rank: 16,
      qk_nope_head_dim: 8,
      qk_rope_head_dim: 4,
      v_head_dim: 8,
      n_routed_experts: 4,
      n_shared_experts: null,
      num_experts_per_tok: 2,
      moe_intermediate_size: 16,
      n_group: null,
      topk_group: null,
      rope_scaling: null,
      eos_token_id: [1, 7],
      some_future_key: { anything: true },
    },
    'v2/config.json',
  );
  assert.is(c.qLoraRank, null);
  assert.is(c.nSharedExperts, 0);
  assert.is(c.nGroup, 1);
  assert.is(c.topkGroup, 1);
  assert.is(c.topkMethod, 'greedy');
  assert.is(c.scoringFunc, 'softmax');
  assert.is(c.normTopkProb, false);
  assert.is(c.routedScalingFactor, 1);
  assert.is(c.rmsNormEps, 1e-6);
  assert.is(c.ropeTheta, 10000);
  assert.is(c.ropeScaling, null);
  assert.is(c.firstKDenseReplace, 0);
  assert.is(c.moeLayerFreq, 1);
  assert.is(c.maxPositionEmbeddings, 4096);
  assert.is(c.bosTokenId, null);
  assert.equal(c.eosTokenIds, [1, 7]);
  assert.is(c.tieWordEmbeddings, false);
  assert.is(c.quantization, null);
});

test('config: dense model (n_routed_experts null) needs no MoE fields; moe_layer_freq is honoured', () => {
  const raw = v3Config();
  for (const k of ['n_routed_experts', 'moe_intermediate_size', 'num_experts_per_tok', 'n_shared_experts']) raw[k] = null;
  const dense = parseConfig(raw, 'dense/config.json');
  assert.is(dense.nRoutedExperts, 0);
  assert.is(isMoeLayer(dense, 2), false);
  const moe = parseConfig({ ...v3Config(), moe_layer_freq: 2, first_k_dense_replace: 1 }, 'freq/config.json');
  assert.equal([0, 1, 2, 3, 4].map((i) => isMoeLayer(moe, i)), [false, false, true, false, true]);
});

test('config: deepseek_v3 without routing keys defaults to noaux_tc / sigmoid / normalised', () => {
  const raw = v3Config();
  for (const k of ['topk_method', 'scoring_func', 'norm_topk_prob', 'routed_scaling_factor', 'max_position_embeddings']) delete raw[k];
  const c = parseConfig(raw, 'v3/config.json');
  assert.is(c.topkMethod, 'noaux_tc');
  assert.is(c.scoringFunc, 'sigmoid');
  assert.is(c.normTopkProb, true);
  assert.is(c.routedScalingFactor, 1);
  assert.is(c.maxPositionEmbeddings, 4096);
});

// ---------------------------------------------------------------- bad config

test('config without a required field names the field and file', () => {
  const raw = v3Config();
  delete raw.hidden_size;
  throwsDW(() => parseConfig(raw, 'm/config.json'), 'm/config.json', 'hidden_size');
});

test('MoE config without moe_intermediate_size names it', () => {
  const raw = v3Config();
  delete raw.moe_intermediate_size;
  throwsDW(() => parseConfig(raw, 'm/config.json'), 'm/config.json', 'moe_intermediate_size', 'n_routed_experts');
});

test('config with a wrong type or non-positive value', () => {
  throwsDW(() => parseConfig({ ...v3Config(), num_attention_heads: '4' }, 'm/config.json'), 'num_attention_heads', 'integer');
  throwsDW(() => parseConfig({ ...v3Config(), kv_lora_rank: 0 }, 'm/config.json'), 'kv_lora_rank', 'positive');
  throwsDW(() => parseConfig({ ...v3Config(), norm_topk_prob: 'yes' }, 'm/config.json'), 'norm_topk_prob');
  throwsDW(() => parseConfig({ ...v3Config(), topk_method: 'best' }, 'm/config.json'), 'topk_method', 'noaux_tc');
  throwsDW(() => parseConfig([], 'm/config.json'), 'm/config.json', 'object');
});

test('unknown model_type lists the supported ones', () => {
  throwsDW(() => parseConfig({ ...v3Config(), model_type: 'llama' }, 'm/config.json'), 'm/config.json', 'model_type', 'llama', 'deepseek_v2', 'deepseek_v3');
});

test('unsupported rope type is refused', () => {
  const raw = { ...v3Config(), rope_scaling: { type: 'linear', factor: 2 } };
  throwsDW(() => parseConfig(raw, 'm/config.json'), 'm/config.json', 'rope_scaling.type', 'linear', 'yarn');
  const dyn = { ...v3Config(), rope_parameters: { rope_type: 'dynamic', factor: 2, rope_theta: 10000 } };
  throwsDW(() => parseConfig(dyn, 'm/config.json'), 'rope_parameters.rope_type', 'dynamic');
});

test('unsupported quantization method is refused', () => {
  const raw = { ...v3Config(), quantization_config: { quant_method: 'gptq', bits: 4 } };
  throwsDW(() => parseConfig(raw, 'm/config.json'), 'm/config.json', 'quant_method', 'gptq', 'fp8');
});

test('readConfig: missing file and bad JSON', () => {
  throwsDW(() => readConfig(tmp), join(tmp, 'config.json'));
  const dir = fs.mkdtempSync(join(tmp, 'badjson-'));
  fs.writeFileSync(join(dir, 'config.json'), '{"model_type": ');
  throwsDW(() => readConfig(dir), join(dir, 'config.json'), 'JSON');
});

// ---------------------------------------------------------------- bad safetensors

test('writeSafetensors round trip: aligned header, order, metadata', () => {
  const path = tmpFile('rt.safetensors');
  const a = Float32Array.of(1, 2, 3, 4, 5, 6);
  const b = Uint16Array.of(0x3f80, 0x4000, 0x4040);
  const c = new Int32Array([9, 8, 7, 6]).subarray(1, 3); // a view that does not start at byte 0
  writeSafetensors(
    path,
    [
      { name: 'a', dtype: 'F32', shape: [2, 3], data: a },
      { name: 'b', dtype: 'BF16', shape: [3], data: b },
      { name: 'c', dtype: 'I32', shape: [2], data: c },
    ],
    { format: 'pt' },
  );
  const bytes = fs.readFileSync(path);
  assert.is(Number(bytes.readBigUInt64LE(0)) % 8, 0);
  const f = openSafetensors(path);
  assert.equal(f.metadata, { format: 'pt' });
  assert.equal([...f.tensors.keys()], ['a', 'b', 'c']);
  assert.equal([...new Float32Array(readAll(f.tensors.get('a')!).buffer)], [1, 2, 3, 4, 5, 6]);
  const bf = new Float32Array(3);
  bf16ToF32(new Uint16Array(readAll(f.tensors.get('b')!).buffer), bf);
  assert.equal([...bf], [1, 2, 3]);
  assert.equal([...new Int32Array(readAll(f.tensors.get('c')!).buffer)], [8, 7]);
  throwsDW(() => writeSafetensors(tmpFile('bad.safetensors'), [{ name: 'x', dtype: 'F32', shape: [3], data: new Float32Array(2) }]), 'bad.safetensors', '"x"', '12');
});

test('file shorter than 8 bytes', () => {
  const path = tmpFile('tiny.safetensors');
  fs.writeFileSync(path, Buffer.from([1, 2, 3]));
  throwsDW(() => openSafetensors(path), 'tiny.safetensors', '3 bytes', '8');
});

test('header length larger than the file', () => {
  const path = rawFile('long.safetensors', '{}', new Uint8Array(0), 1000n);
  throwsDW(() => openSafetensors(path), 'long.safetensors', '1000', 'past the end of the file');
});

test('absurd header length', () => {
  const path = rawFile('absurd.safetensors', '{}', new Uint8Array(0), 1n << 40n);
  throwsDW(() => openSafetensors(path), 'absurd.safetensors', 'absurd', String(1n << 40n));
});

test('header that is not JSON, or not an object', () => {
  throwsDW(() => openSafetensors(rawFile('notjson.safetensors', '{"a": [1, 2')), 'notjson.safetensors', 'not valid JSON');
  throwsDW(() => openSafetensors(rawFile('array.safetensors', '[1, 2]')), 'array.safetensors', 'object');
});

test('unknown dtype names the tensor and the supported dtypes', () => {
  const path = rawFile('dtype.safetensors', { w: { dtype: 'Q4_K', shape: [2], data_offsets: [0, 2] } }, new Uint8Array(2));
  throwsDW(() => openSafetensors(path), 'dtype.safetensors', '"w"', 'Q4_K', 'F32', 'BF16', 'F8_E4M3');
});

test('entry missing fields or with a bad shape', () => {
  throwsDW(() => openSafetensors(rawFile('nodtype.safetensors', { w: { shape: [1], data_offsets: [0, 4] } }, new Uint8Array(4))), 'nodtype.safetensors', '"w"', 'dtype');
  throwsDW(() => openSafetensors(rawFile('nooff.safetensors', { w: { dtype: 'F32', shape: [1] } }, new Uint8Array(4))), 'nooff.safetensors', 'data_offsets');
  throwsDW(() => openSafetensors(rawFile('negshape.safetensors', { w: { dtype: 'F32', shape: [-1, 2], data_offsets: [0, 4] } }, new Uint8Array(4))), 'negshape.safetensors', 'shape', 'non-negative');
  throwsDW(() => openSafetensors(rawFile('fracshape.safetensors', { w: { dtype: 'F32', shape: [1.5], data_offsets: [0, 4] } }, new Uint8Array(4))), 'fracshape.safetensors', 'shape');
});

test('data_offsets past the end of the data section', () => {
  const name = 'model.layers.1.mlp.gate.weight';
  const path = rawFile('model-00002-of-00003.safetensors', { [name]: { dtype: 'F32', shape: [32, 32], data_offsets: [0, 4096] } }, new Uint8Array(3000));
  const msg = throwsDW(() => openSafetensors(path), 'model-00002-of-00003.safetensors', name, '[0, 4096]', '3000 bytes');
  assert.ok(msg.includes('past the end of the data section'));
});

test('nbytes that do not match shape x dtype size', () => {
  const path = rawFile('mismatch.safetensors', { w: { dtype: 'BF16', shape: [3, 4], data_offsets: [0, 48] } }, new Uint8Array(48));
  throwsDW(() => openSafetensors(path), 'mismatch.safetensors', '"w"', '48 bytes', '[3, 4]', 'BF16', '24');
});

test('data cut short after a valid header: readTensorInto fails clearly', () => {
  const path = tmpFile('cut.safetensors');
  writeSafetensors(path, [
    { name: 'first', dtype: 'F32', shape: [4], data: new Float32Array(4) },
    { name: 'second', dtype: 'F32', shape: [256], data: new Float32Array(256) },
  ]);
  const f = openSafetensors(path);
  readAll(f.tensors.get('first')!); // leaves a cached descriptor that must not hide the truncation
  fs.truncateSync(path, fs.statSync(path).size - 100);
  throwsDW(() => readAll(f.tensors.get('second')!), 'cut.safetensors', '"second"', 'truncated');
  throwsDW(() => openSafetensors(path), 'cut.safetensors', '"second"', 'past the end of the data section');
});

test('missing file', () => {
  throwsDW(() => openSafetensors(tmpFile('nope.safetensors')), 'nope.safetensors');
});

// ---------------------------------------------------------------- bad checkpoints

/** A checkpoint folder with v3-tiny's config and the given files. */
function checkpointDir(files: Record<string, string | { name: string; data: Float32Array }[]>): string {
  const dir = fs.mkdtempSync(join(tmp, 'ck-'));
  fs.copyFileSync(join(model('v3-tiny'), 'config.json'), join(dir, 'config.json'));
  for (const [name, content] of Object.entries(files)) {
    if (typeof content === 'string') fs.writeFileSync(join(dir, name), content);
    else writeSafetensors(join(dir, name), content.map((t) => ({ name: t.name, dtype: 'F32' as const, shape: [t.data.length], data: t.data })));
  }
  return dir;
}

test('missing shard named in the index', () => {
  const index = JSON.stringify({ weight_map: { a: 'model-00001-of-00002.safetensors', b: 'model-00002-of-00002.safetensors' } });
  const dir = checkpointDir({
    'model.safetensors.index.json': index,
    'model-00001-of-00002.safetensors': [{ name: 'a', data: new Float32Array(2) }],
  });
  throwsDW(() => openCheckpoint(dir), 'model-00002-of-00002.safetensors', 'model.safetensors.index.json');
});

test('index names a tensor its shard lacks', () => {
  const index = JSON.stringify({ weight_map: { a: 'model-00001-of-00001.safetensors', ghost: 'model-00001-of-00001.safetensors' } });
  const dir = checkpointDir({
    'model.safetensors.index.json': index,
    'model-00001-of-00001.safetensors': [{ name: 'a', data: new Float32Array(2) }],
  });
  throwsDW(() => openCheckpoint(dir), 'model.safetensors.index.json', '"ghost"', 'model-00001-of-00001.safetensors');
});

test('missing tensor', () => {
  const dir = model('v3-tiny');
  const ck = openCheckpoint(dir);
  throwsDW(() => ck.get('model.layers.9.self_attn.q_b_proj.weight'), `checkpoint ${dir} has no tensor model.layers.9.self_attn.q_b_proj.weight`);
  ck.close();
});

test('duplicate tensor across shards, no weights, not a directory', () => {
  const dup = checkpointDir({
    'a.safetensors': [{ name: 'w', data: new Float32Array(1) }],
    'b.safetensors': [{ name: 'w', data: new Float32Array(1) }],
  });
  throwsDW(() => openCheckpoint(dup), '"w"', 'a.safetensors', 'b.safetensors');
  const empty = checkpointDir({ 'expected.safetensors': [{ name: 'logits', data: new Float32Array(1) }] });
  throwsDW(() => openCheckpoint(empty), empty, '*.safetensors');
  throwsDW(() => openCheckpoint(join(model('v3-tiny'), 'config.json')), 'config.json is a file, not a model folder: give the folder that holds config.json');
  const bare = fs.mkdtempSync(join(tmp, 'bare-'));
  throwsDW(() => openCheckpoint(bare), `model folder ${bare} has no config.json`);
  throwsDW(() => openCheckpoint(join(tmp, 'no-such-dir')), `model folder ${join(tmp, 'no-such-dir')} does not exist`);
});

test('folder without an index uses every *.safetensors but expected.safetensors', () => {
  const dir = checkpointDir({
    'b.safetensors': [{ name: 'y', data: new Float32Array(3) }],
    'a.safetensors': [{ name: 'x', data: new Float32Array(2) }],
    'expected.safetensors': [{ name: 'logits', data: new Float32Array(1) }],
  });
  const ck = openCheckpoint(dir);
  assert.equal([...ck.tensors.keys()], ['x', 'y']);
  assert.is(ck.totalBytes, 20);
  ck.close();
});

test('expectShape explains where the expected shape comes from', () => {
  const ck = openCheckpoint(model('v3-tiny'));
  const q = ck.get('model.layers.0.self_attn.q_b_proj.weight');
  expectShape(q, [96, 48], 'num_attention_heads * (qk_nope_head_dim + qk_rope_head_dim) x q_lora_rank');
  const what = 'num_attention_heads * (qk_nope_head_dim + qk_rope_head_dim) x q_lora_rank';
  throwsDW(() => expectShape(q, [96, 64], what), 'model.safetensors', 'model.layers.0.self_attn.q_b_proj.weight', '[96, 48]', '[96, 64]', what);
  ck.close();
});

// ---------------------------------------------------------------- progress

test('progress: silent off a terminal or for small loads; a bar on a terminal', () => {
  const lines: string[] = [];
  const tty = { isTTY: true, columns: 100, write: (s: string) => lines.push(s) };
  createProgress('small', 1024, tty).advance(10);
  createProgress('pipe', 1 << 30, { isTTY: false, write: (s: string) => lines.push(s) }).done();
  assert.is(lines.length, 0);
  const p = createProgress('loading', 1 << 30, tty);
  for (let i = 0; i < 1000; i++) p.advance(1 << 20);
  p.advance(24 << 20);
  p.done();
  p.done();
  assert.ok(lines.length >= 2 && lines.length < 10, `${lines.length} writes`);
  const last = lines[lines.length - 2]!;
  assert.ok(last.startsWith('\rloading [') && last.includes('100%') && last.includes('1024/1024 MB') && / MB\/s in \d+ s\x1b\[K$/.test(last), last);
  // Before the end, the time left at the rate so far.
  assert.ok(lines.slice(0, -2).every((l) => / MB\/s (\d+ s|\d+ min \d\d s) left\x1b\[K$/.test(l)), lines[0]);
  assert.is(lines[lines.length - 1], '\n');
});

test.run();
