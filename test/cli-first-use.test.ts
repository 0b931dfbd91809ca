// What a new user meets on the command line: the version, a wrong --model path, files and ports that cannot be used,
// prompts from files and stdin, bytes that are not UTF-8, and Ctrl-C. Every user error exits 1 with one line.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { osErrorMessage } from '../host/cli/files.js';
import { cli, cliInterrupted, fails } from './cli-process.js';
import { V3_TINY, makeTextModelDir } from './text-fixture.js';

const fixture = makeTextModelDir();
const tmp = mkdtempSync(join(tmpdir(), 'deepwasm-first-use-'));
const file = (name: string, content: string | Uint8Array): string => {
  const path = join(tmp, name);
  writeFileSync(path, content);
  return path;
};
const NOT_UTF8 = Buffer.concat([Buffer.from('Hello '), Buffer.from([0xff]), Buffer.from(' world')]);
const warnings = (stderr: string): string[] => stderr.split('\n').filter((l) => l.startsWith('warning: '));

test.after(() => {
  fixture.remove();
  rmSync(tmp, { recursive: true, force: true });
});

test('--version prints the version in package.json', () => {
  const { version } = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
  const r = cli(['--version']);
  assert.is(r.status, 0, r.stderr);
  assert.is(r.stdout, `${version}\n`);
});

test('--model as a file, an empty folder or a missing path: the folder is named, and config.json before tokenizer.json', () => {
  const empty = mkdtempSync(join(tmp, 'empty-'));
  const missing = join(tmp, 'no-such-model');
  const aFile = join(fixture.dir, 'config.json');
  const weights: Record<string, string[]> = {
    run: ['run', '--prompt', 'Hi'],
    chat: ['chat'],
    logits: ['logits', '--ids', '1', '--out', join(tmp, 'x.safetensors')],
    bench: ['bench'],
    web: ['web', '--port', '0'],
  };
  for (const [name, args] of Object.entries(weights)) {
    fails(cli([...args, '--model', empty], 'Hi\n'), new RegExp(`model folder ${empty} has no config\\.json: give the folder that holds config\\.json, \\*\\.safetensors and tokenizer\\.json`), `${name} empty`);
    fails(cli([...args, '--model', aFile], 'Hi\n'), new RegExp(`${aFile} is a file, not a model folder: give the folder that holds config\\.json`), `${name} file`);
    fails(cli([...args, '--model', missing], 'Hi\n'), new RegExp(`model folder ${missing} does not exist`), `${name} missing`);
  }
  // Tokenizer-only commands need no config.json.
  for (const args of [['tokenize'], ['template']]) {
    fails(cli([...args, '--model', empty], '[]'), new RegExp(`${empty} has no tokenizer\\.json`), `${args[0]} empty`);
    fails(cli([...args, '--model', aFile], '[]'), new RegExp(`${aFile} is a file, not a tokenizer folder: give the folder that holds tokenizer\\.json`), `${args[0]} file`);
    fails(cli([...args, '--model', missing], '[]'), new RegExp(`tokenizer folder ${missing} does not exist`), `${args[0]} missing`);
  }
});

test('web on a port in use: a one-line error with exit 1', async () => {
  const taken = createServer();
  await new Promise<void>((ok) => taken.listen(0, '127.0.0.1', ok));
  const { port } = taken.address() as AddressInfo;
  try {
    fails(cli(['web', '--port', String(port)]), new RegExp(`^error: --port ${port} is in use; pick another with --port N\\n$`), 'port in use');
  } finally {
    await new Promise((done) => taken.close(done));
  }
});

test('web --memory-limit takes a positive number of MiB', () => {
  fails(cli(['web', '--port', '0', '--memory-limit', '0']), /^error: --memory-limit must be at least 0\.001, got 0\n$/, 'zero');
  fails(cli(['web', '--port', '0', '--memory-limit', 'lots']), /^error: --memory-limit expects a number, got "lots"\n$/, 'not a number');
});

test('an --out file that cannot be written fails before the model loads, naming --out', () => {
  const args = ['logits', '--model', V3_TINY, '--ids', '1'];
  fails(cli([...args, '--out', join(tmp, 'no-such-folder', 'x.safetensors')]), /--out .*x\.safetensors: folder .*no-such-folder does not exist/, 'missing folder');
  fails(cli([...args, '--out', tmp]), /--out .* is a folder: give the name of the file to write/, 'a folder');
  const under = join(file('plain', 'x'), 'x.safetensors');
  fails(cli([...args, '--out', under]), /--out .*: .*plain is a file, not a folder/, 'under a file');
});

test('OS errors on paths a user names are one-line user errors, not internal errors', () => {
  const under = join(file('not-a-folder', 'x'), 'out');
  const r = cli(['convert', '--model', V3_TINY, '--quant', 'q8', '--out', under]);
  fails(r, new RegExp(under.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')), 'convert --out under a file');
  assert.not.match(r.stderr, /internal error/);
  const enoent = Object.assign(new Error("ENOENT: no such file or directory, open '/x/y'"), { code: 'ENOENT', syscall: 'open', path: '/x/y' });
  assert.is(osErrorMessage(enoent), 'cannot open /x/y: no such file or directory (ENOENT)');
  assert.is(osErrorMessage(new Error('a bug')), undefined, 'other errors stay internal');
});

test('--prompt-file reads the prompt from a file or from stdin (-), as --prompt gives it', () => {
  const args = ['run', '--model', fixture.dir, '--max-tokens', '6', '--threads', '1'];
  const expected = cli([...args, '--prompt', 'Hello world']);
  assert.is(expected.status, 0, expected.stderr);
  assert.ok(expected.stdout.length > 0);
  const fromFile = cli([...args, '--prompt-file', file('prompt.txt', 'Hello world\n')]);
  assert.is(fromFile.status, 0, fromFile.stderr);
  assert.is(fromFile.stdout, expected.stdout, 'a file, its final newline dropped');
  const fromStdin = cli([...args, '--prompt-file', '-'], 'Hello world\n');
  assert.is(fromStdin.status, 0, fromStdin.stderr);
  assert.is(fromStdin.stdout, expected.stdout, 'stdin');
  assert.is(warnings(fromFile.stderr + fromStdin.stderr).length, 0, 'UTF-8 input gives no warning');
});

test('--prompt-file mistakes name the flag', () => {
  const run = (...args: string[]): ReturnType<typeof cli> => cli(['run', '--model', fixture.dir, ...args], '');
  fails(run('--prompt', 'Hi', '--prompt-file', file('p.txt', 'Hi')), /needs exactly one of --prompt TEXT or --prompt-file FILE/, 'both');
  fails(run('--prompt-file', join(tmp, 'nope.txt')), /--prompt-file .*nope\.txt does not exist/, 'missing');
  fails(run('--prompt-file', tmp), /--prompt-file .* is a folder: give a file/, 'folder');
  fails(run('--prompt-file', file('empty.txt', '\n')), /--prompt-file .*empty\.txt is empty: give the text to continue/, 'empty file');
  fails(run('--prompt-file', '-'), /--prompt-file - \(stdin\) is empty/, 'empty stdin');
});

test('input that is not UTF-8 is read with U+FFFD in place of the bad bytes, and one warning', () => {
  const replaced = 'Hello \uFFFD world';
  const args = ['run', '--model', fixture.dir, '--max-tokens', '6', '--threads', '1'];
  const path = file('latin1.txt', NOT_UTF8);
  const r = cli([...args, '--prompt-file', path]);
  assert.is(r.status, 0, r.stderr);
  assert.equal(warnings(r.stderr), [`warning: --prompt-file ${path} is not valid UTF-8; its invalid bytes were replaced with U+FFFD`]);
  assert.is(r.stdout, cli([...args, '--prompt', replaced]).stdout, 'the prompt the model saw');

  const ids = cli(['tokenize'], replaced);
  const bad = cli(['tokenize'], NOT_UTF8);
  assert.is(bad.status, 0, bad.stderr);
  assert.is(bad.stdout, ids.stdout);
  assert.equal(warnings(bad.stderr), ['warning: stdin is not valid UTF-8; its invalid bytes were replaced with U+FFFD'], 'tokenize');
  assert.equal(warnings(ids.stderr), [], 'tokenize: UTF-8 gives no warning');
  const lines = cli(['tokenize', '--jsonl'], Buffer.concat([Buffer.from('"ok"\n"'), NOT_UTF8, Buffer.from('"\n')]));
  assert.is(lines.status, 0, lines.stderr);
  assert.is(warnings(lines.stderr).length, 1, `tokenize --jsonl: ${lines.stderr}`);
  // A character cut short at the very end.
  const cut = cli(['tokenize', '--jsonl'], Buffer.concat([Buffer.from('"ok"\n'), Buffer.from([0xe2, 0x82])]));
  assert.is(warnings(cut.stderr).length, 1, `tokenize --jsonl, cut at the end: ${cut.stderr}`);

  const chat = cli(['chat', '--model', fixture.dir, '--max-tokens', '2', '--threads', '1'], Buffer.concat([NOT_UTF8, Buffer.from('\nagain\n')]));
  assert.is(chat.status, 0, chat.stderr);
  assert.equal(warnings(chat.stderr), ['warning: stdin is not valid UTF-8; its invalid bytes were replaced with U+FFFD'], 'chat');
  assert.is(chat.stdout.split('\n').length, 3, 'chat answered both lines');
});

test('Ctrl-C during run stops generating, prints the summary and exits 130', async () => {
  const r = await cliInterrupted(['run', '--prompt', 'Once upon a time', '--max-tokens', '100000', '--threads', '1']);
  assert.is(r.status, 130, r.stderr);
  assert.ok(r.stdout.length > 0, 'the text so far');
  assert.match(r.stderr, /^\d+ tokens, prefill [\d.]+ tok\/s, decode [\d.-]+ tok\/s \(interrupted\)\n$/);
});

test('Ctrl-C during a chat read from a pipe stops the reply and exits 130', async () => {
  const r = await cliInterrupted(['chat', '--max-tokens', '100000', '--threads', '1'], 'Tell me a story\n');
  assert.is(r.status, 130, r.stderr);
  assert.ok(r.stdout.endsWith('\n'), `the reply so far, ended by a newline: ${JSON.stringify(r.stdout)}`);
  assert.not.match(r.stderr, /error/);
});

test.run();
