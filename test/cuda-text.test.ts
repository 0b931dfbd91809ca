// On a machine with a CUDA device: `deepwasm run` and `deepwasm chat` print exactly the same greedy text on
// --backend cuda as on the CPU, for the embedded model and every reference fixture (each given the v3-format
// tokenizer cut to its vocabulary). Where there is no GPU it prints why and registers no test. The texts are
// written to $DW_RESULTS_TEXT (JSON) when set, for bench/RESULTS.md.
import { writeFileSync } from 'node:fs';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { cudaStatus } from '../host/backends/cuda/model.js';
import { DEFAULT_MODEL_DIR } from '../host/index.js';
import { cliOut } from './cli-process.js';
import { MODEL_FIXTURES } from './helpers.js';
import { fixtureTextDir } from './text-fixture.js';

const status = cudaStatus();
const results: Record<string, unknown> = {};


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
          run: { cpu: cliOut([...run, '--backend', 'cpu', '--threads', '2']), cuda: cliOut([...run, '--backend', 'cuda']) },
          chat: { cpu: cliOut([...chat, '--backend', 'cpu', '--threads', '2'], 'Hello there\n'), cuda: cliOut([...chat, '--backend', 'cuda'], 'Hello there\n') },
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
