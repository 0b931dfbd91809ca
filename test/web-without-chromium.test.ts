// What test/web.test.ts does on a machine without chromium, with DEEPWASM_CHROMIUM pointing at a path that does not
// exist: outside CI it skips with one line naming the install command and `npm test` passes; under CI=true it fails.
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { test } from 'uvu';
import * as assert from 'uvu/assert';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const INSTALL = 'apt-get install -y --no-install-recommends chromium';

function webTests(ci: string | undefined): { status: number | null; out: string } {
  const env: NodeJS.ProcessEnv = { ...process.env, DEEPWASM_CHROMIUM: '/nonexistent/chromium', NO_COLOR: '1' };
  delete env.CI;
  if (ci !== undefined) env.CI = ci;
  const r = spawnSync(process.execPath, ['node_modules/uvu/bin.js', 'dist/test', '^web\\.test\\.js$'], { cwd: ROOT, env, encoding: 'utf8', timeout: 60_000 });
  return { status: r.status, out: r.stdout + r.stderr };
}

test('without chromium, outside CI: one skip line naming the install command, no tests, exit 0', () => {
  const r = webTests(undefined);
  assert.is(r.status, 0, r.out);
  const skips = r.out.split('\n').filter((l) => l.startsWith('skip: '));
  assert.is(skips.length, 1, r.out);
  assert.ok(skips[0].includes('/nonexistent/chromium is missing') && skips[0].includes(INSTALL), skips[0]);
  assert.match(r.out, /Total:\s+0\b/, r.out);
});

test('without chromium, under CI=true: a failing test that says chromium is missing', () => {
  const r = webTests('true');
  assert.is(r.status, 1, r.out);
  assert.match(r.out, /chromium is installed, as CI runs the browser tests/, r.out);
  assert.ok(r.out.includes(`/nonexistent/chromium is missing`) && r.out.includes(INSTALL), r.out);
  assert.match(r.out, /Total:\s+1\b/, r.out);
  assert.match(r.out, /Passed:\s+0\b/, r.out);
});

test.run();
