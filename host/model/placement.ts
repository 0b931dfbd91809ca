// Where a model's weights go when one wasm32 memory cannot hold them, decided from the schema before a
// byte is read: the model cut into units (the embedding; per layer its attention, norms, router, shared
// experts or dense MLP; each routed expert; the layer's KV cache; the final norm and the head), laid into
// memories of at most `limit` bytes in model order. A layer's routed experts may span memories.
import { totalmem } from 'node:os';
import { isMoeLayer, type DeepSeekConfig } from '../checkpoint/config.js';
import { fail } from '../errors.js';
import { MAX_MEMORY_BYTES } from '../runtime/arena.js';
import type { ModelSchema, Weight } from './schema.js';
import { blockWeights } from './schema.js';

export interface Unit {
  /** "embedding", "layer 3", "layer 3 expert 17", "layer 3 KV cache", "head". */
  name: string;
  /** Its weights (none for a KV cache). */
  weights: readonly Weight[];
  /** The layer, or -1 for the embedding and the head. */
  layer: number;
  /** The routed expert's index, or -1. */
  expert: number;
  bytes: number;
}

export interface MemoryPlan {
  limit: number;
  memories: { bytes: number; units: Unit[] }[];
}

const MiB = 1024 * 1024;

/** Most bytes the loader stages in wasm memory at once to convert a tensor (weights.ts reads big tensors in row pieces). */
export const STAGING_BYTES = 32 * MiB;

/**
 * A bound on what one memory holds beside its weights and KV cache: a forward pass's temporaries (passTokens
 * tokens: the hidden states, MLA's per-head buffers, the widest MLP activations, the router's and each
 * expert pair's outputs, the inputs copied in from another memory), MLA's per-thread scratch, the rotary
 * tables, the logits, the quantized kernels' scratch, and the load's staging (a piece of a tensor, or kv_b
 * whole as f32 twice while it is cut per head).
 */
export function scratchBytes(cfg: DeepSeekConfig, contextLength: number, passTokens: number, threads: number): number {
  const { hiddenSize: hidden, numAttentionHeads: heads, qkNopeHeadDim: nope, qkRopeHeadDim: rope, kvLoraRank: rank, vHeadDim: v } = cfg;
  const widest = Math.max(cfg.intermediateSize, 2 * cfg.moeIntermediateSize * Math.max(1, cfg.nSharedExperts), cfg.qLoraRank ?? 0);
  const pairs = Math.max(1, cfg.numExpertsPerTok);
  const perToken = 4 * (5 * hidden + 2 * pairs * hidden + heads * (nope + rope) + 2 * heads * rank + 2 * widest + cfg.nRoutedExperts);
  const staging = Math.max(STAGING_BYTES, 2 * heads * (nope + v) * rank * 4);
  return passTokens * perToken + threads * contextLength * 4 * 4 + 2 * contextLength * rope * 4 + cfg.vocabSize * 4 + staging + 8 * MiB;
}

/** The default limit of one memory: what a wasm32 memory holds, less the scratch every memory keeps. */
export function defaultMemoryLimit(scratch: number): number {
  return MAX_MEMORY_BYTES - scratch;
}

/** Bytes of memory a plan takes: its units and each memory's scratch. */
export function planBytes(plan: MemoryPlan, scratch: number): number {
  return plan.memories.reduce((n, m) => n + m.bytes, 0) + plan.memories.length * scratch;
}

/** Share of the machine's RAM a plan may take: the rest is the OS, the JS heap, the workers and the page cache. */
export const RAM_SHARE = 0.9;

/** This machine's RAM in bytes, where the runtime says (Node, Deno with --allow-sys); undefined in a browser. */
export function machineRam(): number | undefined {
  try {
    return typeof totalmem === 'function' ? totalmem() : undefined;
  } catch {
    // Deno without --allow-sys refuses to say: the plan is then not checked against the RAM.
    return undefined;
  }
}

/**
 * The model's units in model order; `bytesOf` sizes a weight as the load will hold it. A tied head is the
 * embedding itself, so the final norm joins the embedding's unit and there is no head unit. With `mtp`, the
 * MTP layers follow the head as layers of their own (their embedding, norms and head with their attention).
 */
export function planUnits(schema: ModelSchema, bytesOf: (w: Weight) => number, kvBytesPerLayer: number, opts: { mtp?: boolean } = {}): Unit[] {
  const unit = (name: string, layer: number, expert: number, weights: Weight[]): Unit => ({
    name, layer, expert, weights, bytes: weights.reduce((n, w) => n + bytesOf(w), 0),
  });
  const tied = schema.head.tied === true;
  const units: Unit[] = [unit(tied ? 'embedding and head' : 'embedding', -1, -1, tied ? [schema.embed, schema.norm, schema.head] : [schema.embed])];
  for (const b of schema.blocks) {
    const experts = 'moe' in b.ffn ? b.ffn.moe.experts : [];
    const routed = new Set(experts.flatMap((e) => [e.gateUp, e.down]));
    units.push(unit(`layer ${b.layer}`, b.layer, -1, blockWeights(b).filter((w) => !routed.has(w))));
    units.push({ name: `layer ${b.layer} KV cache`, layer: b.layer, expert: -1, weights: [], bytes: kvBytesPerLayer });
    experts.forEach((e, i) => units.push(unit(`layer ${b.layer} expert ${i}`, b.layer, i, [e.gateUp, e.down])));
  }
  if (!tied) units.push(unit('head', -1, -1, [schema.norm, schema.head]));
  if (opts.mtp) {
    for (const m of schema.mtp) {
      const experts = 'moe' in m.block.ffn ? m.block.ffn.moe.experts : [];
      const routed = new Set(experts.flatMap((e) => [e.gateUp, e.down]));
      const own = [m.embed, m.enorm, m.hnorm, m.ehProj, ...blockWeights(m.block).filter((w) => !routed.has(w)), m.headNorm, m.head];
      units.push(unit(`MTP layer ${m.block.layer}`, m.block.layer, -1, own));
      units.push({ name: `MTP layer ${m.block.layer} KV cache`, layer: m.block.layer, expert: -1, weights: [], bytes: kvBytesPerLayer });
      experts.forEach((e, i) => units.push(unit(`MTP layer ${m.block.layer} expert ${i}`, m.block.layer, i, [e.gateUp, e.down])));
    }
  }
  return units;
}

/** A layer's KV cache is read by its attention, so it goes where the layer's own unit goes. */
const isCache = (u: Unit): boolean => u.layer >= 0 && u.expert < 0 && u.weights.length === 0;

/**
 * Lays the units into memories of at most `limit` bytes, in order, a layer's KV cache with the layer; a unit
 * (or a layer with its cache) larger than the limit is refused by name.
 */
export function placeUnits(units: readonly Unit[], limit: number): MemoryPlan {
  const memories: MemoryPlan['memories'] = [];
  let current: MemoryPlan['memories'][number] | undefined;
  for (let i = 0; i < units.length; i++) {
    const group = i + 1 < units.length && isCache(units[i + 1]) ? [units[i], units[i + 1]] : [units[i]];
    const bytes = group.reduce((n, u) => n + u.bytes, 0);
    if (bytes > limit) {
      const name = group.length === 2 ? `${group[0].name} with its KV cache` : group[0].name;
      fail(`${name} takes ${(bytes / MiB).toFixed(bytes < 10 * MiB ? 2 : 0)} MiB, more than the memory limit of ${(limit / MiB).toFixed(limit < 10 * MiB ? 2 : 0)} MiB; raise --memory-limit or use a smaller format (--quant)`);
    }
    if (!current || current.bytes + bytes > limit) {
      current = { bytes: 0, units: [] };
      memories.push(current);
    }
    current.units.push(...group);
    current.bytes += bytes;
    i += group.length - 1;
  }
  return { limit, memories };
}

/** Which memory each weight of the plan goes to, and each layer (its attention, norms, router, shared experts, KV cache). */
export function memoryOf(plan: MemoryPlan): { weights: Map<Weight, number>; layers: Map<number, number> } {
  const weights = new Map<Weight, number>();
  const layers = new Map<number, number>();
  plan.memories.forEach((m, i) => {
    for (const u of m.units) {
      for (const w of u.weights) weights.set(w, i);
      if (u.layer >= 0 && u.expert < 0) layers.set(u.layer, i);
    }
  });
  return { weights, layers };
}

/**
 * One memory's units in a line, whole layers as ranges: "embedding, layers 0-2, layer 3 (attention, KV
 * cache, experts 0-40)".
 */
export function describeUnits(units: readonly Unit[], cfg: DeepSeekConfig): string {
  const parts: string[] = [];
  let run: number[] = [];
  const flush = (): void => {
    if (run.length) parts.push(run.length === 1 ? `layer ${run[0]}` : `layers ${run[0]}-${run[run.length - 1]}`);
    run = [];
  };
  for (let i = 0; i < units.length; ) {
    const u = units[i];
    if (u.layer < 0) {
      flush();
      parts.push(u.name);
      i++;
      continue;
    }
    let j = i;
    while (j < units.length && units[j].layer === u.layer) j++;
    const mine = units.slice(i, j);
    const own = mine.filter((x) => x.expert < 0);
    const ids = mine.filter((x) => x.expert >= 0).map((x) => x.expert);
    const mtp = u.layer >= cfg.numHiddenLayers;
    if (!mtp && own.length === 2 && ids.length === (isMoeLayer(cfg, u.layer) ? cfg.nRoutedExperts : 0)) run.push(u.layer);
    else {
      flush();
      const pieces: string[] = own.map((x) => (x.name.endsWith('KV cache') ? 'KV cache' : 'attention and norms'));
      if (ids.length) pieces.push(ids.length === 1 ? `expert ${ids[0]}` : `experts ${ids[0]}-${ids[ids.length - 1]}`);
      parts.push(`${mtp ? 'MTP ' : ''}layer ${u.layer} (${pieces.join(', ')})`);
    }
    i = j;
  }
  flush();
  return parts.join(', ');
}
