import { fail } from '../errors.js';
import type { ChatMessage } from '../tokenizer/index.js';

const describe = (v: unknown): string => (v === null ? 'null' : Array.isArray(v) ? 'an array' : typeof v === 'string' ? JSON.stringify(v) : typeof v);

/**
 * Checks chat messages from outside (JSON lines, JavaScript callers) before the template sees them: a template
 * reading a missing field fails far less clearly. `where` says where they came from.
 */
export function checkMessages(value: unknown, where: string): ChatMessage[] {
  if (!Array.isArray(value)) fail(`${where}: expected an array of chat messages, got ${describe(value)}`);
  if (value.length === 0) fail(`${where}: the list of chat messages is empty`);
  value.forEach((m: unknown, i) => {
    if (typeof m !== 'object' || m === null || Array.isArray(m)) fail(`${where}: message ${i} must be an object like {"role": "user", "content": "Hi"}, got ${describe(m)}`);
    const { role, content } = m as Record<string, unknown>;
    if (typeof role !== 'string') fail(`${where}: message ${i} needs a string "role", got ${describe(role)}`);
    if (typeof content !== 'string' && content !== null) fail(`${where}: message ${i} needs a "content" string (or null), got ${describe(content)}`);
  });
  return value as ChatMessage[];
}
