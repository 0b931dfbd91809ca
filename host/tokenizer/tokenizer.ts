import { fail } from '../errors.js';
import { AddedTokenMatcher, parseAddedTokens, type AddedToken } from './added-tokens.js';
import { Bpe } from './bpe.js';
import { tokenBytes } from './bytelevel.js';
import { parseChatTemplate, type ChatMessage, type ChatTemplate } from './chat-template.js';
import { asObject, typeOf } from './json.js';
import { buildNormalizer, type Normalizer } from './normalize.js';
import { buildPreTokenizer, type PreTokenizer } from './pretokenize.js';
import { resolveSpecials, type Specials } from './specials.js';
import { StreamDecoder } from './stream.js';

/** Lossy like tokenizers' from_utf8_lossy (one U+FFFD per invalid sequence) and, like it, keeps a leading U+FEFF. */
const utf8 = new TextDecoder('utf-8', { ignoreBOM: true });

export interface EncodeOptions {
  /** Put the configured special tokens (BOS for DeepSeek) around the text. Default false: chat templates already
   *  write BOS into their text, and the engine encodes rendered chats far more often than bare prompts. */
  addSpecialTokens?: boolean;
}

export interface DecodeOptions {
  /** Leave out tokens marked `special` in added_tokens (BOS, EOS, chat markers). Default false. */
  skipSpecialTokens?: boolean;
}

export interface ChatTemplateOptions {
  /** End with the assistant prefix so the model answers next. Default false, as in transformers. */
  addGenerationPrompt?: boolean;
  /** Tool (function) schemas, passed to the template as `tools`. */
  tools?: unknown[];
}

/** The file names errors should mention; loadTokenizer passes full paths. */
export interface TokenizerFileNames {
  tokenizer?: string;
  config?: string;
}

/**
 * A Hugging Face byte-level BPE tokenizer (tokenizer.json) with its tokenizer_config.json: encode, decode, streaming
 * decode and chat templates. Pure TypeScript without Node APIs, so it also runs in browsers; load.ts reads the files.
 */
export class Tokenizer {
  /** Highest id of the vocabulary and the added tokens, plus one. */
  readonly vocabSize: number;
  readonly bosTokenId: number | undefined;
  readonly eosTokenId: number | undefined;

  private readonly bpe: Bpe;
  private readonly preTokenize: PreTokenizer;
  private readonly normalize: Normalizer;
  /** Added tokens with normalized false are found in the raw text, the others after normalization. */
  private readonly rawAdded: AddedTokenMatcher;
  private readonly normalizedAdded: AddedTokenMatcher;
  private readonly addedByContent = new Map<string, number>();
  private readonly tokens: (string | undefined)[];
  private readonly special: Uint8Array;
  private readonly bytesCache: (Uint8Array | undefined)[];
  private readonly specials: Specials;
  private readonly chatTemplate: ChatTemplate | undefined;
  private readonly configFile: string;
  private readonly hasConfig: boolean;

  private constructor(tokenizerJson: unknown, tokenizerConfig: unknown, names: TokenizerFileNames) {
    const file = names.tokenizer ?? 'tokenizer.json';
    this.configFile = names.config ?? 'tokenizer_config.json';
    const root = asObject(tokenizerJson, file);
    const config = tokenizerConfig === undefined || tokenizerConfig === null ? undefined : asObject(tokenizerConfig, this.configFile);
    this.hasConfig = config !== undefined;
    checkDecoder(root['decoder'], `${file} decoder`);
    this.bpe = new Bpe(root['model'], file);
    this.normalize = buildNormalizer(root['normalizer'], file);
    this.preTokenize = buildPreTokenizer(root['pre_tokenizer'], file);
    const added = parseAddedTokens(root['added_tokens'], file);
    this.rawAdded = new AddedTokenMatcher(added.filter((t) => !t.normalized));
    this.normalizedAdded = new AddedTokenMatcher(added.filter((t) => t.normalized));

    let size = 0;
    for (const id of this.bpe.vocab.values()) size = Math.max(size, id + 1);
    for (const t of added) size = Math.max(size, t.id + 1);
    this.vocabSize = size;
    this.tokens = new Array<string | undefined>(size);
    for (const [token, id] of this.bpe.vocab) this.tokens[id] = token;
    this.special = new Uint8Array(size);
    for (const t of added) {
      this.tokens[t.id] = t.content;
      this.addedByContent.set(t.content, t.id);
      if (t.special) this.special[t.id] = 1;
    }
    this.bytesCache = new Array<Uint8Array | undefined>(size);

    this.specials = resolveSpecials(root['post_processor'], config, (t) => this.tokenToId(t), {
      tokenizer: file,
      config: this.configFile,
    });
    this.bosTokenId = this.specials.bosTokenId;
    this.eosTokenId = this.specials.eosTokenId;
    this.chatTemplate = parseChatTemplate(config, this.configFile);
  }

  /**
   * Builds a tokenizer from parsed tokenizer.json and (optionally) tokenizer_config.json, which supplies BOS/EOS,
   * whether BOS is added, and the chat template. Unsupported components fail here, naming the field.
   */
  static fromJSON(tokenizerJson: unknown, tokenizerConfig?: unknown, names: TokenizerFileNames = {}): Tokenizer {
    return new Tokenizer(tokenizerJson, tokenizerConfig, names);
  }

  /** Text → ids. Added tokens (special or not) in the text become their ids, as in transformers. */
  encode(text: string, opts: EncodeOptions = {}): number[] {
    const out: number[] = [];
    if (opts.addSpecialTokens) out.push(...this.specials.prefix);
    const onToken = (t: AddedToken): void => void out.push(t.id);
    const onPiece = (piece: string): void => this.bpe.encodePiece(piece, out);
    const onNormalized = (segment: string): void => this.preTokenize(segment, onPiece);
    const onRaw = (segment: string): void => {
      const normalized = this.normalize === undefined ? segment : this.normalize(segment);
      if (this.normalizedAdded.isEmpty) onNormalized(normalized);
      else this.normalizedAdded.split(normalized, onNormalized, onToken);
    };
    this.rawAdded.split(text, onRaw, onToken);
    if (opts.addSpecialTokens) out.push(...this.specials.suffix);
    return out;
  }

  /** Ids → text. Ids outside the vocabulary decode to nothing, as in tokenizers. */
  decode(ids: readonly number[], opts: DecodeOptions = {}): string {
    const parts: Uint8Array[] = [];
    let length = 0;
    for (const id of ids) {
      const bytes = this.bytesOf(id, opts.skipSpecialTokens ?? false);
      if (bytes === undefined) continue;
      parts.push(bytes);
      length += bytes.length;
    }
    const all = new Uint8Array(length);
    let at = 0;
    for (const p of parts) {
      all.set(p, at);
      at += p.length;
    }
    return utf8.decode(all);
  }

  /** A decoder for generated ids one at a time that never splits a UTF-8 character; see StreamDecoder. */
  streamDecoder(opts: DecodeOptions = {}): StreamDecoder {
    const skip = opts.skipSpecialTokens ?? false;
    return new StreamDecoder((id) => this.bytesOf(id, skip));
  }

  tokenToId(token: string): number | undefined {
    return this.addedByContent.get(token) ?? this.bpe.vocab.get(token);
  }

  idToToken(id: number): string | undefined {
    return Number.isInteger(id) && id >= 0 ? this.tokens[id] : undefined;
  }

  /** Whether the id is an added token marked special. */
  isSpecial(id: number): boolean {
    return this.special[id] === 1;
  }

  /**
   * Renders the chat template with the context transformers' apply_chat_template gives it: messages, tools (none
   * when not given), add_generation_prompt and the special tokens as text. Encode the result with the default
   * `addSpecialTokens: false`, since the template writes BOS itself.
   */
  applyChatTemplate(messages: readonly ChatMessage[], opts: ChatTemplateOptions = {}): string {
    if (this.chatTemplate === undefined) {
      fail(
        this.hasConfig
          ? `${this.configFile} has no chat_template, so chat messages cannot be formatted`
          : `no tokenizer_config.json was given, so there is no chat_template to format chat messages with`,
      );
    }
    return this.chatTemplate.render({
      ...this.specials.templateTokens,
      messages,
      tools: opts.tools ?? null,
      add_generation_prompt: opts.addGenerationPrompt ?? false,
    });
  }

  private bytesOf(id: number, skipSpecial: boolean): Uint8Array | undefined {
    if (skipSpecial && this.special[id] === 1) return undefined;
    let bytes = this.bytesCache[id];
    if (bytes === undefined) {
      const token = this.idToToken(id);
      if (token === undefined) return undefined;
      bytes = tokenBytes(token);
      this.bytesCache[id] = bytes;
    }
    return bytes;
  }
}

/** Only the ByteLevel decoder is supported: it is what makes the byte-exact streaming decode possible. */
function checkDecoder(json: unknown, where: string): void {
  if (json === null || json === undefined) fail(`${where} is missing; expected the ByteLevel decoder of a byte-level BPE`);
  const type = typeOf(asObject(json, where), where);
  if (type !== 'ByteLevel') fail(`${where}: decoder type ${JSON.stringify(type)} is not supported (supported: ByteLevel)`);
}
