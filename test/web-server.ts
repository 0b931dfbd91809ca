// `deepwasm web` for the browser tests: started on a free port of 127.0.0.1, stopped with SIGTERM.
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const MAIN = fileURLToPath(new URL('../host/cli/main.js', import.meta.url));

/** `deepwasm web --port 0` (a free port on 127.0.0.1) and the URL it prints, within 15 s. */
export async function startServer(extra: string[]): Promise<{ url: string; proc: ChildProcess }> {
  const proc = spawn(process.execPath, [MAIN, 'web', '--port', '0', ...extra], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  const url = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`deepwasm web printed no URL in 15 s: ${out}`)), 15_000);
    const read = (d: Buffer): void => {
      out += String(d);
      const m = /http:\/\/127\.0\.0\.1:\d+\//.exec(out);
      if (m) {
        clearTimeout(timer);
        resolve(m[0]);
      }
    };
    proc.stdout!.on('data', read);
    proc.stderr!.on('data', read);
    proc.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`deepwasm web exited with ${code}: ${out}`));
    });
  });
  return { url, proc };
}

export async function stopServer(proc: ChildProcess): Promise<void> {
  if (proc.exitCode !== null) return;
  const exited = new Promise((r) => proc.once('exit', r));
  proc.kill('SIGTERM');
  await Promise.race([exited, new Promise((r) => setTimeout(r, 5_000))]);
  if (proc.exitCode === null) proc.kill('SIGKILL');
}
