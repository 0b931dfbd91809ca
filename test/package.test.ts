// The package as users import it: 'deepwasm' and 'deepwasm/edge' resolve through package.json "exports"; inside this
// checkout by Node's self-reference, so the README's `import { loadModel } from 'deepwasm'` runs here as it is.
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { test } from 'uvu';
import * as assert from 'uvu/assert';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));

/** Runs an ES module given as text with Node from the repository root; returns what it printed as JSON. */
function evalModule(script: string): unknown {
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { cwd: ROOT, encoding: 'utf8', timeout: 60_000 });
  assert.is(r.status, 0, `exit code (stderr: ${r.stderr})`);
  return JSON.parse(r.stdout);
}

test("import { loadModel } from 'deepwasm' loads the embedded model, which generates", () => {
  // Two threads: the pool's workers must not inherit --input-type, which Node refuses for a worker's file.
  const out = evalModule(`
    import { loadModel } from 'deepwasm';
    const model = await loadModel({ threads: 2 });
    const result = await model.generateText('Once upon a time', { maxTokens: 4 });
    await model.close();
    console.log(JSON.stringify({ url: import.meta.resolve('deepwasm'), tokens: result.tokens.length, text: result.text }));
  `) as { url: string; tokens: number; text: string };
  assert.is(out.url, pathToFileURL(join(ROOT, 'dist/host/index.js')).href);
  assert.is(out.tokens, 4);
  assert.ok(out.text.length > 0);
});

test("'deepwasm/edge' is the entry without files or workers", () => {
  const out = evalModule(`
    import { loadModelFromBuffers } from 'deepwasm/edge';
    console.log(JSON.stringify({ url: import.meta.resolve('deepwasm/edge'), type: typeof loadModelFromBuffers }));
  `);
  assert.equal(out, { url: pathToFileURL(join(ROOT, 'dist/host/edge.js')).href, type: 'function' });
});

test('every path package.json exports exists after the build, and main/types agree with "."', () => {
  const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as {
    main: string;
    types: string;
    exports: Record<string, string | { types: string; default: string }>;
  };
  const dot = pkg.exports['.'] as { types: string; default: string };
  assert.is(join(pkg.main), join(dot.default));
  assert.is(join(pkg.types), join(dot.types));
  for (const [entry, target] of Object.entries(pkg.exports)) {
    for (const path of typeof target === 'string' ? [target] : Object.values(target)) assert.ok(existsSync(join(ROOT, path)), `${entry}: ${path} exists`);
  }
});

test.run();
