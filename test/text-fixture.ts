import { copyFileSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openSafetensors, readTensorInto, writeSafetensors, type TensorToWrite } from '../host/checkpoint/safetensors.js';
import { cutTokenizerJson } from '../host/tokenizer/cut.js';
import { loadTokenizer } from '../host/tokenizer/load.js';
import { FIXTURES } from './helpers.js';

export const V3_TINY = `${FIXTURES}models/v3-tiny`;
export const V3_TOKENIZER = `${FIXTURES}tokenizers/v3-format`;

/**
 * A model folder with a tokenizer: v3-tiny knows 1000 ids, fewer than the v3-format tokenizer produces, so its
 * embedding and lm_head get zero rows for the tokenizer's other ids (a zero embedding is a valid input and a zero
 * lm_head row a logit of 0). Every other weight is v3-tiny's; `config` overrides config.json fields. Returns the folder
 * and a function that deletes it.
 */
export function makeTextModelDir(config: Record<string, unknown> = {}): { dir: string; remove: () => void } {
  const vocab = loadTokenizer(V3_TOKENIZER, { tokenizerOnly: true }).vocabSize;
  const dir = mkdtempSync(join(tmpdir(), 'deepwasm-text-model-'));
  const base = JSON.parse(readFileSync(`${V3_TINY}/config.json`, 'utf8')) as { vocab_size: number; hidden_size: number };
  const file = openSafetensors(`${V3_TINY}/model.safetensors`);
  const tensors: TensorToWrite[] = [];
  for (const entry of file.tensors.values()) {
    const bytes = new Uint8Array(entry.nbytes);
    readTensorInto(entry, bytes);
    if (entry.name !== 'model.embed_tokens.weight' && entry.name !== 'lm_head.weight') {
      tensors.push({ name: entry.name, dtype: entry.dtype, shape: entry.shape, data: bytes });
      continue;
    }
    if (entry.dtype !== 'F32') throw new Error(`${entry.name} of v3-tiny is ${entry.dtype}; this helper pads F32 only`);
    const padded = new Float32Array(vocab * base.hidden_size);
    padded.set(new Float32Array(bytes.buffer));
    tensors.push({ name: entry.name, dtype: 'F32', shape: [vocab, base.hidden_size], data: padded });
  }
  writeSafetensors(join(dir, 'model.safetensors'), tensors);
  writeFileSync(join(dir, 'config.json'), JSON.stringify({ ...base, vocab_size: vocab, ...config }));
  for (const name of ['tokenizer.json', 'tokenizer_config.json']) copyFileSync(join(V3_TOKENIZER, name), join(dir, name));
  return { dir, remove: () => rmSync(dir, { recursive: true, force: true }) };
}

/**
 * A reference fixture made a text model: a folder with the fixture's config and weights (linked) and the
 * v3-format tokenizer cut to the fixture's vocabulary (ids, merges and added tokens below vocab_size; the 256
 * byte tokens are ids 3 to 258, so any text still encodes). For comparing backends on text.
 */
export function fixtureTextDir(fixture: string): { dir: string; remove: () => void } {
  const src = `${FIXTURES}models/${fixture}`;
  const vocab = (JSON.parse(readFileSync(`${src}/config.json`, 'utf8')) as { vocab_size: number }).vocab_size;
  const tok = cutTokenizerJson(JSON.parse(readFileSync(join(V3_TOKENIZER, 'tokenizer.json'), 'utf8')), vocab);
  const dir = mkdtempSync(join(tmpdir(), `deepwasm-text-${fixture}-`));
  for (const name of readdirSync(src)) if (!name.startsWith('expected')) symlinkSync(join(src, name), join(dir, name));
  writeFileSync(join(dir, 'tokenizer.json'), JSON.stringify(tok));
  copyFileSync(join(V3_TOKENIZER, 'tokenizer_config.json'), join(dir, 'tokenizer_config.json'));
  return { dir, remove: () => rmSync(dir, { recursive: true, force: true }) };
}
