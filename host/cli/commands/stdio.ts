import { createInterface } from 'node:readline';
import { fail } from '../../errors.js';
import { decodeUserText, watchUtf8 } from '../utf8.js';

/** Calls `each` with every line of stdin parsed as JSON and its 1-based line number; a bad line fails naming it. */
export async function forEachJsonLine(each: (value: unknown, where: string) => void): Promise<void> {
  watchUtf8(process.stdin, 'stdin');
  let n = 0;
  for await (const line of createInterface({ input: process.stdin, crlfDelay: Infinity })) {
    n++;
    each(parseJson(line, `stdin line ${n}`), `stdin line ${n}`);
  }
}

export async function readStdinBytes(): Promise<Uint8Array> {
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

/** All of stdin as text, warning when it is not UTF-8. */
export async function readStdin(): Promise<string> {
  return decodeUserText(await readStdinBytes(), 'stdin');
}

export function parseJson(text: string, where: string): unknown {
  try {
    return JSON.parse(text);
  } catch (e) {
    return fail(`${where} is not valid JSON (${(e as Error).message})`);
  }
}

/**
 * Calls `onFailure` once stdout cannot be written, so generation stops instead of crashing: a reader that went away
 * (`| head`) is a normal end, other failures are reported by `check`. The listener stays for the life of the process
 * because write errors arrive asynchronously, after the last write.
 */
export function guardStdout(onFailure: () => void): { readonly failed: boolean; check(): void } {
  let error: NodeJS.ErrnoException | undefined;
  process.stdout.on('error', (e: NodeJS.ErrnoException) => {
    error ??= e;
    onFailure();
  });
  return {
    get failed() {
      return error !== undefined;
    },
    check() {
      if (error !== undefined && error.code !== 'EPIPE') fail(`cannot write to stdout: ${error.message}`);
    },
  };
}
