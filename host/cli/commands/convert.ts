import * as fs from 'node:fs';
import { basename, join } from 'node:path';
import { openCheckpoint, type Checkpoint } from '../../checkpoint/checkpoint.js';
import { readTensorInto, writeSafetensors, type TensorToWrite } from '../../checkpoint/safetensors.js';
import { fail } from '../../errors.js';
import { FMT_BF16, FMT_F32, FMT_Q4, FMT_Q8 } from '../../runtime/kernels.js';
import { Runtime } from '../../runtime/runtime.js';
import { modelSchema, schemaWeights, type Weight } from '../../model/schema.js';
import { SCALE_SUFFIX, WeightReader, parseQuant, type QuantName } from '../../model/weights.js';
import { loadProgress } from '../progress.js';
import { MODEL_FLAG, THREADS_FLAG, type Command } from './command.js';

/** Files besides the weights that a checkpoint folder needs to be used: copied as they are. */
const SIDE_FILES = [
  'tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json', 'generation_config.json', 'tokenizer.model',
  'vocab.json', 'merges.txt', 'added_tokens.json', 'chat_template.jinja', 'chat_template.json',
];

/** Output shards stay below this size (the last tensor may overshoot it). */
const SHARD_BYTES = 2 * 1024 ** 3;

export interface ConvertOptions {
  quant: 'q8' | 'q4';
  threads?: number;
  onProgress?: (bytesRead: number, totalBytes: number) => void;
}

/**
 * Writes `src` quantized to q8 or q4 as a new checkpoint folder (docs/quantized-format.md): every
 * matrix a matmul reads becomes `NAME` (I8 or U8 bytes in groups of 32) plus `NAME_scale` (F32, one per
 * group); the embeddings, MLA's kv_b and the MoE router keep their float dtype (f32 when stored as f16 or
 * fp8); vectors are copied. The matrices go through the loader's own code (WeightReader), so loading the
 * output gives the same weights as loading `src` with --quant, bit for bit, without quantizing again.
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

/** Each checkpoint tensor of the schema as a weight of its own (convert writes tensors, not stacked weights). */
function tensorWeights(ckpt: Checkpoint): Map<string, Weight> {
  const out = new Map<string, Weight>();
  const schema = modelSchema(ckpt.config, { hasLmHead: ckpt.has('lm_head.weight') });
  for (const w of schemaWeights(schema, { mtp: true })) {
    if (w.tied || w.kind === 'vector') continue;
    for (const t of w.parts) out.set(t.name, { ...w, parts: [t], shape: t.shape });
  }
  return out;
}

function writeConverted(ckpt: Checkpoint, rt: Runtime, out: string, opts: ConvertOptions): { tensors: number; bytes: number; shards: number } {
  let read = 0;
  const reader = new WeightReader(ckpt, rt, (b) => opts.onProgress?.((read += b), ckpt.totalBytes), opts.quant);
  const entries = [...ckpt.tensors.values()].filter((e) => !e.name.endsWith('.weight_scale_inv'));
  const matrices = tensorWeights(ckpt);
  // The scratch must be in place before the per-tensor marks below, which release what they allocate.
  rt.ensureQuantScratch(Math.max(32, ...entries.filter((e) => matrices.has(e.name)).map((e) => e.shape[1])));

  const metadata = { format: `deepwasm-${opts.quant}`, group_size: '32', source: basename(ckpt.dir), layout: 'docs/quantized-format.md' };
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
    const weight = matrices.get(e.name);
    if (!weight) {
      const data = new Uint8Array(e.nbytes);
      readTensorInto(e, data);
      read += e.nbytes;
      opts.onProgress?.(read, ckpt.totalBytes);
      add({ name: e.name, dtype: e.dtype, shape: e.shape, data });
      continue;
    }
    const [rows, cols] = e.shape;
    const mark = rt.arena.mark();
    const m = reader.matrix(weight);
    if (m.fmt === FMT_F32 || m.fmt === FMT_BF16) {
      const bytes = rows * cols * (m.fmt === FMT_F32 ? 4 : 2);
      add({ name: e.name, dtype: m.fmt === FMT_F32 ? 'F32' : 'BF16', shape: [rows, cols], data: rt.bytes(m.ptr, bytes).slice() });
    } else if (m.fmt === FMT_Q8 || m.fmt === FMT_Q4) {
      const groups = Math.ceil(cols / 32);
      const qBytes = rows * groups * (m.fmt === FMT_Q8 ? 32 : 16);
      const q = rt.arena.alloc(qBytes, `${e.name} (file layout)`);
      const s = rt.arena.allocF32(rows * groups, `${e.name} scales (file layout)`);
      rt.kernels.q_unpack(m.fmt, m.ptr, rows, q, s, rows, cols, 0);
      add({ name: e.name, dtype: m.fmt === FMT_Q8 ? 'I8' : 'U8', shape: [rows, qBytes / rows], data: rt.bytes(q, qBytes).slice() });
      add({ name: e.name + SCALE_SUFFIX, dtype: 'F32', shape: [rows, groups], data: rt.f32(s, rows * groups).slice() });
    } else {
      fail(`internal: ${e.name} loaded in format ${m.fmt}, which convert does not write`);
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
    group_size: 32,
    layout: 'docs/quantized-format.md: NAME is I8 (q8) or U8 (q4, two weights per byte) [rows, ceil(cols/32)*32 or half], NAME_scale is F32 [rows, ceil(cols/32)]',
    unquantized: ['model.embed_tokens.weight', '*.kv_b_proj.weight', '*.mlp.gate.weight', 'vectors'],
  };
  fs.writeFileSync(join(out, 'config.json'), JSON.stringify(raw, null, 2) + '\n');
}

export const convertCommand: Command = {
  name: 'convert',
  summary: 'write a checkpoint quantized to q8 or q4 that loads without quantizing again',
  description:
    'Quantizes every matrix a matmul reads to q8 (int8) or q4 (4-bit), in groups of 32 columns with one F32 scale each, and ' +
    'writes a checkpoint folder: safetensors with NAME (I8 or U8) and NAME_scale (F32) per matrix, the embeddings, kv_b and ' +
    'the router in float, config.json with quantization_config {"quant_method": "deepwasm"}, and the tokenizer files. ' +
    'The layout is documented in docs/quantized-format.md.',
  flags: [
    { ...MODEL_FLAG, required: true },
    { name: 'quant', kind: 'string', value: 'q8|q4', required: true, help: 'the format to write' },
    { name: 'out', kind: 'string', value: 'DIR', required: true, help: 'new checkpoint folder (must not exist or be empty)' },
    THREADS_FLAG,
  ],
  async run(flags) {
    const quant: QuantName = parseQuant(flags.quant as string);
    if (quant !== 'q8' && quant !== 'q4') fail(`--quant is "${quant}": convert writes q8 or q4`);
    const src = flags.model as string;
    const progress = loadProgress(`converting ${src}`);
    const r = await convertCheckpoint(src, flags.out as string, { quant, threads: flags.threads as number | undefined, onProgress: progress.onProgress });
    progress.done();
    process.stderr.write(`wrote ${r.tensors} tensors, ${(r.bytes / 1024 ** 2).toFixed(1)} MiB in ${r.shards} shard(s) to ${flags.out as string}\n`);
  },
};
