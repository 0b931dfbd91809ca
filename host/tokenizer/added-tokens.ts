import { asArray, asBoolean, asObject, asString, asTokenId } from './json.js';

/** An entry of tokenizer.json `added_tokens`: text matched before pre-tokenization and mapped to one id. */
export interface AddedToken {
  readonly id: number;
  readonly content: string;
  readonly special: boolean;
  readonly lstrip: boolean;
  readonly rstrip: boolean;
  readonly singleWord: boolean;
  readonly normalized: boolean;
}

export function parseAddedTokens(json: unknown, file: string): AddedToken[] {
  if (json === undefined || json === null) return [];
  return asArray(json, `${file} added_tokens`).map((entry, i) => {
    const where = `${file} added_tokens[${i}]`;
    const o = asObject(entry, where);
    const special = asBoolean(o['special'], `${where}.special`, false);
    return {
      id: asTokenId(o['id'], `${where}.id`),
      content: asString(o['content'], `${where}.content`),
      special,
      lstrip: asBoolean(o['lstrip'], `${where}.lstrip`, false),
      rstrip: asBoolean(o['rstrip'], `${where}.rstrip`, false),
      singleWord: asBoolean(o['single_word'], `${where}.single_word`, false),
      normalized: asBoolean(o['normalized'], `${where}.normalized`, !special),
    };
  });
}

const WORD_CHAR = /[\p{Alphabetic}\p{N}_]/u;
const SPACE_CHAR = /\p{White_Space}/u;

/**
 * Finds added tokens the way tokenizers' Aho-Corasick pass does: leftmost match first, longest at that position,
 * scanning on after a match even when its single_word check rejects it.
 */
export class AddedTokenMatcher {
  /** Candidates by first UTF-16 unit, longest first. */
  private readonly byFirstUnit = new Map<number, AddedToken[]>();
  /** Bit set of first units, so that most characters are rejected without a Map lookup. */
  private readonly firstUnits = new Uint32Array(2048);

  constructor(tokens: readonly AddedToken[]) {
    for (const t of tokens) {
      if (t.content === '') continue;
      const u = t.content.charCodeAt(0);
      this.firstUnits[u >>> 5]! |= 1 << (u & 31);
      const list = this.byFirstUnit.get(u) ?? [];
      list.push(t);
      this.byFirstUnit.set(u, list);
    }
    for (const list of this.byFirstUnit.values()) list.sort((a, b) => b.content.length - a.content.length);
  }

  get isEmpty(): boolean {
    return this.byFirstUnit.size === 0;
  }

  /** Calls `onText` for each stretch between matches and `onToken` for each match, in text order. */
  split(text: string, onText: (text: string) => void, onToken: (token: AddedToken) => void): void {
    let emitted = 0;
    let pos = 0;
    while (pos < text.length) {
      const u = text.charCodeAt(pos);
      const token = (this.firstUnits[u >>> 5]! & (1 << (u & 31))) !== 0 ? this.matchAt(text, pos) : undefined;
      if (token === undefined) {
        pos++;
        continue;
      }
      let start = pos;
      let stop = pos + token.content.length;
      pos = stop;
      if (token.singleWord && (isWordBefore(text, start) || isWordAt(text, stop))) continue;
      if (token.lstrip) {
        while (start > emitted && SPACE_CHAR.test(charBefore(text, start))) start -= charBefore(text, start).length;
      }
      if (token.rstrip) {
        while (stop < text.length && SPACE_CHAR.test(charAt(text, stop))) stop += charAt(text, stop).length;
        pos = stop;
      }
      if (start > emitted) onText(text.slice(emitted, start));
      onToken(token);
      emitted = stop;
    }
    if (emitted < text.length) onText(emitted === 0 ? text : text.slice(emitted));
  }

  private matchAt(text: string, pos: number): AddedToken | undefined {
    for (const t of this.byFirstUnit.get(text.charCodeAt(pos))!) if (text.startsWith(t.content, pos)) return t;
    return undefined;
  }
}

function charAt(text: string, i: number): string {
  return String.fromCodePoint(text.codePointAt(i)!);
}

function charBefore(text: string, i: number): string {
  const lo = text.charCodeAt(i - 1);
  return i >= 2 && lo >= 0xdc00 && lo <= 0xdfff ? text.slice(i - 2, i) : text.slice(i - 1, i);
}

function isWordBefore(text: string, i: number): boolean {
  return i > 0 && WORD_CHAR.test(charBefore(text, i));
}

function isWordAt(text: string, i: number): boolean {
  return i < text.length && WORD_CHAR.test(charAt(text, i));
}
