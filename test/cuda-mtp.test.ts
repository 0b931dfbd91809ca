// DeepSeek-V3's MTP layer on the GPU, against the references the CPU's test/mtp.test.ts uses: on the random-MTP
// fixture (v3-tiny-mtp) the CUDA layer's logits are PyTorch's within 2e-3 at every position (one position a call,
// and all positions in one call, also in chunks of a small max_prefill), and forward()'s hidden states (a
// prefill, the single-token decode step, batched steps) are the CPU backend's within 2e-3. Greedy speculative
// decoding with draft 'mtp' on CUDA is in cuda-speculative.test.ts; here `run` and `chat --draft mtp --backend
// cuda` print the CPU's plain greedy text with the embedded model's trained MTP layer, and `logits --gen --draft
// mtp --backend cuda` writes the reference's greedy ids and logits, and the server with draft 'mtp' on CUDA gives
// two concurrent greedy completions the text it gives without a draft. Where there is no GPU (or the library is
// not built) it prints why and registers no test.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { cudaStatus, loadCudaModel } from '../host/backends/cuda/model.js';
import { DEFAULT_MODEL_DIR, DeepWasmError, Model, loadModel } from '../host/index.js';
import { DeepWasmServer, type ServerOptions } from '../host/server/server.js';
import type { BatchEntry, ModelBackend } from '../host/model/backend.js';
import { cliOut } from './cli-process.js';
import { FIXTURES, maxAbsDiff, mtpRows, readExpected, readTensors } from './helpers.js';
import { metric, post } from './serve-helpers.js';

const TOL = 2e-3;
const DIR = `${FIXTURES}models/v3-tiny-mtp`;
const status = cudaStatus();


if (!status.ok) {
  console.log(`skipped: no CUDA device (${status.reason})`);
} else {
  test("cuda v3-tiny-mtp: the MTP layer's logits within 2e-3 of PyTorch at every position, alone and in one call", async () => {
    const ref = readTensors(`${DIR}/mtp-expected.safetensors`);
    const ids = Array.from(ref.get('input_ids')!);
    const want = ref.get('mtp_logits') as Float32Array;
    // passTokens 16: the prompt's prefill and the MTP pass over its 35 positions both run in three chunks.
    for (const passTokens of [undefined, 16]) {
      const model = await loadCudaModel(DIR, { mtp: true, contextLength: 256, passTokens });
      try {
        const { vocabSize: vocab, hiddenSize: dim } = model.config;
        const { rows, hidden } = mtpRows(model, ids);
        const diff = maxAbsDiff(rows, want);
        console.log(`  max_prefill ${passTokens ?? 'default'}: MTP logits within ${diff.toExponential(2)} of PyTorch`);
        assert.ok(diff < TOL, `one position a call: max |diff| ${diff}`);
        const seq = model.createSequence();
        const out = new Float32Array(dim);
        const together = model.mtp!.forward(seq, 0, ids.slice(1), hidden.subarray(0, (ids.length - 1) * dim), out);
        model.free(seq);
        assert.ok(maxAbsDiff(together, want.subarray(want.length - vocab)) < TOL, 'all positions in one call');
        assert.ok(out.some((v) => v !== 0), 'the last position\'s output state came back');
      } finally {
        await model.close();
      }
    }
  });

  test("cuda v3-tiny-mtp: forward()'s hidden states (prefill, decode step, batched steps) are the CPU backend's", async () => {
    const ref = readExpected(`${DIR}/expected.safetensors`);
    const cuda = await loadCudaModel(DIR, { maxSequences: 2 });
    const cpu = await Model.load(DIR, { threads: 1, maxSequences: 2 });
    try {
      const dim = cpu.config.hiddenSize;
      const prompt = Array.from(ref.inputIds), gen = Array.from(ref.genIds);
      const models = [cuda, cpu] as const;
      const seqs = models.map((m) => [m.createSequence(), m.createSequence()]);
      // Each step: entries (sequence index, tokens) run on both backends with hidden buffers, compared row by row.
      const steps: [string, [number, number[]][]][] = [
        ['prefill of the prompt', [[0, prompt]]],
        ['a decode step', [[0, gen.slice(0, 1)]]],
        ['a batched step of 3 tokens of one sequence', [[0, gen.slice(1, 4)]]],
        ['a batched step of two sequences', [[0, gen.slice(4, 5)], [1, prompt.slice(0, 1)]]],
      ];
      for (const [what, entries] of steps) {
        const [got, want] = models.map((m: ModelBackend, k) => {
          const batch: BatchEntry[] = entries.map(([s, tokens]) => ({ sequence: seqs[k][s], tokens, logits: 'none', hidden: new Float32Array(tokens.length * dim) }));
          m.forward(batch);
          return batch.map((e) => e.hidden!);
        });
        got.forEach((h, j) => {
          const diff = maxAbsDiff(h, want[j]);
          assert.ok(diff < TOL, `${what}, entry ${j}: hidden states differ by ${diff}`);
        });
      }
    } finally {
      await cpu.close();
      await cuda.close();
    }
  });

  test('embedded model: run and chat with --draft mtp --backend cuda print the plain greedy text of the cpu', () => {
    const run = ['run', '--model', DEFAULT_MODEL_DIR, '--prompt', 'Once upon a time', '--max-tokens', '32', '--context', '128'];
    const chat = ['chat', '--model', DEFAULT_MODEL_DIR, '--max-tokens', '24', '--context', '256'];
    const plain = { run: cliOut([...run, '--threads', '2']), chat: cliOut([...chat, '--threads', '2'], 'Hello there\n') };
    assert.ok(plain.run.length > 0, 'the CPU wrote text');
    for (const k of ['1', '2']) {
      const draft = ['--backend', 'cuda', '--draft', 'mtp', '--draft-tokens', k];
      assert.is(cliOut([...run, ...draft]), plain.run, `run, ${k} a step`);
      assert.is(cliOut([...chat, ...draft], 'Hello there\n'), plain.chat, `chat, ${k} a step`);
    }
  });

  test('v3-tiny-mtp: logits --gen --draft mtp --backend cuda writes the reference greedy ids and logits', () => {
    const ref = readExpected(`${DIR}/expected.safetensors`);
    const tmp = mkdtempSync(join(tmpdir(), 'deepwasm-cuda-mtp-'));
    try {
      const out = join(tmp, 'gen.safetensors');
      const n = ref.genIds.length;
      cliOut(['logits', '--model', DIR, '--ids', Array.from(ref.inputIds).join(','), '--gen', String(n), '--draft', 'mtp', '--draft-tokens', '2', '--backend', 'cuda', '--out', out]);
      const got = readTensors(out);
      assert.equal(Array.from(got.get('gen_ids')!), Array.from(ref.genIds), 'greedy ids');
      const diff = maxAbsDiff(got.get('gen_logits')!, ref.genLogits);
      assert.ok(diff < TOL, `gen_logits differ from the reference by ${diff}`);
    } finally {
      rmSync(tmp, { recursive: true, force: true });
    }
  });

  test("embedded model: the server with draft 'mtp' (1 and 3 a step) on cuda gives the greedy text it gives without a draft", async () => {
    const model = await loadModel(DEFAULT_MODEL_DIR, { backend: 'cuda', maxSequences: 2, contextLength: 256, mtp: true });
    const bodies = ['Once upon a time', 'The king said'].map((prompt, i) => ({ prompt, max_tokens: 24 + 8 * i, temperature: 0, ignore_eos: true }));
    const serve = async (opts: ServerOptions): Promise<{ texts: string[]; proposed: number }> => {
      const server = await DeepWasmServer.start(model, { port: 0, log: () => {}, parallel: 2, ...opts });
      try {
        const texts = await Promise.all(bodies.map(async (body) => {
          const res = await post(server.url, '/v1/completions', body);
          assert.is(res.status, 200, await res.clone().text());
          return ((await res.json()) as { choices: { text: string }[] }).choices[0].text;
        }));
        return { texts, proposed: opts.draft ? await metric(server.url, 'deepwasm_draft_tokens_proposed_total') : 0 };
      } finally {
        await server.close();
      }
    };
    try {
      const plain = await serve({});
      assert.ok(plain.texts.every((t) => t.length > 0), 'the server wrote text');
      for (const draftTokens of [1, 3]) {
        const got = await serve({ draft: 'mtp', draftTokens });
        assert.equal(got.texts, plain.texts, `${draftTokens} a step`);
        assert.ok(got.proposed > 0, `${draftTokens} a step: the MTP layer proposed drafts`);
      }
    } finally {
      await model.close();
    }
  });

  test('cuda: a checkpoint without an MTP layer refuses mtp: true in one line', async () => {
    try {
      await loadCudaModel(`${FIXTURES}models/v3-tiny`, { mtp: true });
      assert.unreachable('expected an error');
    } catch (e) {
      assert.instance(e, DeepWasmError);
      assert.match((e as Error).message, 'has no MTP layer (num_nextn_predict_layers is 0 in config.json)');
    }
  });
}

test.run();
