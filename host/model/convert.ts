// `deepwasm convert` as a library function: a checkpoint rewritten with its matrices in q8 or q4, so that
// it loads without quantizing again (docs/quantized-format.md).
import * as fs from 'node:fs';
import { basename, join } from 'node:path';
import { fail } from '../errors.js';
import { openCheckpoint, type Checkpoint } from '../checkpoint/checkpoint.js';
import { readTensorInto, safetensorsHeader, type TensorEntry } from '../checkpoint/safetensors.js';
import { planShards, shardName } from '../checkpoint/shards.js';
import type { DType } from '../checkpoint/dtypes.js';
import { modelSchema, schemaWeights, weightPart, type Weight } from './schema.js';
import { SCALE_SUFFIX, WeightReader } from './weights.js';
import { FMT_F32, FMT_Q4, FMT_Q8, QUANT_GROUP } from '../runtime/constants.js';
import { Runtime } from '../runtime/runtime.js';

/** Files besides the weights that a checkpoint folder needs to be used: copied as they are. */
const SIDE_FILES = [
  'tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json', 'generation_config.json', 'tokenizer.model',
  'vocab.json', 'merges.txt', 'added_tokens.json', 'chat_template.jinja', 'chat_template.json',
];

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
    if (!w.tied) w.parts.forEach((p, i) => weights.set(p.name, weightPart(w, i)));
  }
  return weights;
}

/** One tensor of the output: what its header says, and how its bytes are made. */
interface OutTensor {
  name: string;
  dtype: DType;
  shape: number[];
  nbytes: number;
  /** The input tensor it comes from, and which of its outputs it is (a matrix gives its weights, then its scales). */
  from: TensorEntry;
  part: 'copy' | 'f32' | 'q' | 'scale';
}

/**
 * The output tensors in order, with their sizes known from the input's header alone: the shards and their
 * headers are fixed before any byte is read, so each tensor goes to its file as soon as it is made and the
 * process never holds more than one tensor (at 16B, q8 is 17 GB; the machine may have less RAM than that).
 */
function planOutput(entries: readonly TensorEntry[], weights: Map<string, Weight>, quant: 'q8' | 'q4'): OutTensor[] {
  const out: OutTensor[] = [];
  for (const e of entries) {
    const kind = weights.get(e.name)?.kind;
    // Vectors, tensors the schema does not name and float matrices already f32 or bf16 stay as they are.
    if (kind === undefined || kind === 'vector' || (kind === 'float' && (e.dtype === 'F32' || e.dtype === 'BF16'))) {
      out.push({ name: e.name, dtype: e.dtype, shape: e.shape, nbytes: e.nbytes, from: e, part: 'copy' });
    } else if (kind === 'float') {
      const [rows, cols] = e.shape;
      out.push({ name: e.name, dtype: 'F32', shape: [rows, cols], nbytes: rows * cols * 4, from: e, part: 'f32' });
    } else {
      const [rows, cols] = e.shape;
      const groups = Math.ceil(cols / QUANT_GROUP);
      const rowBytes = groups * (quant === 'q8' ? QUANT_GROUP : QUANT_GROUP / 2);
      out.push({ name: e.name, dtype: quant === 'q8' ? 'I8' : 'U8', shape: [rows, rowBytes], nbytes: rows * rowBytes, from: e, part: 'q' });
      out.push({ name: e.name + SCALE_SUFFIX, dtype: 'F32', shape: [rows, groups], nbytes: rows * groups * 4, from: e, part: 'scale' });
    }
  }
  return out;
}

/** Node's writeSync takes at most 2 GiB per call. */
const WRITE_CHUNK = 64 * 1024 * 1024;

function writeAll(fd: number, bytes: Uint8Array, path: string): void {
  try {
    for (let done = 0; done < bytes.length; ) done += fs.writeSync(fd, bytes, done, Math.min(WRITE_CHUNK, bytes.length - done));
  } catch (e) {
    fail(`writing ${path} failed (${(e as Error).message})`);
  }
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
  const shards = planShards(planOutput(entries, weights, opts.quant));
  const single = shards.length === 1;
  const files = shards.map((_, i) => (single ? 'model.safetensors' : shardName(i, shards.length)));
  const weightMap: Record<string, string> = {};
  let total = 0;
  // A matrix's scales follow its weights in the plan and may open the next shard: they wait here meanwhile.
  let scales: Uint8Array | undefined;
  let copyBuf: Uint8Array | undefined;

  for (const [k, shard] of shards.entries()) {
    const path = join(out, files[k]);
    let fd: number;
    try {
      fd = fs.openSync(path, 'w');
    } catch (e) {
      fail(`cannot create ${path} (${(e as Error).message})`);
    }
    try {
      writeAll(fd, safetensorsHeader(shard, metadata), path);
      for (const t of shard) {
        const e = t.from;
        const check = (bytes: Uint8Array): Uint8Array => {
          if (bytes.byteLength !== t.nbytes) fail(`internal: ${t.name} came out as ${bytes.byteLength} bytes, the plan said ${t.nbytes}`);
          return bytes;
        };
        if (t.part === 'copy') {
          copyBuf ??= new Uint8Array(WRITE_CHUNK);
          for (let at = 0; at < e.nbytes; ) {
            const n = Math.min(WRITE_CHUNK, e.nbytes - at);
            // A piece of the tensor, as an entry of its own, through the one reusable buffer.
            readTensorInto({ ...e, offset: e.offset + at, nbytes: n }, copyBuf.subarray(0, n));
            writeAll(fd, copyBuf.subarray(0, n), path);
            at += n;
            read += n;
            opts.onProgress?.(read, ckpt.totalBytes);
          }
        } else if (t.part === 'scale') {
          writeAll(fd, check(scales!), path);
          scales = undefined;
        } else {
          const weight = weights.get(e.name)!;
          const [rows, cols] = e.shape;
          const mark = rt.arena.mark();
          const m = (t.part === 'f32' ? widener : quantizer).matrix(weight);
          if (t.part === 'f32' && m.fmt === FMT_F32) {
            // Written from the module's memory as it lies: no copy on the JS heap.
            writeAll(fd, check(rt.bytes(m.ptr, rows * cols * 4)), path);
          } else if (t.part === 'q' && (m.fmt === FMT_Q8 || m.fmt === FMT_Q4)) {
            const groups = Math.ceil(cols / QUANT_GROUP);
            const q = rt.arena.alloc(t.nbytes, `${e.name} (file layout)`);
            const s = rt.arena.allocF32(rows * groups, `${e.name} scales (file layout)`);
            rt.kernels.q_unpack(m.fmt, m.ptr, rows, q, s, rows, cols, 0);
            writeAll(fd, check(rt.bytes(q, t.nbytes)), path);
            // The scales are a few percent of the weights; a copy outlives the release below.
            scales = rt.bytes(s, rows * groups * 4).slice();
          } else {
            fail(`internal: ${e.name} (a ${weight.kind} in the schema) loaded in format ${m.fmt}, which convert does not write for it`);
          }
          rt.arena.release(mark);
        }
        weightMap[t.name] = files[k];
        total += t.nbytes;
      }
    } finally {
      fs.closeSync(fd);
    }
  }

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

