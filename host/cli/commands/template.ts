import { checkMessages } from '../../generate/messages.js';
import { loadTokenizer } from '../../tokenizer/load.js';
import type { Command } from './command.js';
import { TOKENIZER_MODEL_FLAG, modelDir } from './generation.js';
import { forEachJsonLine, guardStdout, parseJson, readStdin } from './stdio.js';

export const templateCommand: Command = {
  name: 'template',
  summary: 'render chat messages read from stdin with the chat template',
  description:
    'Renders chat messages with the chat_template of --model\'s tokenizer_config.json, reading only the tokenizer ' +
    'files. With --jsonl, each stdin line is a JSON array of messages ({"role": ..., "content": ...}) and each output ' +
    'line the rendered text as a JSON string; without it, all of stdin is one such array and one string is printed.',
  flags: [
    TOKENIZER_MODEL_FLAG,
    { name: 'jsonl', kind: 'boolean', help: 'one JSON array of messages per input line, one JSON string per output line' },
    { name: 'generation-prompt', kind: 'boolean', help: 'end with the assistant prefix, as when asking the model to answer' },
  ],
  async run(flags) {
    const tokenizer = loadTokenizer(modelDir(flags), { tokenizerOnly: true });
    const addGenerationPrompt = flags['generation-prompt'] === true;
    // Once nobody reads the texts, stop reading the messages.
    const stdout = guardStdout(() => process.stdin.destroy());
    const render = (value: unknown, where: string): void => {
      const text = tokenizer.applyChatTemplate(checkMessages(value, where), { addGenerationPrompt });
      process.stdout.write(JSON.stringify(text) + '\n');
    };
    if (flags['jsonl'] === true) await forEachJsonLine(render);
    else render(parseJson(await readStdin(), 'stdin'), 'stdin');
    stdout.check();
  },
};
