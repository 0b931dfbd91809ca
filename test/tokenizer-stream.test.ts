import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { BYTE_TO_CHAR } from '../host/tokenizer/bytelevel.js';
import type { Tokenizer } from '../host/tokenizer/index.js';
import { loadTokenizer } from '../host/tokenizer/load.js';
import { TOKENIZER_FIXTURES, prng, readFixtureJson, type TokenizerCases } from './tokenizer-fixtures.js';

const tokenizers: [string, Tokenizer][] = [
  ['deepseek-llm', loadTokenizer(TOKENIZER_FIXTURES + 'deepseek-llm', { tokenizerOnly: true })],
  ['v3-format', loadTokenizer(TOKENIZER_FIXTURES + 'v3-format', { tokenizerOnly: true })],
];

const MULTIBYTE = '🦙🚀👍🏽 👨‍👩‍👧‍👦 你好，世界！日本語のテキスト 한국어 naïve ∑∫√ ✨🙂🙃 𝒳𝔸';

/** Streams ids one at a time; returns the pieces push() returned and the final flush(). */
function stream(tok: Tokenizer, ids: number[], skipSpecialTokens = false): { pieces: string[]; tail: string } {
  const decoder = tok.streamDecoder({ skipSpecialTokens });
  const pieces = ids.map((id) => decoder.push(id));
  return { pieces, tail: decoder.flush() };
}

function checkStream(tok: Tokenizer, ids: number[], label: string, skipSpecialTokens = false): void {
  const whole = tok.decode(ids, { skipSpecialTokens });
  const { pieces, tail } = stream(tok, ids, skipSpecialTokens);
  assert.is(pieces.join('') + tail, whole, `${label}: streamed text equals decode(ids)`);
  if (!whole.includes('\ufffd')) {
    pieces.forEach((p, i) => assert.not.ok(p.includes('\ufffd'), `${label}: push #${i} (id ${ids[i]}) returned U+FFFD`));
  }
}

/** The id of the single-byte token for each UTF-8 byte: a stream that splits every character across tokens. */
function byteTokens(tok: Tokenizer, bytes: Uint8Array): number[] {
  return Array.from(bytes, (b) => tok.tokenToId(BYTE_TO_CHAR[b]!)!);
}

test('streaming every fixture case equals decode, without and with skipped specials', () => {
  for (const [name, tok] of tokenizers) {
    const { cases } = readFixtureJson<TokenizerCases>(`${name}/cases.json`);
    cases.forEach((c, i) => {
      checkStream(tok, c.ids_with_special, `${name} case ${i} ${JSON.stringify(c.text)}`);
      checkStream(tok, c.ids_with_special, `${name} case ${i} ${JSON.stringify(c.text)} skipping specials`, true);
    });
  }
});

test('emoji and CJK split across tokens never yield U+FFFD', () => {
  for (const [name, tok] of tokenizers) {
    const ids = tok.encode(MULTIBYTE);
    checkStream(tok, ids, `${name} encoded text`);
    const bytes = new TextEncoder().encode(MULTIBYTE);
    const perByte = byteTokens(tok, bytes);
    const { pieces, tail } = stream(tok, perByte);
    assert.is(pieces.join('') + tail, MULTIBYTE, `${name}: one token per byte streams back the text`);
    assert.is(tail, '', `${name}: nothing held back at the end`);
    pieces.forEach((p, i) => assert.not.ok(p.includes('\ufffd'), `${name}: byte token #${i} returned U+FFFD`));
  }
});

test('random cut points: byte runs and encoded text interleaved', () => {
  const random = prng(20240611);
  const bytes = new TextEncoder().encode(MULTIBYTE.repeat(4));
  for (const [name, tok] of tokenizers) {
    for (let round = 0; round < 200; round++) {
      // Cut the bytes at random places; a chunk that is whole text is encoded, any other goes byte by byte,
      // so characters are split at every possible byte offset over the rounds.
      const ids: number[] = [];
      const cuts: number[] = [];
      for (let at = 0; at < bytes.length; ) {
        const next = Math.min(bytes.length, at + 1 + Math.floor(random() * 12));
        const chunk = bytes.subarray(at, next);
        let text: string | undefined;
        try {
          text = new TextDecoder('utf-8', { fatal: true }).decode(chunk);
        } catch {
          text = undefined;
        }
        ids.push(...(text === undefined ? byteTokens(tok, chunk) : tok.encode(text)));
        cuts.push(next);
        at = next;
      }
      const label = `${name} round ${round} cuts ${cuts.join(',')}`;
      checkStream(tok, ids, label);
      assert.is(tok.decode(ids), MULTIBYTE.repeat(4), `${label}: decode restores the text`);
    }
  }
});

test('an incomplete character at the end comes out of flush as U+FFFD, like decode', () => {
  for (const [name, tok] of tokenizers) {
    const ids = byteTokens(tok, new TextEncoder().encode('ok🦙').subarray(0, 4));
    const decoder = tok.streamDecoder();
    const pushed = ids.map((id) => decoder.push(id)).join('');
    assert.is(pushed, 'ok', `${name}: the partial emoji is held back`);
    assert.is(decoder.flush(), '\ufffd', `${name}: flush replaces it`);
    assert.is(tok.decode(ids), 'ok\ufffd', `${name}: decode agrees`);
    assert.is(decoder.push(tok.encode('again')[0]!), tok.decode([tok.encode('again')[0]!]), `${name}: reusable after flush`);
  }
});

test.run();
