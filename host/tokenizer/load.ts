import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { checkModelFolder } from '../checkpoint/checkpoint.js';
import { fail } from '../errors.js';
import { Tokenizer } from './tokenizer.js';

export interface LoadTokenizerOptions {
  /**
   * `dir` holds only tokenizer files, so it needs no config.json (the tokenize and template commands, a tokenizer
   * kept apart from its weights). By default `dir` is a model folder and is checked as one first.
   */
  tokenizerOnly?: boolean;
}

/**
 * Node-only loader: `dir/tokenizer.json` (required) and `dir/tokenizer_config.json` (optional; without it there is no
 * chat template and BOS comes from the tokenizer.json post-processor).
 */
export function loadTokenizer(dir: string, opts: LoadTokenizerOptions = {}): Tokenizer {
  checkModelFolder(dir, opts.tokenizerOnly ? 'tokenizer' : 'model');
  const tokenizerFile = join(dir, 'tokenizer.json');
  const configFile = join(dir, 'tokenizer_config.json');
  if (!existsSync(tokenizerFile)) {
    fail(`${dir} has no tokenizer.json (expected a Hugging Face tokenizer file next to config.json)`);
  }
  const config = existsSync(configFile) ? readJson(configFile) : undefined;
  return Tokenizer.fromJSON(readJson(tokenizerFile), config, { tokenizer: tokenizerFile, config: configFile });
}

function readJson(file: string): unknown {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    return fail(`${file} could not be read: ${(e as Error).message}`);
  }
  try {
    return JSON.parse(text);
  } catch (e) {
    return fail(`${file} is not valid JSON: ${(e as Error).message}`);
  }
}
