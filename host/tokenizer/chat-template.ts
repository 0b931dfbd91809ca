import { Template } from '@huggingface/jinja';
import { fail } from '../errors.js';
import { asArray, asObject, asString } from './json.js';

/** A chat message as chat templates read it; DeepSeek's also reads `tool_calls` on assistant messages. */
export interface ChatMessage {
  role: string;
  content: string | null;
  tool_calls?: ChatToolCall[];
  [field: string]: unknown;
}

export interface ChatToolCall {
  type: string;
  function: { name: string; arguments: string };
  [field: string]: unknown;
}

/** tokenizer_config.json's Jinja `chat_template`, compiled on first use so a broken one only hurts chat. */
export class ChatTemplate {
  private compiled: Template | undefined;

  constructor(
    private readonly source: string,
    private readonly where: string,
  ) {}

  render(context: Record<string, unknown>): string {
    if (this.compiled === undefined) {
      try {
        this.compiled = new Template(this.source);
      } catch (e) {
        fail(`${this.where} is not a valid Jinja template: ${message(e)}`);
      }
    }
    try {
      return this.compiled.render(context);
    } catch (e) {
      return fail(`${this.where} failed to render: ${message(e)}`);
    }
  }
}

function message(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/**
 * Reads `chat_template`: a string, or transformers' list of named templates of which the one named "default" is used.
 * Returns undefined when the config has none.
 */
export function parseChatTemplate(config: Record<string, unknown> | undefined, file: string): ChatTemplate | undefined {
  const where = `${file} chat_template`;
  const value = config?.['chat_template'];
  if (value === undefined || value === null) return undefined;
  if (typeof value === 'string') return new ChatTemplate(value, where);
  const named = asArray(value, where).map((entry, i) => {
    const o = asObject(entry, `${where}[${i}]`);
    return { name: asString(o['name'], `${where}[${i}].name`), template: asString(o['template'], `${where}[${i}].template`) };
  });
  const chosen = named.find((t) => t.name === 'default');
  if (chosen === undefined) {
    fail(`${where} lists templates ${named.map((t) => JSON.stringify(t.name)).join(', ')} but none named "default"`);
  }
  return new ChatTemplate(chosen.template, `${where} "default"`);
}
