// Relaxed-SIMD detection and the choice of build: the probe module runs both relaxed instructions and
// checks known answers, so Node 20 (which rejects them, or with --experimental-wasm-relaxed-simd drops
// the dot product's accumulator) uses the plain build, and Node 22+ the relaxed one.
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { detectRelaxedSimd, probeModuleBytes, simdChoiceFromEnv } from '../host/runtime/features.js';
import { chosenSimd, Runtime, simdLevel } from '../host/runtime/runtime.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const FEATURES_JS = fileURLToPath(new URL('../host/runtime/features.js', import.meta.url));
const major = Number(process.versions.node.split('.')[0]);

test('the probe module is well formed: it validates exactly where the engine knows relaxed SIMD', () => {
  const bytes = probeModuleBytes();
  const report = detectRelaxedSimd();
  if (report.relaxed) assert.ok(WebAssembly.validate(bytes));
  else assert.ok(report.reason && report.reason.length > 0);
  console.log(`features: Node ${process.version}: relaxed SIMD ${report.relaxed ? 'used' : `not used (${report.reason})`}`);
});

test('Node 22 and later run relaxed SIMD correctly; Node 20 does not', () => {
  assert.is(detectRelaxedSimd().relaxed, major >= 22);
});

test('Node 20 with --experimental-wasm-relaxed-simd compiles the probe but is caught giving a wrong dot product', () => {
  if (major !== 20) {
    console.log(`features: skipped the Node 20 flag check on Node ${process.version}`);
    return;
  }
  const script = `import(${JSON.stringify(FEATURES_JS)}).then((m) => console.log(JSON.stringify(m.detectRelaxedSimd())))`;
  const r = spawnSync(process.execPath, ['--experimental-wasm-relaxed-simd', '--input-type=module', '-e', script], { encoding: 'utf8' });
  assert.is(r.status, 0, r.stderr);
  const report = JSON.parse(r.stdout) as { relaxed: boolean; reason: string };
  assert.is(report.relaxed, false);
  assert.match(report.reason, /relaxed_dot_i8x16_i7x16_add_s gives a wrong answer/);
});

test('Runtime.create picks the build: plain on request, the calibrated one on auto, and says which', async () => {
  const plain = await Runtime.create(1, { simd: 'plain' });
  assert.is(plain.simd, 'simd128');
  assert.is(plain.kernels.relaxed_simd(), 0);
  await plain.close();
  const auto = await Runtime.create(1);
  assert.is(auto.simd, (await chosenSimd()).level);
  if (!detectRelaxedSimd().relaxed || simdChoiceFromEnv() === 'plain') assert.is(auto.simd, 'simd128');
  assert.is(auto.kernels.relaxed_simd(), auto.simd === 'relaxed' ? 1 : 0);
  await auto.close();
  if (detectRelaxedSimd().relaxed) {
    const rx = await Runtime.create(2, { simd: 'relaxed' });
    assert.is(rx.simd, 'relaxed');
    await rx.close();
  } else {
    try {
      await Runtime.create(1, { simd: 'relaxed' });
      assert.unreachable('relaxed build on an engine without relaxed SIMD');
    } catch (e) {
      assert.match((e as Error).message, /relaxed SIMD was asked for, but .*Node 22 or newer, or DEEPWASM_SIMD=plain/);
    }
  }
});

test('DEEPWASM_SIMD selects the build; a bad value is an error that names the choices', () => {
  const saved = process.env.DEEPWASM_SIMD;
  try {
    process.env.DEEPWASM_SIMD = 'plain';
    assert.is(simdChoiceFromEnv(), 'plain');
    assert.is(simdLevel(), 'simd128');
    process.env.DEEPWASM_SIMD = 'auto';
    assert.is(simdLevel(), detectRelaxedSimd().relaxed ? 'relaxed' : 'simd128');
    process.env.DEEPWASM_SIMD = 'fast';
    assert.throws(() => simdChoiceFromEnv(), /DEEPWASM_SIMD is "fast"; expected plain, relaxed or auto/);
  } finally {
    if (saved === undefined) delete process.env.DEEPWASM_SIMD;
    else process.env.DEEPWASM_SIMD = saved;
  }
});

test('the plain build holds no relaxed-SIMD instruction and the relaxed build has them; neither allocates', () => {
  const plain = readFileSync(`${ROOT}build/deepwasm.wat`, 'utf8');
  const relaxed = readFileSync(`${ROOT}build/deepwasm-relaxed.wat`, 'utf8');
  assert.not.match(plain, /\b(i32x4|i16x8|i8x16|f32x4|f64x2)\.relaxed_/);
  assert.match(relaxed, /i32x4\.relaxed_dot_i8x16_i7x16_add_s/);
  assert.match(relaxed, /f32x4\.relaxed_madd/);
  for (const wat of [plain, relaxed]) assert.not.match(wat, /__alloc|__new\b/);
});

test.run();
