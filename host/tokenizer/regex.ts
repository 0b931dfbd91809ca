import { fail } from '../errors.js';

/**
 * Hugging Face tokenizers compile Split patterns with Oniguruma (Ruby syntax), where \s, \d, \w, `.`, `^` and `$` mean
 * something else than in a JS RegExp: \s is Unicode White_Space (so U+0085 yes, U+FEFF no), \d and \w are Unicode,
 * `.` excludes only \n, and `^`/`$` are line anchors. This rewrites a pattern into a `u`-flag RegExp with Oniguruma's
 * meaning and refuses what JS cannot express rather than approximating it.
 */

const WORD = '\\p{L}\\p{M}\\p{N}\\p{Pc}';
const HEX = '0-9A-Fa-f';

/** Escapes whose translation is the same inside and outside a character class. */
const SAME_ANYWHERE: Record<string, string> = {
  s: '\\p{White_Space}',
  S: '\\P{White_Space}',
  d: '\\p{Nd}',
  D: '\\P{Nd}',
  t: '\\t',
  n: '\\n',
  r: '\\r',
  f: '\\f',
  v: '\\v',
  a: '\\x07',
  e: '\\x1B',
};

/** Characters that a `u`-flag RegExp allows (and, for these, needs) to be escaped. */
const SYNTAX = new Set('^$\\.*+?()[]{}|/-');

export function translateOnigPattern(pattern: string, where: string): string {
  const unsupported = (what: string): never =>
    fail(`${where}: the regex ${JSON.stringify(pattern)} uses ${what}, which is not supported`);
  const cps = Array.from(pattern);
  let out = '';
  let inClass = false;
  let classStart = false;
  let afterQuantifier = false;

  const readBraced = (i: number): [string, number] => {
    const close = cps.indexOf('}', i);
    if (cps[i] !== '{' || close < 0) unsupported(`an unterminated \\${cps[i - 1]} escape`);
    return [cps.slice(i + 1, close).join(''), close + 1];
  };

  const property = (negated: boolean, name: string): string => {
    if (name.startsWith('^')) return property(!negated, name.slice(1));
    const p = negated ? 'P' : 'p';
    for (const candidate of [name, `Script=${name}`]) {
      try {
        new RegExp(`\\${p}{${candidate}}`, 'u');
        return `\\${p}{${candidate}}`;
      } catch {
        // Oniguruma also accepts bare script names (\p{Han}); JS wants Script=, so try that next.
      }
    }
    return unsupported(`the Unicode property \\p{${name}}`);
  };

  /** Translates the escape at cps[i] (just after the backslash); returns the JS text and the next index. */
  const escape = (i: number): [string, number] => {
    const c = cps[i];
    if (c === undefined) return unsupported('a trailing backslash');
    const same = SAME_ANYWHERE[c];
    if (same !== undefined) return [same, i + 1];
    if (c === 'p' || c === 'P') {
      const [name, next] = readBraced(i + 1);
      return [property(c === 'P', name), next];
    }
    if (c === 'x' && cps[i + 1] === '{') {
      const [hex, next] = readBraced(i + 1);
      if (!/^[0-9A-Fa-f]{1,6}$/.test(hex)) unsupported(`the escape \\x{${hex}}`);
      return [`\\u{${hex}}`, next];
    }
    if (c === 'x' || c === 'u') return [`\\${c}`, i + 1];
    if (c === 'w') return [inClass ? WORD : `[${WORD}]`, i + 1];
    if (c === 'h') return [inClass ? HEX : `[${HEX}]`, i + 1];
    if ((c === 'W' || c === 'H') && !inClass) return [`[^${c === 'W' ? WORD : HEX}]`, i + 1];
    if (!inClass) {
      if (c === 'A') return ['^', i + 1];
      if (c === 'z') return ['$', i + 1];
      if (c === 'Z') return ['(?=\\n?$)', i + 1];
      if (/[1-9]/.test(c)) return [`\\${c}`, i + 1];
      if (c === 'k' && cps[i + 1] === '<') return ['\\k', i + 1];
    }
    if (/[0-9A-Za-z]/.test(c)) return unsupported(`the escape \\${c}${inClass ? ' inside a character class' : ''}`);
    // Outside a class a `u`-flag RegExp rejects `\\-`, inside it needs it.
    return [SYNTAX.has(c) && (inClass || c !== '-') ? `\\${c}` : c, i + 1];
  };

  let i = 0;
  while (i < cps.length) {
    const c = cps[i]!;
    if (c === '\\') {
      const [text, next] = escape(i + 1);
      out += text;
      i = next;
      classStart = false;
      afterQuantifier = false;
      continue;
    }
    if (inClass) {
      // Oniguruma reads a ']' right after '[' or '[^' as a literal; in JS that would close an empty class.
      if (c === ']') {
        out += classStart ? '\\]' : ']';
        inClass = classStart;
      } else if (c === '[') unsupported('a nested character class or POSIX bracket');
      else if (c === '&' && cps[i + 1] === '&') unsupported('character class intersection (&&)');
      else out += c;
      classStart = false;
      i++;
      continue;
    }
    if (afterQuantifier && c === '+') unsupported('a possessive quantifier');
    const wasQuantifier = afterQuantifier;
    afterQuantifier = false;
    switch (c) {
      case '[':
        inClass = true;
        classStart = true;
        out += cps[i + 1] === '^' ? '[^' : '[';
        i += cps[i + 1] === '^' ? 2 : 1;
        continue;
      case '(': {
        const rest = cps.slice(i, i + 4).join('');
        if (rest.startsWith('(?#')) {
          const close = cps.indexOf(')', i);
          if (close < 0) unsupported('an unterminated comment group');
          i = close + 1;
          continue;
        }
        const group = /^\((\?(:|=|!|<=|<!|<(?=[A-Za-z_])))?/.exec(rest)![0];
        if (group === '(' && rest.startsWith('(?')) {
          unsupported(`the group ${JSON.stringify(rest)}… (inline options, atomic or conditional groups)`);
        }
        out += group;
        i += group.length;
        continue;
      }
      case '.':
        out += '[^\\n]';
        break;
      case '^':
        out += '(?<![^\\n])';
        break;
      case '$':
        out += '(?![^\\n])';
        break;
      case '*':
      case '+':
      case '?':
        if (wasQuantifier && c === '?') {
          out += '?';
          i++;
          continue;
        }
        out += c;
        afterQuantifier = true;
        break;
      case '{': {
        const m = /^\{(\d*)(,?)(\d*)\}/.exec(cps.slice(i, i + 24).join(''));
        if (m && (m[1] !== '' || (m[2] === ',' && m[3] !== ''))) {
          out += `{${m[1] === '' ? '0' : m[1]}${m[2]}${m[3]}}`;
          i += m[0].length;
          afterQuantifier = true;
          continue;
        }
        out += '\\{';
        break;
      }
      case '}':
      case ']':
        out += `\\${c}`;
        break;
      default:
        out += c;
    }
    i++;
  }
  if (inClass) unsupported('an unterminated character class');
  try {
    new RegExp(out, 'u');
  } catch (e) {
    unsupported(`syntax that has no JavaScript equivalent (${(e as Error).message})`);
  }
  return out;
}

/** A pattern that is one repeated class anchored at a line end, like DeepSeek's `\s+$`. */
const RUN_TO_LINE_END = /^(\\s|\[(?:[^\]\\]|\\.)+\])\+\$$/;

/**
 * Compiles an Oniguruma pattern as a global, Unicode-aware JS RegExp. For `C+$` a match that fails from the start
 * of a run of C fails from every later start in that run too (its possible ends are a subset), so a lookbehind
 * skips those starts; without it V8 retries them and "<20k spaces>5" takes a second instead of a millisecond.
 */
export function compileOnigPattern(pattern: string, where: string): RegExp {
  const source = translateOnigPattern(pattern, where);
  const run = RUN_TO_LINE_END.exec(pattern);
  return new RegExp(run === null ? source : `(?<!${translateOnigPattern(run[1]!, where)})${source}`, 'gu');
}

/** Escapes a literal string (a Split `String` pattern) for use in a RegExp. */
export function escapeLiteral(s: string): string {
  return s.replace(/[\\^$.*+?()[\]{}|/-]/g, '\\$&');
}
