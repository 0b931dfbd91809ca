// response_format enforced while sampling: before each token, every token whose bytes would take the text
// off the prefixes of valid JSON (for the schema) gets a logit of -Infinity. The vocabulary is walked as a
// trie of token bytes from the parser's state, so a shared prefix is parsed once and a rejected byte prunes
// every token below it; masks are cached by state, since long strings and repeated shapes revisit states.
import type { Tokenizer } from '../tokenizer/index.js';
import { tokenBytes } from '../tokenizer/bytelevel.js';
import { advance, completion, documentStart, mayEnd, Done, type Frame } from './json-grammar.js';
import type { SchemaNode } from './json-schema.js';

/** The tokens of a vocabulary by their bytes; special tokens and ids without text are left out. */
export class TokenTrie {
  /** Per node: its first child, next sibling, the byte leading to it, and its first token (-1: none). */
  private readonly child: Int32Array;
  private readonly sibling: Int32Array;
  private readonly label: Uint8Array;
  private readonly firstToken: Int32Array;
  /** Per token id: the next token with the same bytes. */
  private readonly nextToken: Int32Array;
  readonly bytes: (Uint8Array | undefined)[];

  private static readonly built = new WeakMap<Tokenizer, Map<number, TokenTrie>>();

  /** The trie of `tokenizer`'s ids below `vocabSize`, built once per tokenizer. */
  static of(tokenizer: Tokenizer, vocabSize: number): TokenTrie {
    let byVocab = TokenTrie.built.get(tokenizer);
    if (!byVocab) TokenTrie.built.set(tokenizer, (byVocab = new Map()));
    let trie = byVocab.get(vocabSize);
    if (!trie) {
      trie = new TokenTrie(vocabSize, (id) => {
        const token = tokenizer.isSpecial(id) ? undefined : tokenizer.idToToken(id);
        return token === undefined ? undefined : tokenBytes(token);
      });
      byVocab.set(vocabSize, trie);
    }
    return trie;
  }

  constructor(
    readonly vocabSize: number,
    bytesOf: (id: number) => Uint8Array | undefined,
  ) {
    this.bytes = Array.from({ length: vocabSize }, (_, id) => {
      const b = bytesOf(id);
      return b && b.length > 0 ? b : undefined;
    });
    const ids = this.bytes.flatMap((b, id) => (b ? [id] : []));
    ids.sort((a, b) => compareBytes(this.bytes[a]!, this.bytes[b]!));
    // Sorted, each token shares a prefix with the one before it: only the rest becomes new nodes.
    const capacity = 1 + ids.reduce((n, id) => n + this.bytes[id]!.length, 0);
    const child = new Int32Array(capacity).fill(-1);
    const sibling = new Int32Array(capacity).fill(-1);
    const label = new Uint8Array(capacity);
    const firstToken = new Int32Array(capacity).fill(-1);
    const lastChild = new Int32Array(capacity).fill(-1);
    this.nextToken = new Int32Array(vocabSize).fill(-1);
    let nodes = 1;
    const path = [0];
    let prev: Uint8Array = new Uint8Array(0);
    for (const id of ids) {
      const b = this.bytes[id]!;
      let common = 0;
      while (common < b.length && common < prev.length && b[common] === prev[common]) common++;
      path.length = common + 1;
      for (let i = common; i < b.length; i++) {
        const parent = path[i];
        const node = nodes++;
        label[node] = b[i];
        if (lastChild[parent] < 0) child[parent] = node;
        else sibling[lastChild[parent]] = node;
        lastChild[parent] = node;
        path.push(node);
      }
      const at = path[b.length];
      this.nextToken[id] = firstToken[at];
      firstToken[at] = id;
      prev = b;
    }
    this.child = child.slice(0, nodes);
    this.sibling = sibling.slice(0, nodes);
    this.label = label.slice(0, nodes);
    this.firstToken = firstToken.slice(0, nodes);
  }

  /** Sets the bit of every token whose bytes `state` accepts whole. */
  allowed(state: Frame, mask: Uint32Array): void {
    this.visit(0, state, mask);
  }

  private visit(node: number, state: Frame, mask: Uint32Array): void {
    for (let c = this.child[node]; c >= 0; c = this.sibling[c]) {
      const next = state.step(this.label[c]);
      if (next === null) continue;
      for (let t = this.firstToken[c]; t >= 0; t = this.nextToken[t]) mask[t >>> 5] |= 1 << (t & 31);
      if (this.child[c] >= 0) this.visit(c, next, mask);
    }
  }

  /** The fewest tokens whose bytes spell `bytes` (Infinity when none do). */
  fewestTokens(bytes: readonly number[]): number {
    const best = new Array<number>(bytes.length + 1).fill(Infinity);
    best[0] = 0;
    for (let i = 0; i < bytes.length; i++) {
      if (best[i] === Infinity) continue;
      let node = 0;
      for (let j = i; j < bytes.length; j++) {
        let c = this.child[node];
        while (c >= 0 && this.label[c] !== bytes[j]) c = this.sibling[c];
        if (c < 0) break;
        if (this.firstToken[c] >= 0) best[j + 1] = Math.min(best[j + 1], best[i] + 1);
        node = c;
      }
    }
    return best[bytes.length];
  }

  /** Sets the bit of every token whose bytes are a non-empty prefix of `bytes`. */
  along(bytes: readonly number[], mask: Uint32Array): void {
    let node = 0;
    for (const b of bytes) {
      let c = this.child[node];
      while (c >= 0 && this.label[c] !== b) c = this.sibling[c];
      if (c < 0) return;
      for (let t = this.firstToken[c]; t >= 0; t = this.nextToken[t]) mask[t >>> 5] |= 1 << (t & 31);
      node = c;
    }
  }
}

function compareBytes(a: Uint8Array, b: Uint8Array): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return a[i] - b[i];
  return a.length - b.length;
}

/** Cached masks per grammar: at most this many bytes of them (a mask of DeepSeek's vocabulary is 16 KB). */
const MASK_CACHE_BYTES = 8 * 1024 * 1024;

/** A compiled schema over one vocabulary, with the masks of the states seen so far; shared by requests. */
export class JsonGrammar {
  private readonly masks = new Map<string, Uint32Array>();
  readonly words: number;
  /** The fewest tokens a reply takes: those of the schema's shortest document. */
  readonly minTokens: number;

  constructor(
    readonly schema: SchemaNode,
    readonly trie: TokenTrie,
  ) {
    this.words = Math.ceil(trie.vocabSize / 32);
    this.minTokens = trie.fewestTokens(completion(documentStart(schema)));
  }

  /** The tokens `state` accepts, not counting end-of-sequence. */
  maskOf(state: Frame): Uint32Array {
    const key = state.key();
    let mask = this.masks.get(key);
    if (!mask) {
      mask = new Uint32Array(this.words);
      this.trie.allowed(state, mask);
      if ((this.masks.size + 1) * this.words * 4 > MASK_CACHE_BYTES) this.masks.clear();
      this.masks.set(key, mask);
    }
    return mask;
  }
}

/**
 * One generation's JSON state. Near the token limit it makes the text end anyway: each token must leave the
 * shortest completion no longer than the tokens still allowed (every byte is a token of a byte-level BPE), and
 * when it would not, only the tokens that spell the start of that completion remain.
 */
export class JsonConstraint {
  private state: Frame;
  private readonly forced: Uint32Array;

  constructor(
    private readonly grammar: JsonGrammar,
    private readonly eos: readonly number[],
  ) {
    this.state = documentStart(grammar.schema);
    this.forced = new Uint32Array(grammar.words);
  }

  /** The document is complete: generation ends here. */
  get done(): boolean {
    return this.state instanceof Done;
  }

  /**
   * Masks the logits in place for the next token, with `room` tokens left (this one included). Returns false
   * when the mask is the shortest completion's already; otherwise the caller checks its pick with fits().
   */
  mask(logits: Float32Array, room: number): boolean {
    const rest = completion(this.state);
    if (rest.length >= room) {
      this.applyForced(logits, rest);
      return false;
    }
    apply(logits, this.grammar.maskOf(this.state), this.eosAllowed());
    return true;
  }

  /** Masks the logits to the tokens that begin the shortest completion (after a pick that did not fit). */
  maskForced(logits: Float32Array): void {
    this.applyForced(logits, completion(this.state));
  }

  /** Whether after `id` the shortest completion takes at most `room` tokens. */
  fits(id: number, room: number): boolean {
    if (this.eos.includes(id)) return true;
    const next = advance(this.state, this.grammar.trie.bytes[id] ?? []);
    return next !== null && completion(next).length <= room;
  }

  accept(id: number): void {
    if (this.eos.includes(id)) return;
    const next = advance(this.state, this.grammar.trie.bytes[id] ?? []);
    if (next === null) throw new Error(`token ${id} was sampled outside the JSON mask`);
    this.state = next;
  }

  private eosAllowed(): readonly number[] {
    return mayEnd(this.state) ? this.eos : [];
  }

  private applyForced(logits: Float32Array, rest: number[]): void {
    this.forced.fill(0);
    this.grammar.trie.along(rest, this.forced);
    const eos = this.eosAllowed();
    // Without a one-byte token for the next byte nothing could be forced; the plain mask still keeps JSON valid.
    apply(logits, this.forced.some((w) => w !== 0) || eos.length > 0 ? this.forced : this.grammar.maskOf(this.state), eos);
  }
}

/** Sets every logit outside the mask (and the allowed end-of-sequence ids) to -Infinity. */
function apply(logits: Float32Array, mask: Uint32Array, eos: readonly number[]): void {
  const keep = eos.map((id) => logits[id]);
  for (let id = 0; id < logits.length; id++) if (!(mask[id >>> 5] & (1 << (id & 31)))) logits[id] = -Infinity;
  eos.forEach((id, i) => (logits[id] = keep[i]));
}
