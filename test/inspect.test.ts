// deepwasm inspect: the sizes it plans from the headers are the sizes the loader then allocates (every
// fixture, every format it loads in), the placement over memories (a layer's experts split between two,
// a unit larger than the limit refused by name), and the presets at full size.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { Model } from '../host/model/model.js';
import { placeUnits, type Unit } from '../host/model/placement.js';
import type { QuantName } from '../host/model/weights.js';
import { cli, fails } from './cli-process.js';
import { FIXTURES, MODEL_FIXTURES } from './helpers.js';

/** "1.29 MB" -> bytes (to the printed precision). */
function parseBytes(text: string): number {
  const m = /^([\d.]+) (GB|MB|KB)$/.exec(text);
  if (!m) throw new Error(`not a size: ${text}`);
  return Number(m[1]) * { GB: 1e9, MB: 1e6, KB: 1e3 }[m[2] as 'GB' | 'MB' | 'KB'];
}

for (const name of MODEL_FIXTURES) {
  const quants: (QuantName | undefined)[] = [undefined, 'q8', 'q4', ...(name === 'v3-fp8-blocks' ? ['fp8' as const] : ['bf16' as const])];
  test(`${name}: inspect plans the bytes the loader allocates, in every format`, async () => {
    const dir = `${FIXTURES}models/${name}`;
    for (const quant of quants) {
      const r = cli(['inspect', '--model', dir, ...(quant ? ['--quant', quant] : [])]);
      assert.is(r.status, 0, r.stderr);
      const planned = parseBytes(/^weights +(\S+ \S+) as /m.exec(r.stdout)![1]);
      const model = await Model.load(dir, { threads: 1, quant });
      try {
        // What the loader put in memory, weight by weight, in the format it chose for each.
        const k = model.rt.kernels;
        const seen = new Set<number>();
        let loaded = 0;
        for (const p of model.placed) {
          if (seen.has(p.ptr)) continue;
          seen.add(p.ptr);
          loaded += p.cols === 1 && p.fmt === 0 ? p.rows * 4 : k.weight_bytes(p.fmt, p.rows, p.cols) >>> 0;
        }
        const digits = loaded >= 1e6 ? 1e4 : 10;
        assert.is(Math.round(planned / digits), Math.round(loaded / digits), `${name} ${quant ?? 'default'}: planned ${planned}, loaded ${loaded}`);
        assert.is(model.weightBytes, loaded);
      } finally {
        await model.close();
      }
    }
  });
}

test('placement: a small memory limit lays the model over several memories, a layer\'s experts split between two', () => {
  const r = cli(['inspect', '--model', `${FIXTURES}models/v3-tiny`, '--quant', 'q8', '--memory-limit', '1']);
  assert.is(r.status, 0, r.stderr);
  assert.match(r.stdout, /^memories   2 of at most 1\.00 MiB/m);
  assert.match(r.stdout, /^ +0: +[\d.]+ MiB  embedding, layers 0-1, layer 2 \(attention and norms, KV cache, experts 0-\d+\)$/m);
  assert.match(r.stdout, /^ +1: +[\d.]+ MiB  layer 2 \(experts \d+-15\), head$/m);
  assert.match(r.stdout, /^loads      on the CPU here, over 2 WebAssembly memories$/m);
});

test('placement: units in order, none split, each memory within the limit; a unit over the limit is refused by name', () => {
  const units: Unit[] = [5, 3, 4, 1, 6].map((bytes, i) => ({ name: `unit ${i}`, layer: -1, expert: -1, weights: [], bytes }));
  const plan = placeUnits(units, 8);
  assert.equal(plan.memories.map((m) => m.units.map((u) => u.name)), [['unit 0', 'unit 1'], ['unit 2', 'unit 3'], ['unit 4']]);
  assert.ok(plan.memories.every((m) => m.bytes <= 8));
  assert.throws(() => placeUnits(units, 5), /unit 4 takes 0\.00 MiB, more than the memory limit of 0\.00 MiB/);
});

test('presets at full size: 671B at q4 needs many memories and more than this machine; 16B at q4 fits its RAM', () => {
  const v3 = cli(['inspect', '--preset', '671B', '--quant', 'q4']);
  assert.is(v3.status, 0, v3.stderr);
  assert.match(v3.stdout, /^parameters 671\.\d\d B, 36\.\d\d B read per token$/m);
  assert.match(v3.stdout, /^weights +4\d\d\.\d\d GB as q4/m);
  assert.match(v3.stdout, /^memories   1\d\d of at most \d+ MiB/m);
  assert.match(v3.stdout, /^machine .* it does not fit/m);
  const lite = cli(['inspect', '--preset', '16B', '--quant', 'q4']);
  assert.match(lite.stdout, /^parameters 15\.7\d B/m);
  assert.match(lite.stdout, /^memories   3 of at most/m);
});

test('inspect: bad flags are one line each', () => {
  fails(cli(['inspect']), /inspect needs exactly one of --model DIR or --preset NAME/, 'neither');
  fails(cli(['inspect', '--preset', '16B', '--model', `${FIXTURES}models/v3-tiny`]), /exactly one of/, 'both');
  fails(cli(['inspect', '--preset', 'v9']), /--preset "v9" is not a preset; presets: v3-2k6, 16B, 236B, 671B/, 'unknown preset');
  fails(cli(['inspect', '--preset', '671B', '--memory-limit', '100']), /embedding takes \d+ MiB, more than the memory limit of 100 MiB; raise --memory-limit/, 'unit over the limit');
  fails(cli(['inspect', '--model', `${FIXTURES}models/v3-tiny`, '--context', '999999']), /--context 999999 exceeds max_position_embeddings \(256\)/, 'context');
});

test.run();
