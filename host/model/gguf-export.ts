// `deepwasm convert --to gguf`: a checkpoint as the GGUF file llama.cpp loads (its deepseek2 architecture),
// so that a user can take a model to llama.cpp and the peer benchmark runs llama.cpp on the same weights.
// What each weight is comes from the schema; the names, layouts and metadata are llama.cpp's, as its
// convert_hf_to_gguf.py (DeepseekV2Model) writes them: the routed experts stacked per layer, kv_b cut per head
// into attn_k_b (transposed) and attn_v_b, MLA seen as one KV head, the MTP layers left out.
import * as fs from 'node:fs';
import { basename, join } from 'node:path';
import { fail } from '../errors.js';
import { openCheckpoint, type Checkpoint } from '../checkpoint/checkpoint.js';
import type { DeepSeekConfig } from '../checkpoint/config.js';
import {
  GGML_F32, GGML_Q4_0, GGML_Q8_0, ggufHeader, paddingAfter, quantizeQ4_0, quantizeQ8_0, rowBytes, tensorBytes,
  type GgmlType, type GgufTensorInfo, type GgufValue,
} from '../checkpoint/gguf.js';
import { loadTokenizer } from '../tokenizer/load.js';
import { modelSchema, weightPart, type MlpSchema, type Weight } from './schema.js';
import { WeightReader } from './weights.js';
import { FMT_F32 } from '../runtime/constants.js';
import { Runtime } from '../runtime/runtime.js';

export type GgufQuant = 'q8_0' | 'q4_0';
export const GGUF_QUANTS: readonly GgufQuant[] = ['q8_0', 'q4_0'];
const TYPE_OF: Record<GgufQuant, GgmlType> = { q8_0: GGML_Q8_0, q4_0: GGML_Q4_0 };
/** llama_ftype: what general.file_type says the file mostly is. */
const FILE_TYPE: Record<GgufQuant, number> = { q8_0: 7, q4_0: 2 };

export interface GgufOptions {
  quant: GgufQuant;
  threads?: number;
  onProgress?: (bytesRead: number, totalBytes: number) => void;
}

/** The f32 values of a tensor, written row block by row block through `emit`. */
type Source = (reader: WeightReader, rt: Runtime, emit: (values: Float32Array) => void) => void;

interface Planned {
  info: GgufTensorInfo;
  source: Source;
}

/** Writes `src` as one GGUF file at `out`; resolves with the tensor count and the file's size. */
export async function convertToGguf(src: string, out: string, opts: GgufOptions): Promise<{ tensors: number; bytes: number }> {
  if (!GGUF_QUANTS.includes(opts.quant)) fail(`--quant for --to gguf must be one of ${GGUF_QUANTS.join(', ')}, got ${JSON.stringify(opts.quant)}`);
  if (fs.existsSync(out)) fail(`--out ${out} exists; choose a new file name`);
  const ckpt = openCheckpoint(src);
  try {
    if (ckpt.config.deepwasmQuantization) fail(`${src} is a deepwasm ${ckpt.config.deepwasmQuantization.format} checkpoint; convert the original (bf16, f32 or fp8) checkpoint to GGUF instead`);
    checkArchitecture(ckpt.config, src);
    const plan = planTensors(ckpt, TYPE_OF[opts.quant]);
    const metadata = ggufMetadata(ckpt, opts.quant, src);
    const rt = await Runtime.create(opts.threads);
    try {
      return writeGguf(ckpt, rt, out, metadata, plan, opts);
    } catch (e) {
      fs.rmSync(out, { force: true });
      throw e;
    } finally {
      await rt.close();
    }
  } finally {
    ckpt.close();
  }
}

/** What llama.cpp's deepseek2 cannot hold, refused before anything is written. */
function checkArchitecture(cfg: DeepSeekConfig, src: string): void {
  if (cfg.nRoutedExperts > 0 && cfg.moeLayerFreq !== 1) {
    fail(`${src}/config.json: moe_layer_freq is ${cfg.moeLayerFreq}; llama.cpp's deepseek2 makes every layer after first_k_dense_replace a MoE layer (moe_layer_freq 1)`);
  }
  const lite = cfg.numHiddenLayers === 26 || cfg.numHiddenLayers === 27;
  if (cfg.qLoraRank === null && !lite) {
    fail(`${src}/config.json: q_lora_rank is null with ${cfg.numHiddenLayers} layers; llama.cpp's deepseek2 reads attn_q without q_lora only for 26- or 27-layer models (DeepSeek-V2-Lite)`);
  }
}

/** A float weight's values, read through the f32 loader: a matrix [rows, cols] at ptr in rt's memory. */
function readF32(reader: WeightReader, w: Weight): { ptr: number; rows: number; cols: number } {
  const m = reader.matrix(w);
  if (m.fmt !== FMT_F32) fail(`internal: ${w.parts[0].name} loaded in format ${m.fmt}, not f32`);
  return m;
}

/** A matrix's values; gate and up are read as their own tensors (weightPart), so neither reads the other's. */
const valuesOf = (w: Weight): Source => (reader, rt, emit) => {
  const m = readF32(reader, w);
  emit(rt.f32(m.ptr, m.rows * m.cols));
};

const vectorOf = (w: Weight): Source => (reader, rt, emit) => emit(rt.f32(reader.vector(w), w.shape[0]));

/** The tensors of the file, in order, with how each one's values are made. */
function planTensors(ckpt: Checkpoint, type: GgmlType): Planned[] {
  const cfg = ckpt.config;
  const s = modelSchema(cfg, { hasLmHead: ckpt.has('lm_head.weight') });
  const plan: Planned[] = [];
  const matrix = (name: string, w: Weight, t: GgmlType = type): void => {
    plan.push({ info: { name, ne: [w.shape[1], w.shape[0]], type: t }, source: valuesOf(w) });
  };
  const vector = (name: string, w: Weight): void => {
    plan.push({ info: { name, ne: [w.shape[0]], type: GGML_F32 }, source: vectorOf(w) });
  };
  const gateUp = (prefix: string, suffix: string, mlp: MlpSchema): void => {
    matrix(`${prefix}.ffn_gate${suffix}.weight`, weightPart(mlp.gateUp, 0));
    matrix(`${prefix}.ffn_up${suffix}.weight`, weightPart(mlp.gateUp, 1));
    matrix(`${prefix}.ffn_down${suffix}.weight`, mlp.down);
  };

  matrix('token_embd.weight', s.embed);
  for (const b of s.blocks) {
    const p = `blk.${b.layer}`;
    vector(`${p}.attn_norm.weight`, b.attnNorm);
    const q = b.attn.q;
    if ('proj' in q) matrix(`${p}.attn_q.weight`, q.proj);
    else {
      matrix(`${p}.attn_q_a.weight`, q.a);
      vector(`${p}.attn_q_a_norm.weight`, q.aNorm);
      matrix(`${p}.attn_q_b.weight`, q.b);
    }
    matrix(`${p}.attn_kv_a_mqa.weight`, b.attn.kvA);
    vector(`${p}.attn_kv_a_norm.weight`, b.attn.kvANorm);
    plan.push(...kvBCuts(p, b.attn.kvB, cfg, type));
    matrix(`${p}.attn_output.weight`, b.attn.o);
    vector(`${p}.ffn_norm.weight`, b.ffnNorm);
    if ('mlp' in b.ffn) gateUp(p, '', b.ffn.mlp);
    else {
      const moe = b.ffn.moe;
      // The router's logits stay float32 in llama.cpp too.
      matrix(`${p}.ffn_gate_inp.weight`, moe.router, GGML_F32);
      if (moe.bias && ckpt.has(moe.bias.parts[0].name)) plan.push({ info: { name: `${p}.exp_probs_b.bias`, ne: [moe.bias.shape[0]], type: GGML_F32 }, source: vectorOf(moe.bias) });
      plan.push(...expertStacks(p, moe.experts, type));
      if (moe.shared) gateUp(p, '_shexp', moe.shared);
    }
  }
  vector('output_norm.weight', s.norm);
  // A tied head is token_embd, which llama.cpp uses when output.weight is absent.
  if (!s.head.tied) matrix('output.weight', s.head);
  return plan;
}

/** ffn_{gate,up,down}_exps: every routed expert's matrix of a layer, one after another. */
function expertStacks(p: string, experts: readonly MlpSchema[], type: GgmlType): Planned[] {
  const inter = experts[0].inter;
  const hidden = experts[0].down.shape[0];
  const stack = (name: string, ne: number[], rows: (e: MlpSchema) => Source): Planned => ({
    info: { name: `${p}.${name}.weight`, ne, type },
    source: (reader, rt, emit) => {
      for (const e of experts) {
        const mark = rt.arena.mark();
        rows(e)(reader, rt, emit);
        rt.arena.release(mark);
      }
    },
  });
  return [
    stack('ffn_gate_exps', [hidden, inter, experts.length], (e) => valuesOf(weightPart(e.gateUp, 0))),
    stack('ffn_up_exps', [hidden, inter, experts.length], (e) => valuesOf(weightPart(e.gateUp, 1))),
    stack('ffn_down_exps', [inter, hidden, experts.length], (e) => valuesOf(e.down)),
  ];
}

/**
 * kv_b [heads x (nope + v), kv_lora] cut per head: attn_k_b holds each head's K part transposed
 * ([kv_lora, nope] per head), attn_v_b each head's V part as it is ([v, kv_lora] per head).
 */
function kvBCuts(p: string, kvB: Weight, cfg: DeepSeekConfig, type: GgmlType): Planned[] {
  const heads = cfg.numAttentionHeads;
  const nope = cfg.qkNopeHeadDim;
  const v = cfg.vHeadDim;
  const rank = cfg.kvLoraRank;
  const k: Planned = {
    info: { name: `${p}.attn_k_b.weight`, ne: [nope, rank, heads], type },
    source: (reader, rt, emit) => {
      const m = readF32(reader, kvB);
      const all = rt.f32(m.ptr, m.rows * m.cols);
      const turned = new Float32Array(rank * nope);
      for (let h = 0; h < heads; h++) {
        const base = h * (nope + v) * rank;
        for (let r = 0; r < nope; r++) for (let c = 0; c < rank; c++) turned[c * nope + r] = all[base + r * rank + c];
        emit(turned);
      }
    },
  };
  const vb: Planned = {
    info: { name: `${p}.attn_v_b.weight`, ne: [rank, v, heads], type },
    source: (reader, rt, emit) => {
      const m = readF32(reader, kvB);
      for (let h = 0; h < heads; h++) emit(rt.f32(m.ptr + (h * (nope + v) + nope) * rank * 4, v * rank));
    },
  };
  return [k, vb];
}

/** The hyperparameters under llama.cpp's keys, and the tokenizer. */
function ggufMetadata(ckpt: Checkpoint, quant: GgufQuant, src: string): Map<string, GgufValue> {
  const cfg = ckpt.config;
  const a = 'deepseek2';
  const m = new Map<string, GgufValue>();
  const u32 = (k: string, v: number) => m.set(k, { u32: v });
  const f32 = (k: string, v: number) => m.set(k, { f32: v });
  m.set('general.architecture', { str: a });
  m.set('general.name', { str: basename(src) });
  u32('general.file_type', FILE_TYPE[quant]);
  u32('general.quantization_version', 2);
  u32(`${a}.block_count`, cfg.numHiddenLayers);
  u32(`${a}.context_length`, cfg.maxPositionEmbeddings);
  u32(`${a}.embedding_length`, cfg.hiddenSize);
  u32(`${a}.feed_forward_length`, cfg.intermediateSize);
  u32(`${a}.attention.head_count`, cfg.numAttentionHeads);
  // MLA as llama.cpp sees it: one shared KV head of the latent (kv_lora + rope) width.
  u32(`${a}.attention.head_count_kv`, 1);
  f32(`${a}.rope.freq_base`, cfg.ropeTheta);
  f32(`${a}.attention.layer_norm_rms_epsilon`, cfg.rmsNormEps);
  u32(`${a}.vocab_size`, cfg.vocabSize);
  u32(`${a}.leading_dense_block_count`, cfg.nRoutedExperts > 0 ? cfg.firstKDenseReplace : cfg.numHiddenLayers);
  if (cfg.qLoraRank !== null) u32(`${a}.attention.q_lora_rank`, cfg.qLoraRank);
  u32(`${a}.attention.kv_lora_rank`, cfg.kvLoraRank);
  u32(`${a}.attention.key_length`, cfg.kvLoraRank + cfg.qkRopeHeadDim);
  u32(`${a}.attention.value_length`, cfg.kvLoraRank);
  u32(`${a}.attention.key_length_mla`, cfg.qkNopeHeadDim + cfg.qkRopeHeadDim);
  u32(`${a}.attention.value_length_mla`, cfg.vHeadDim);
  u32(`${a}.rope.dimension_count`, cfg.qkRopeHeadDim);
  u32(`${a}.expert_feed_forward_length`, cfg.nRoutedExperts > 0 ? cfg.moeIntermediateSize : cfg.intermediateSize);
  u32(`${a}.expert_shared_count`, cfg.nSharedExperts);
  if (cfg.nRoutedExperts > 0) {
    u32(`${a}.expert_count`, cfg.nRoutedExperts);
    u32(`${a}.expert_used_count`, cfg.numExpertsPerTok);
    u32(`${a}.expert_group_count`, cfg.nGroup);
    u32(`${a}.expert_group_used_count`, cfg.topkGroup);
    // llama_expert_gating_func_type: 1 softmax, 2 sigmoid.
    u32(`${a}.expert_gating_func`, cfg.scoringFunc === 'sigmoid' ? 2 : 1);
    f32(`${a}.expert_weights_scale`, cfg.routedScalingFactor);
    m.set(`${a}.expert_weights_norm`, { bool: cfg.normTopkProb });
  }
  const y = cfg.ropeScaling;
  if (y) {
    m.set(`${a}.rope.scaling.type`, { str: 'yarn' });
    f32(`${a}.rope.scaling.factor`, y.factor);
    u32(`${a}.rope.scaling.original_context_length`, y.originalMaxPositionEmbeddings);
    f32(`${a}.rope.scaling.yarn_beta_fast`, y.betaFast);
    f32(`${a}.rope.scaling.yarn_beta_slow`, y.betaSlow);
    // llama.cpp divides this by 0.1 again when it loads a deepseek2 file (its TAG_DEEPSEEK2_YARN_LOG_MUL_FIX).
    f32(`${a}.rope.scaling.yarn_log_multiplier`, 0.1 * y.mscaleAllDim);
  }
  for (const [k, v] of tokenizerMetadata(ckpt.dir, cfg.vocabSize)) m.set(k, v);
  return m;
}

// llama_token_type numbers.
const TOKEN_NORMAL = 1;
const TOKEN_CONTROL = 3;
const TOKEN_USER_DEFINED = 4;
const TOKEN_UNUSED = 5;

/** The byte-level BPE vocabulary as llama.cpp's gpt2 tokenizer model reads it, vocab_size tokens long. */
function tokenizerMetadata(dir: string, vocabSize: number): Map<string, GgufValue> {
  const file = join(dir, 'tokenizer.json');
  if (!fs.existsSync(file)) fail(`${dir} has no tokenizer.json; a GGUF file carries the vocabulary, so convert --to gguf needs it`);
  const tok = loadTokenizer(dir);
  const json = JSON.parse(fs.readFileSync(file, 'utf8')) as { model?: { merges?: unknown[] }; added_tokens?: { id: number; special?: boolean }[] };
  const added = new Set((json.added_tokens ?? []).map((t) => t.id));
  const tokens: string[] = [];
  const types = new Int32Array(vocabSize);
  const seen = new Set<string>();
  for (let id = 0; id < vocabSize; id++) {
    const t = tok.idToToken(id);
    // llama.cpp needs every token text once; ids the tokenizer lacks (or repeats) get a placeholder, as its converter writes.
    if (t === undefined || seen.has(t)) {
      tokens.push(`[PAD${id}]`);
      types[id] = TOKEN_UNUSED;
      continue;
    }
    seen.add(t);
    tokens.push(t);
    types[id] = tok.isSpecial(id) ? TOKEN_CONTROL : added.has(id) ? TOKEN_USER_DEFINED : TOKEN_NORMAL;
  }
  const merges = (json.model?.merges ?? []).map((mg, i) => {
    if (typeof mg === 'string') return mg;
    if (Array.isArray(mg) && mg.length === 2) return `${mg[0]} ${mg[1]}`;
    return fail(`${file}: model.merges[${i}] is neither "a b" nor ["a", "b"]`);
  });
  const m = new Map<string, GgufValue>();
  m.set('tokenizer.ggml.model', { str: 'gpt2' });
  // DeepSeek-V3's pre-tokenizer (digits in threes, CJK runs, then the byte-level regex), as llama.cpp names it.
  m.set('tokenizer.ggml.pre', { str: 'deepseek-v3' });
  m.set('tokenizer.ggml.tokens', { strs: tokens });
  m.set('tokenizer.ggml.token_type', { i32s: types });
  m.set('tokenizer.ggml.merges', { strs: merges });
  if (tok.bosTokenId !== undefined) m.set('tokenizer.ggml.bos_token_id', { u32: tok.bosTokenId });
  if (tok.eosTokenId !== undefined) m.set('tokenizer.ggml.eos_token_id', { u32: tok.eosTokenId });
  m.set('tokenizer.ggml.add_bos_token', { bool: tok.bosTokenId !== undefined });
  return m;
}

/** Node's writeSync takes at most 2 GiB per call; the quantized rows go out in pieces of this. */
const OUT_CHUNK = 16 * 1024 * 1024;

function writeGguf(ckpt: Checkpoint, rt: Runtime, out: string, metadata: Map<string, GgufValue>, plan: Planned[], opts: GgufOptions): { tensors: number; bytes: number } {
  let read = 0;
  const reader = new WeightReader(ckpt, rt, (b) => opts.onProgress?.((read += b), ckpt.totalBytes), 'f32');
  // Made first: a tensor llama.cpp's blocks cannot hold is refused before the file exists.
  const header = ggufHeader(metadata, plan.map((p) => p.info));
  const fd = fs.openSync(out, 'w');
  let written = 0;
  const write = (bytes: Uint8Array): void => {
    for (let at = 0; at < bytes.length; ) at += fs.writeSync(fd, bytes, at, Math.min(OUT_CHUNK, bytes.length - at));
    written += bytes.length;
  };
  try {
    write(header);
    const staged = new Uint8Array(OUT_CHUNK);
    for (const { info, source } of plan) {
      const expected = tensorBytes(info);
      const start = written;
      const mark = rt.arena.mark();
      source(reader, rt, (values) => {
        if (info.type === GGML_F32) return write(new Uint8Array(values.buffer, values.byteOffset, values.byteLength));
        // Whole rows at a time through the one staging buffer.
        const cols = info.ne[0];
        const rowsPerPiece = Math.max(1, Math.floor(OUT_CHUNK / rowBytes(info.type, cols)));
        for (let r = 0; r * cols < values.length; r += rowsPerPiece) {
          const piece = values.subarray(r * cols, Math.min(values.length, (r + rowsPerPiece) * cols));
          const dst = staged.subarray(0, (piece.length / cols) * rowBytes(info.type, cols));
          (info.type === GGML_Q8_0 ? quantizeQ8_0 : quantizeQ4_0)(piece, dst);
          write(dst);
        }
      });
      rt.arena.release(mark);
      if (written - start !== expected) fail(`internal: ${info.name} came out as ${written - start} bytes, its header says ${expected}`);
      write(new Uint8Array(paddingAfter(expected)));
    }
  } finally {
    fs.closeSync(fd);
  }
  return { tensors: plan.length, bytes: written };
}
