import * as fs from 'node:fs';
import { PRESET_NAMES, presetConfig } from '../../checkpoint/presets.js';
import { SYNTH_DTYPES, synthCheckpoint, type SynthDType } from '../../model/synth.js';
import { fail } from '../../errors.js';
import { DEFAULT_MODEL_DIR } from '../../index.js';
import { createProgress } from '../progress.js';
import type { Command } from './command.js';

function readConfigFile(path: string): Record<string, unknown> {
  let text: string;
  try {
    text = fs.readFileSync(path, 'utf8');
  } catch (e) {
    fail(`--config ${path}: cannot read (${(e as Error).message})`);
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    fail(`--config ${path}: not valid JSON (${(e as Error).message})`);
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) fail(`--config ${path}: expected a JSON object (a config.json)`);
  return raw as Record<string, unknown>;
}

const bytesText = (n: number): string => (n >= 1e9 ? `${(n / 1e9).toFixed(2)} GB` : `${(n / 1e6).toFixed(2)} MB`);
const paramsText = (n: number): string => (n >= 1e9 ? `${(n / 1e9).toFixed(3)} B` : `${(n / 1e6).toFixed(2)} M`);

export const synthCommand: Command = {
  name: 'synth',
  summary: 'write a random-weight checkpoint (Hugging Face layout) of a preset or config shape',
  description:
    'Writes config.json, model-0000K-of-0000N.safetensors shards (~2 GiB each) and model.safetensors.index.json with ' +
    'random weights: deterministic per seed, scaled so that activations stay O(1) (linear weights N(0, 1/fan_in), ' +
    `norms 1). Presets: ${PRESET_NAMES.join(', ')} (v3-2k6: a 2.6 B V3-shaped model; 16B, 236B, 671B: DeepSeek-V2-Lite, ` +
    'DeepSeek-V2 and DeepSeek-V3 shapes, which --layers cuts).',
  flags: [
    { name: 'preset', kind: 'string', value: 'NAME', help: `model shape: ${PRESET_NAMES.join(', ')}` },
    { name: 'config', kind: 'string', value: 'FILE', help: 'a config.json to take the shape from (instead of --preset)' },
    { name: 'out', kind: 'string', value: 'DIR', required: true, help: 'output folder (created if missing)' },
    { name: 'seed', kind: 'int', value: 'S', min: 0, max: 0xffffffff, help: 'random seed (default 0)' },
    { name: 'dtype', kind: 'string', value: 'bf16|f32', help: 'weight dtype (default bf16)' },
    { name: 'layers', kind: 'int', value: 'N', min: 1, help: 'num_hidden_layers to write (default: the config\'s)' },
    { name: 'force', kind: 'boolean', help: 'replace a checkpoint already in --out' },
  ],
  async run(flags) {
    const preset = flags.preset as string | undefined;
    const configPath = flags.config as string | undefined;
    if ((preset === undefined) === (configPath === undefined)) fail('"deepwasm synth" needs exactly one of --preset NAME or --config FILE');
    const dtype = (flags.dtype as string | undefined) ?? 'bf16';
    if (!SYNTH_DTYPES.includes(dtype as SynthDType)) fail(`--dtype must be one of ${SYNTH_DTYPES.join(', ')}, got "${dtype}"`);
    let config: Record<string, unknown>;
    let source: string;
    if (preset !== undefined) {
      const p = presetConfig(preset);
      if (p === undefined) fail(`unknown preset "${preset}"; presets: ${PRESET_NAMES.join(', ')}`);
      config = p;
      source = `preset ${preset}`;
    } else {
      config = readConfigFile(configPath!);
      source = configPath!;
    }

    const out = flags.out as string;
    const start = performance.now();
    let progress: ReturnType<typeof createProgress> | undefined;
    let seen = 0;
    const result = await synthCheckpoint({
      config,
      source,
      out,
      seed: flags.seed as number | undefined,
      dtype: dtype as SynthDType,
      layers: flags.layers as number | undefined,
      overwrite: flags.force === true,
      tokenizerFrom: DEFAULT_MODEL_DIR,
      onProgress: (written, total) => {
        progress ??= createProgress(`writing ${out}`, total);
        progress.advance(written - seen);
        seen = written;
      },
    });
    progress?.done();
    const secs = (performance.now() - start) / 1000;
    process.stdout.write(
      `wrote ${out}: ${paramsText(result.parameters)} parameters, ${result.tensors} tensors, ${bytesText(result.totalBytes)} ` +
        `in ${result.shards.length} shard${result.shards.length === 1 ? '' : 's'}, ${secs.toFixed(1)} s (${bytesText(result.totalBytes / secs)}/s); ` +
        (result.tokenizer
          ? `tokenizer: the embedded model's${result.tokenizerFit === 'cut' ? ', cut to vocab_size' : result.tokenizerFit === 'padded' ? ', padded to vocab_size' : ''}\n`
          : `no tokenizer (vocab_size ${result.config.vocabSize} is below the 259 ids of a byte-level tokenizer)\n`),
    );
  },
};
