import { fail } from '../errors.js';

export type FlagKind = 'string' | 'int' | 'number' | 'boolean' | 'list';

export interface FlagSpec {
  name: string;
  kind: FlagKind;
  help: string;
  /** Shown in --help as the value's name, e.g. DIR or N. */
  value?: string;
  required?: boolean;
  min?: number;
  max?: number;
}

export type Flags = Record<string, string | number | boolean | string[] | undefined>;

/**
 * Parses `--name value`, `--name=value` and bare boolean flags against the command's specs. Every
 * mistake (unknown flag, missing or malformed value, out-of-range number) is a DeepWasmError that
 * names the flag and says what was expected.
 */
export function parseFlags(argv: string[], specs: FlagSpec[], command: string): Flags {
  const byName = new Map(specs.map((s) => [s.name, s]));
  const flags: Flags = {};
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (!arg.startsWith('--')) fail(`unexpected argument "${arg}" for "deepwasm ${command}" (see deepwasm ${command} --help)`);
    const eq = arg.indexOf('=');
    const name = arg.slice(2, eq < 0 ? undefined : eq);
    const spec = byName.get(name);
    if (!spec) fail(`unknown flag --${name} for "deepwasm ${command}" (see deepwasm ${command} --help)`);
    if (spec.kind === 'boolean') {
      if (eq >= 0) fail(`--${name} takes no value`);
      flags[name] = true;
      continue;
    }
    let raw: string;
    if (eq >= 0) raw = arg.slice(eq + 1);
    else {
      if (i + 1 >= argv.length) fail(`--${name} needs a value (${spec.value ?? spec.kind})`);
      raw = argv[++i];
    }
    if (spec.kind === 'list') (flags[name] as string[] | undefined) ? (flags[name] as string[]).push(raw) : (flags[name] = [raw]);
    else flags[name] = spec.kind === 'string' ? raw : parseNumber(raw, spec);
  }
  for (const spec of specs) {
    if (spec.required && flags[spec.name] === undefined) fail(`"deepwasm ${command}" needs --${spec.name} ${spec.value ?? ''}`.trimEnd());
  }
  return flags;
}

function parseNumber(raw: string, spec: FlagSpec): number {
  const n = raw.trim() === '' ? NaN : Number(raw);
  const whole = spec.kind === 'int';
  if (!Number.isFinite(n) || (whole && !Number.isInteger(n))) {
    fail(`--${spec.name} expects ${whole ? 'a whole number' : 'a number'}, got "${raw}"`);
  }
  if (spec.min !== undefined && n < spec.min) fail(`--${spec.name} must be at least ${spec.min}, got ${raw}`);
  if (spec.max !== undefined && n > spec.max) fail(`--${spec.name} must be at most ${spec.max}, got ${raw}`);
  return n;
}

/** The help text of one command: usage line, summary and one line per flag. */
export function commandHelp(command: string, summary: string, specs: FlagSpec[]): string {
  const lines = [`Usage: deepwasm ${command} [flags]`, '', summary, '', 'Flags:'];
  const shown = specs.map((s) => [`--${s.name}${s.kind === 'boolean' ? '' : ` ${s.value ?? s.kind.toUpperCase()}`}`, s.help + (s.required ? ' (required)' : '')]);
  const width = Math.max(...shown.map(([f]) => f.length));
  for (const [f, h] of shown) lines.push(`  ${f.padEnd(width)}  ${h}`);
  return lines.join('\n');
}
