import { fail } from '../errors.js';

/**
 * Checks on untrusted tokenizer JSON. `where` names the file and the field (e.g. `tokenizer.json model.vocab`), so a
 * bad file is reported as what was found where and what was expected instead of a TypeError deep inside the encoder.
 */

export type JsonObject = Record<string, unknown>;

export function describe(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  if (typeof v === 'string') return `the string ${JSON.stringify(v.length > 40 ? v.slice(0, 40) + '…' : v)}`;
  if (typeof v === 'object') return 'an object';
  return `${typeof v} ${String(v)}`;
}

export function asObject(v: unknown, where: string): JsonObject {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) fail(`${where} must be an object, got ${describe(v)}`);
  return v as JsonObject;
}

export function asArray(v: unknown, where: string): unknown[] {
  if (!Array.isArray(v)) fail(`${where} must be an array, got ${describe(v)}`);
  return v;
}

export function asString(v: unknown, where: string): string {
  if (typeof v !== 'string') fail(`${where} must be a string, got ${describe(v)}`);
  return v;
}

export function asBoolean(v: unknown, where: string, absent: boolean): boolean {
  if (v === undefined || v === null) return absent;
  if (typeof v !== 'boolean') fail(`${where} must be true or false, got ${describe(v)}`);
  return v;
}

export function asTokenId(v: unknown, where: string): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v > 0x7fffffff) {
    fail(`${where} must be a non-negative integer token id, got ${describe(v)}`);
  }
  return v;
}

/** The `type` of a component object (normalizer, pre-tokenizer, model, ...), required to be a string. */
export function typeOf(o: JsonObject, where: string): string {
  return asString(o['type'], `${where}.type`);
}
