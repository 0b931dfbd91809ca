// The build 'auto' runs is measured once per machine and engine and kept: the calibration file holds both
// builds' speed-ups and the choice, a later process reads the choice instead of measuring, and
// DEEPWASM_SIMD still overrides it.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { detectRelaxedSimd } from '../host/runtime/features.js';

const RUNTIME_JS = fileURLToPath(new URL('../host/runtime/runtime.js', import.meta.url));
const dir = fs.mkdtempSync(join(tmpdir(), 'deepwasm-calibrate-'));
test.after(() => fs.rmSync(dir, { recursive: true, force: true }));

/** A fresh process's build for 'auto' (and what it says of the calibration), with the cache in `dir`. */
function autoBuild(env: Record<string, string> = {}): { level: string; calibration?: { measured: boolean; speedups: Record<string, number>; file?: string } } {
  const script = `import(${JSON.stringify(RUNTIME_JS)}).then(async (m) => { const r = await m.chosenSimd(); const rt = await m.Runtime.create(1); console.log(JSON.stringify({ ...r, runs: rt.simd })); await rt.close(); })`;
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', env: { ...process.env, DEEPWASM_SIMD: 'auto', DEEPWASM_CACHE_DIR: dir, ...env } });
  assert.is(r.status, 0, r.stderr);
  const out = JSON.parse(r.stdout) as { level: string; runs: string };
  assert.is(out.runs, out.level, 'Runtime.create runs the chosen build');
  return out;
}

test('an engine without relaxed SIMD runs the plain build and measures nothing', () => {
  if (detectRelaxedSimd().relaxed) return console.log(`calibrate: relaxed SIMD runs on Node ${process.version}; checked below`);
  const r = autoBuild();
  assert.is(r.level, 'simd128');
  assert.is(r.calibration, undefined);
  assert.is(fs.existsSync(join(dir, 'simd-choice.json')), false);
});

test('measured once, kept, read back by the next process, and overridden by DEEPWASM_SIMD', () => {
  if (!detectRelaxedSimd().relaxed) return console.log(`calibrate: Node ${process.version} has no relaxed SIMD, so there is nothing to calibrate`);
  const first = autoBuild();
  assert.ok(first.calibration?.measured, 'the first process measures');
  const file = join(dir, 'simd-choice.json');
  assert.is(first.calibration?.file, file);
  for (const [kernel, s] of Object.entries(first.calibration!.speedups)) assert.ok(Number.isFinite(s) && s > 0.2 && s < 10, `${kernel}: speed-up ${s}`);
  const kept = JSON.parse(fs.readFileSync(file, 'utf8')) as Record<string, { level: string }>;
  const keys = Object.keys(kept);
  assert.is(keys.length, 1);
  assert.is(kept[keys[0]].level, first.level);

  const second = autoBuild();
  assert.is(second.calibration?.measured, false, 'the second process reads the file');
  assert.is(second.level, first.level);

  // The file decides: the other build, written there, is what the next process runs.
  const other = first.level === 'relaxed' ? 'simd128' : 'relaxed';
  fs.writeFileSync(file, JSON.stringify({ [keys[0]]: { ...kept[keys[0]], level: other } }));
  assert.is(autoBuild().level, other);
  assert.is(autoBuild({ DEEPWASM_SIMD: 'plain' }).level, 'simd128');
  assert.is(autoBuild({ DEEPWASM_SIMD: 'relaxed' }).level, 'relaxed');
});

test.run();
