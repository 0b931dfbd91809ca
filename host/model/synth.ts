// Random-weight checkpoints in the Hugging Face layout: config.json, model-0000K-of-0000N.safetensors
// shards of about 2 GiB, and model.safetensors.index.json. Tensors are generated and written one
// chunk at a time from two reusable buffers (one filling while the other is written), so a 671B
// shape cut to a few layers needs no more memory than a small one. Every tensor draws from its own
// stream, seeded by (seed, tensor name): the bytes depend on the seed and the shape only, not on the
// chunk size, the shard size or the order of writing.
import * as fs from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fail } from '../errors.js';
import { modelSchema, schemaWeights } from './schema.js';
import { ROLE_EMBED, ROLE_ROUTER_BIAS } from '../runtime/constants.js';
import { parseConfig, type DeepSeekConfig } from '../checkpoint/config.js';
import { cutTokenizerJson, tokenizerIds } from '../tokenizer/cut.js';
import { DTYPE_SIZE, type DType } from '../checkpoint/dtypes.js';
import { safetensorsHeader } from '../checkpoint/safetensors.js';
import { planShards, shardName } from '../checkpoint/shards.js';

export type SynthDType = 'bf16' | 'f32';
export const SYNTH_DTYPES: readonly SynthDType[] = ['bf16', 'f32'];

type RawConfig = Record<string, unknown>;

/** How a tensor's values are drawn: N(0, std^2) (quantised to 65536 levels), or all ones (norms). */
export type Init = { kind: 'normal'; std: number } | { kind: 'ones' };

export interface SynthTensor {
  name: string;
  dtype: DType;
  shape: number[];
  init: Init;
  nbytes: number;
}

export interface SynthOptions {
  /** The config.json to realise (a preset's or a file's). */
  config: RawConfig;
  /** Names the config in errors: "preset v3-2k6" or the file's path. */
  source: string;
  out: string;
  /** Unsigned 32-bit seed (default 0). */
  seed?: number;
  dtype?: SynthDType;
  /** Overrides num_hidden_layers. */
  layers?: number;
  /** Shards close before passing this many bytes (default 2 GiB); a larger tensor gets a shard alone. */
  shardBytes?: number;
  /** Values generated per step (default 16 Mi); the output does not depend on it. */
  chunkValues?: number;
  /** Replace a checkpoint already in `out` instead of refusing. */
  overwrite?: boolean;
  /**
   * A folder whose tokenizer.json and tokenizer_config.json the checkpoint gets, the tokenizer cut to
   * vocab_size ids when it has more, so the text commands run on it (none when vocab_size is below 259: the
   * 256 byte tokens sit at ids 3 to 258).
   */
  tokenizerFrom?: string;
  onProgress?: (bytesWritten: number, totalBytes: number) => void;
}

export interface SynthResult {
  config: DeepSeekConfig;
  /** Shard file names, in order. */
  shards: string[];
  tensors: number;
  parameters: number;
  totalBytes: number;
  /** Whether tokenizer.json and tokenizer_config.json were written (tokenizerFrom). */
  tokenizer: boolean;
  /** How the tokenizer was fitted to vocab_size ids: cut (it had more), padded (it had fewer) or as it was. */
  tokenizerFit?: 'cut' | 'padded' | 'exact';
}

const INDEX = 'model.safetensors.index.json';
/** Values per generation chunk: 16 Mi values (32 MiB of bf16) per buffer. Even, so pairs never split. */
const CHUNK_VALUES = 16 * 1024 * 1024;

/**
 * The config.json a synthetic checkpoint carries: the given one with num_hidden_layers cut, torch_dtype
 * set to what is written, no quantization_config (the weights are plain floats) and no MTP layer
 * (num_nextn_predict_layers 0, since its weights are not written). Validated by parseConfig.
 */
export function synthConfig(raw: RawConfig, source: string, dtype: SynthDType, layers?: number): { raw: RawConfig; config: DeepSeekConfig } {
  const out: RawConfig = structuredClone(raw);
  if (layers !== undefined) {
    if (!Number.isInteger(layers) || layers < 1) fail(`layers must be a positive whole number, got ${layers}`);
    out.num_hidden_layers = layers;
  }
  out.torch_dtype = dtype === 'bf16' ? 'bfloat16' : 'float32';
  delete out.quantization_config;
  if (Object.hasOwn(out, 'num_nextn_predict_layers')) out.num_nextn_predict_layers = 0;
  return { raw: out, config: parseConfig(out, source) };
}

/**
 * Every tensor a DeepSeek-V2/V3 checkpoint of this config holds (host/model/schema.ts), in checkpoint order.
 * Linear layers [out, in] get std 1/sqrt(in): each keeps the scale of its (normalised) input, so activations
 * stay O(1) through any depth and the logits come out with unit spread. The embedding has std 1, norms are
 * ones, and the routing bias is small and f32 (as in DeepSeek's releases), so routing is mostly the scores'.
 */
export function planTensors(cfg: DeepSeekConfig, dtype: SynthDType): SynthTensor[] {
  const wt: DType = dtype === 'bf16' ? 'BF16' : 'F32';
  const list: SynthTensor[] = [];
  for (const w of schemaWeights(modelSchema(cfg))) {
    if (w.tied) continue;
    for (const t of w.parts) {
      const bias = w.role === ROLE_ROUTER_BIAS;
      const init: Init =
        w.kind === 'vector' ? (bias ? { kind: 'normal', std: 0.01 } : { kind: 'ones' }) : { kind: 'normal', std: w.role === ROLE_EMBED ? 1 : 1 / Math.sqrt(t.shape[1]) };
      const type: DType = bias ? 'F32' : wt;
      list.push({ name: t.name, dtype: type, shape: [...t.shape], init, nbytes: t.shape.reduce((p, d) => p * d, 1) * DTYPE_SIZE[type] });
    }
  }
  return list;
}

/** Writes a random-weight checkpoint; see the file comment. Resolves when every byte is on disk. */
export async function synthCheckpoint(opts: SynthOptions): Promise<SynthResult> {
  const dtype = opts.dtype ?? 'bf16';
  if (!SYNTH_DTYPES.includes(dtype)) fail(`dtype must be one of ${SYNTH_DTYPES.join(', ')}, got ${JSON.stringify(dtype)}`);
  const seed = opts.seed ?? 0;
  if (!Number.isInteger(seed) || seed < 0 || seed > 0xffffffff) fail(`seed must be a whole number from 0 to 4294967295, got ${seed}`);
  const { raw, config } = synthConfig(opts.config, opts.source, dtype, opts.layers);
  const tensors = planTensors(config, dtype);
  const shards = planShards(tensors, opts.shardBytes);
  const names = shards.map((_, k) => shardName(k, shards.length));
  const totalBytes = tensors.reduce((n, t) => n + t.nbytes, 0);

  prepareOut(opts.out, opts.overwrite ?? false);
  const metadata = { format: 'pt', synthetic: `deepwasm synth, seed ${seed}` };
  const chunk = Math.max(2, Math.floor((opts.chunkValues ?? CHUNK_VALUES) / 2) * 2);
  const bufs = [new Uint8Array(chunk * 4), new Uint8Array(chunk * 4)];
  let which = 0;
  let written = 0;
  for (let k = 0; k < shards.length; k++) {
    const path = join(opts.out, names[k]);
    let fd: number;
    try {
      fd = fs.openSync(path, 'w');
    } catch (e) {
      fail(`cannot create ${path} (${(e as Error).message})`);
    }
    let pending: Promise<void> = Promise.resolve();
    try {
      const header = safetensorsHeader(shards[k], metadata);
      fs.writeSync(fd, header);
      let position = header.length;
      for (const t of shards[k]) {
        const stream = new TensorStream(t, seed);
        while (!stream.done) {
          const buf = bufs[which];
          which ^= 1;
          const n = stream.fill(buf);
          // At most one write in flight: the buffer filled next is the one whose write has finished.
          await pending;
          pending = writeAt(fd, buf, n, position).catch((e: Error) => fail(`writing ${path} failed (${e.message})`));
          position += n;
          written += n;
          opts.onProgress?.(written, totalBytes);
        }
      }
      await pending;
    } finally {
      await pending.catch(() => undefined);
      fs.closeSync(fd);
    }
  }

  const weightMap: Record<string, string> = {};
  for (const [k, shard] of shards.entries()) for (const t of shard) weightMap[t.name] = names[k];
  const sortedMap = Object.fromEntries(Object.keys(weightMap).sort().map((n) => [n, weightMap[n]]));
  fs.writeFileSync(join(opts.out, INDEX), JSON.stringify({ metadata: { total_size: totalBytes }, weight_map: sortedMap }, null, 2) + '\n');
  const tokenizerFit = opts.tokenizerFrom === undefined ? undefined : writeTokenizer(opts.tokenizerFrom, opts.out, config.vocabSize);
  const tokenizer = tokenizerFit !== undefined;
  // config.json last: a checkpoint interrupted mid-write has none, so nothing mistakes it for a whole one.
  fs.writeFileSync(join(opts.out, 'config.json'), JSON.stringify(raw, null, 2) + '\n');
  const parameters = tensors.reduce((n, t) => n + t.shape.reduce((p, d) => p * d, 1), 0);
  return { config, shards: names, tensors: tensors.length, parameters, totalBytes, tokenizer, ...(tokenizerFit ? { tokenizerFit } : {}) };
}

/** The byte tokens of DeepSeek's byte-level BPE end at id 258: a smaller vocabulary cannot encode every text. */
const BYTE_TOKENS_END = 259;

function writeTokenizer(from: string, out: string, vocab: number): 'cut' | 'padded' | 'exact' | undefined {
  if (vocab < BYTE_TOKENS_END) return undefined;
  const read = (name: string): string => {
    try {
      return fs.readFileSync(join(from, name), 'utf8');
    } catch (e) {
      fail(`cannot read the tokenizer to give the checkpoint (${(e as Error).message})`);
    }
  };
  const json = JSON.parse(read('tokenizer.json'));
  const ids = tokenizerIds(json);
  const fit = ids > vocab ? 'cut' : ids < vocab ? 'padded' : 'exact';
  fs.writeFileSync(join(out, 'tokenizer.json'), JSON.stringify(fit === 'cut' ? cutTokenizerJson(json, vocab) : fit === 'padded' ? padTokenizerJson(json, vocab) : json));
  fs.writeFileSync(join(out, 'tokenizer_config.json'), read('tokenizer_config.json'));
  return fit;
}

/**
 * The tokenizer.json with ids up to `vocab`: each id past its own is a word of two of its merged tokens (one
 * that starts a word, then one from inside a word), so what a random model of a real vocabulary samples (ids
 * up to 102,400 or 129,280, where the embedded tokenizer has ~4,100) decodes to text instead of to nothing.
 * No merge makes the new tokens, so text encodes as before. Deterministic: a hash of the id picks the pieces.
 */
export function padTokenizerJson<T extends { added_tokens: { id: number; content: string }[]; model: { vocab: Record<string, number>; merges: (string | string[])[] } }>(
  json: T,
  vocab: number,
): T {
  const base = tokenizerIds(json);
  const taken = new Set([...Object.keys(json.model.vocab), ...json.added_tokens.map((t) => t.content)]);
  const special = new Set(json.added_tokens.map((t) => t.id));
  const merged = Object.entries(json.model.vocab)
    .filter(([, id]) => id >= BYTE_TOKENS_END && !special.has(id))
    .sort((a, b) => a[1] - b[1])
    .map(([t]) => t);
  // The byte-level spelling of a space is U+0120.
  const starts = merged.filter((t) => t.startsWith('\u0120'));
  const inner = merged.filter((t) => !t.startsWith('\u0120'));
  const first = starts.length > 0 ? starts : merged;
  const second = inner.length > 0 ? inner : merged;
  if (merged.length === 0) fail('internal: the tokenizer to pad has no merged tokens');
  const kept = { ...json.model.vocab };
  for (let id = base, tries = 0; id < vocab; tries++) {
    const h = Math.imul(id ^ (tries << 20), 0x9e3779b1) >>> 0;
    const g = Math.imul(h ^ (h >>> 15), 0x85ebca6b) >>> 0;
    const token = first[h % first.length] + second[g % second.length];
    if (taken.has(token)) {
      if (tries > 1000) fail(`the embedded tokenizer has too few tokens to make ${vocab} distinct ones`);
      continue;
    }
    taken.add(token);
    kept[token] = id++;
    tries = -1;
  }
  return { ...json, model: { ...json.model, vocab: kept } };
}

function writeAt(fd: number, buf: Uint8Array, n: number, position: number): Promise<void> {
  return new Promise((resolve, reject) => {
    let done = 0;
    const next = (): void => {
      fs.write(fd, buf, done, n - done, position + done, (err, wrote) => {
        if (err) return reject(err);
        done += wrote;
        if (done < n) next();
        else resolve();
      });
    };
    next();
  });
}

/** Creates `out`, or checks that it holds no checkpoint (removing the old one when overwrite is set). */
function prepareOut(out: string, overwrite: boolean): void {
  makeDirs(resolve(out));
  if (!fs.statSync(out).isDirectory()) fail(`${out} is not a folder`);
  const old = fs.readdirSync(out).filter((n) => n === 'config.json' || n === INDEX || /^model.*\.safetensors$/.test(n));
  if (old.length === 0) return;
  if (!overwrite) fail(`${out} already holds a checkpoint (${old.slice(0, 3).join(', ')}${old.length > 3 ? ', ...' : ''}); pass --force to replace it`);
  for (const n of old) fs.rmSync(join(out, n));
}

/** mkdir -p, one level at a time: Node's recursive mkdir spins forever where mkdir says ENOENT under an
 * existing parent (as in /proc). */
function makeDirs(dir: string): void {
  if (fs.existsSync(dir)) return;
  const parent = dirname(dir);
  if (parent !== dir) makeDirs(parent);
  try {
    fs.mkdirSync(dir);
  } catch (e) {
    fail(`cannot create output folder ${dir} (${(e as Error).message})`);
  }
}

// ---- random numbers ----------------------------------------------------------------------------

/** FNV-1a over the name's UTF-16 code units. */
function hashName(name: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < name.length; i++) h = Math.imul(h ^ name.charCodeAt(i), 0x01000193);
  return h >>> 0;
}

/** splitmix32: spreads a seed over the four words of xoshiro's state. */
function splitmix32(state: { s: number }): number {
  let z = (state.s = (state.s + 0x9e3779b9) | 0);
  z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
  z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
  return (z ^ (z >>> 16)) | 0;
}

/**
 * Inverse of the standard normal CDF (Acklam's rational approximation, relative error < 1.2e-9):
 * enough to place 65536 quantiles.
 */
function normalQuantile(p: number): number {
  const a = [-39.69683028665376, 220.9460984245205, -275.9285104469687, 138.357751867269, -30.66479806614716, 2.506628274631];
  const b = [-54.47609879822406, 161.5858368580409, -155.6989798598866, 66.80131188771972, -13.28068155288572];
  const c = [-0.007784894002430293, -0.3223964580411365, -2.400758277161838, -2.549732539343734, 4.374664141464968, 2.938163982698783];
  const d = [0.007784695709041462, 0.3224671290700398, 2.445134137142996, 3.754408661907416];
  const tail = (q: number): number =>
    (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1);
  if (p < 0.02425) return tail(Math.sqrt(-2 * Math.log(p)));
  if (p > 1 - 0.02425) return -tail(Math.sqrt(-2 * Math.log(1 - p)));
  const q = p - 0.5;
  const r = q * q;
  return ((((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q) / (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1);
}

let quantiles: Float64Array | undefined;
/** Cached per (dtype, std): 16 random bits pick one of 65536 equiprobable N(0, std^2) quantiles. */
const tables = new Map<string, Uint32Array>();
const f32 = new Float32Array(1);
const f32Bits = new Uint32Array(f32.buffer);

/** The table as raw element bits: bf16 values in the low 16 bits of each entry, or f32 bits. */
function normalTable(dtype: DType, std: number): Uint32Array {
  const key = `${dtype}:${std}`;
  let t = tables.get(key);
  if (t) return t;
  quantiles ??= Float64Array.from({ length: 65536 }, (_, i) => normalQuantile((i + 0.5) / 65536));
  t = new Uint32Array(65536);
  for (let i = 0; i < 65536; i++) {
    f32[0] = quantiles[i] * std;
    const bits = f32Bits[0];
    // bf16 by round-to-nearest-even of the f32 bits (no NaNs here).
    t[i] = dtype === 'BF16' ? (bits + 0x7fff + ((bits >>> 16) & 1)) >>> 16 : bits;
  }
  tables.set(key, t);
  return t;
}

/** One tensor's bytes, produced in order by successive fill() calls. */
class TensorStream {
  private readonly count: number;
  private at = 0;
  private readonly table: Uint32Array | null;
  private a: number;
  private b: number;
  private c: number;
  private d: number;

  constructor(private readonly t: SynthTensor, seed: number) {
    this.count = t.nbytes / DTYPE_SIZE[t.dtype];
    this.table = t.init.kind === 'normal' ? normalTable(t.dtype, t.init.std) : null;
    // The seed is mixed before the name goes in, so (seed, name) pairs do not cancel out.
    const st = { s: splitmix32({ s: seed | 0 }) ^ hashName(t.name) };
    this.a = splitmix32(st);
    this.b = splitmix32(st);
    this.c = splitmix32(st);
    this.d = splitmix32(st);
    if ((this.a | this.b | this.c | this.d) === 0) this.d = 1;
  }

  get done(): boolean {
    return this.at >= this.count;
  }

  /** Fills buf from the start with the next values; returns the bytes produced. */
  fill(buf: Uint8Array): number {
    const size = DTYPE_SIZE[this.t.dtype];
    const n = Math.min(this.count - this.at, Math.floor(buf.length / size / 2) * 2);
    this.at += n;
    if (this.table === null) {
      const one = size === 2 ? new Uint16Array(buf.buffer, buf.byteOffset, n) : new Uint32Array(buf.buffer, buf.byteOffset, n);
      one.fill(size === 2 ? 0x3f80 : 0x3f800000);
    } else if (size === 2) this.normalBf16(new Uint32Array(buf.buffer, buf.byteOffset, n >> 1), n & 1 ? new Uint16Array(buf.buffer, buf.byteOffset, n) : null);
    else this.normalF32(new Uint32Array(buf.buffer, buf.byteOffset, n));
    return n * size;
  }

  /** xoshiro128**: one 32-bit draw gives two bf16 values (one table lookup per 16 bits). */
  private normalBf16(pairs: Uint32Array, odd: Uint16Array | null): void {
    const t = this.table!;
    let { a, b, c, d } = this;
    const n = pairs.length;
    for (let i = 0; i < n; i++) {
      const m = Math.imul(b, 5);
      const r = Math.imul((m << 7) | (m >>> 25), 9);
      const s = b << 9;
      c ^= a;
      d ^= b;
      b ^= c;
      a ^= d;
      c ^= s;
      d = (d << 11) | (d >>> 21);
      pairs[i] = t[r & 0xffff] | (t[r >>> 16] << 16);
    }
    if (odd) {
      const m = Math.imul(b, 5);
      const r = Math.imul((m << 7) | (m >>> 25), 9);
      const s = b << 9;
      c ^= a;
      d ^= b;
      b ^= c;
      a ^= d;
      c ^= s;
      d = (d << 11) | (d >>> 21);
      odd[odd.length - 1] = t[r & 0xffff];
    }
    this.a = a;
    this.b = b;
    this.c = c;
    this.d = d;
  }

  private normalF32(out: Uint32Array): void {
    const t = this.table!;
    let { a, b, c, d } = this;
    const n = out.length;
    for (let i = 0; i < n; i += 2) {
      const m = Math.imul(b, 5);
      const r = Math.imul((m << 7) | (m >>> 25), 9);
      const s = b << 9;
      c ^= a;
      d ^= b;
      b ^= c;
      a ^= d;
      c ^= s;
      d = (d << 11) | (d >>> 21);
      out[i] = t[r & 0xffff];
      if (i + 1 < n) out[i + 1] = t[r >>> 16];
    }
    this.a = a;
    this.b = b;
    this.c = c;
    this.d = d;
  }
}
