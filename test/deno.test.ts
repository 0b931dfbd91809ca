// The CLI under `deno run` (deno from npm): greedy output equals Node's for the same command.
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { DENO_ENV, denoBinary } from './deno-bin.js';

const MAIN = fileURLToPath(new URL('../host/cli/main.js', import.meta.url));

function stdoutOf(cmd: string, args: string[], label: string): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: 120_000, env: DENO_ENV });
  if (r.error) throw new Error(`${label}: ${r.error.message}`);
  assert.is(r.status, 0, `${label}: exit code (stderr: ${r.stderr})`);
  return r.stdout;
}

for (const threads of [1, 2]) {
  test(`deno run: the CLI's greedy text equals Node's, ${threads} thread(s)`, () => {
    const deno = denoBinary();
    const args = ['run', '--prompt', 'Once upon a time', '--max-tokens', '24', '--temperature', '0', '--threads', String(threads)];
    const node = stdoutOf(process.execPath, [MAIN, ...args], 'node');
    const fromDeno = stdoutOf(deno, ['run', '-A', MAIN, ...args], 'deno');
    assert.ok(node.length > 0, 'node printed text');
    assert.is(fromDeno, node);
  });
}

test('deno run: the embedded model over several WebAssembly memories (--memory-limit 4) gives the same text', () => {
  const deno = denoBinary();
  const args = ['run', '--prompt', 'Once upon a time', '--max-tokens', '24', '--temperature', '0', '--threads', '2'];
  const node = stdoutOf(process.execPath, [MAIN, ...args], 'node');
  const spread = stdoutOf(deno, ['run', '-A', MAIN, ...args, '--memory-limit', '4'], 'deno over memories');
  assert.is(spread, node);
});

test.run();
