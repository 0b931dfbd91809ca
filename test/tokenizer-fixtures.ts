import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

/** Fixture reading shared by the tokenizer tests; compiled to dist/test, so paths go back to the repo's test/. */
export const TOKENIZER_FIXTURES = fileURLToPath(new URL('../../test/fixtures/tokenizers/', import.meta.url));

export interface TokenizerCase {
  text: string;
  ids: number[];
  ids_with_special: number[];
  decoded: string;
  decoded_skip_special: string;
}

export interface TokenizerCases {
  cases: TokenizerCase[];
  specials: { bos: number; eos: number };
}

export function readFixtureJson<T>(relative: string): T {
  return JSON.parse(readFileSync(TOKENIZER_FIXTURES + relative, 'utf8')) as T;
}

/** llama.cpp's test-tokenizer-0 format: inputs each end with the separator line, one line of ids per input. */
export function readLlamaCppCases(dir: string): { text: string; ids: number[] }[] {
  const separator = '\n__ggml_vocab_test__\n';
  let raw = readFileSync(`${TOKENIZER_FIXTURES}${dir}/llama-cpp-cases.inp`, 'utf8');
  const inputs: string[] = [];
  for (let at = raw.indexOf(separator); at >= 0; at = raw.indexOf(separator)) {
    inputs.push(raw.slice(0, at));
    raw = raw.slice(at + separator.length);
  }
  const lines = readFileSync(`${TOKENIZER_FIXTURES}${dir}/llama-cpp-cases.out`, 'utf8').split('\n');
  if (lines[lines.length - 1] === '') lines.pop();
  if (lines.length !== inputs.length) throw new Error(`llama.cpp fixture has ${inputs.length} inputs but ${lines.length} id lines`);
  return inputs.map((text, i) => {
    const line = lines[i]!.trim();
    return { text, ids: line === '' ? [] : line.split(/\s+/).map(Number) };
  });
}

/** Deterministic PRNG so random tests and the bench input are the same on every run. */
export { mulberry32 as prng } from '../host/generate/rng.js';
