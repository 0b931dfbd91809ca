import { fail } from '../../errors.js';
import type { FlagSpec, Flags } from '../args.js';
import { readInputFile } from '../files.js';
import { decodeUserText } from '../utf8.js';
import { readStdinBytes } from './stdio.js';

/** The two ways to give `run` its prompt; exactly one is required. */
export const PROMPT_FLAGS: FlagSpec[] = [
  { name: 'prompt', kind: 'string', value: 'TEXT', help: 'the text to continue (or --prompt-file)' },
  {
    name: 'prompt-file',
    kind: 'string',
    value: 'FILE',
    help: 'read the text to continue from FILE, "-" for stdin, as UTF-8; one final newline is dropped, as $(cat FILE) drops it',
  },
];

/** The prompt text of --prompt or --prompt-file, checked to be there and not empty. */
export async function promptText(flags: Flags): Promise<string> {
  const text = flags['prompt'] as string | undefined;
  const file = flags['prompt-file'] as string | undefined;
  if ((text === undefined) === (file === undefined)) fail('"deepwasm run" needs exactly one of --prompt TEXT or --prompt-file FILE');
  if (text !== undefined) {
    if (text === '') fail('--prompt is empty: give the text to continue');
    return text;
  }
  const where = file === '-' ? '--prompt-file - (stdin)' : `--prompt-file ${file}`;
  const bytes = file === '-' ? await readStdinBytes() : readInputFile(file!, '--prompt-file');
  // Files end with a line break that is not part of the text; dropping it makes `echo TEXT | run --prompt-file -` equal --prompt TEXT.
  const prompt = decodeUserText(bytes, where).replace(/\r?\n$/, '');
  if (prompt === '') fail(`${where} is empty: give the text to continue`);
  return prompt;
}
