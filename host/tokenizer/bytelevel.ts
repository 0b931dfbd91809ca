/**
 * GPT-2's byte-level alphabet: every byte gets a printable character so that BPE vocabularies can be stored as text.
 * Printable Latin-1 bytes stand for themselves, the other 68 are shifted to U+0100…U+0143.
 */

export const BYTE_TO_CHAR: readonly string[] = buildByteToChar();

/** Code point → byte, -1 for code points outside the alphabet. */
const CHAR_TO_BYTE: Int16Array = buildCharToByte();

function buildByteToChar(): string[] {
  const chars: string[] = new Array(256);
  let shifted = 0;
  for (let b = 0; b < 256; b++) {
    const printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
    chars[b] = String.fromCharCode(printable ? b : 256 + shifted++);
  }
  return chars;
}

function buildCharToByte(): Int16Array {
  const table = new Int16Array(256 + 68).fill(-1);
  BYTE_TO_CHAR.forEach((ch, b) => (table[ch.charCodeAt(0)] = b));
  return table;
}

const encoder = new TextEncoder();

/**
 * The bytes a token stands for, as the ByteLevel decoder computes them: if every character of the token is in the
 * alphabet, the bytes it encodes; otherwise (added tokens such as `<｜User｜>`) the token's own UTF-8.
 */
export function tokenBytes(token: string): Uint8Array {
  const bytes = new Uint8Array(token.length);
  for (let i = 0; i < token.length; i++) {
    const c = token.charCodeAt(i);
    const b = c < CHAR_TO_BYTE.length ? CHAR_TO_BYTE[c]! : -1;
    if (b < 0) return encoder.encode(token);
    bytes[i] = b;
  }
  return bytes;
}

/** The byte-level spelling of a string, as vocabularies store it. */
export function toByteLevel(text: string): string {
  let s = '';
  for (const b of encoder.encode(text)) s += BYTE_TO_CHAR[b];
  return s;
}

/**
 * Writes the UTF-8 of `text` into `out` (which must hold 3 bytes per UTF-16 unit) and returns the length. A hand loop
 * because TextEncoder's per-call cost dominates for the short pieces BPE works on. Lone surrogates become U+FFFD, as
 * TextEncoder does.
 */
export function encodeUtf8(text: string, out: Uint8Array): number {
  let n = 0;
  const len = text.length;
  for (let i = 0; i < len; i++) {
    let c = text.charCodeAt(i);
    if (c < 0x80) {
      out[n++] = c;
    } else if (c < 0x800) {
      out[n++] = 0xc0 | (c >> 6);
      out[n++] = 0x80 | (c & 0x3f);
    } else {
      if (c >= 0xd800 && c <= 0xdfff) {
        const lo = i + 1 < len ? text.charCodeAt(i + 1) : 0;
        if (c <= 0xdbff && lo >= 0xdc00 && lo <= 0xdfff) {
          const cp = 0x10000 + ((c - 0xd800) << 10) + (lo - 0xdc00);
          out[n++] = 0xf0 | (cp >> 18);
          out[n++] = 0x80 | ((cp >> 12) & 0x3f);
          out[n++] = 0x80 | ((cp >> 6) & 0x3f);
          out[n++] = 0x80 | (cp & 0x3f);
          i++;
          continue;
        }
        c = 0xfffd;
      }
      out[n++] = 0xe0 | (c >> 12);
      out[n++] = 0x80 | ((c >> 6) & 0x3f);
      out[n++] = 0x80 | (c & 0x3f);
    }
  }
  return n;
}
