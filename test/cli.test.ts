// The deepwasm command as users run it: a child process, its exit code, stdout and stderr.
import { copyFileSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { DEFAULT_MODEL_DIR, loadModel } from '../host/index.js';
import type { ChatMessage } from '../host/tokenizer/index.js';
import { cli, fails, type Run } from './cli-process.js';
import { readFixtureJson, type TokenizerCases } from './tokenizer-fixtures.js';
import { V3_TINY, V3_TOKENIZER, makeTextModelDir } from './text-fixture.js';

const fixture = makeTextModelDir();

function withTokenizerDir(config: Record<string, unknown>, fn: (dir: string) => void): void {
  const dir = mkdtempSync(join(tmpdir(), 'deepwasm-cli-tokenizer-'));
  try {
    copyFileSync(join(V3_TOKENIZER, 'tokenizer.json'), join(dir, 'tokenizer.json'));
    const base = JSON.parse(readFileSync(join(V3_TOKENIZER, 'tokenizer_config.json'), 'utf8')) as Record<string, unknown>;
    writeFileSync(join(dir, 'tokenizer_config.json'), JSON.stringify({ ...base, ...config }));
    fn(dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

const lines = (s: string): string[] => s.split('\n').slice(0, -1);

test.after(() => fixture.remove());

test('tokenize --jsonl reproduces the fixture ids, with and without --special, reading no weights', () => {
  const { cases } = readFixtureJson<TokenizerCases>('v3-format/cases.json');
  const input = cases.map((c) => JSON.stringify(c.text)).join('\n') + '\n';
  const plain = cli(['tokenize', '--model', V3_TOKENIZER, '--jsonl'], input);
  assert.is(plain.status, 0, plain.stderr);
  assert.equal(lines(plain.stdout).map((l) => JSON.parse(l)), cases.map((c) => c.ids));
  const special = cli(['tokenize', '--model', V3_TOKENIZER, '--jsonl', '--special'], input);
  assert.is(special.status, 0, special.stderr);
  assert.equal(lines(special.stdout).map((l) => JSON.parse(l)), cases.map((c) => c.ids_with_special));
});

test('tokenize without --jsonl encodes all of stdin as one text', () => {
  const r = cli(['tokenize', '--model', V3_TOKENIZER, '--special'], 'Hello world');
  assert.is(r.status, 0, r.stderr);
  assert.is(r.stdout, '[0,42,471,336,320,271,1592]\n');
});

test('template --jsonl reproduces the fixture chat texts, with and without --generation-prompt', () => {
  const cases = readFixtureJson<{ messages: ChatMessage[]; add_generation_prompt: boolean; text: string }[]>('v3-format/chat_cases.json');
  for (const prompt of [true, false]) {
    const chosen = cases.filter((c) => c.add_generation_prompt === prompt);
    assert.ok(chosen.length > 0);
    const args = ['template', '--model', V3_TOKENIZER, '--jsonl', ...(prompt ? ['--generation-prompt'] : [])];
    const r = cli(args, chosen.map((c) => JSON.stringify(c.messages)).join('\n') + '\n');
    assert.is(r.status, 0, r.stderr);
    assert.equal(lines(r.stdout).map((l) => JSON.parse(l)), chosen.map((c) => c.text), `--generation-prompt ${prompt}`);
  }
});

test('bad JSON lines fail naming the line', () => {
  fails(cli(['tokenize', '--model', V3_TOKENIZER, '--jsonl'], 'not json\n'), /stdin line 1 is not valid JSON/, 'tokenize');
  // Lines before the bad one are answered as they come.
  const ok = JSON.stringify('fine');
  const third = cli(['tokenize', '--model', V3_TOKENIZER, '--jsonl'], `${ok}\n${ok}\n"unterminated\n`);
  assert.is(third.status, 1);
  assert.match(third.stderr, /^error: stdin line 3 is not valid JSON/);
  assert.is(third.stdout, '[72,870]\n[72,870]\n');
  const notString = cli(['tokenize', '--model', V3_TOKENIZER, '--jsonl'], `${ok}\n42\n`);
  assert.is(notString.status, 1);
  assert.match(notString.stderr, /^error: stdin line 2: expected a JSON string, got number 42/, JSON.stringify(notString));
  fails(cli(['template', '--model', V3_TOKENIZER, '--jsonl'], '[{"role": "user", "content": "Hi"}\n'), /stdin line 1 is not valid JSON/, 'template');
  fails(cli(['template', '--model', V3_TOKENIZER, '--jsonl'], '{"role": "user"}\n'), /stdin line 1: expected an array of chat messages/, 'template object');
  fails(cli(['template', '--model', V3_TOKENIZER, '--jsonl'], '[{"role": "user"}]\n'), /stdin line 1: message 0 needs a "content" string/, 'template content');
});

test('a chat template that fails to render is reported', () => {
  withTokenizerDir({ chat_template: "{{ raise_exception('only user messages') }}" }, (dir) => {
    fails(cli(['template', '--model', dir, '--jsonl'], '[{"role": "user", "content": "Hi"}]\n'), /chat_template failed to render: only user messages/, 'raise_exception');
  });
  withTokenizerDir({ chat_template: '{% for %}' }, (dir) => {
    fails(cli(['template', '--model', dir], '[{"role": "user", "content": "Hi"}]'), /chat_template is not a valid Jinja template/, 'syntax');
  });
});

test('run streams only the generated text to stdout and a summary to stderr', async () => {
  const model = await loadModel(fixture.dir, { threads: 1 });
  const expected = await model.generateText('Hello world', { maxTokens: 12 });
  const stopped = await model.generateText('Hello world', { maxTokens: 12, stop: expected.text.slice(5, 8) });
  await model.close();
  const r = cli(['run', '--model', fixture.dir, '--prompt', 'Hello world', '--max-tokens', '12', '--threads', '1']);
  assert.is(r.status, 0, r.stderr);
  assert.is(r.stdout, expected.text);
  assert.match(r.stderr, /^12 tokens, prefill [\d.]+ tok\/s, decode [\d.]+ tok\/s \(token limit or full context\)\n$/);
  const s = cli(['run', '--model', fixture.dir, '--prompt', 'Hello world', '--max-tokens', '12', '--stop', 'never', '--stop', expected.text.slice(5, 8)]);
  assert.is(s.status, 0, s.stderr);
  assert.is(s.stdout, stopped.text);
  assert.ok(s.stdout.length <= 5);
  assert.match(s.stderr, /\(end of text or stop string\)/);
});

test('run with the same seed prints the same sampled text', () => {
  const args = ['run', '--model', fixture.dir, '--prompt', 'Hello', '--max-tokens', '20', '--temperature', '1', '--top-k', '40', '--top-p', '0.9', '--seed', '7'];
  const a = cli([...args, '--threads', '1']);
  const b = cli([...args, '--threads', '2']);
  assert.is(a.status, 0, a.stderr);
  assert.ok(a.stdout.length > 0);
  assert.is(b.stdout, a.stdout);
});

test('chat answers each stdin line, keeps the conversation, and /reset forgets it', async () => {
  const model = await loadModel(fixture.dir, { threads: 1 });
  const first = await model.chatText([{ role: 'user', content: 'Hi' }], { maxTokens: 8 });
  const second = await model.chatText(
    [
      { role: 'user', content: 'Hi' },
      { role: 'assistant', content: first.text },
      { role: 'user', content: 'Go on' },
    ],
    { maxTokens: 8 },
  );
  await model.close();
  const r = cli(['chat', '--model', fixture.dir, '--max-tokens', '8', '--threads', '1'], 'Hi\nGo on\n/reset\n\nHi\n/exit\nnever read\n');
  assert.is(r.status, 0, r.stderr);
  assert.is(r.stdout, `${first.text}\n${second.text}\n${first.text}\n`);
});

test('user errors exit 1 with a message and no stack trace', () => {
  const run = (...args: string[]): Run => cli(['run', '--model', fixture.dir, '--prompt', 'Hi', ...args]);
  fails(run('--bogus'), /unknown flag --bogus for "deepwasm run"/, 'unknown flag');
  fails(run('--temperature', '-1'), /--temperature must be a number >= 0 \(0 = greedy\), got -1/, 'negative temperature');
  fails(run('--top-p', '0'), /--top-p must be in \(0, 1\] \(1 = off\), got 0/, 'top-p 0');
  fails(run('--min-p', '1.5'), /--min-p must be in \[0, 1\]/, 'min-p');
  fails(run('--top-k', '2.5'), /--top-k expects a whole number, got "2.5"/, 'top-k');
  fails(run('--repetition-penalty', '0'), /--repetition-penalty must be a number > 0/, 'repetition penalty');
  fails(run('--max-tokens', '0'), /--max-tokens must be a whole number >= 1, got 0/, 'max tokens');
  fails(run('--seed', '-3'), /--seed must be a whole number from 0 to 4294967295/, 'seed');
  fails(cli(['run', '--model', fixture.dir, '--prompt', '']), /--prompt is empty/, 'empty prompt');
  fails(cli(['run', '--model', fixture.dir]), /"deepwasm run" needs exactly one of --prompt TEXT or --prompt-file FILE/, 'no prompt');
  fails(cli(['run', '--model', V3_TINY, '--prompt', 'Hi']), /v3-tiny has no tokenizer\.json/, 'missing tokenizer (run)');
  fails(cli(['chat', '--model', V3_TINY], 'Hi\n'), /v3-tiny has no tokenizer\.json/, 'missing tokenizer (chat)');
  fails(cli(['tokenize', '--model', V3_TINY], 'Hi'), /v3-tiny has no tokenizer\.json/, 'missing tokenizer (tokenize)');
  fails(cli(['chat', '--model', fixture.dir, '--context', '4', '--threads', '1'], 'Hello there\n'), /tokens exceed the context length \(4\)/, 'context');
  fails(cli(['tokenize', '--jsonl', '--model', V3_TOKENIZER, '--special=yes']), /--special takes no value/, 'boolean flag value');
  const unknown = cli(['generate']);
  assert.is(unknown.status, 1);
  assert.match(unknown.stderr, /unknown command "generate"/);
});

test('without --model the embedded model is used, or its absence is explained', () => {
  const r = cli(['run', '--prompt', 'Once upon a time', '--max-tokens', '2', '--threads', '1']);
  if (existsSync(DEFAULT_MODEL_DIR)) {
    assert.is(r.status, 0, r.stderr);
    assert.match(r.stderr, /^2 tokens/);
  } else fails(r, /the embedded model is not installed \(.*models\/tiny does not exist\); pass the folder of a model/, 'no embedded model');
});

test('--help documents every command and each of its flags', () => {
  const top = cli(['--help']);
  assert.is(top.status, 0, top.stderr);
  const expected: Record<string, string[]> = {
    run: ['model', 'prompt', 'prompt-file', 'max-tokens', 'temperature', 'top-k', 'top-p', 'min-p', 'repetition-penalty', 'frequency-penalty', 'presence-penalty', 'seed', 'stop', 'threads', 'context'],
    chat: ['model', 'system', 'max-tokens', 'temperature', 'top-k', 'top-p', 'min-p', 'repetition-penalty', 'frequency-penalty', 'presence-penalty', 'seed', 'stop', 'threads', 'context'],
    tokenize: ['model', 'jsonl', 'special'],
    template: ['model', 'jsonl', 'generation-prompt'],
    logits: ['model', 'ids', 'gen', 'out', 'threads', 'context'],
  };
  for (const [command, flags] of Object.entries(expected)) {
    assert.match(top.stdout, new RegExp(`\\n  ${command} +\\S`), `${command} in the command list`);
    const help = cli([command, '--help']);
    assert.is(help.status, 0, `${command} --help: ${help.stderr}`);
    assert.match(help.stdout, new RegExp(`^Usage: deepwasm ${command} \\[flags\\]\\n\\n\\S`), command);
    for (const flag of flags) assert.match(help.stdout, new RegExp(`\\n  --${flag}\\b[^\\n]*  +\\S`), `${command} --${flag} has help`);
  }
  const runHelp = cli(['run', '--help']);
  assert.match(runHelp.stdout, /greedy/, `run --help says the default is greedy: ${JSON.stringify(runHelp)}`);
});

test.run();
