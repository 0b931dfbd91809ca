import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { DeepWasmError } from '../host/errors.js';
import { Tokenizer } from '../host/tokenizer/index.js';
import { loadTokenizer } from '../host/tokenizer/load.js';
import { compileOnigPattern, translateOnigPattern } from '../host/tokenizer/regex.js';
import { TOKENIZER_FIXTURES, prng, readFixtureJson, readLlamaCppCases, type TokenizerCases } from './tokenizer-fixtures.js';

const deepseekLlm = loadTokenizer(TOKENIZER_FIXTURES + 'deepseek-llm', { tokenizerOnly: true });
const v3Format = loadTokenizer(TOKENIZER_FIXTURES + 'v3-format', { tokenizerOnly: true });

function checkCases(name: string, tok: Tokenizer, fixture: TokenizerCases): void {
  fixture.cases.forEach((c, i) => {
    const label = `${name} case ${i} ${JSON.stringify(c.text)}`;
    assert.equal(tok.encode(c.text), c.ids, `${label}: ids`);
    assert.equal(tok.encode(c.text, { addSpecialTokens: true }), c.ids_with_special, `${label}: ids_with_special`);
    assert.is(tok.decode(c.ids), c.decoded, `${label}: decoded`);
    assert.is(tok.decode(c.ids, { skipSpecialTokens: true }), c.decoded_skip_special, `${label}: decoded_skip_special`);
  });
}

/** tokenizer.json plus a change, for error cases. */
function v3Json(change: (json: Record<string, any>) => void): unknown {
  const json = readFixtureJson<Record<string, any>>('v3-format/tokenizer.json');
  change(json);
  return json;
}

function throwsDeepWasm(fn: () => unknown, includes: string[], label: string): void {
  try {
    fn();
  } catch (e) {
    assert.instance(e, DeepWasmError, `${label}: error type`);
    for (const part of includes) assert.ok((e as Error).message.includes(part), `${label}: "${(e as Error).message}" should mention ${part}`);
    return;
  }
  assert.unreachable(`${label}: expected a DeepWasmError`);
}

test('deepseek-llm: every llama.cpp tokenizer case', () => {
  const cases = readLlamaCppCases('deepseek-llm');
  assert.is(cases.length, 46, 'llama-cpp-cases.inp holds 46 cases');
  cases.forEach((c, i) => assert.equal(deepseekLlm.encode(c.text), c.ids, `llama.cpp case ${i} ${JSON.stringify(c.text)}`));
});

test('deepseek-llm: every cases.json entry (BOS from the tokenizer.json post-processor)', () => {
  checkCases('deepseek-llm', deepseekLlm, readFixtureJson('deepseek-llm/cases.json'));
});

test('deepseek-llm: a tokenizer_config.json with string bos/eos tokens', () => {
  const fixture = readFixtureJson<TokenizerCases>('deepseek-llm/cases.json');
  const tok = Tokenizer.fromJSON(readFixtureJson('deepseek-llm/tokenizer.json'), {
    add_bos_token: true,
    bos_token: '<｜begin▁of▁sentence｜>',
    eos_token: '<｜end▁of▁sentence｜>',
  });
  assert.is(tok.bosTokenId, fixture.specials.bos, 'bosTokenId');
  assert.is(tok.eosTokenId, fixture.specials.eos, 'eosTokenId');
  checkCases('deepseek-llm with config', tok, fixture);
});

test('v3-format: every cases.json entry (BOS from tokenizer_config.json)', () => {
  checkCases('v3-format', v3Format, readFixtureJson('v3-format/cases.json'));
});

test('specials, vocabulary size and token lookups', () => {
  for (const [name, tok, size] of [['deepseek-llm', deepseekLlm, 102400], ['v3-format', v3Format, 3013]] as const) {
    const { specials } = readFixtureJson<TokenizerCases>(`${name}/cases.json`);
    assert.is(tok.bosTokenId, specials.bos, `${name} bosTokenId`);
    assert.is(tok.vocabSize, size, `${name} vocabSize`);
    assert.is(tok.idToToken(specials.bos), '<｜begin▁of▁sentence｜>', `${name} idToToken(bos)`);
    assert.is(tok.tokenToId('<｜end▁of▁sentence｜>'), specials.eos, `${name} tokenToId(eos)`);
    assert.ok(tok.isSpecial(specials.bos), `${name} bos is special`);
    assert.is(tok.idToToken(size), undefined, `${name} idToToken past the end`);
    assert.is(tok.decode([size, -1, 1.5]), '', `${name} unknown ids decode to nothing`);
  }
  assert.is(v3Format.eosTokenId, 1, 'v3-format eosTokenId');
  assert.is(deepseekLlm.eosTokenId, undefined, 'deepseek-llm has no tokenizer_config.json, so no EOS');
  assert.is(v3Format.tokenToId('<｜User｜>'), 3000, 'added token lookup');
  assert.is(v3Format.tokenToId('Ġ'), 223, 'vocabulary lookup');
});

test('added-token flags: lstrip, rstrip, single_word', () => {
  const json = v3Json((j) =>
    j['added_tokens'].push(
      { id: 3013, content: '<L>', special: true, lstrip: true, rstrip: false, single_word: false, normalized: false },
      { id: 3014, content: '<R>', special: true, lstrip: false, rstrip: true, single_word: false, normalized: false },
      { id: 3015, content: 'cat', special: false, lstrip: false, rstrip: false, single_word: true, normalized: true },
    ),
  );
  const tok = Tokenizer.fromJSON(json);
  const space = tok.encode(' ');
  assert.equal(tok.encode('x  <L>y'), [...tok.encode('x'), 3013, ...tok.encode('y')], 'lstrip takes the spaces before');
  assert.equal(tok.encode('x<R>  y'), [...tok.encode('x'), 3014, ...tok.encode('y')], 'rstrip takes the spaces after');
  assert.equal(tok.encode('cat'), [3015], 'single_word alone');
  assert.equal(tok.encode('a cat.'), [...tok.encode('a'), ...space, 3015, ...tok.encode('.')], 'single_word between non-word characters');
  assert.not.ok(tok.encode('concat').includes(3015), 'single_word inside a word is not matched');
});

test('ByteLevel with use_regex splits with the GPT-2 pattern, add_prefix_space prepends a space', () => {
  const plain = Tokenizer.fromJSON(v3Json((j) => (j['pre_tokenizer'] = { type: 'ByteLevel', add_prefix_space: false, use_regex: true })));
  const pieces = ['Hello', ' world', "'s", ' 123', '!!', '  ', ' x', '\n'];
  assert.equal(plain.encode(pieces.join('')), pieces.flatMap((p) => plain.encode(p)), 'GPT-2 pieces');
  const prefixed = Tokenizer.fromJSON(v3Json((j) => (j['pre_tokenizer'] = { type: 'ByteLevel', add_prefix_space: true, use_regex: false })));
  assert.equal(prefixed.encode('Hello'), plain.encode(' Hello'), 'prefix space added');
  assert.equal(prefixed.encode(' Hello'), plain.encode(' Hello'), 'no second prefix space');
});

test('Oniguruma patterns keep their meaning in JS', () => {
  const matches = (pattern: string, text: string): string[] =>
    Array.from(text.matchAll(new RegExp(translateOnigPattern(pattern, 't'), 'gu')), (m) => m[0]);
  assert.equal(matches('\\s+', 'a\u0085b\ufeffc'), ['\u0085'], '\\s is White_Space: U+0085 yes, U+FEFF no');
  assert.equal(matches('\\d+', 'x٣4'), ['٣4'], '\\d is Unicode Nd');
  assert.equal(matches('\\w+', 'é_1-'), ['é_1'], '\\w is Unicode');
  assert.equal(matches('a$', 'a\na'), ['a', 'a'], '$ is an end-of-line anchor');
  assert.equal(matches('.', 'a\r\n'), ['a', '\r'], '. excludes only \\n');
  assert.equal(matches('[]a]+', ']a]'), [']a]'], '] first in a class is literal');
  assert.equal(matches('\\p{Han}+x{,2}', '漢字xxx'), ['漢字xx'], 'bare script names and {,n}');
  const random = prng(7);
  for (let round = 0; round < 500; round++) {
    const text = Array.from({ length: 1 + Math.floor(random() * 12) }, () => ' \n\ta5\u3000'[Math.floor(random() * 6)]).join('');
    const guarded = Array.from(text.matchAll(compileOnigPattern('\\s+$', 't')), (m) => `${m.index}:${m[0]}`);
    const plain = Array.from(text.matchAll(new RegExp(translateOnigPattern('\\s+$', 't'), 'gu')), (m) => `${m.index}:${m[0]}`);
    assert.equal(guarded, plain, `\\s+$ with the run-start guard on ${JSON.stringify(text)}`);
  }
  for (const bad of ['a++', '(?i)a', '[a[b]]', '\\Kx']) {
    throwsDeepWasm(() => translateOnigPattern(bad, 'tokenizer.json pre_tokenizer'), ['tokenizer.json pre_tokenizer', 'not supported'], bad);
  }
});

test('unsupported tokenizer components are named', () => {
  const cases: [string, (j: Record<string, any>) => void, string[]][] = [
    ['WordPiece model', (j) => (j['model']['type'] = 'WordPiece'), ['model.type', 'WordPiece', 'only BPE']],
    ['Metaspace pre-tokenizer', (j) => (j['pre_tokenizer'] = { type: 'Metaspace' }), ['pre_tokenizer', 'Metaspace']],
    ['Lowercase normalizer', (j) => (j['normalizer'] = { type: 'Lowercase' }), ['normalizer', 'Lowercase']],
    ['Removed split', (j) => (j['pre_tokenizer']['pretokenizers'][0]['behavior'] = 'Removed'), ['pretokenizers[0].behavior', 'Removed']],
    ['no ByteLevel', (j) => j['pre_tokenizer']['pretokenizers'].pop(), ['pre_tokenizer', 'ByteLevel']],
    ['WordPiece decoder', (j) => (j['decoder'] = { type: 'WordPiece' }), ['decoder', 'WordPiece']],
    ['merge out of vocabulary', (j) => j['model']['merges'].push(['nope', 'x']), ['model.merges[2741]', '"nope"']],
    ['vocab not an object', (j) => (j['model']['vocab'] = []), ['model.vocab', 'an object']],
    ['possessive regex', (j) => (j['pre_tokenizer']['pretokenizers'][0]['pattern']['Regex'] = 'a++'), ['pretokenizers[0].pattern.Regex', 'possessive']],
  ];
  for (const [label, change, includes] of cases) throwsDeepWasm(() => Tokenizer.fromJSON(v3Json(change)), includes, label);
  throwsDeepWasm(
    () => Tokenizer.fromJSON(v3Json(() => undefined), { bos_token: 'nope', add_bos_token: true }),
    ['tokenizer_config.json bos_token', '"nope"'],
    'unknown bos_token',
  );
});

test.run();
