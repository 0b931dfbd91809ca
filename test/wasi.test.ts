// The WASI build of the core (build/deepwasm-wasi.wasm from assembly/wasi/main.ts) runs the embedded
// model, packed by packModel, under node:wasi on one thread, and gives the recorded greedy ids.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { packModel } from '../host/model/pack.js';
import { argmax, loadOne } from './helpers.js';

const DIR = fileURLToPath(new URL('../../models/tiny', import.meta.url));
const WASM = fileURLToPath(new URL('../../build/deepwasm-wasi.wasm', import.meta.url));
const RUNNER = fileURLToPath(new URL('../../tools/run-wasi.mjs', import.meta.url));
const expected = JSON.parse(readFileSync(`${DIR}/expected.json`, 'utf8')) as { prompts: { input_ids: number[]; output_ids: number[] }[] };

test('WASI build: the packed embedded model under node:wasi gives the recorded greedy ids and the engine\'s', async () => {
  const rec = expected.prompts[0];
  const steps = Math.min(8, rec.output_ids.length);
  const model = await loadOne(DIR, { threads: 1, contextLength: 64 });
  const dir = mkdtempSync(join(tmpdir(), 'deepwasm-wasi-'));
  try {
    const image = join(dir, 'tiny.dwi');
    writeFileSync(image, packModel(model.model));
    const engine: number[] = [];
    let logits = model.forward(rec.input_ids);
    while (engine.length < steps) {
      engine.push(argmax(logits));
      logits = model.forward([engine[engine.length - 1]]);
    }
    const r = spawnSync(process.execPath, [RUNNER, WASM, image, ...rec.input_ids.map(String), '--steps', String(steps)], { encoding: 'utf8' });
    assert.is(r.status, 0, `${r.error ?? ""} ${r.signal ?? ""} ${r.stderr}`);
    const line = r.stdout.split('\n').find((l) => l.startsWith('ids: '));
    assert.ok(line, r.stdout);
    const ids = line.slice(5).trim().split(' ').map(Number);
    assert.equal(ids, rec.output_ids.slice(0, steps), 'recorded ids');
    assert.equal(ids, engine, "TypeScript engine's ids");
    assert.match(r.stdout, /checksum: -?\d/);
  } finally {
    await model.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

test.run();
