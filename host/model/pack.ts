import { isMoeLayer } from '../checkpoint/config.js';
import { fail } from '../errors.js';
import {
  FMT_BF16, FMT_F32, ROUTE_GREEDY, ROUTE_GROUP_LIMITED_GREEDY, ROUTE_NOAUX_TC, SCORE_SIGMOID, SCORE_SOFTMAX,
} from '../runtime/kernels.js';
import type { Attention, AttentionShared } from './attention.js';
import type { Mlp } from './mlp.js';
import type { Model } from './model.js';
import type { Moe } from './moe.js';
import type { Matrix } from './weights.js';

/** "DWW1": the first i32 of a packed image. */
export const WASI_IMAGE_MAGIC = 0x31575744;

interface ModelParts {
  embed: Matrix;
  blocks: { attnNorm: number; attn: Attention; ffnNorm: number; ffn: Mlp | Moe }[];
  norm: number;
  head: Matrix;
  cache: number[];
  attention: AttentionShared;
}

const METHODS = { greedy: ROUTE_GREEDY, group_limited_greedy: ROUTE_GROUP_LIMITED_GREEDY, noaux_tc: ROUTE_NOAUX_TC };

/**
 * The image that build/deepwasm-wasi.wasm (assembly/wasi/main.ts) runs: magic, the table's i32 count,
 * the memory's byte count, the table (config numbers, then per layer formats and pointers, in the order
 * main.ts reads them), then the model's wasm memory from address 0 to the end of its arena (weights as
 * stored, rotary tables, an empty KV cache, attention scratch). Matrices must be f32 or bf16
 * (quantized formats need the host's scratch set-up); load the model with the default 'stored' format.
 */
export function packModel(model: Model): Uint8Array {
  const cfg = model.config;
  const parts = model as unknown as ModelParts;
  const t: number[] = [];
  const f32bits = (v: number) => new Int32Array(new Float32Array([v]).buffer)[0];
  const mat = (m: Matrix) => {
    if (m.fmt !== FMT_F32 && m.fmt !== FMT_BF16) fail(`the WASI image takes f32/bf16 matrices, not format ${m.fmt}; load the model as stored`);
    t.push(m.fmt, m.ptr);
  };
  const mlp = (m: Mlp) => {
    mat(m.gateUp);
    mat(m.down);
  };
  const inters = { dense: cfg.intermediateSize, expert: cfg.moeIntermediateSize, shared: cfg.moeIntermediateSize * cfg.nSharedExperts };
  t.push(cfg.hiddenSize, cfg.vocabSize, cfg.numHiddenLayers, cfg.numAttentionHeads);
  t.push(cfg.qkNopeHeadDim, cfg.qkRopeHeadDim, cfg.vHeadDim, cfg.kvLoraRank, cfg.qLoraRank ?? 0);
  t.push(cfg.nRoutedExperts, cfg.numExpertsPerTok, cfg.nGroup, cfg.topkGroup, cfg.normTopkProb ? 1 : 0);
  t.push(METHODS[cfg.topkMethod], cfg.scoringFunc === 'sigmoid' ? SCORE_SIGMOID : SCORE_SOFTMAX, model.contextLength, parts.attention.half);
  t.push(f32bits(cfg.rmsNormEps), f32bits(parts.attention.softmaxScale), f32bits(cfg.routedScalingFactor));
  t.push(inters.dense, inters.expert, inters.shared);
  mat(parts.embed);
  t.push(parts.norm);
  mat(parts.head);
  t.push(parts.attention.cos, parts.attention.sin, parts.attention.scratch);
  parts.blocks.forEach((b, i) => {
    const moe = isMoeLayer(cfg, i);
    t.push(moe ? 1 : 0, b.attnNorm, b.ffnNorm, parts.cache[i]);
    const a = b.attn;
    if ('proj' in a.q) mat(a.q.proj);
    else {
      mat(a.q.a);
      t.push(a.q.aNorm);
      mat(a.q.b);
    }
    mat(a.kvA);
    t.push(a.kvANorm);
    a.wUK.forEach(mat);
    a.wUV.forEach(mat);
    mat(a.o);
    if (!moe) mlp(b.ffn as Mlp);
    else {
      const m = b.ffn as Moe;
      mat(m.gate);
      t.push(m.bias, m.shared ? 1 : 0);
      if (m.shared) mlp(m.shared);
      for (const e of m.experts) mlp(e);
    }
  });
  const memBytes = model.rt.arena.used;
  const out = new Uint8Array(12 + t.length * 4 + memBytes);
  const head = new Int32Array(out.buffer, 0, 3 + t.length);
  head[0] = WASI_IMAGE_MAGIC;
  head[1] = t.length;
  head[2] = memBytes;
  head.set(t, 3);
  out.set(new Uint8Array(model.rt.memory.buffer, 0, memBytes), 12 + t.length * 4);
  return out;
}
