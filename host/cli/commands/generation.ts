import { DEFAULT_MODEL_DIR, loadModel, type LoadOptions, type TextModel } from '../../index.js';
import { fail } from '../../errors.js';
import { resolveBeamOptions, type BeamOptions } from '../../generate/beam.js';
import { DEFAULT_MAX_TOKENS, MAX_DRAFT_TOKENS, resolveGenerateOptions, type GenerateOptions } from '../../generate/options.js';
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

/** Speculative decoding's flags (run, chat, logits). */
export const DRAFT_FLAGS: FlagSpec[] = [
  {
    name: 'draft',
    kind: 'string',
    value: 'mtp|DIR',
    help: "speculative decoding: draft with the model's MTP layer (mtp) or with a smaller model of the same tokenizer (its folder; the model's own folder works too); the same greedy tokens, the same sampling distribution",
  },
  { name: 'draft-tokens', kind: 'int', value: 'K', min: 1, max: MAX_DRAFT_TOKENS, help: 'draft tokens per step (default 1 with mtp, chained when more; 3 with a draft model, so a verifying pass fills the 4-token matmul tile)' },
];

/** Beam search's flags (run, logits). */
export const BEAM_FLAGS: FlagSpec[] = [
  { name: 'num-beams', kind: 'int', value: 'N', min: 1, help: "beam search with N beams, as transformers' generate(num_beams=N, do_sample=False); the best hypothesis is printed when it ends" },
  { name: 'length-penalty', kind: 'number', value: 'L', help: 'with --num-beams: a hypothesis scores sum(log p) / length^L (default 1; above 0 favours longer ones)' },
  { name: 'early-stopping', kind: 'boolean', help: 'with --num-beams: stop once N hypotheses have ended (default: when no running beam can beat them)' },
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
    draftTokens: flags['draft-tokens'] as number | undefined,
  };
  if (opts.draftTokens !== undefined && flags['draft'] === undefined) fail('--draft-tokens needs --draft (mtp or a model folder)');
  resolveGenerateOptions({ ...opts, draftTokens: undefined }, flagName);
  return opts;
}

/** The beam-search options of --num-beams, --length-penalty and --early-stopping, or undefined without --num-beams. */
export function beamOptions(flags: Flags): BeamOptions | undefined {
  const numBeams = flags['num-beams'] as number | undefined;
  if (numBeams === undefined) {
    const stray = ['length-penalty', 'early-stopping'].find((f) => flags[f] !== undefined);
    if (stray) fail(`--${stray} needs --num-beams`);
    return undefined;
  }
  const sampled = ['temperature', 'top-k', 'top-p', 'min-p', 'seed', 'draft', 'repetition-penalty', 'frequency-penalty', 'presence-penalty', 'stop'].find((f) => flags[f] !== undefined);
  if (sampled) fail(`--${sampled} does not go with --num-beams: beam search is deterministic and keeps whole hypotheses`);
  const opts = {
    numBeams,
    lengthPenalty: flags['length-penalty'] as number | undefined,
    earlyStopping: flags['early-stopping'] === true,
    maxTokens: flags['max-tokens'] as number | undefined,
  };
  resolveBeamOptions(opts, flagName);
  return opts;
}

/**
 * The model --draft names: 'mtp', a draft model loaded with the command's load flags (and `extra`, such as the
 * server's sequences), or undefined. Close it after use.
 */
export async function loadDraft(flags: Flags, extra: LoadOptions = {}): Promise<TextModel | 'mtp' | undefined> {
  const draft = flags['draft'] as string | undefined;
  if (draft === undefined || draft === 'mtp') return draft;
  const progress = loadProgress(`loading the draft ${draft}`);
  const model = await loadModel(draft, { ...loadOptions(flags), ...extra, onProgress: progress.onProgress });
  progress.done();
  return model;
}

export function modelDir(flags: Flags): string {
  return (flags['model'] as string | undefined) ?? DEFAULT_MODEL_DIR;
}

/** Loads the --model folder for generation, with a progress bar on a terminal for large checkpoints; `extra` adds load options the flags do not hold. */
export async function loadTextModel(flags: Flags, extra: LoadOptions = {}): Promise<TextModel> {
  const dir = modelDir(flags);
  const progress = loadProgress(`loading ${dir}`);
  const model = await loadModel(dir, {
    ...loadOptions(flags),
    mtp: flags['draft'] === 'mtp',
    maxSequences: flags['num-beams'] as number | undefined,
    ...extra,
    onProgress: progress.onProgress,
  });
  progress.done();
  return model;
}
