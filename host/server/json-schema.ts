// The part of JSON Schema that response_format json_schema enforces while sampling: type (one or a list),
// properties, required, items, enum and const, additionalProperties false. Keywords that only describe
// (title, description, ...) are ignored; any other keyword is refused, since output that merely looks
// constrained is worse than an error.
import { invalid } from './errors.js';

export const T_STRING = 1;
export const T_NUMBER = 2;
export const T_INTEGER = 4;
export const T_BOOLEAN = 8;
export const T_NULL = 16;
export const T_OBJECT = 32;
export const T_ARRAY = 64;
const T_ANY = T_STRING | T_NUMBER | T_BOOLEAN | T_NULL | T_OBJECT | T_ARRAY;

const TYPE_BITS: Record<string, number> = {
  string: T_STRING,
  number: T_NUMBER,
  integer: T_INTEGER,
  boolean: T_BOOLEAN,
  null: T_NULL,
  object: T_OBJECT,
  array: T_ARRAY,
};

const DESCRIPTIVE = new Set(['title', 'description', '$schema', '$id', '$comment', 'default', 'examples', 'deprecated', 'readOnly', 'writeOnly']);

/** The used-properties set of an object is a 32-bit mask, so an object may name this many. */
export const MAX_PROPERTIES = 30;

export interface Property {
  name: string;
  /** The name as JSON writes it between the quotes (escapes included): the only spelling accepted. */
  key: Uint8Array;
  node: SchemaNode;
}

/** One schema, compiled: what values it allows and the shortest of them. */
export interface SchemaNode {
  /** Unique within the compiled schema: part of the parser states that masks are cached by. */
  readonly id: number;
  /** T_* bits; T_INTEGER alone means whole numbers only. */
  readonly types: number;
  /** enum/const: the allowed values as compact JSON bytes; null when any value of `types` goes. */
  readonly literals: Uint8Array[] | null;
  /** null: any keys, any values. */
  readonly properties: Property[] | null;
  /** Bit i set: properties[i] must appear. */
  readonly required: number;
  /** The schema of array elements. */
  readonly items: SchemaNode;
  /** The shortest text this schema allows. */
  readonly minimal: Uint8Array;
}

const utf8 = new TextEncoder();

/** Any JSON value: an object of any keys, an array of anything. */
export const ANY: SchemaNode = (() => {
  const node = { id: 0, types: T_ANY, literals: null, properties: null, required: 0, minimal: utf8.encode('0') } as { items?: SchemaNode } & Omit<SchemaNode, 'items'>;
  node.items = node as SchemaNode;
  return node as SchemaNode;
})();

/** response_format json_object: an object with any keys. */
export const ANY_OBJECT: SchemaNode = { id: 1, types: T_OBJECT, literals: null, properties: null, required: 0, items: ANY, minimal: utf8.encode('{}') };

const describe = (v: unknown): string => (v === null ? 'null' : Array.isArray(v) ? 'an array' : typeof v === 'object' ? 'an object' : JSON.stringify(v));

/** Compiles `schema`; errors are 400s whose param is the keyword's path under `where`. */
export function compileSchema(schema: unknown, where: string): SchemaNode {
  let next = 2;
  const compile = (s: unknown, at: string): SchemaNode => {
    if (s === true) return ANY;
    if (typeof s !== 'object' || s === null || Array.isArray(s)) throw invalid(at, `${at} must be a JSON schema object, got ${describe(s)}`);
    const o = s as Record<string, unknown>;
    for (const k of Object.keys(o)) {
      if (!DESCRIPTIVE.has(k) && !['type', 'properties', 'required', 'items', 'enum', 'const', 'additionalProperties'].includes(k)) {
        throw invalid(`${at}.${k}`, `${at}: the keyword "${k}" is not supported; response_format json_schema enforces type, properties, required, items, enum, const and additionalProperties: false`);
      }
    }
    const id = next++;
    const literals = literalsOf(o, at);
    let types = typesOf(o['type'], `${at}.type`);
    if (types === 0) types = o['properties'] !== undefined ? T_OBJECT : o['items'] !== undefined ? T_ARRAY : T_ANY;

    let properties: Property[] | null = null;
    let required = 0;
    if (o['properties'] !== undefined) {
      const props = o['properties'];
      if (typeof props !== 'object' || props === null || Array.isArray(props)) throw invalid(`${at}.properties`, `${at}.properties must be an object of schemas, got ${describe(props)}`);
      const names = Object.keys(props);
      if (names.length > MAX_PROPERTIES) throw invalid(`${at}.properties`, `${at}.properties has ${names.length} properties; at most ${MAX_PROPERTIES} are supported`);
      properties = names.map((name) => ({
        name,
        key: utf8.encode(JSON.stringify(name).slice(1, -1)),
        node: compile((props as Record<string, unknown>)[name], `${at}.properties.${name}`),
      }));
      const extra = o['additionalProperties'];
      if (extra !== undefined && extra !== false) {
        throw invalid(`${at}.additionalProperties`, `${at}.additionalProperties must be false (or left out) beside properties: only the listed properties can be enforced`);
      }
    }
    if (o['required'] !== undefined) {
      const req = o['required'];
      if (!Array.isArray(req) || req.some((r) => typeof r !== 'string')) throw invalid(`${at}.required`, `${at}.required must be a list of property names, got ${describe(req)}`);
      for (const name of req as string[]) {
        const i = properties?.findIndex((p) => p.name === name) ?? -1;
        if (i < 0) throw invalid(`${at}.required`, `${at}.required names "${name}", which is not in ${at}.properties`);
        required |= 1 << i;
      }
    }
    if (Array.isArray(o['items'])) throw invalid(`${at}.items`, `${at}.items must be one schema; tuple schemas (a list) are not supported`);
    const items = o['items'] === undefined ? ANY : compile(o['items'], `${at}.items`);
    const node = { id, types, literals, properties, required, items };
    return { ...node, minimal: minimalOf(node) };
  };
  return compile(schema, where);
}

function typesOf(t: unknown, at: string): number {
  if (t === undefined) return 0;
  const list = Array.isArray(t) ? t : [t];
  if (list.length === 0) throw invalid(at, `${at} is an empty list; give one or more of ${Object.keys(TYPE_BITS).join(', ')}`);
  let bits = 0;
  for (const name of list) {
    const bit = typeof name === 'string' ? TYPE_BITS[name] : undefined;
    if (bit === undefined) throw invalid(at, `${at} must be one of ${Object.keys(TYPE_BITS).join(', ')} (or a list of them), got ${describe(name)}`);
    bits |= bit;
  }
  // An integer is a number; "number" already allows every integer.
  return bits & T_NUMBER ? bits & ~T_INTEGER : bits;
}

function literalsOf(o: Record<string, unknown>, at: string): Uint8Array[] | null {
  let values: unknown[];
  if (o['const'] !== undefined) values = [o['const']];
  else if (o['enum'] !== undefined) {
    if (!Array.isArray(o['enum']) || o['enum'].length === 0) throw invalid(`${at}.enum`, `${at}.enum must be a non-empty list of values, got ${describe(o['enum'])}`);
    values = o['enum'];
  } else return null;
  const seen = new Set<string>();
  const out: Uint8Array[] = [];
  for (const v of values) {
    const text = JSON.stringify(v);
    if (!seen.has(text)) out.push(utf8.encode(text));
    seen.add(text);
  }
  return out;
}

const shortest = (xs: Uint8Array[]): Uint8Array => xs.reduce((a, b) => (b.length < a.length ? b : a));

function minimalOf(n: Omit<SchemaNode, 'minimal'>): Uint8Array {
  if (n.literals) return shortest(n.literals);
  const options: Uint8Array[] = [];
  if (n.types & (T_NUMBER | T_INTEGER)) options.push(utf8.encode('0'));
  if (n.types & T_STRING) options.push(utf8.encode('""'));
  if (n.types & T_ARRAY) options.push(utf8.encode('[]'));
  if (n.types & T_NULL) options.push(utf8.encode('null'));
  if (n.types & T_BOOLEAN) options.push(utf8.encode('true'));
  if (n.types & T_OBJECT) options.push(Uint8Array.from([0x7b, ...requiredMembers(n, 0, true), 0x7d]));
  return shortest(options);
}

/**
 * The bytes that add every required property not in `used` (`"name":minimal`, comma-separated, with a
 * leading comma unless `first`): the shortest way to make an object complete.
 */
export function requiredMembers(n: Pick<SchemaNode, 'properties' | 'required'>, used: number, first: boolean, out: number[] = []): number[] {
  n.properties?.forEach((p, i) => {
    if (!(n.required & (1 << i)) || used & (1 << i)) return;
    if (!first) out.push(0x2c);
    first = false;
    out.push(0x22, ...p.key, 0x22, 0x3a, ...p.node.minimal);
  });
  return out;
}
