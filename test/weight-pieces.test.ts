// Tensors larger than the loader's staging area are read and converted a piece of rows at a time: the blob
// they make is the blob the whole tensor makes at once (q8, q4 and f32 from bf16; q8 and fp8 kept from fp8 blocks).
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { openCheckpoint } from '../host/checkpoint/checkpoint.js';
import { bf16ToF32, dequantFp8Blocks } from '../host/checkpoint/dtypes.js';
import { readTensorInto, writeSafetensors, type TensorToWrite } from '../host/checkpoint/safetensors.js';
import { Model } from '../host/model/model.js';
import { STAGING_BYTES } from '../host/model/placement.js';
import { synthCheckpoint } from '../host/model/synth.js';
import type { QuantName } from '../host/model/weights.js';
import { ROLE_LM_HEAD } from '../host/runtime/constants.js';
import { FMT_BF16, FMT_F32, FMT_FP8 } from '../host/runtime/kernels.js';

const VOCAB = 150_000;
const HIDDEN = 256;

const dirs: string[] = [];
test.after(() => dirs.forEach((d) => rmSync(d, { recursive: true, force: true })));

async function synth(): Promise<string> {
  const dir = mkdtempSync(join(tmpdir(), 'deepwasm-pieces-'));
  dirs.push(dir);
  await synthCheckpoint({
    source: 'weight-pieces test config',
    out: dir,
    seed: 3,
    dtype: 'bf16',
    config: {
      model_type: 'deepseek_v3', vocab_size: VOCAB, hidden_size: HIDDEN, intermediate_size: 128, moe_intermediate_size: 32,
      num_hidden_layers: 1, first_k_dense_replace: 1, num_attention_heads: 2, q_lora_rank: 32, kv_lora_rank: 32,
      qk_nope_head_dim: 16, qk_rope_head_dim: 8, v_head_dim: 16, n_routed_experts: 4, n_shared_experts: 1, num_experts_per_tok: 2,
      n_group: 1, topk_group: 1, max_position_embeddings: 64,
    },
  });
  return dir;
}

/** The checkpoint with its head as e4m3 bytes in 128x128 blocks (any byte but the NaNs) with block scales. */
function headToFp8(dir: string): void {
  const ckpt = openCheckpoint(dir);
  const tensors: TensorToWrite[] = [...ckpt.tensors.values()].map((e) => {
    const data = new Uint8Array(e.nbytes);
    readTensorInto(e, data);
    return { name: e.name, dtype: e.dtype, shape: e.shape, data };
  });
  const shard = ckpt.get('lm_head.weight').path;
  ckpt.close();
  assert.ok([...ckpt.tensors.values()].every((e) => e.path === shard), 'synth wrote one shard');
  const head = tensors.find((t) => t.name === 'lm_head.weight')!;
  const q = new Uint8Array(VOCAB * HIDDEN);
  for (let i = 0; i < q.length; i++) q[i] = (Math.imul(i, 2654435761) >>> 24) & 0xfe & (i % 3 === 0 ? 0xbf : 0xff);
  Object.assign(head, { dtype: 'F8_E4M3', data: q });
  const scales = Float32Array.from({ length: Math.ceil(VOCAB / 128) * Math.ceil(HIDDEN / 128) }, (_, i) => 1e-3 * (1 + (i % 7)));
  tensors.push({ name: 'lm_head.weight_scale_inv', dtype: 'F32', shape: [Math.ceil(VOCAB / 128), Math.ceil(HIDDEN / 128)], data: scales });
  writeSafetensors(shard, tensors);
  const indexPath = join(dir, 'model.safetensors.index.json');
  const index = JSON.parse(readFileSync(indexPath, 'utf8'));
  index.weight_map['lm_head.weight_scale_inv'] = basename(shard);
  writeFileSync(indexPath, JSON.stringify(index));
}

/** The head's blob as loaded, and as the kernels make it from the whole tensor in one call. */
async function compare(dir: string, quant: QuantName, stored: 'BF16' | 'F8_E4M3'): Promise<void> {
  const model = await Model.load(dir, { threads: 1, quant, contextLength: 16 });
  try {
    const rt = model.rt;
    const head = model.placed.find((p) => p.role === ROLE_LM_HEAD)!;
    const e = openCheckpoint(dir).get('lm_head.weight');
    assert.is(e.dtype, stored);
    assert.ok(e.nbytes > STAGING_BYTES, `the head (${e.nbytes} bytes) must take more than one piece`);
    const bytes = rt.kernels.weight_bytes(head.fmt, head.rows, head.cols) >>> 0;
    const mark = rt.arena.mark();
    const raw = rt.arena.alloc(e.nbytes, 'whole head');
    readTensorInto(e, rt.bytes(raw, e.nbytes));
    const expected = rt.arena.alloc(bytes, 'expected blob');
    const f32 = rt.arena.allocF32(VOCAB * HIDDEN, 'whole head as f32');
    let scalesPtr = 0;
    if (e.dtype === 'BF16') bf16ToF32(new Uint16Array(rt.memory.buffer, raw, VOCAB * HIDDEN), rt.f32(f32, VOCAB * HIDDEN));
    else {
      const s = openCheckpoint(dir).get('lm_head.weight_scale_inv');
      scalesPtr = rt.arena.alloc(s.nbytes, 'head scales');
      readTensorInto(s, rt.bytes(scalesPtr, s.nbytes));
      dequantFp8Blocks(rt.bytes(raw, e.nbytes), rt.f32(scalesPtr, s.nbytes / 4), VOCAB, HIDDEN, rt.f32(f32, VOCAB * HIDDEN));
    }
    if (head.fmt === FMT_F32) rt.bytes(expected, bytes).set(rt.bytes(f32, bytes));
    else if (head.fmt === FMT_FP8) rt.kernels.fp8_pack(expected, VOCAB, raw, scalesPtr, VOCAB, HIDDEN, 0, 128);
    else rt.kernels.quantize_rows(head.fmt, expected, VOCAB, e.dtype === 'BF16' ? FMT_BF16 : FMT_F32, e.dtype === 'BF16' ? raw : f32, VOCAB, HIDDEN, 0);
    const got = rt.bytes(head.ptr, bytes);
    const want = rt.bytes(expected, bytes);
    const differ = got.findIndex((b, i) => b !== want[i]);
    assert.is(differ, -1, `${quant}: byte ${differ} of ${bytes} differs`);
    rt.arena.release(mark);
  } finally {
    await model.close();
  }
}

test('bf16 tensors over the staging size: q8, q4 and f32 loads match the whole-tensor conversion', async () => {
  const dir = await synth();
  for (const quant of ['q8', 'q4', 'f32'] as const) await compare(dir, quant, 'BF16');
});

test('an fp8 tensor over the staging size, in pieces of whole 128-row blocks: q8 and fp8 loads match the whole-tensor conversion', async () => {
  const dir = await synth();
  headToFp8(dir);
  await compare(dir, 'q8', 'F8_E4M3');
  await compare(dir, 'fp8', 'F8_E4M3');
});

test.run();
