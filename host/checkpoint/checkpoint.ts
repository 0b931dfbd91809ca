import * as fs from 'node:fs';
import { basename, join } from 'node:path';
import { fail } from '../errors.js';
import { readConfig, type DeepSeekConfig } from './config.js';
import type { RandomAccessBytes } from './byte-source.js';
import { closeFile, openSafetensors, safetensorsFromSource, type SafetensorsFile, type TensorEntry } from './safetensors.js';

export interface Checkpoint {
  dir: string;
  config: DeepSeekConfig;
  tensors: Map<string, TensorEntry>;
  /** Sum of all tensors' stored bytes: what a full load reads. */
  totalBytes: number;
  get(name: string): TensorEntry;
  has(name: string): boolean;
  /** Closes the descriptors that reads from this checkpoint's shards left open. */
  close(): void;
}

const INDEX = 'model.safetensors.index.json';
/** The fixtures keep reference outputs next to the weights; they are not part of the model. */
const NOT_WEIGHTS = new Set(['expected.safetensors']);

function readJson(path: string): unknown {
  let text: string;
  try {
    text = fs.readFileSync(path, 'utf8');
  } catch (e) {
    fail(`${path}: cannot read (${(e as Error).message})`);
  }
  try {
    return JSON.parse(text);
  } catch (e) {
    fail(`${path}: not valid JSON (${(e as Error).message})`);
  }
}

/** weight_map: tensor name -> shard file name, as Hugging Face writes for sharded checkpoints. */
function readWeightMap(indexPath: string): Map<string, string> {
  const index = readJson(indexPath) as { weight_map?: unknown } | null;
  const wm = index?.weight_map;
  if (typeof wm !== 'object' || wm === null || Array.isArray(wm)) fail(`${indexPath}: missing "weight_map" object`);
  const map = new Map<string, string>();
  for (const [name, shard] of Object.entries(wm)) {
    if (typeof shard !== 'string') fail(`${indexPath}: "weight_map.${name}" must be a shard file name, got ${JSON.stringify(shard)}`);
    map.set(name, shard);
  }
  return map;
}

function shardsWithoutIndex(dir: string): string[] {
  const names = fs.readdirSync(dir).filter((n) => n.endsWith('.safetensors') && !NOT_WEIGHTS.has(n)).sort();
  if (names.length === 0) fail(`checkpoint ${dir} has no ${INDEX} and no *.safetensors files`);
  return names;
}

/** What a folder given as a model must hold; tokenizer-only commands need only the tokenizer files. */
export type FolderKind = 'model' | 'tokenizer';

const HOLDS: Record<FolderKind, string> = {
  model: 'config.json, *.safetensors and tokenizer.json',
  tokenizer: 'tokenizer.json and tokenizer_config.json',
};

/**
 * The first thing wrong with `dir` as a folder a user named: missing, a file, not readable, or (for a model)
 * without config.json, the file every model folder has, so that an empty or wrong folder is named as such
 * before any file the commands read later.
 */
export function checkModelFolder(dir: string, kind: FolderKind = 'model'): void {
  const stat = statOf(dir, `${kind} folder ${dir}`);
  if (stat === undefined) fail(`${kind} folder ${dir} does not exist`);
  if (!stat.isDirectory()) fail(`${dir} is a file, not a ${kind} folder: give the folder that holds ${HOLDS[kind]}`);
  if (kind === 'model' && statOf(join(dir, 'config.json'), `model folder ${dir}`) === undefined) {
    fail(`model folder ${dir} has no config.json: give the folder that holds ${HOLDS.model}`);
  }
}

/** The stat of `path`, undefined when nothing is there; any other failure (EACCES) is an error naming `what`. */
function statOf(path: string, what: string): fs.Stats | undefined {
  try {
    return fs.statSync(path);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return undefined;
    return fail(`${what}: cannot open ${path} (${(e as Error).message})`);
  }
}

export function openCheckpoint(dir: string): Checkpoint {
  checkModelFolder(dir);
  const config = readConfig(dir);

  const indexPath = join(dir, INDEX);
  const weightMap = fs.existsSync(indexPath) ? readWeightMap(indexPath) : null;
  const shardNames = weightMap ? [...new Set(weightMap.values())].sort() : shardsWithoutIndex(dir);

  const shards = new Map<string, SafetensorsFile>();
  for (const shard of shardNames) {
    const path = join(dir, shard);
    if (weightMap && !fs.existsSync(path)) fail(`${indexPath}: shard ${shard} named in weight_map does not exist in ${dir}`);
    shards.set(shard, openSafetensors(path));
  }

  return assemble(dir, config, shards, weightMap, indexPath);
}

/**
 * A checkpoint whose shards are not files on a filesystem (an edge runtime's fetched bytes, a browser's Blobs):
 * `files` maps shard file names to their bytes; `label` names the checkpoint in messages.
 */
export function checkpointFromSources(label: string, config: DeepSeekConfig, files: ReadonlyMap<string, RandomAccessBytes>): Checkpoint {
  if (files.size === 0) fail(`checkpoint ${label} has no *.safetensors files`);
  const shards = new Map<string, SafetensorsFile>();
  for (const [name, source] of files) shards.set(name, safetensorsFromSource(name, source));
  return assemble(label, config, shards, null, INDEX);
}

function assemble(dir: string, config: DeepSeekConfig, shards: Map<string, SafetensorsFile>, weightMap: Map<string, string> | null, indexPath: string): Checkpoint {
  const tensors = new Map<string, TensorEntry>();
  let totalBytes = 0;
  for (const [shard, file] of shards) {
    for (const [name, entry] of file.tensors) {
      const prev = tensors.get(name);
      if (prev) fail(`checkpoint ${dir}: tensor "${name}" appears in both ${basename(prev.path)} and ${shard}`);
      tensors.set(name, entry);
      totalBytes += entry.nbytes;
    }
  }
  if (weightMap) {
    for (const [name, shard] of weightMap) {
      if (!shards.get(shard)!.tensors.has(name)) fail(`${indexPath}: tensor "${name}" is mapped to ${shard}, which does not contain it`);
    }
  }

  return {
    dir,
    config,
    tensors,
    totalBytes,
    get(name) {
      const entry = tensors.get(name);
      if (!entry) fail(`checkpoint ${dir} has no tensor ${name}`);
      return entry;
    },
    has: (name) => tensors.has(name),
    close() {
      for (const file of shards.values()) closeFile(file.path);
    },
  };
}

/** `what` says where the expected shape comes from, e.g. "num_attention_heads * (qk_nope_head_dim + qk_rope_head_dim) x q_lora_rank". */
export function expectShape(entry: TensorEntry, shape: readonly number[], what: string): void {
  if (entry.shape.length === shape.length && entry.shape.every((d, i) => d === shape[i])) return;
  fail(`${basename(entry.path)}: tensor "${entry.name}" has shape [${entry.shape.join(', ')}], which does not match config.json (expected [${shape.join(', ')}] from ${what})`);
}
