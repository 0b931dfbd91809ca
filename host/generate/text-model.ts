import { readConfig, type DeepSeekConfig } from '../checkpoint/config.js';
import { fail } from '../errors.js';
import { loadBackend } from '../backends/load.js';
import type { LoadOptions, ModelBackend } from '../model/backend.js';
import type { ChatMessage, Tokenizer } from '../tokenizer/index.js';
import { loadTokenizer } from '../tokenizer/load.js';
import { beamSearch, type BeamOptions, type BeamResult } from './beam.js';
import { TokenLoop, type TokenResult } from './generate.js';
import { checkMessages } from './messages.js';
import { resolveGenerateOptions, type GenerateOptions } from './options.js';
import { streamText } from './text-stream.js';

/** A finished generation: its text (without any stop string) and how it went. */
export interface GenerateResult extends TokenResult {
  text: string;
}

/**
 * A model with its tokenizer: text in, text out. Each call takes a sequence of its own, so calls are independent; as
 * many generations run at once as the model has sequences (maxSequences, default 1).
 */
export class TextModel {
  /** Generations under way: close() ends them first. */
  private readonly active = new Set<TokenLoop>();
  private closed = false;

  private constructor(
    /** The model itself, for token-level work (see generateIds). */
    readonly model: ModelBackend,
    readonly tokenizer: Tokenizer,
    /** The ids that end generation: config.json's eos_token_id and the tokenizer's eos_token. */
    readonly eos: ReadonlySet<number>,
  ) {}

  /**
   * Loads `dir`: tokenizer.json (and tokenizer_config.json for BOS and the chat template), config.json and the
   * safetensors weights. The tokenizer is read first, so a folder without one fails before any weight is read.
   */
  static async load(dir: string, opts: LoadOptions = {}): Promise<TextModel> {
    return TextModel.assemble(dir, loadTokenizer(dir), readConfig(dir), () => loadBackend(dir, opts));
  }

  /** The model of `config` with `tokenizer`, after checking they belong together; `where` names them in messages. */
  static async assemble(where: string, tokenizer: Tokenizer, config: DeepSeekConfig, load: () => Promise<ModelBackend>): Promise<TextModel> {
    if (tokenizer.vocabSize > config.vocabSize) {
      fail(`${where}: tokenizer.json has ids up to ${tokenizer.vocabSize - 1} but config.json vocab_size is ${config.vocabSize}; the tokenizer does not belong to this model`);
    }
    const model = await load();
    const eos = new Set(config.eosTokenIds);
    if (tokenizer.eosTokenId !== undefined) eos.add(tokenizer.eosTokenId);
    return new TextModel(model, tokenizer, eos);
  }

  get config(): DeepSeekConfig {
    return this.model.config;
  }

  /**
   * Streams the continuation of `prompt`, which is encoded with the tokenizer's special tokens (BOS for DeepSeek).
   * Options are checked here, so a bad one throws before iteration starts.
   */
  generate(prompt: string, opts: GenerateOptions = {}): AsyncIterable<string> {
    return this.stream(this.encodePrompt(prompt), opts).text;
  }

  /** Generates the continuation of `prompt` and returns it whole with the token ids, finish reason and timings. */
  async generateText(prompt: string, opts: GenerateOptions = {}): Promise<GenerateResult> {
    return this.complete(this.encodePrompt(prompt), opts);
  }

  /**
   * Streams the assistant's reply to `messages`, rendered with the chat template and the assistant prefix (the
   * template writes BOS itself).
   */
  chat(messages: readonly ChatMessage[], opts: GenerateOptions = {}): AsyncIterable<string> {
    return this.stream(this.encodeChat(messages), opts).text;
  }

  /** The assistant's reply to `messages`, whole, with the token ids, finish reason and timings. */
  async chatText(messages: readonly ChatMessage[], opts: GenerateOptions = {}): Promise<GenerateResult> {
    return this.complete(this.encodeChat(messages), opts);
  }

  /**
   * Beam search from `prompt` (transformers' generate(num_beams, length_penalty, early_stopping,
   * do_sample=False)): the best hypothesis' text; the model must hold numBeams sequences (maxSequences).
   */
  async beamText(prompt: string, opts: BeamOptions): Promise<BeamResult & { text: string }> {
    if (this.closed) fail('this model is closed; load it again');
    const r = await beamSearch(this.model, this.encodePrompt(prompt), { eosTokenIds: [...this.eos], ...opts });
    const end = r.finishReason === 'stop' ? r.tokens.length - 1 : r.tokens.length;
    return { ...r, text: this.tokenizer.decode(r.tokens.slice(0, end), { skipSpecialTokens: true }) };
  }

  /** Ends any generation under way (finish reason 'abort'), then frees the model; it cannot be used afterwards. */
  async close(): Promise<void> {
    this.closed = true;
    for (const loop of this.active) loop.finish('abort');
    await this.model.close();
  }

  private encodePrompt(prompt: string): number[] {
    if (typeof prompt !== 'string') fail(`the prompt must be a string, got ${typeof prompt}`);
    if (prompt === '') fail('the prompt is empty: give some text to continue');
    return this.tokenizer.encode(prompt, { addSpecialTokens: true });
  }

  private encodeChat(messages: readonly ChatMessage[]): number[] {
    const text = this.tokenizer.applyChatTemplate(checkMessages(messages, 'chat messages'), { addGenerationPrompt: true });
    return this.tokenizer.encode(text);
  }

  private stream(ids: number[], opts: GenerateOptions): { loop: TokenLoop; text: AsyncGenerator<string> } {
    if (this.closed) fail('this model is closed; load it again');
    const settings = resolveGenerateOptions(opts);
    if (opts.draft instanceof TextModel) checkSameVocabulary(this.tokenizer, opts.draft.tokenizer);
    const loop = new TokenLoop(this.model, ids, settings, this.eos, (ended) => this.active.delete(ended));
    this.active.add(loop);
    return { loop, text: streamText(loop, this.tokenizer, settings.stop, settings.onToken) };
  }

  private async complete(ids: number[], opts: GenerateOptions): Promise<GenerateResult> {
    const { loop, text } = this.stream(ids, opts);
    let all = '';
    for await (const piece of text) all += piece;
    return { text: all, ...loop.result() };
  }
}

/** A draft must spell every id as the model does, or its guesses mean other tokens. */
export function checkSameVocabulary(model: Tokenizer, draft: Tokenizer): void {
  const n = Math.max(model.vocabSize, draft.vocabSize);
  for (let id = 0; id < n; id++) {
    if (model.idToToken(id) !== draft.idToToken(id)) {
      fail(`the draft model's tokenizer differs from the model's (token ${id} is ${JSON.stringify(draft.idToToken(id))} there, ${JSON.stringify(model.idToToken(id))} here): a draft must share the model's tokenizer`);
    }
  }
}
