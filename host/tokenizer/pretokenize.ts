import { fail } from '../errors.js';
import { asArray, asBoolean, asObject, asString, typeOf, type JsonObject } from './json.js';
import { compileOnigPattern, escapeLiteral } from './regex.js';

/**
 * The pre-tokenizer cuts text into the pieces BPE runs on. Pieces go depth first through the steps and straight into
 * the sink, so a megabyte of text never materialises one array per step.
 */

export type Sink = (piece: string) => void;
export type PreTokenizer = (text: string, sink: Sink) => void;
type Step = (piece: string, next: Sink) => void;

/** GPT-2's pattern, which the ByteLevel pre-tokenizer applies when `use_regex` is true. */
const GPT2_PATTERN = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

/**
 * Builds the pre-tokenizer of a byte-level BPE: Split steps followed by ByteLevel, which must come last because the
 * encoder turns every piece into bytes itself.
 */
export function buildPreTokenizer(json: unknown, file: string): PreTokenizer {
  const where = `${file} pre_tokenizer`;
  if (json === null || json === undefined) fail(`${where} is missing; only byte-level BPE (a ByteLevel pre-tokenizer) is supported`);
  const root = asObject(json, where);
  const parts =
    typeOf(root, where) === 'Sequence'
      ? asArray(root['pretokenizers'], `${where}.pretokenizers`).map((p, i) => asObject(p, `${where}.pretokenizers[${i}]`))
      : [root];
  const steps: Step[] = [];
  parts.forEach((part, i) => {
    const at = parts.length === 1 && part === root ? where : `${where}.pretokenizers[${i}]`;
    const type = typeOf(part, at);
    if (type === 'Split') steps.push(splitStep(part, at));
    else if (type === 'ByteLevel') {
      if (i !== parts.length - 1) fail(`${at}: ByteLevel must be the last pre-tokenizer step; other steps after it are not supported`);
      steps.push(...byteLevelSteps(part, at));
    } else {
      fail(`${at}: pre-tokenizer type ${JSON.stringify(type)} is not supported (supported: Sequence, Split, ByteLevel)`);
    }
  });
  if (typeOf(parts[parts.length - 1]!, where) !== 'ByteLevel') {
    fail(`${where}: only byte-level BPE is supported; expected a ByteLevel pre-tokenizer as the last step`);
  }
  return chain(steps);
}

function chain(steps: Step[]): PreTokenizer {
  return steps.reduceRight<PreTokenizer>((next, step) => (text, sink) => step(text, (piece) => next(piece, sink)), (text, sink) => sink(text));
}

function splitStep(o: JsonObject, where: string): Step {
  const behavior = asString(o['behavior'], `${where}.behavior`);
  if (behavior !== 'Isolated') fail(`${where}.behavior ${JSON.stringify(behavior)} is not supported (supported: Isolated)`);
  if (asBoolean(o['invert'], `${where}.invert`, false)) fail(`${where}.invert true is not supported`);
  const pattern = asObject(o['pattern'], `${where}.pattern`);
  if (typeof pattern['Regex'] === 'string') return isolate(compileOnigPattern(pattern['Regex'], `${where}.pattern.Regex`));
  if (typeof pattern['String'] === 'string') return isolate(new RegExp(escapeLiteral(pattern['String']), 'gu'));
  return fail(`${where}.pattern must be {"Regex": string} or {"String": string}`);
}

function byteLevelSteps(o: JsonObject, where: string): Step[] {
  const steps: Step[] = [];
  if (asBoolean(o['add_prefix_space'], `${where}.add_prefix_space`, true)) {
    steps.push((piece, next) => next(piece.startsWith(' ') ? piece : ' ' + piece));
  }
  if (asBoolean(o['use_regex'], `${where}.use_regex`, true)) steps.push(isolate(compileOnigPattern(GPT2_PATTERN, where)));
  return steps;
}

/**
 * Split with behavior Isolated: matches and the gaps between them become pieces, empty ones dropped. An empty match
 * still ends the gap before it, as the `find_iter` loop of tokenizers does. Each piece is matched on its own (a
 * lookahead must not see past its end), hence the slices.
 */
function isolate(re: RegExp): Step {
  return (piece, next) => {
    re.lastIndex = 0;
    let prev = 0;
    for (let m = re.exec(piece); m !== null; m = re.exec(piece)) {
      const start = m.index;
      const end = start + m[0].length;
      if (start > prev) next(piece.slice(prev, start));
      if (end > start) next(piece.slice(start, end));
      else re.lastIndex = end + ((piece.codePointAt(end) ?? 0) > 0xffff ? 2 : 1);
      prev = end;
    }
    if (prev < piece.length) next(piece.slice(prev));
  };
}
