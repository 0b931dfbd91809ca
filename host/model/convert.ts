// `deepwasm convert` as a library function: a checkpoint rewritten with its matrices in q8 or q4, so that
// it loads without quantizing again (docs/quantized-format.md).
import * as fs from 'node:fs';
import { basename, join } from 'node:path';
import { fail } from '../errors.js';
import { openCheckpoint, type Checkpoint } from '../checkpoint/checkpoint.js';
import { readTensorInto, writeSafetensors, type TensorToWrite } from '../checkpoint/safetensors.js';
import { modelSchema, schemaWeights, type Weight } from './schema.js';
import { SCALE_SUFFIX, WeightReader } from './weights.js';
import { FMT_F32, FMT_Q4, FMT_Q8, QUANT_GROUP } from '../runtime/constants.js';
import { Runtime } from '../runtime/runtime.js';

/** Files besides the weights that a checkpoint folder needs to be used: copied as they are. */
const SIDE_FILES = [
  'tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json', 'generation_config.json', 'tokenizer.model',
  'vocab.json', 'merges.txt', 'added_tokens.json', 'chat_template.jinja', 'chat_template.json',
];

/** Output shards stay below this size (the last tensor may overshoot it). */
const SHARD_BYTES = 2 * 1024 ** 3;

export interface ConvertOptions {
  quant: 'q8' | 'q4';
  /** Threads quantizing (default: all cores). */
  threads?: number;
  /** Called as tensor bytes are read, with the total to read. */
  onProgress?: (bytesRead: number, totalBytes: number) => void;
}

/**
 * Writes `src` quantized to q8 or q4 as a new checkpoint folder (docs/quantized-format.md). The model
 * schema (host/model/schema.ts) says what each tensor is: a 'matrix' becomes `NAME` (I8 or U8 bytes in
 * groups of QUANT_GROUP) plus `NAME_scale` (F32, one per group); a 'float' (the embeddings, MLA's kv_b, the
 * MoE router) keeps its float dtype (f32 when stored as f16 or fp8); vectors and tensors the schema does
 * not know are copied. Matrices go through the loader's own code (WeightReader), so loading the output
 * gives the same weights as loading `src` with --quant, bit for bit, without quantizing again.
 */
export async function convertCheckpoint(src: string, out: string, opts: ConvertOptions): Promise<{ tensors: number; bytes: number; shards: number }> {
  const ckpt = openCheckpoint(src);
  try {
    if (ckpt.config.deepwasmQuantization) fail(`${src} is already a deepwasm ${ckpt.config.deepwasmQuantization.format} checkpoint; convert the original checkpoint instead`);
    if (fs.existsSync(out) && fs.readdirSync(out).length > 0) fail(`--out ${out} exists and is not empty; choose a new folder`);
    fs.mkdirSync(out, { recursive: true });
    const rt = await Runtime.create(opts.threads);
    try {
      return writeConverted(ckpt, rt, out, opts);
    } finally {
      await rt.close();
    }
  } finally {
    ckpt.close();
  }
}

/** What the schema of the checkpoint's config says each of its tensors is (MTP layers included): each a weight of its own. */
function tensorWeights(ckpt: Checkpoint): Map<string, Weight> {
  const weights = new Map<string, Weight>();
  const schema = modelSchema(ckpt.config, { hasLmHead: ckpt.has('lm_head.weight') });
  // A tied head is the embedding's tensor, which stays float.
  for (const w of schemaWeights(schema, { mtp: true })) {
    if (!w.tied) for (const p of w.parts) weights.set(p.name, { ...w, parts: [p], shape: p.shape });
  }
  return weights;
}

function writeConverted(ckpt: Checkpoint, rt: Runtime, out: string, opts: ConvertOptions): { tensors: number; bytes: number; shards: number } {
  let read = 0;
  const onBytes = (b: number) => opts.onProgress?.((read += b), ckpt.totalBytes);
  const quantizer = new WeightReader(ckpt, rt, onBytes, opts.quant);
  // Float matrices stored as f16 or fp8 are widened to f32 as the loader widens them.
  const widener = new WeightReader(ckpt, rt, onBytes, 'f32');
  const weights = tensorWeights(ckpt);
  const entries = [...ckpt.tensors.values()].filter((e) => !e.name.endsWith('.weight_scale_inv'));
  // The scratch must be in place before the per-tensor marks below, which release what they allocate.
  rt.ensureQuantScratch(Math.max(QUANT_GROUP, ...entries.filter((e) => weights.get(e.name)?.kind === 'matrix').map((e) => e.shape[1])));

  const metadata = { format: `deepwasm-${opts.quant}`, group_size: String(QUANT_GROUP), source: basename(ckpt.dir), layout: 'docs/quantized-format.md' };
  const shards: { file: string; tensors: TensorToWrite[] }[] = [];
  let current: TensorToWrite[] = [];
  let currentBytes = 0;
  let total = 0;
  const flush = () => {
    if (current.length === 0) return;
    shards.push({ file: '', tensors: current });
    current = [];
    currentBytes = 0;
  };
  const add = (t: TensorToWrite) => {
    if (currentBytes > 0 && currentBytes + t.data.byteLength > SHARD_BYTES) flush();
    current.push(t);
    currentBytes += t.data.byteLength;
    total += t.data.byteLength;
  };

  for (const e of entries) {
    const weight = weights.get(e.name);
    const kind = weight?.kind;
    // Vectors, tensors the schema does not name and float matrices already f32 or bf16 stay as they are.
    if (kind === undefined || kind === 'vector' || (kind === 'float' && (e.dtype === 'F32' || e.dtype === 'BF16'))) {
      const data = new Uint8Array(e.nbytes);
      readTensorInto(e, data);
      read += e.nbytes;
      opts.onProgress?.(read, ckpt.totalBytes);
      add({ name: e.name, dtype: e.dtype, shape: e.shape, data });
      continue;
    }
    const [rows, cols] = e.shape;
    const mark = rt.arena.mark();
    const m = (kind === 'float' ? widener : quantizer).matrix(weight!);
    if (kind === 'float' && m.fmt === FMT_F32) {
      add({ name: e.name, dtype: 'F32', shape: [rows, cols], data: rt.bytes(m.ptr, rows * cols * 4).slice() });
    } else if (kind === 'matrix' && (m.fmt === FMT_Q8 || m.fmt === FMT_Q4)) {
      const groups = Math.ceil(cols / QUANT_GROUP);
      const qBytes = rows * groups * (m.fmt === FMT_Q8 ? QUANT_GROUP : QUANT_GROUP / 2);
      const q = rt.arena.alloc(qBytes, `${e.name} (file layout)`);
      const s = rt.arena.allocF32(rows * groups, `${e.name} scales (file layout)`);
      rt.kernels.q_unpack(m.fmt, m.ptr, rows, q, s, rows, cols, 0);
      add({ name: e.name, dtype: m.fmt === FMT_Q8 ? 'I8' : 'U8', shape: [rows, qBytes / rows], data: rt.bytes(q, qBytes).slice() });
      add({ name: e.name + SCALE_SUFFIX, dtype: 'F32', shape: [rows, groups], data: rt.f32(s, rows * groups).slice() });
    } else {
      fail(`internal: ${e.name} (a ${kind} in the schema) loaded in format ${m.fmt}, which convert does not write for it`);
    }
    rt.arena.release(mark);
  }
  flush();

  const single = shards.length === 1;
  const weightMap: Record<string, string> = {};
  shards.forEach((shard, i) => {
    shard.file = single ? 'model.safetensors' : `model-${String(i + 1).padStart(5, '0')}-of-${String(shards.length).padStart(5, '0')}.safetensors`;
    writeSafetensors(join(out, shard.file), shard.tensors, metadata);
    for (const t of shard.tensors) weightMap[t.name] = shard.file;
    shard.tensors.length = 0;
  });
  if (!single) {
    fs.writeFileSync(join(out, 'model.safetensors.index.json'), JSON.stringify({ metadata: { total_size: total, ...metadata }, weight_map: weightMap }, null, 2) + '\n');
  }
  writeConfig(ckpt.dir, out, opts.quant);
  for (const f of SIDE_FILES) {
    const from = join(ckpt.dir, f);
    if (fs.existsSync(from)) fs.copyFileSync(from, join(out, f));
  }
  return { tensors: Object.keys(weightMap).length, bytes: total, shards: shards.length };
}

/** config.json with quantization_config saying what the weights now are (any fp8 description is replaced). */
function writeConfig(srcDir: string, out: string, quant: 'q8' | 'q4'): void {
  const raw = JSON.parse(fs.readFileSync(join(srcDir, 'config.json'), 'utf8')) as Record<string, unknown>;
  raw.quantization_config = {
    quant_method: 'deepwasm',
    format: quant,
    group_size: QUANT_GROUP,
    layout: 'docs/quantized-format.md: NAME is I8 (q8) or U8 (q4, two weights per byte) [rows, ceil(cols/32)*32 or half], NAME_scale is F32 [rows, ceil(cols/32)]',
    unquantized: ['model.embed_tokens.weight', '*.kv_b_proj.weight', '*.mlp.gate.weight', 'vectors'],
  };
  fs.writeFileSync(join(out, 'config.json'), JSON.stringify(raw, null, 2) + '\n');
}

