import { fail } from '../errors.js';
import { BYTE_TO_CHAR, encodeUtf8, toByteLevel } from './bytelevel.js';
import { asArray, asBoolean, asObject, asString, asTokenId, describe, typeOf } from './json.js';

/** Pieces longer than this are not cached: they are rare and would let one huge input evict everything else. */
const CACHE_MAX_PIECE = 256;
/** Entries before the cache is dropped and refilled; bounded so a long-running server does not grow without end. */
const CACHE_MAX_ENTRIES = 1 << 16;

/**
 * Byte-level BPE: a piece becomes its UTF-8 bytes, one symbol each, then adjacent pairs are merged lowest rank first,
 * leftmost first among equal ranks, exactly as tokenizers' `Word::merge_all` does with its priority queue. Symbols are
 * a linked list in typed arrays and the queue a binary heap, so long runs (a megabyte of spaces) stay n log n.
 */
export class Bpe {
  readonly vocab: Map<string, number>;
  private readonly byteIds = new Int32Array(256);
  private readonly unkId: number;
  private readonly fuseUnk: boolean;
  private readonly ignoreMerges: boolean;
  private readonly merges: MergeTable;
  private readonly cache = new Map<string, number[]>();

  private bytes = new Uint8Array(1024);
  private sym = new Int32Array(256);
  private next = new Int32Array(256);
  private prev = new Int32Array(256);
  private readonly heap = new MergeHeap();

  constructor(json: unknown, file: string) {
    const where = `${file} model`;
    const model = asObject(json, where);
    const type = model['type'] === undefined ? 'BPE' : typeOf(model, where);
    if (type !== 'BPE') fail(`${where}.type is ${JSON.stringify(type)}; only BPE models are supported`);
    for (const key of ['continuing_subword_prefix', 'end_of_word_suffix'] as const) {
      if (model[key] !== null && model[key] !== undefined && model[key] !== '') {
        fail(`${where}.${key} ${describe(model[key])} is not supported (byte-level BPE has none)`);
      }
    }
    if (asBoolean(model['byte_fallback'], `${where}.byte_fallback`, false)) fail(`${where}.byte_fallback true is not supported`);
    if (typeof model['dropout'] === 'number' && model['dropout'] > 0) {
      fail(`${where}.dropout ${model['dropout']} is not supported (it makes encoding random)`);
    }
    this.vocab = parseVocab(model['vocab'], `${where}.vocab`);
    const unk = model['unk_token'];
    this.unkId = unk === null || unk === undefined ? -1 : this.idOf(asString(unk, `${where}.unk_token`), `${where}.unk_token`);
    this.fuseUnk = asBoolean(model['fuse_unk'], `${where}.fuse_unk`, false);
    this.ignoreMerges = asBoolean(model['ignore_merges'], `${where}.ignore_merges`, false);
    for (let b = 0; b < 256; b++) this.byteIds[b] = this.vocab.get(BYTE_TO_CHAR[b]!) ?? -1;
    this.merges = this.parseMerges(model['merges'], `${where}.merges`);
  }

  /** Appends the ids of one pre-tokenized piece (plain text; the byte-level mapping happens here). */
  encodePiece(piece: string, out: number[]): void {
    const cached = this.cache.get(piece);
    if (cached !== undefined) {
      for (let i = 0; i < cached.length; i++) out.push(cached[i]!);
      return;
    }
    const ids = this.encodeUncached(piece);
    if (piece.length <= CACHE_MAX_PIECE) {
      if (this.cache.size >= CACHE_MAX_ENTRIES) this.cache.clear();
      this.cache.set(piece, ids);
    }
    for (let i = 0; i < ids.length; i++) out.push(ids[i]!);
  }

  private encodeUncached(piece: string): number[] {
    if (this.ignoreMerges) {
      const whole = this.vocab.get(toByteLevel(piece));
      if (whole !== undefined) return [whole];
    }
    if (this.bytes.length < piece.length * 3) this.bytes = new Uint8Array(piece.length * 6);
    const nBytes = encodeUtf8(piece, this.bytes);
    if (this.sym.length < nBytes) {
      this.sym = new Int32Array(nBytes * 2);
      this.next = new Int32Array(nBytes * 2);
      this.prev = new Int32Array(nBytes * 2);
    }
    const { sym, next, prev, bytes, byteIds, merges, heap } = this;
    let n = 0;
    for (let i = 0; i < nBytes; i++) {
      let id = byteIds[bytes[i]!]!;
      if (id < 0) {
        // As in tokenizers: a byte missing from the vocabulary becomes unk (fused with a preceding unk) or vanishes.
        if (this.unkId < 0 || (this.fuseUnk && n > 0 && sym[n - 1] === this.unkId)) continue;
        id = this.unkId;
      }
      sym[n] = id;
      prev[n] = n - 1;
      next[n] = n + 1;
      n++;
    }
    if (n === 0) return [];
    next[n - 1] = -1;
    heap.clear();
    for (let i = 0; i + 1 < n; i++) {
      const m = merges.find(sym[i]!, sym[i + 1]!);
      if (m >= 0) heap.push(merges.rank[m]!, i, merges.merged[m]!);
    }
    while (heap.size > 0) {
      const pos = heap.topPos();
      const target = heap.topMerged();
      heap.pop();
      const right = next[pos]!;
      if (sym[pos]! < 0 || right < 0) continue;
      // Entries go stale when a neighbour merged first; tokenizers tells them apart by the id the merge would make.
      const m = merges.find(sym[pos]!, sym[right]!);
      if (m < 0 || merges.merged[m] !== target) continue;
      sym[pos] = target;
      sym[right] = -1;
      const after = next[right]!;
      next[pos] = after;
      if (after >= 0) prev[after] = pos;
      const before = prev[pos]!;
      if (before >= 0) {
        const l = merges.find(sym[before]!, target);
        if (l >= 0) heap.push(merges.rank[l]!, before, merges.merged[l]!);
      }
      if (after >= 0) {
        const r = merges.find(target, sym[after]!);
        if (r >= 0) heap.push(merges.rank[r]!, pos, merges.merged[r]!);
      }
    }
    const ids: number[] = [];
    for (let i = 0; i >= 0; i = next[i]!) ids.push(sym[i]!);
    return ids;
  }

  private idOf(token: string, where: string): number {
    const id = this.vocab.get(token);
    if (id === undefined) fail(`${where}: token ${JSON.stringify(token)} is not in model.vocab`);
    return id;
  }

  private parseMerges(json: unknown, where: string): MergeTable {
    const list = asArray(json ?? [], where);
    const table = new MergeTable(list.length);
    list.forEach((entry, rank) => {
      const at = `${where}[${rank}]`;
      let pair: unknown[];
      if (typeof entry === 'string') pair = entry.split(' ');
      else pair = asArray(entry, at);
      if (pair.length !== 2) fail(`${at} must be "left right" or [left, right], got ${describe(entry)}`);
      const left = asString(pair[0], at);
      const right = asString(pair[1], at);
      const a = this.idOf(left, at);
      const b = this.idOf(right, at);
      const merged = this.idOf(left + right, at);
      table.set(a, b, rank, merged);
    });
    return table;
  }
}

function parseVocab(json: unknown, where: string): Map<string, number> {
  const o = asObject(json, where);
  const vocab = new Map<string, number>();
  for (const key in o) vocab.set(key, asTokenId(o[key], `${where}[${JSON.stringify(key)}]`));
  return vocab;
}

/** Open-addressing hash table from an id pair to (rank, merged id): no string keys in the merge loop. */
class MergeTable {
  readonly rank: Int32Array;
  readonly merged: Int32Array;
  private readonly left: Int32Array;
  private readonly right: Int32Array;
  private readonly mask: number;

  constructor(count: number) {
    let capacity = 16;
    while (capacity < count * 2) capacity *= 2;
    this.mask = capacity - 1;
    this.left = new Int32Array(capacity).fill(-1);
    this.right = new Int32Array(capacity);
    this.rank = new Int32Array(capacity);
    this.merged = new Int32Array(capacity);
  }

  /** The slot of the pair, or -1. */
  find(a: number, b: number): number {
    const { left, right, mask } = this;
    for (let slot = hash(a, b) & mask; ; slot = (slot + 1) & mask) {
      const l = left[slot]!;
      if (l < 0) return -1;
      if (l === a && right[slot] === b) return slot;
    }
  }

  /** A repeated pair overwrites the earlier one, as collecting the merges into a HashMap does in tokenizers. */
  set(a: number, b: number, rank: number, merged: number): void {
    let slot = hash(a, b) & this.mask;
    while (this.left[slot]! >= 0 && (this.left[slot] !== a || this.right[slot] !== b)) slot = (slot + 1) & this.mask;
    this.left[slot] = a;
    this.right[slot] = b;
    this.rank[slot] = rank;
    this.merged[slot] = merged;
  }
}

function hash(a: number, b: number): number {
  return Math.imul(Math.imul(a, 0x9e3779b1) ^ b, 0x85ebca77) >>> 7;
}

/** Min-heap of pending merges ordered by (rank, position), in parallel typed arrays. */
class MergeHeap {
  size = 0;
  private rank = new Int32Array(256);
  private pos = new Int32Array(256);
  private merged = new Int32Array(256);

  clear(): void {
    this.size = 0;
  }

  topPos(): number {
    return this.pos[0]!;
  }

  topMerged(): number {
    return this.merged[0]!;
  }

  push(rank: number, pos: number, merged: number): void {
    if (this.size === this.rank.length) this.grow();
    const { rank: r, pos: p, merged: m } = this;
    let i = this.size++;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (r[parent]! < rank || (r[parent] === rank && p[parent]! < pos)) break;
      r[i] = r[parent]!;
      p[i] = p[parent]!;
      m[i] = m[parent]!;
      i = parent;
    }
    r[i] = rank;
    p[i] = pos;
    m[i] = merged;
  }

  pop(): void {
    const { rank: r, pos: p, merged: m } = this;
    const last = --this.size;
    if (last === 0) return;
    const rank = r[last]!;
    const pos = p[last]!;
    const merged = m[last]!;
    let i = 0;
    for (;;) {
      let child = 2 * i + 1;
      if (child >= last) break;
      const other = child + 1;
      if (other < last && (r[other]! < r[child]! || (r[other] === r[child] && p[other]! < p[child]!))) child = other;
      if (rank < r[child]! || (rank === r[child] && pos < p[child]!)) break;
      r[i] = r[child]!;
      p[i] = p[child]!;
      m[i] = m[child]!;
      i = child;
    }
    r[i] = rank;
    p[i] = pos;
    m[i] = merged;
  }

  private grow(): void {
    const size = this.rank.length * 2;
    const copy = (a: Int32Array): Int32Array<ArrayBuffer> => {
      const b = new Int32Array(size);
      b.set(a);
      return b;
    };
    this.rank = copy(this.rank);
    this.pos = copy(this.pos);
    this.merged = copy(this.merged);
  }
}
