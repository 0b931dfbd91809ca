import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { DeepWasmError } from '../host/errors.js';
import { Tokenizer, type ChatMessage } from '../host/tokenizer/index.js';
import { loadTokenizer } from '../host/tokenizer/load.js';
import { TOKENIZER_FIXTURES, readFixtureJson } from './tokenizer-fixtures.js';

interface ChatCase {
  messages: ChatMessage[];
  add_generation_prompt: boolean;
  text: string;
  ids: number[];
}

const v3 = loadTokenizer(TOKENIZER_FIXTURES + 'v3-format', { tokenizerOnly: true });
const v3Json = readFixtureJson<unknown>('v3-format/tokenizer.json');
const v3Config = readFixtureJson<Record<string, unknown>>('v3-format/tokenizer_config.json');
const hi: ChatMessage[] = [{ role: 'user', content: 'Hi' }];

function deepWasmMessage(fn: () => unknown, label: string): string {
  try {
    fn();
  } catch (e) {
    assert.instance(e, DeepWasmError, `${label}: error type`);
    return (e as Error).message;
  }
  return assert.unreachable(`${label}: expected a DeepWasmError`) as never;
}

function withTempDir(fn: (dir: string) => void): void {
  const dir = mkdtempSync(join(tmpdir(), 'deepwasm-tokenizer-'));
  try {
    fn(dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

test('every chat case renders to the transformers text and ids', () => {
  const cases = readFixtureJson<ChatCase[]>('v3-format/chat_cases.json');
  assert.is(cases.length, 10, 'chat_cases.json holds 10 cases');
  cases.forEach((c, i) => {
    const label = `chat case ${i} (${c.messages.map((m) => m.role).join(',')}; add_generation_prompt ${c.add_generation_prompt})`;
    const text = v3.applyChatTemplate(c.messages, { addGenerationPrompt: c.add_generation_prompt });
    assert.is(text, c.text, `${label}: text`);
    assert.equal(v3.encode(text), c.ids, `${label}: ids`);
  });
});

test('the generation prompt defaults to off', () => {
  assert.is(v3.applyChatTemplate(hi), '<｜begin▁of▁sentence｜><｜User｜>Hi');
});

test('tools reach the template, and are none when not given (as in transformers)', () => {
  const tok = Tokenizer.fromJSON(v3Json, {
    ...v3Config,
    chat_template: '{{ bos_token }}{% if tools is none %}no tools{% else %}{{ tools[0].name }}{% endif %}|{{ eos_token }}',
  });
  assert.is(tok.applyChatTemplate(hi), '<｜begin▁of▁sentence｜>no tools|<｜end▁of▁sentence｜>');
  assert.is(tok.applyChatTemplate(hi, { tools: [{ name: 'get_weather' }] }), '<｜begin▁of▁sentence｜>get_weather|<｜end▁of▁sentence｜>');
});

test('a list of named templates uses "default"', () => {
  const tok = Tokenizer.fromJSON(v3Json, {
    ...v3Config,
    chat_template: [
      { name: 'tool_use', template: 'tools' },
      { name: 'default', template: '{{ messages[0].content }}' },
    ],
  });
  assert.is(tok.applyChatTemplate(hi), 'Hi');
});

test('a template that fails to parse or to render names the template and the jinja message', () => {
  const unclosed = Tokenizer.fromJSON(v3Json, { ...v3Config, chat_template: '{% for m in messages %}{{ m.content }}' });
  const parse = deepWasmMessage(() => unclosed.applyChatTemplate(hi), 'unclosed for');
  const prefix = 'tokenizer_config.json chat_template is not a valid Jinja template: ';
  assert.ok(parse.startsWith(prefix) && parse.length > prefix.length, `${parse} names the template and carries the jinja message`);
  const raising = Tokenizer.fromJSON(v3Json, { ...v3Config, chat_template: "{{ raise_exception('roles must alternate') }}" });
  const raised = deepWasmMessage(() => raising.applyChatTemplate(hi), 'raise_exception');
  assert.ok(raised.includes('chat_template') && raised.includes('roles must alternate'), raised);
});

test('a missing chat_template is a clear error', () => {
  const { chat_template: _, ...noTemplate } = v3Config;
  const withConfig = deepWasmMessage(() => Tokenizer.fromJSON(v3Json, noTemplate).applyChatTemplate(hi), 'config without template');
  assert.is(withConfig, 'tokenizer_config.json has no chat_template, so chat messages cannot be formatted');
  const noConfig = deepWasmMessage(() => Tokenizer.fromJSON(v3Json).applyChatTemplate(hi), 'no config');
  assert.ok(noConfig.includes('no tokenizer_config.json') && noConfig.includes('chat_template'), noConfig);
  const listed = deepWasmMessage(
    () => Tokenizer.fromJSON(v3Json, { chat_template: [{ name: 'tool_use', template: 'x' }] }),
    'named templates without default',
  );
  assert.is(listed, 'tokenizer_config.json chat_template lists templates "tool_use" but none named "default"');
});

test('missing tokenizer.json and bad JSON name the file', () => {
  withTempDir((dir) => {
    assert.is(
      deepWasmMessage(() => loadTokenizer(dir, { tokenizerOnly: true }), 'missing tokenizer.json'),
      `${dir} has no tokenizer.json (expected a Hugging Face tokenizer file next to config.json)`,
    );
    writeFileSync(join(dir, 'tokenizer.json'), '{"model": ');
    const bad = deepWasmMessage(() => loadTokenizer(dir, { tokenizerOnly: true }), 'bad tokenizer.json');
    assert.ok(bad.startsWith(`${join(dir, 'tokenizer.json')} is not valid JSON: `), bad);
    writeFileSync(join(dir, 'tokenizer.json'), JSON.stringify(v3Json));
    writeFileSync(join(dir, 'tokenizer_config.json'), '{"chat_template": "x",}');
    const badConfig = deepWasmMessage(() => loadTokenizer(dir, { tokenizerOnly: true }), 'bad tokenizer_config.json');
    assert.ok(badConfig.startsWith(`${join(dir, 'tokenizer_config.json')} is not valid JSON: `), badConfig);
    writeFileSync(join(dir, 'tokenizer_config.json'), JSON.stringify({ chat_template: '{{ messages[0].content }}!' }));
    assert.is(loadTokenizer(dir, { tokenizerOnly: true }).applyChatTemplate(hi), 'Hi!', 'a valid directory loads');
  });
});

test.run();
