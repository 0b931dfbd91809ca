// On a machine with a CUDA device: `deepwasm run` and `deepwasm chat` print exactly the same greedy text on
// --backend cuda as on the CPU, for the embedded model and every reference fixture (each given the v3-format
// tokenizer cut to its vocabulary). Where there is no GPU it prints why and registers no test. The texts are
// written to $DW_RESULTS_TEXT (JSON) when set, for bench/RESULTS.md.
import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { cudaStatus } from '../host/backends/cuda/model.js';
import { DEFAULT_MODEL_DIR } from '../host/index.js';
import { MODEL_FIXTURES } from './helpers.js';
import { fixtureTextDir } from './text-fixture.js';

const MAIN = fileURLToPath(new URL('../host/cli/main.js', import.meta.url));
const status = cudaStatus();
const results: Record<string, unknown> = {};

function cli(args: string[], input = ''): string {
  const r = spawnSync(process.execPath, [MAIN, ...args], { input, encoding: 'utf8', timeout: 120_000 });
  assert.is(r.status, 0, `deepwasm ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

if (!status.ok) {
  console.log(`skipped: no CUDA device (${status.reason})`);
} else {
  const models: [string, () => { dir: string; remove: () => void }][] = [
    ['embedded', () => ({ dir: DEFAULT_MODEL_DIR, remove: () => {} })],
    ...MODEL_FIXTURES.map((f): [string, () => { dir: string; remove: () => void }] => [f, () => fixtureTextDir(f)]),
  ];
  for (const [name, make] of models) {
    test(`${name}: run and chat print the same greedy text on cuda as on the cpu`, () => {
      const m = make();
      try {
        const run = ['run', '--model', m.dir, '--prompt', 'Once upon a time', '--max-tokens', '32', '--context', '128'];
        const chat = ['chat', '--model', m.dir, '--max-tokens', '24', '--context', '256'];
        const text = {
          run: { cpu: cli([...run, '--backend', 'cpu', '--threads', '2']), cuda: cli([...run, '--backend', 'cuda']) },
          chat: { cpu: cli([...chat, '--backend', 'cpu', '--threads', '2'], 'Hello there\n'), cuda: cli([...chat, '--backend', 'cuda'], 'Hello there\n') },
        };
        results[name] = text;
        if (process.env.DW_RESULTS_TEXT) writeFileSync(process.env.DW_RESULTS_TEXT, JSON.stringify(results, null, 2) + '\n');
        assert.ok(text.run.cpu.length > 0, 'the CPU wrote text');
        assert.is(text.run.cuda, text.run.cpu, 'run');
        assert.is(text.chat.cuda, text.chat.cpu, 'chat');
      } finally {
        m.remove();
      }
    });
  }
}

test.run();
