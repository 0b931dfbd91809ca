// `deepwasm serve` as a child process, under Node or Deno: started on a free port, its URL read from its first
// line, stopped with a signal.
import { spawn, type ChildProcess } from 'node:child_process';
import { MAIN } from './cli-process.js';

export interface ServeProcess {
  child: ChildProcess;
  /** The base URL it printed. */
  base: string;
  /** Everything it wrote to stderr so far. */
  stderr(): string;
  /** Resolves with the exit code (or the signal's name). */
  exited: Promise<number | string>;
}

/** Runs `command [prefix..] main.js serve --port 0 [args..]` and resolves once it listens; rejects if it exits first or after `startMs` (default 60 s). */
export function startServe(args: string[], opts: { command?: string; prefix?: string[]; env?: NodeJS.ProcessEnv; startMs?: number } = {}): Promise<ServeProcess> {
  const startMs = opts.startMs ?? 60_000;
  const child = spawn(opts.command ?? process.execPath, [...(opts.prefix ?? []), MAIN, 'serve', '--port', '0', ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: opts.env ?? process.env });
  let stdout = '';
  let stderr = '';
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  const exited = new Promise<number | string>((resolve) => child.once('exit', (code, signal) => resolve(code ?? signal ?? -1)));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`serve did not start within ${startMs / 1000} s (stderr: ${stderr})`));
    }, startMs);
    void exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`serve exited (${code}) before listening (stderr: ${stderr})`));
    });
    child.stdout!.setEncoding('utf8').on('data', (d: string) => {
      stdout += d;
      const m = /at (http:\/\/\S+)\/v1 /.exec(stdout);
      if (!m) return;
      clearTimeout(timer);
      resolve({ child, base: m[1], stderr: () => stderr, exited });
    });
  });
}
