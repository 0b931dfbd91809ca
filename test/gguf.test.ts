// `deepwasm convert --to gguf`: the file is GGUF v3 as llama.cpp reads it (read back here with a reader of
// its own), the blocks are ggml's Q8_0/Q4_0 of the checkpoint's values, kv_b is cut per head as llama.cpp's
// converter cuts it, and what llama.cpp cannot load is refused before a file exists.
import * as fs from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { quantizeQ4_0, quantizeQ8_0 } from '../host/checkpoint/gguf.js';
import { bf16ToF32, f16ToF32 as f16sToF32, f32ToF16 } from '../host/checkpoint/dtypes.js';
import { openCheckpoint } from '../host/checkpoint/checkpoint.js';
import { readTensorInto, type TensorEntry } from '../host/checkpoint/safetensors.js';
import { convertToGguf } from '../host/model/gguf-export.js';
import { FIXTURES } from './helpers.js';

const EMBEDDED = fileURLToPath(new URL('../../models/tiny/', import.meta.url));
const tmp = fs.mkdtempSync(join(tmpdir(), 'deepwasm-gguf-'));
test.after(() => fs.rmSync(tmp, { recursive: true, force: true }));

const f16ToF32 = (h: number): number => {
  const out = new Float32Array(1);
  f16sToF32(Uint16Array.of(h), out);
  return out[0];
};

/** A bf16 tensor's values. */
function bf16Values(e: TensorEntry): Float32Array {
  assert.is(e.dtype, 'BF16');
  const raw = new Uint8Array(e.nbytes);
  readTensorInto(e, raw);
  const out = new Float32Array(e.nbytes / 2);
  bf16ToF32(new Uint16Array(raw.buffer), out);
  return out;
}

interface GgufFile {
  version: number;
  meta: Map<string, unknown>;
  tensors: Map<string, { ne: number[]; type: number; offset: number }>;
  dataStart: number;
  bytes: Uint8Array;
}

/** A GGUF reader written from the format's description (not the writer's code). */
function readGguf(path: string): GgufFile {
  const bytes = new Uint8Array(fs.readFileSync(path));
  const v = new DataView(bytes.buffer);
  let at = 0;
  const u32 = () => ((at += 4), v.getUint32(at - 4, true));
  const u64 = () => ((at += 8), Number(v.getBigUint64(at - 8, true)));
  const str = () => {
    const n = u64();
    at += n;
    return new TextDecoder().decode(bytes.subarray(at - n, at));
  };
  const value = (type: number): unknown => {
    switch (type) {
      case 4: return u32();
      case 5: return ((at += 4), v.getInt32(at - 4, true));
      case 6: return ((at += 4), v.getFloat32(at - 4, true));
      case 7: return bytes[at++] === 1;
      case 8: return str();
      case 9: {
        const t = u32();
        const n = u64();
        return Array.from({ length: n }, () => value(t));
      }
      default: throw new Error(`value type ${type}`);
    }
  };
  assert.is(new TextDecoder().decode(bytes.subarray(0, 4)), 'GGUF');
  at = 4;
  const version = u32();
  const nTensors = u64();
  const nKv = u64();
  const meta = new Map<string, unknown>();
  for (let i = 0; i < nKv; i++) {
    const k = str();
    meta.set(k, value(u32()));
  }
  const tensors = new Map<string, { ne: number[]; type: number; offset: number }>();
  for (let i = 0; i < nTensors; i++) {
    const name = str();
    const ne = Array.from({ length: u32() }, () => u64());
    tensors.set(name, { ne, type: u32(), offset: u64() });
  }
  return { version, meta, tensors, dataStart: Math.ceil(at / 32) * 32, bytes };
}

/** Row r of a 2D (or flattened 3D) Q8_0 tensor, dequantized. */
function q8Row(f: GgufFile, name: string, r: number): Float32Array {
  const t = f.tensors.get(name)!;
  assert.is(t.type, 8, `${name} is Q8_0`);
  const cols = t.ne[0];
  const out = new Float32Array(cols);
  const base = f.dataStart + t.offset + r * (cols / 32) * 34;
  const v = new DataView(f.bytes.buffer);
  for (let b = 0; b < cols / 32; b++) {
    const d = f16ToF32(v.getUint16(base + b * 34, true));
    for (let j = 0; j < 32; j++) out[b * 32 + j] = d * v.getInt8(base + b * 34 + 2 + j);
  }
  return out;
}

/** Largest |a - b| relative to the block's scale: Q8_0 rounds to the nearest step, so at most half a step (plus f16 scale error). */
function assertQ8Close(got: Float32Array, want: ArrayLike<number>, what: string): void {
  for (let b = 0; b < got.length / 32; b++) {
    let amax = 0;
    for (let j = 0; j < 32; j++) amax = Math.max(amax, Math.abs(want[b * 32 + j]));
    const step = amax / 127;
    for (let j = 0; j < 32; j++) {
      const err = Math.abs(got[b * 32 + j] - want[b * 32 + j]);
      if (err > step * 0.5 + amax * 1e-3 + 1e-12) assert.unreachable(`${what}[${b * 32 + j}]: ${got[b * 32 + j]} vs ${want[b * 32 + j]} (step ${step})`);
    }
  }
}

test('f16 conversion rounds to nearest even, keeps subnormals and saturates to infinity', () => {
  assert.is(f32ToF16(1), 0x3c00);
  assert.is(f32ToF16(-2), 0xc000);
  assert.is(f32ToF16(65504), 0x7bff);
  assert.is(f32ToF16(65520), 0x7c00);
  assert.is(f32ToF16(2 ** -24), 0x0001);
  assert.is(f32ToF16(2 ** -26), 0x0000);
  // 1 + 2^-11 lies halfway between 1 and 1 + 2^-10: even mantissa wins.
  assert.is(f32ToF16(1 + 2 ** -11), 0x3c00);
  assert.is(f32ToF16(1 + 3 * 2 ** -11), 0x3c02);
  for (const h of [0x0001, 0x03ff, 0x0400, 0x3555, 0x7bff, 0xbc00]) assert.is(f32ToF16(f16ToF32(h)), h, `half ${h.toString(16)} round trip`);
});

test('Q8_0 and Q4_0 blocks: scale and values as ggml quantizes them', () => {
  const x = new Float32Array(32).map((_, j) => (j - 10) / 4);
  const q8 = new Uint8Array(34);
  quantizeQ8_0(x, q8);
  const v8 = new DataView(q8.buffer);
  assert.is(v8.getUint16(0, true), f32ToF16(Math.fround(Math.fround(21 / 4) / 127)));
  assert.is(v8.getInt8(2 + 31), 127, 'the largest magnitude maps to 127');
  assert.is(v8.getInt8(2 + 10), 0);
  assert.is(v8.getInt8(2 + 0), Math.round((-10 / 4) / (21 / 4 / 127)));
  const q4 = new Uint8Array(18);
  quantizeQ4_0(x, q4);
  // d = max / -8 with max the signed weight of largest magnitude (5.25): weight 31 lands on 0, weight 10 (0.0) on 8.
  assert.is(f16ToF32(q4[0] | (q4[1] << 8)), f16ToF32(f32ToF16(-5.25 / 8)));
  assert.is(q4[2 + 15] >> 4, 0, 'weight 31 (5.25) is q = 0');
  assert.is(q4[2 + 10] & 15, 8, 'weight 10 (0.0) is q = 8');
});

test('the embedded model as GGUF: llama.cpp deepseek2 metadata, names, shapes and Q8_0 values of the checkpoint', async () => {
  const out = join(tmp, 'tiny-q8_0.gguf');
  const r = await convertToGguf(EMBEDDED, out, { quant: 'q8_0', threads: 1 });
  const f = readGguf(out);
  const ckpt = openCheckpoint(EMBEDDED);
  const cfg = ckpt.config;
  try {
    assert.is(f.version, 3);
    assert.is(f.tensors.size, r.tensors);
    assert.is(f.meta.get('general.architecture'), 'deepseek2');
    assert.is(f.meta.get('general.file_type'), 7);
    assert.is(f.meta.get('deepseek2.block_count'), cfg.numHiddenLayers);
    assert.is(f.meta.get('deepseek2.expert_count'), cfg.nRoutedExperts);
    assert.is(f.meta.get('deepseek2.attention.head_count_kv'), 1);
    assert.is(f.meta.get('deepseek2.attention.key_length'), cfg.kvLoraRank + cfg.qkRopeHeadDim);
    assert.is(f.meta.get('deepseek2.expert_gating_func'), 2, 'sigmoid');
    const tokens = f.meta.get('tokenizer.ggml.tokens') as string[];
    assert.is(tokens.length, cfg.vocabSize);
    assert.is(new Set(tokens).size, tokens.length, 'every token text once');

    // Every tensor's data inside the file, aligned, and the file exactly as long as the last one needs.
    let end = 0;
    for (const [name, t] of f.tensors) {
      assert.is(t.offset % 32, 0, `${name} aligned`);
      const n = t.ne.reduce((p, d) => p * d, 1);
      end = Math.max(end, t.offset + (t.type === 0 ? n * 4 : (n / 32) * 34));
    }
    assert.is(f.bytes.length, f.dataStart + Math.ceil(end / 32) * 32);

    const moeLayer = cfg.firstKDenseReplace;
    assert.equal(f.tensors.get(`blk.${moeLayer}.ffn_gate_exps.weight`)!.ne, [cfg.hiddenSize, cfg.moeIntermediateSize, cfg.nRoutedExperts]);
    assert.equal(f.tensors.get(`blk.${moeLayer}.ffn_down_exps.weight`)!.ne, [cfg.moeIntermediateSize, cfg.hiddenSize, cfg.nRoutedExperts]);
    assert.is(f.tensors.get(`blk.${moeLayer}.ffn_gate_inp.weight`)!.type, 0, 'router in F32');
    assert.is(f.tensors.has(`blk.${moeLayer}.attn_kv_b.weight`), false);

    const values = (name: string) => bf16Values(ckpt.get(name));
    // token_embd row 5 is the embedding's row 5.
    const emb = values('model.embed_tokens.weight');
    assertQ8Close(q8Row(f, 'token_embd.weight', 5), emb.subarray(5 * cfg.hiddenSize, 6 * cfg.hiddenSize), 'token_embd row 5');
    // Expert 3's up rows follow its gate rows in the stack's expert 3 slice.
    const up = values(`model.layers.${moeLayer}.mlp.experts.3.up_proj.weight`);
    const row = 3 * cfg.moeIntermediateSize + 2;
    assertQ8Close(q8Row(f, `blk.${moeLayer}.ffn_up_exps.weight`, row), up.subarray(2 * cfg.hiddenSize, 3 * cfg.hiddenSize), 'expert 3 up row 2');
    // attn_k_b of head 1, row c: column c of that head's K rows of kv_b; attn_v_b of head 1, row r: its V row r.
    const kvB = values(`model.layers.0.self_attn.kv_b_proj.weight`);
    const rank = cfg.kvLoraRank;
    const perHead = cfg.qkNopeHeadDim + cfg.vHeadDim;
    const c = 7;
    const kRow = Float32Array.from({ length: cfg.qkNopeHeadDim }, (_, r) => kvB[(perHead + r) * rank + c]);
    assertQ8Close(q8Row(f, 'blk.0.attn_k_b.weight', rank + c), kRow, 'attn_k_b head 1');
    assertQ8Close(q8Row(f, 'blk.0.attn_v_b.weight', cfg.vHeadDim + 4), kvB.subarray((perHead + cfg.qkNopeHeadDim + 4) * rank, (perHead + cfg.qkNopeHeadDim + 5) * rank), 'attn_v_b head 1');
  } finally {
    ckpt.close();
  }
});

test('what llama.cpp cannot load is refused before a file is written', async () => {
  const cases: [string, RegExp, 'q8_0' | 'q4_0'][] = [
    // 3 layers without q_lora: llama.cpp reads attn_q only for V2-Lite's 26/27 layers.
    [`${FIXTURES}models/v2-lite-tiny`, /q_lora_rank is null with 3 layers/, 'q8_0'],
    [`${FIXTURES}models/v3-tiny`, /has no tokenizer\.json/, 'q4_0'],
  ];
  for (const [dir, message, quant] of cases) {
    const out = join(tmp, `refused-${quant}.gguf`);
    await convertToGguf(dir, out, { quant, threads: 1 }).then(
      () => assert.unreachable(`${dir} converted`),
      (e: Error) => assert.match(e.message, message),
    );
    assert.is(fs.existsSync(out), false, 'no file left behind');
  }
  await convertToGguf(EMBEDDED, join(tmp, 'x.gguf'), { quant: 'q5_k' as 'q8_0' }).then(
    () => assert.unreachable('q5_k accepted'),
    (e: Error) => assert.match(e.message, /must be one of q8_0, q4_0/),
  );
});

test.run();
