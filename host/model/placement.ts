// Where a model's weights go when one wasm32 memory cannot hold them, decided from the schema before a
// byte is read: the model cut into units (the embedding; per layer its attention, norms, router, shared
// experts or dense MLP; each routed expert; the layer's KV cache; the final norm and the head), laid into
// memories of at most `limit` bytes in model order. A layer's routed experts may span memories.
import type { DeepSeekConfig } from '../checkpoint/config.js';
import { fail } from '../errors.js';
import { MAX_MEMORY_BYTES } from '../runtime/arena.js';
import type { ModelSchema, Weight } from './schema.js';
import { blockWeights } from './schema.js';

export interface Unit {
  /** "embedding", "layer 3", "layer 3 expert 17", "layer 3 KV cache", "head". */
  name: string;
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

/**
 * A bound on one forward pass's temporaries in wasm memory, beside the weights and the KV cache: the
 * pass's activations (passTokens tokens), MLA's per-thread scratch, the rotary tables, the logits and
 * the quantized kernels' scratch.
 */
export function scratchBytes(cfg: DeepSeekConfig, contextLength: number, passTokens: number, threads: number): number {
  const { hiddenSize: hidden, numAttentionHeads: heads, qkNopeHeadDim: nope, qkRopeHeadDim: rope, kvLoraRank: rank } = cfg;
  const widest = Math.max(cfg.intermediateSize, 2 * cfg.moeIntermediateSize * Math.max(1, cfg.nSharedExperts), cfg.qLoraRank ?? 0);
  const perToken = 4 * (4 * hidden + heads * (nope + rope) + 2 * heads * rank + 2 * widest + cfg.nRoutedExperts);
  return passTokens * perToken + threads * contextLength * 4 * 4 + 2 * contextLength * rope * 4 + cfg.vocabSize * 4 + 8 * MiB;
}

/** The default limit of one memory: what a wasm32 memory holds, less the scratch every memory keeps. */
export function defaultMemoryLimit(scratch: number): number {
  return MAX_MEMORY_BYTES - scratch;
}

/** The model's units in model order; `bytesOf` sizes a weight as the load will hold it. */
export function planUnits(schema: ModelSchema, bytesOf: (w: Weight) => number, kvBytesPerLayer: number): Unit[] {
  const sum = (ws: readonly Weight[]): number => ws.reduce((n, w) => n + bytesOf(w), 0);
  const units: Unit[] = [{ name: 'embedding', layer: -1, expert: -1, bytes: bytesOf(schema.embed) }];
  for (const b of schema.blocks) {
    const experts = 'moe' in b.ffn ? b.ffn.moe.experts : [];
    const routed = new Set(experts.flatMap((e) => [e.gateUp, e.down]));
    units.push({ name: `layer ${b.layer}`, layer: b.layer, expert: -1, bytes: sum(blockWeights(b).filter((w) => !routed.has(w))) });
    units.push({ name: `layer ${b.layer} KV cache`, layer: b.layer, expert: -1, bytes: kvBytesPerLayer });
    experts.forEach((e, i) => units.push({ name: `layer ${b.layer} expert ${i}`, layer: b.layer, expert: i, bytes: bytesOf(e.gateUp) + bytesOf(e.down) }));
  }
  units.push({ name: 'head', layer: -1, expert: -1, bytes: bytesOf(schema.norm) + bytesOf(schema.head) });
  return units;
}

/** Lays the units into memories of at most `limit` bytes, in order; a unit larger than the limit is refused by name. */
export function placeUnits(units: readonly Unit[], limit: number): MemoryPlan {
  const memories: MemoryPlan['memories'] = [];
  let current: MemoryPlan['memories'][number] | undefined;
  for (const u of units) {
    if (u.bytes > limit) {
      fail(`${u.name} takes ${Math.ceil(u.bytes / MiB)} MiB, more than the memory limit of ${Math.floor(limit / MiB)} MiB; raise --memory-limit or use a smaller format (--quant)`);
    }
    if (!current || current.bytes + u.bytes > limit) {
      current = { bytes: 0, units: [] };
      memories.push(current);
    }
    current.units.push(u);
    current.bytes += u.bytes;
  }
  return { limit, memories };
}

/**
 * One memory's units in a line, whole layers as ranges: "embedding, layers 0-2, layer 3 (attention, KV
 * cache, experts 0-40)". `experts` is the routed experts of a MoE layer.
 */
export function describeUnits(units: readonly Unit[], experts: number): string {
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
    const dense = !mine.some((x) => x.expert >= 0) && own.length === 2;
    if (own.length === 2 && (dense || ids.length === experts)) run.push(u.layer);
    else {
      flush();
      const pieces: string[] = own.map((x) => (x.name.endsWith('KV cache') ? 'KV cache' : 'attention and norms'));
      if (ids.length) pieces.push(ids.length === 1 ? `expert ${ids[0]}` : `experts ${ids[0]}-${ids[ids.length - 1]}`);
      parts.push(`layer ${u.layer} (${pieces.join(', ')})`);
    }
    i = j;
  }
  flush();
  return parts.join(', ');
}
