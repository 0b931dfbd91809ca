import { fail } from '../errors.js';
import { asArray, asBoolean, asObject, asString, asTokenId, describe, typeOf, type JsonObject } from './json.js';

/** The special tokens a tokenizer names and the ids `encode({ addSpecialTokens: true })` puts around the text. */
export interface Specials {
  readonly bosTokenId: number | undefined;
  readonly eosTokenId: number | undefined;
  /** bos_token, eos_token, ... as text, for the chat template (transformers passes its special_tokens_map). */
  readonly templateTokens: Readonly<Record<string, string>>;
  readonly prefix: readonly number[];
  readonly suffix: readonly number[];
}

const TEMPLATE_TOKEN_KEYS = ['bos_token', 'eos_token', 'pad_token', 'unk_token'] as const;

/**
 * tokenizer_config.json's `add_bos_token` / `add_eos_token`, when present, decide what surrounds encoded text, as
 * transformers' LlamaTokenizerFast (DeepSeek's class) does by rebuilding the post-processor from them. Without them the
 * tokenizer.json post-processor decides; its leading special token then also stands for BOS.
 */
export function resolveSpecials(
  postProcessor: unknown,
  config: JsonObject | undefined,
  tokenToId: (token: string) => number | undefined,
  files: { tokenizer: string; config: string },
): Specials {
  const templateTokens: Record<string, string> = {};
  const ids: Record<string, number | undefined> = {};
  for (const key of TEMPLATE_TOKEN_KEYS) {
    const content = config === undefined ? undefined : tokenContent(config[key], `${files.config} ${key}`);
    if (content === undefined) continue;
    templateTokens[key] = content;
    ids[key] = tokenToId(content);
  }
  for (const key of ['bos_token', 'eos_token'] as const) {
    if (templateTokens[key] !== undefined && ids[key] === undefined) {
      fail(`${files.config} ${key} ${JSON.stringify(templateTokens[key])} is not a token of ${files.tokenizer}`);
    }
  }
  const fromPost = templateIds(postProcessor, `${files.tokenizer} post_processor`);
  const addBos = config?.['add_bos_token'];
  const addEos = config?.['add_eos_token'];
  const configDecides = typeof addBos === 'boolean' || typeof addEos === 'boolean';
  const take = (flag: unknown, key: 'bos_token' | 'eos_token', field: string): number[] => {
    if (!asBoolean(flag, `${files.config} ${field}`, false)) return [];
    const id = ids[key];
    if (id === undefined) fail(`${files.config} sets ${field} but has no ${key}`);
    return [id];
  };
  return {
    bosTokenId: ids['bos_token'] ?? fromPost.prefix[0],
    eosTokenId: ids['eos_token'],
    templateTokens,
    prefix: configDecides ? take(addBos, 'bos_token', 'add_bos_token') : fromPost.prefix,
    suffix: configDecides ? take(addEos, 'eos_token', 'add_eos_token') : fromPost.suffix,
  };
}

/** A special token in tokenizer_config.json: a string, an AddedToken object ({"content": ...}) or null. */
function tokenContent(v: unknown, where: string): string | undefined {
  if (v === undefined || v === null) return undefined;
  if (typeof v === 'string') return v;
  return asString(asObject(v, where)['content'], `${where}.content`);
}

/** The ids a post-processor puts before and after a single sequence. */
function templateIds(json: unknown, where: string): { prefix: number[]; suffix: number[] } {
  const none = { prefix: [], suffix: [] };
  if (json === null || json === undefined) return none;
  const o = asObject(json, where);
  const type = typeOf(o, where);
  if (type === 'ByteLevel') return none;
  if (type === 'Sequence') {
    return asArray(o['processors'], `${where}.processors`)
      .map((p, i) => templateIds(p, `${where}.processors[${i}]`))
      .reduce((acc, p) => ({ prefix: [...acc.prefix, ...p.prefix], suffix: [...p.suffix, ...acc.suffix] }), none);
  }
  if (type !== 'TemplateProcessing') {
    fail(`${where}: post-processor type ${JSON.stringify(type)} is not supported (supported: TemplateProcessing, ByteLevel, Sequence)`);
  }
  const specials = asObject(o['special_tokens'] ?? {}, `${where}.special_tokens`);
  const result: { prefix: number[]; suffix: number[] } = { prefix: [], suffix: [] };
  let seenSequence = false;
  asArray(o['single'], `${where}.single`).forEach((piece, i) => {
    const at = `${where}.single[${i}]`;
    const item = asObject(piece, at);
    if (item['Sequence'] !== undefined) {
      seenSequence = true;
      return;
    }
    const special = asObject(item['SpecialToken'], `${at}.SpecialToken`);
    const name = asString(special['id'], `${at}.SpecialToken.id`);
    const entry = specials[name];
    if (entry === undefined) fail(`${at} names ${JSON.stringify(name)}, which ${where}.special_tokens lacks`);
    const entryIds = asArray(asObject(entry, `${where}.special_tokens[${JSON.stringify(name)}]`)['ids'], `${where}.special_tokens[${JSON.stringify(name)}].ids`);
    const ids = entryIds.map((id, k) => asTokenId(id, `${where}.special_tokens[${JSON.stringify(name)}].ids[${k}]`));
    (seenSequence ? result.suffix : result.prefix).push(...ids);
  });
  if (!seenSequence) fail(`${where}.single has no {"Sequence": ...} item, got ${describe(o['single'])}`);
  return result;
}
