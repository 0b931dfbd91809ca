import { DEFAULT_MODEL_DIR, loadModel, type LoadOptions, type TextModel } from '../../index.js';
import { DEFAULT_MAX_TOKENS, resolveGenerateOptions, type GenerateOptions } from '../../generate/options.js';
import type { FlagSpec, Flags } from '../args.js';
import { loadOptions } from '../load.js';
import { loadProgress } from '../progress.js';

/** The flags of the commands that read a model folder with its tokenizer; text commands default to the embedded model. */
export const TEXT_MODEL_FLAG: FlagSpec = {
  name: 'model',
  kind: 'string',
  value: 'DIR',
  help: 'model folder: config.json, *.safetensors, tokenizer.json, tokenizer_config.json (default: the embedded models/tiny)',
};

export const TOKENIZER_MODEL_FLAG: FlagSpec = {
  name: 'model',
  kind: 'string',
  value: 'DIR',
  help: 'folder with tokenizer.json and tokenizer_config.json; weights are not read (default: the embedded models/tiny)',
};

/** Sampling and stopping flags; their ranges are checked by the library so that the CLI and the API agree. */
export const SAMPLING_FLAGS: FlagSpec[] = [
  { name: 'max-tokens', kind: 'int', value: 'N', help: `most tokens to generate (default ${DEFAULT_MAX_TOKENS})` },
  { name: 'temperature', kind: 'number', value: 'T', help: 'sampling temperature >= 0; the default 0 always takes the most likely token (greedy), which suits small models' },
  { name: 'top-k', kind: 'int', value: 'K', help: 'sample from the K most likely tokens only (default 0: off)' },
  { name: 'top-p', kind: 'number', value: 'P', help: 'sample from the most likely tokens holding probability P only, in (0, 1] (default 1: off)' },
  { name: 'min-p', kind: 'number', value: 'P', help: 'drop tokens less likely than P times the most likely one, in [0, 1] (default 0: off)' },
  { name: 'repetition-penalty', kind: 'number', value: 'R', help: 'R > 0 divides positive and multiplies negative logits of tokens already in prompt or output (default 1: off)' },
  { name: 'frequency-penalty', kind: 'number', value: 'F', help: 'subtract F per time a token was generated from its logit (default 0: off)' },
  { name: 'presence-penalty', kind: 'number', value: 'P', help: 'subtract P from the logit of every token generated at least once (default 0: off)' },
  { name: 'seed', kind: 'int', value: 'S', help: 'sampling seed, 0 to 4294967295: the same seed and flags give the same text (default: random)' },
  { name: 'stop', kind: 'list', value: 'TEXT', help: 'end the output before TEXT; repeat for several stop strings' },
];

const flagName = (option: string): string => '--' + option.replace(/[A-Z]/g, (c) => '-' + c.toLowerCase());

/** The generation options the flags ask for, checked before any weight is loaded; errors name the flag. */
export function generateOptions(flags: Flags): GenerateOptions {
  const opts: GenerateOptions = {
    maxTokens: flags['max-tokens'] as number | undefined,
    temperature: flags['temperature'] as number | undefined,
    topK: flags['top-k'] as number | undefined,
    topP: flags['top-p'] as number | undefined,
    minP: flags['min-p'] as number | undefined,
    repetitionPenalty: flags['repetition-penalty'] as number | undefined,
    frequencyPenalty: flags['frequency-penalty'] as number | undefined,
    presencePenalty: flags['presence-penalty'] as number | undefined,
    seed: flags['seed'] as number | undefined,
    stop: flags['stop'] as string[] | undefined,
  };
  resolveGenerateOptions(opts, flagName);
  return opts;
}

export function modelDir(flags: Flags): string {
  return (flags['model'] as string | undefined) ?? DEFAULT_MODEL_DIR;
}

/** Loads the --model folder for generation, with a progress bar on a terminal for large checkpoints; `extra` adds load options the flags do not hold. */
export async function loadTextModel(flags: Flags, extra: LoadOptions = {}): Promise<TextModel> {
  const dir = modelDir(flags);
  const progress = loadProgress(`loading ${dir}`);
  const model = await loadModel(dir, { ...loadOptions(flags), ...extra, onProgress: progress.onProgress });
  progress.done();
  return model;
}
