import { fail } from '../../errors.js';
import { describe } from '../../tokenizer/json.js';
import { loadTokenizer } from '../../tokenizer/load.js';
import type { Command } from './command.js';
import { TOKENIZER_MODEL_FLAG, modelDir } from './generation.js';
import { forEachJsonLine, guardStdout, readStdin } from './stdio.js';

export const tokenizeCommand: Command = {
  name: 'tokenize',
  summary: 'print the token ids of text read from stdin',
  description:
    'Encodes text with the tokenizer of --model, reading only its tokenizer files. With --jsonl, each stdin line is ' +
    'a JSON string and each output line the JSON array of its ids; without it, all of stdin is one text and one ' +
    'JSON array is printed.',
  flags: [
    TOKENIZER_MODEL_FLAG,
    { name: 'jsonl', kind: 'boolean', help: 'one JSON string per input line, one JSON array of ids per output line' },
    { name: 'special', kind: 'boolean', help: 'add the special tokens the tokenizer config asks for (BOS for DeepSeek)' },
  ],
  async run(flags) {
    const tokenizer = loadTokenizer(modelDir(flags), { tokenizerOnly: true });
    // Once nobody reads the ids, stop reading the texts.
    const stdout = guardStdout(() => process.stdin.destroy());
    const addSpecialTokens = flags['special'] === true;
    const encode = (text: string): string => JSON.stringify(tokenizer.encode(text, { addSpecialTokens })) + '\n';
    if (flags['jsonl'] !== true) {
      process.stdout.write(encode(await readStdin()));
      return;
    }
    await forEachJsonLine((value, where) => {
      if (typeof value !== 'string') fail(`${where}: expected a JSON string, got ${describe(value)}`);
      process.stdout.write(encode(value));
    });
    stdout.check();
  },
};
