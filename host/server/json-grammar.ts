// A byte-at-a-time recognizer of the prefixes of JSON texts a schema allows. Token masks feed it every
// token's bytes from the current state, so states are immutable (a token that fails leaves nothing to undo)
// and cheap: a state is a chain of small frames, the innermost value first, each container below it.
// Besides "may this byte come next", a state knows the shortest bytes that finish the document, which is how
// a generation near its token limit still ends in valid JSON.
import { ANY, T_ARRAY, T_BOOLEAN, T_INTEGER, T_NULL, T_NUMBER, T_OBJECT, T_STRING, requiredMembers, type SchemaNode } from './json-schema.js';

/**
 * Insignificant whitespace allowed in one place: enough for pretty-printed JSON a few levels deep, few enough
 * that a model cannot spend its tokens on blank lines.
 */
const MAX_WHITESPACE = 16;

const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const COMMA = 0x2c;
const COLON = 0x3a;
const OPEN_BRACE = 0x7b;
const CLOSE_BRACE = 0x7d;
const OPEN_BRACKET = 0x5b;
const CLOSE_BRACKET = 0x5d;
const MINUS = 0x2d;
const PLUS = 0x2b;
const DOT = 0x2e;
const ZERO = 0x30;

const isWhitespace = (b: number): boolean => b === 0x20 || b === 0x0a || b === 0x0d || b === 0x09;
const isDigit = (b: number): boolean => b >= 0x30 && b <= 0x39;
const isHex = (b: number): boolean => isDigit(b) || (b >= 0x61 && b <= 0x66) || (b >= 0x41 && b <= 0x46);
const latin1 = (bytes: Uint8Array, n = bytes.length): string => String.fromCharCode(...bytes.subarray(0, n));

export abstract class Frame {
  private cachedKey: string | undefined;

  constructor(readonly parent: Frame | null) {}

  /** The state after byte `b`, or null when `b` cannot come next. */
  abstract step(b: number): Frame | null;

  /** Appends the shortest bytes that end this frame's value, its closing bytes included. */
  abstract finish(out: number[]): void;

  /** This frame's share of the state's key. */
  protected abstract own(): string;

  /** A container, once the child value it waits for is complete. */
  resume(): Frame {
    throw new Error(`${this.constructor.name} holds no child value`);
  }

  /** Whether the value may end here, a later byte then going to the container (numbers, enum values a longer one extends). */
  get complete(): boolean {
    return false;
  }

  /** Equal for states that accept the same continuations: what masks are cached by. */
  key(): string {
    return (this.cachedKey ??= this.parent ? `${this.own()}|${this.parent.key()}` : this.own());
  }
}

/** The whole document has been written: nothing may follow. */
export class Done extends Frame {
  constructor() {
    super(null);
  }
  step(): null {
    return null;
  }
  finish(): void {}
  protected own(): string {
    return 'D';
  }
}

const DONE = new Done();

/** Below the top-level value: once that value is complete, so is the document. */
class Root extends Frame {
  constructor() {
    super(null);
  }
  step(): null {
    return null;
  }
  finish(): void {}
  override resume(): Frame {
    return DONE;
  }
  protected own(): string {
    return 'R';
  }
}

/** The state before any byte of a document of `schema`. */
export function documentStart(schema: SchemaNode): Frame {
  return new ValueStart(schema, new Root(), 0);
}

/** The state after `bytes`, or null when they leave the allowed prefixes. */
export function advance(state: Frame, bytes: ArrayLike<number>): Frame | null {
  let s: Frame | null = state;
  for (let i = 0; i < bytes.length && s; i++) s = s.step(bytes[i]);
  return s;
}

/** The shortest bytes that finish the document from `state`. */
export function completion(state: Frame): number[] {
  const out: number[] = [];
  for (let f: Frame | null = state; f; f = f.parent ? f.parent.resume() : null) f.finish(out);
  return out;
}

/** Whether the document may end at `state` (it is complete, or its top-level number or literal could end here). */
export function mayEnd(state: Frame): boolean {
  return state === DONE || (state.complete && state.parent?.resume() === DONE);
}

/** Before a value of `node`: whitespace, then the value's first byte picks its kind. */
class ValueStart extends Frame {
  constructor(
    readonly node: SchemaNode,
    parent: Frame,
    readonly ws: number,
  ) {
    super(parent);
  }
  step(b: number): Frame | null {
    if (isWhitespace(b)) return this.ws < MAX_WHITESPACE ? new ValueStart(this.node, this.parent!, this.ws + 1) : null;
    return startValue(this.node, this.parent!, b);
  }
  finish(out: number[]): void {
    out.push(...this.node.minimal);
  }
  protected own(): string {
    return `V${this.node.id},${this.ws}`;
  }
}

const LITERAL_BOOLEANS = [new TextEncoder().encode('true'), new TextEncoder().encode('false')];
const LITERAL_NULL = [new TextEncoder().encode('null')];

/** The frame after a value's first byte `b`, or null when no value of `node` starts with it. */
function startValue(node: SchemaNode, parent: Frame, b: number): Frame | null {
  if (node.literals) return new Literal(node.literals, 0, parent, node.id).step(b);
  const t = node.types;
  if (b === QUOTE) return t & T_STRING ? new Str(parent, Str.TEXT, 0, 0, 0) : null;
  if (b === OPEN_BRACE) return t & T_OBJECT ? new Obj(node, parent, Obj.OPEN, 0, -1, 0) : null;
  if (b === OPEN_BRACKET) return t & T_ARRAY ? new Arr(node, parent, Arr.OPEN, 0) : null;
  if (b === MINUS || isDigit(b)) return t & (T_NUMBER | T_INTEGER) ? new Num(parent, !(t & T_NUMBER), Num.START).step(b) : null;
  if (b === 0x74 || b === 0x66) return t & T_BOOLEAN ? new Literal(LITERAL_BOOLEANS, 0, parent, -1).step(b) : null;
  if (b === 0x6e) return t & T_NULL ? new Literal(LITERAL_NULL, 0, parent, -2).step(b) : null;
  return null;
}

/** One of a fixed set of texts (enum values, true/false, null), `typed` bytes of it written. */
class Literal extends Frame {
  constructor(
    readonly candidates: Uint8Array[],
    readonly typed: number,
    parent: Frame,
    /** Which set: the schema node's id, or negative for true/false and null. */
    readonly set: number,
  ) {
    super(parent);
  }
  step(b: number): Frame | null {
    const n = this.typed;
    const next = this.candidates.filter((c) => c.length > n && c[n] === b);
    if (next.length === 0) return this.complete ? this.parent!.resume().step(b) : null;
    // Once no candidate is longer, the value is over (enum values are compact, so none ends in whitespace).
    if (next.every((c) => c.length === n + 1)) return this.parent!.resume();
    return new Literal(next, n + 1, this.parent!, this.set);
  }
  override get complete(): boolean {
    return this.candidates.some((c) => c.length === this.typed);
  }
  finish(out: number[]): void {
    const rest = this.candidates.reduce((a, c) => (c.length < a.length ? c : a));
    for (let i = this.typed; i < rest.length; i++) out.push(rest[i]);
  }
  protected own(): string {
    return `L${this.set},${latin1(this.candidates[0], this.typed)}`;
  }
}

/** A string's contents after the opening quote: text, an escape, \u hex digits, or the rest of a UTF-8 character. */
class Str extends Frame {
  static readonly TEXT = 0;
  static readonly ESCAPE = 1;
  static readonly HEX = 2;
  static readonly UTF8 = 3;

  constructor(
    parent: Frame,
    readonly phase: number,
    /** HEX: digits still due; UTF8: continuation bytes still due. */
    readonly left: number,
    /** UTF8: the range of the next continuation byte (narrower after E0, ED, F0, F4: no overlongs or surrogates). */
    readonly lo: number,
    readonly hi: number,
  ) {
    super(parent);
  }
  step(b: number): Frame | null {
    switch (this.phase) {
      case Str.TEXT:
        if (b === QUOTE) return this.parent!.resume();
        if (b === BACKSLASH) return new Str(this.parent!, Str.ESCAPE, 0, 0, 0);
        if (b < 0x20) return null;
        if (b < 0x80) return this;
        return utf8Lead(this.parent!, b);
      case Str.ESCAPE:
        if (b === 0x75) return new Str(this.parent!, Str.HEX, 4, 0, 0);
        return b === QUOTE || b === BACKSLASH || b === 0x2f || b === 0x62 || b === 0x66 || b === 0x6e || b === 0x72 || b === 0x74 ? this.text() : null;
      case Str.HEX:
        if (!isHex(b)) return null;
        return this.left === 1 ? this.text() : new Str(this.parent!, Str.HEX, this.left - 1, 0, 0);
      default:
        if (b < this.lo || b > this.hi) return null;
        return this.left === 1 ? this.text() : new Str(this.parent!, Str.UTF8, this.left - 1, 0x80, 0xbf);
    }
  }
  private text(): Str {
    return new Str(this.parent!, Str.TEXT, 0, 0, 0);
  }
  finish(out: number[]): void {
    if (this.phase === Str.ESCAPE) out.push(0x6e);
    else if (this.phase === Str.HEX) for (let i = 0; i < this.left; i++) out.push(ZERO);
    else if (this.phase === Str.UTF8) {
      out.push(this.lo);
      for (let i = 1; i < this.left; i++) out.push(0x80);
    }
    out.push(QUOTE);
  }
  protected own(): string {
    return `S${this.phase},${this.left},${this.lo},${this.hi}`;
  }
}

/** After a UTF-8 lead byte inside a string: the continuation bytes it needs (RFC 3629's table), or null for a byte that leads nothing. */
function utf8Lead(parent: Frame, b: number): Frame | null {
  if (b >= 0xc2 && b <= 0xdf) return new Str(parent, Str.UTF8, 1, 0x80, 0xbf);
  if (b === 0xe0) return new Str(parent, Str.UTF8, 2, 0xa0, 0xbf);
  if (b === 0xed) return new Str(parent, Str.UTF8, 2, 0x80, 0x9f);
  if (b >= 0xe1 && b <= 0xef) return new Str(parent, Str.UTF8, 2, 0x80, 0xbf);
  if (b === 0xf0) return new Str(parent, Str.UTF8, 3, 0x90, 0xbf);
  if (b >= 0xf1 && b <= 0xf3) return new Str(parent, Str.UTF8, 3, 0x80, 0xbf);
  if (b === 0xf4) return new Str(parent, Str.UTF8, 3, 0x80, 0x8f);
  return null;
}

/** A number, by the states of JSON's grammar; `integer` leaves out fractions and exponents. */
class Num extends Frame {
  static readonly START = 0;
  static readonly MINUS = 1;
  static readonly ZERO = 2;
  static readonly INT = 3;
  static readonly DOT = 4;
  static readonly FRACTION = 5;
  static readonly E = 6;
  static readonly E_SIGN = 7;
  static readonly EXPONENT = 8;

  constructor(
    parent: Frame,
    readonly integer: boolean,
    readonly state: number,
  ) {
    super(parent);
  }
  step(b: number): Frame | null {
    const to = this.next(b);
    if (to === this.state) return this;
    if (to >= 0) return new Num(this.parent!, this.integer, to);
    return this.complete ? this.parent!.resume().step(b) : null;
  }
  private next(b: number): number {
    const digit = isDigit(b);
    const fraction = !this.integer && b === DOT;
    const exponent = !this.integer && (b === 0x65 || b === 0x45);
    switch (this.state) {
      case Num.START:
        return b === MINUS ? Num.MINUS : b === ZERO ? Num.ZERO : digit ? Num.INT : -1;
      case Num.MINUS:
        return b === ZERO ? Num.ZERO : digit ? Num.INT : -1;
      case Num.ZERO:
        return fraction ? Num.DOT : exponent ? Num.E : -1;
      case Num.INT:
        return digit ? Num.INT : fraction ? Num.DOT : exponent ? Num.E : -1;
      case Num.DOT:
        return digit ? Num.FRACTION : -1;
      case Num.FRACTION:
        return digit ? Num.FRACTION : exponent ? Num.E : -1;
      case Num.E:
        return b === PLUS || b === MINUS ? Num.E_SIGN : digit ? Num.EXPONENT : -1;
      case Num.E_SIGN:
        return digit ? Num.EXPONENT : -1;
      default:
        return digit ? Num.EXPONENT : -1;
    }
  }
  override get complete(): boolean {
    return this.state === Num.ZERO || this.state === Num.INT || this.state === Num.FRACTION || this.state === Num.EXPONENT;
  }
  finish(out: number[]): void {
    if (!this.complete) out.push(ZERO);
  }
  protected own(): string {
    return `N${this.state}${this.integer ? 'i' : ''}`;
  }
}

/** An object of `node`: after "{" or ",", in a free key, before ":", in a value, after a value. */
class Obj extends Frame {
  static readonly OPEN = 0;
  static readonly FREE_KEY = 1;
  static readonly COLON = 2;
  static readonly VALUE = 3;
  static readonly AFTER = 4;
  static readonly COMMA = 5;

  constructor(
    readonly node: SchemaNode,
    parent: Frame,
    readonly phase: number,
    /** Bit i: properties[i] has been written. */
    readonly used: number,
    /** COLON: the property whose key was written (-1 in an object of free keys). */
    readonly current: number,
    readonly ws: number,
  ) {
    super(parent);
  }
  private with(phase: number, used = this.used, current = -1, ws = 0): Obj {
    return new Obj(this.node, this.parent!, phase, used, current, ws);
  }
  /** Every required property written. */
  private get satisfied(): boolean {
    return (this.node.required & ~this.used) === 0;
  }
  /** A property still to write (always, with free keys): a key may follow. */
  private get anyLeft(): boolean {
    const props = this.node.properties;
    return props === null || this.used !== (2 ** props.length - 1) >>> 0;
  }
  step(b: number): Frame | null {
    const { phase } = this;
    if (isWhitespace(b) && phase !== Obj.FREE_KEY && phase !== Obj.VALUE) {
      return this.ws < MAX_WHITESPACE ? this.with(phase, this.used, this.current, this.ws + 1) : null;
    }
    if (phase === Obj.OPEN || phase === Obj.COMMA) {
      if (b === QUOTE) {
        if (!this.node.properties) return new Str(this.with(Obj.FREE_KEY), Str.TEXT, 0, 0, 0);
        return this.anyLeft ? new Key(this, 0, new Uint8Array(0)) : null;
      }
      return phase === Obj.OPEN && b === CLOSE_BRACE && this.satisfied ? this.parent!.resume() : null;
    }
    if (phase === Obj.COLON) {
      if (b !== COLON) return null;
      const i = this.current;
      return new ValueStart(i < 0 ? ANY : this.node.properties![i].node, this.with(Obj.VALUE, i < 0 ? this.used : this.used | (1 << i)), 0);
    }
    if (phase === Obj.AFTER) {
      if (b === COMMA) return this.anyLeft ? this.with(Obj.COMMA) : null;
      return b === CLOSE_BRACE && this.satisfied ? this.parent!.resume() : null;
    }
    return null;
  }
  override resume(): Frame {
    return this.phase === Obj.FREE_KEY ? this.with(Obj.COLON) : this.with(Obj.AFTER);
  }
  finish(out: number[]): void {
    const { node, used } = this;
    switch (this.phase) {
      case Obj.COLON: {
        const i = this.current;
        out.push(COLON, ...(i < 0 ? ANY : node.properties![i].node).minimal);
        requiredMembers(node, i < 0 ? used : used | (1 << i), false, out);
        break;
      }
      case Obj.COMMA:
        if (!this.satisfied) requiredMembers(node, used, true, out);
        else if (node.properties) addShortestProperty(node, used, out);
        else out.push(QUOTE, QUOTE, COLON, ZERO);
        break;
      default:
        requiredMembers(node, used, this.phase === Obj.OPEN, out);
    }
    out.push(CLOSE_BRACE);
  }
  protected own(): string {
    return `O${this.node.id},${this.phase},${this.used},${this.current},${this.ws}`;
  }
}

/** After a comma with every required property written: the shortest of the properties not yet written. */
function addShortestProperty(node: SchemaNode, used: number, out: number[]): void {
  let best = -1;
  node.properties!.forEach((p, i) => {
    if (used & (1 << i)) return;
    const size = p.key.length + p.node.minimal.length;
    if (best < 0 || size < node.properties![best].key.length + node.properties![best].node.minimal.length) best = i;
  });
  const p = node.properties![best];
  out.push(QUOTE, ...p.key, QUOTE, COLON, ...p.node.minimal);
}

/**
 * A key of an object with listed properties, `typed` bytes after its opening quote: only the names of
 * properties not yet written, spelled as JSON writes them. It stands in for its object, whose parent it takes.
 */
class Key extends Frame {
  constructor(
    readonly obj: Obj,
    readonly length: number,
    readonly typed: Uint8Array,
  ) {
    super(obj.parent);
  }
  private candidates(): number[] {
    const { used, node } = this.obj;
    const out: number[] = [];
    node.properties!.forEach((p, i) => {
      if (used & (1 << i) || p.key.length < this.length) return;
      for (let j = 0; j < this.length; j++) if (p.key[j] !== this.typed[j]) return;
      out.push(i);
    });
    return out;
  }
  step(b: number): Frame | null {
    const props = this.obj.node.properties!;
    const n = this.length;
    let whole = -1;
    for (const i of this.candidates()) {
      const key = props[i].key;
      if (key.length > n && key[n] === b) {
        const typed = new Uint8Array(n + 1);
        typed.set(this.typed.subarray(0, n));
        typed[n] = b;
        return new Key(this.obj, n + 1, typed);
      }
      if (key.length === n) whole = i;
    }
    return b === QUOTE && whole >= 0 ? new Obj(this.obj.node, this.obj.parent!, Obj.COLON, this.obj.used, whole, 0) : null;
  }
  finish(out: number[]): void {
    const { node, used } = this.obj;
    const props = node.properties!;
    const candidates = this.candidates();
    // A required property first: writing an optional one would leave the required ones still to add.
    const required = candidates.filter((i) => node.required & (1 << i));
    const pick = (required.length > 0 ? required : candidates).reduce((a, i) => (props[i].key.length + props[i].node.minimal.length < props[a].key.length + props[a].node.minimal.length ? i : a));
    const p = props[pick];
    for (let j = this.length; j < p.key.length; j++) out.push(p.key[j]);
    out.push(QUOTE, COLON, ...p.node.minimal);
    requiredMembers(node, used | (1 << pick), false, out);
    out.push(CLOSE_BRACE);
  }
  protected own(): string {
    return `K${this.obj.node.id},${this.obj.used},${latin1(this.typed, this.length)}`;
  }
}

/** An array of `node`: after "[", in an element, after an element. */
class Arr extends Frame {
  static readonly OPEN = 0;
  static readonly VALUE = 1;
  static readonly AFTER = 2;

  constructor(
    readonly node: SchemaNode,
    parent: Frame,
    readonly phase: number,
    readonly ws: number,
  ) {
    super(parent);
  }
  step(b: number): Frame | null {
    if (this.phase === Arr.VALUE) return null;
    if (isWhitespace(b)) return this.ws < MAX_WHITESPACE ? new Arr(this.node, this.parent!, this.phase, this.ws + 1) : null;
    if (b === CLOSE_BRACKET) return this.parent!.resume();
    const element = new Arr(this.node, this.parent!, Arr.VALUE, 0);
    if (this.phase === Arr.AFTER) return b === COMMA ? new ValueStart(this.node.items, element, 0) : null;
    return startValue(this.node.items, element, b);
  }
  override resume(): Frame {
    return new Arr(this.node, this.parent!, Arr.AFTER, 0);
  }
  finish(out: number[]): void {
    out.push(CLOSE_BRACKET);
  }
  protected own(): string {
    return `A${this.node.id},${this.phase},${this.ws}`;
  }
}
