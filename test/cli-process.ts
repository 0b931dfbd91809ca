// The deepwasm command as users run it: a child process, its exit code, stdout and stderr.
import { spawn, spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import * as assert from 'uvu/assert';

export const MAIN = fileURLToPath(new URL('../host/cli/main.js', import.meta.url));

export interface Run {
  status: number | null;
  stdout: string;
  stderr: string;
}

export function cli(args: string[], input: string | Uint8Array = '', timeout = 60_000): Run {
  const r = spawnSync(process.execPath, [MAIN, ...args], { input, encoding: 'utf8', timeout });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** A command that must succeed: its stdout (a GPU run's first load may take a while, hence 120 s). */
export function cliOut(args: string[], input = ''): string {
  const r = cli(args, input, 120_000);
  assert.is(r.status, 0, `deepwasm ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

/** A user error: exit 1, the message on stderr, nothing on stdout and no stack trace. */
export function fails(r: Run, pattern: RegExp, label: string): void {
  assert.is(r.status, 1, `${label}: exit code (stderr: ${r.stderr})`);
  assert.match(r.stderr, /^error: /, `${label}: stderr starts with "error: "`);
  assert.match(r.stderr, pattern, label);
  assert.not.match(r.stderr, /\n\s+at /, `${label}: no stack trace`);
  assert.is(r.stdout, '', `${label}: nothing on stdout`);
}

/**
 * Runs the command with `input` written to stdin, which stays open, and sends SIGINT (what Ctrl-C sends) once
 * stdout shows the first generated text; resolves when it exits, or rejects after 60 s.
 */
export function cliInterrupted(args: string[], input = ''): Promise<Run> {
  const child = spawn(process.execPath, [MAIN, ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => {
    if (stdout === '') child.kill('SIGINT');
    stdout += d;
  });
  child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  child.stdin.write(input);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`no exit within 60 s after SIGINT (stdout ${JSON.stringify(stdout)}, stderr ${JSON.stringify(stderr)})`));
    }, 60_000);
    child.once('exit', (status) => {
      clearTimeout(timer);
      child.stdin.destroy();
      resolve({ status, stdout, stderr });
    });
  });
}
