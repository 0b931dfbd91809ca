import { fail } from '../errors.js';
import {
  ROLE_ROPE_COS, ROLE_ROPE_SIN, ROUTE_GREEDY, ROUTE_GROUP_LIMITED_GREEDY, ROUTE_NOAUX_TC, SCORE_SIGMOID, SCORE_SOFTMAX,
} from '../runtime/constants.js';
import { FMT_BF16, FMT_F32 } from '../runtime/kernels.js';
import type { Model } from './model.js';
import type { Placed } from './weights.js';

/** "DWW2": the first i32 of a packed image. */
export const WASI_IMAGE_MAGIC = 0x32575744;

const METHODS = { greedy: ROUTE_GREEDY, group_limited_greedy: ROUTE_GROUP_LIMITED_GREEDY, noaux_tc: ROUTE_NOAUX_TC };

/**
 * The image that build/deepwasm-wasi.wasm (assembly/wasi/main.ts) runs. It describes itself: i32s
 * [magic, config count, entry count, directory bytes, memory bytes], the config numbers, then a directory
 * with one entry per weight (role, layer, index, format, rows, cols, address, name length, the UTF-8 name
 * padded to 4 bytes: every weight the loader placed, plus the rotary tables), then the model's wasm memory
 * from address 0 to the end of its arena (weights, rotary tables, an empty KV cache of one sequence,
 * attention scratch). main.ts finds each weight by role, layer and index, and checks its shape against the
 * config. Matrices must be f32 or bf16 (quantized formats need the host's scratch set-up): load the model
 * with the default 'stored' format.
 */
export function packModel(model: Model): Uint8Array {
  const cfg = model.config;
  const { attention, cache } = model.oneMemory;
  const f32bits = (v: number): number => new Int32Array(new Float32Array([v]).buffer)[0];
  const config = [
    cfg.hiddenSize, cfg.vocabSize, cfg.numHiddenLayers, cfg.numAttentionHeads,
    cfg.qkNopeHeadDim, cfg.qkRopeHeadDim, cfg.vHeadDim, cfg.kvLoraRank, cfg.qLoraRank ?? 0,
    cfg.nRoutedExperts, cfg.numExpertsPerTok, cfg.nGroup, cfg.topkGroup, cfg.normTopkProb ? 1 : 0,
    METHODS[cfg.topkMethod], cfg.scoringFunc === 'sigmoid' ? SCORE_SIGMOID : SCORE_SOFTMAX, model.contextLength, attention.half,
    f32bits(cfg.rmsNormEps), f32bits(attention.softmaxScale), f32bits(cfg.routedScalingFactor),
    cache, attention.scratch,
  ];
  const tables: Placed[] = [
    { role: ROLE_ROPE_COS, layer: -1, index: 0, name: 'rope cos', fmt: FMT_F32, rows: model.contextLength, cols: attention.half, ptr: attention.cos },
    { role: ROLE_ROPE_SIN, layer: -1, index: 0, name: 'rope sin', fmt: FMT_F32, rows: model.contextLength, cols: attention.half, ptr: attention.sin },
  ];
  const entries = [...model.placed, ...tables];
  const encoder = new TextEncoder();
  const names = entries.map((e) => {
    if (e.fmt !== FMT_F32 && e.fmt !== FMT_BF16) fail(`the WASI image takes f32/bf16 matrices, but ${e.name} is format ${e.fmt}; load the model as stored`);
    return encoder.encode(e.name);
  });
  const directoryBytes = names.reduce((n, b) => n + 32 + Math.ceil(b.length / 4) * 4, 0);
  const memBytes = model.rt.arena.used;
  const headBytes = 20 + config.length * 4;
  const out = new Uint8Array(headBytes + directoryBytes + memBytes);
  const view = new DataView(out.buffer);
  [WASI_IMAGE_MAGIC, config.length, entries.length, directoryBytes, memBytes, ...config].forEach((v, i) => view.setInt32(i * 4, v, true));
  let at = headBytes;
  entries.forEach((e, i) => {
    [e.role, e.layer, e.index, e.fmt, e.rows, e.cols, e.ptr, names[i].length].forEach((v, k) => view.setInt32(at + k * 4, v, true));
    out.set(names[i], at + 32);
    at += 32 + Math.ceil(names[i].length / 4) * 4;
  });
  out.set(new Uint8Array(model.rt.memory.buffer, 0, memBytes), at);
  return out;
}
