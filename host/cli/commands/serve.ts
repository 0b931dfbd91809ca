import { basename, resolve } from 'node:path';
import { fail } from '../../errors.js';
import { DEFAULT_PREFILL_CHUNK, DEFAULT_QUEUE, DeepWasmServer, probeListen } from '../../server/server.js';
import { BACKEND_FLAG, CONTEXT_FLAG, EXIT_INTERRUPTED, MEMORY_LIMIT_FLAG, QUANT_FLAG, THREADS_FLAG, type Command } from './command.js';
import { DRAFT_FLAGS, TEXT_MODEL_FLAG, loadDraft, loadTextModel, modelDir } from './generation.js';

const DEFAULT_PARALLEL = 4;

export const serveCommand: Command = {
  name: 'serve',
  summary: 'serve the model over an OpenAI-compatible HTTP API with continuous batching',
  description:
    'Loads the model once and serves POST /v1/chat/completions, POST /v1/completions (streaming as server-sent events), ' +
    'GET /v1/models, GET /health and GET /metrics (Prometheus) on --host:--port. Up to --parallel requests generate at once, ' +
    'one batched forward pass per step, new prompts fed in chunks between decode steps; up to --queue more wait, and beyond ' +
    'that requests get 429. With --api-key (or DEEPWASM_API_KEY) every route but /health needs "Authorization: Bearer KEY". ' +
    'SIGTERM or Ctrl-C stops taking requests (503), lets the running ones finish and exits (0 after SIGTERM, 130 after Ctrl-C); ' +
    'a second signal drops them. --draft decodes every request speculatively (its K + 1 tokens one entry of the batched step; ' +
    'not for sampled requests with response_format); /metrics then counts the draft tokens verified and kept.',
  flags: [
    TEXT_MODEL_FLAG,
    BACKEND_FLAG,
    { name: 'host', kind: 'string', value: 'ADDR', help: 'address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 for every interface)' },
    { name: 'port', kind: 'int', value: 'N', min: 0, max: 65535, help: 'port (default 8080; 0 picks a free one, printed at start)' },
    { name: 'api-key', kind: 'string', value: 'KEY', help: 'require "Authorization: Bearer KEY" (default: $DEEPWASM_API_KEY, else no key)' },
    { name: 'parallel', kind: 'int', value: 'N', min: 1, max: 256, help: `requests generating at once, each with a KV cache of --context tokens (default ${DEFAULT_PARALLEL})` },
    { name: 'queue', kind: 'int', value: 'N', min: 0, help: `requests that may wait for a free sequence; more get 429 (default ${DEFAULT_QUEUE})` },
    { name: 'prefill-chunk', kind: 'int', value: 'N', min: 1, help: `prompt tokens per step: a prompt goes in chunks of N between decode steps (default ${DEFAULT_PREFILL_CHUNK})` },
    CONTEXT_FLAG,
    THREADS_FLAG,
    QUANT_FLAG,
    MEMORY_LIMIT_FLAG,
    ...DRAFT_FLAGS,
  ],
  async run(flags) {
    const host = (flags['host'] as string | undefined) ?? '127.0.0.1';
    const port = (flags['port'] as number | undefined) ?? 8080;
    const parallel = (flags['parallel'] as number | undefined) ?? DEFAULT_PARALLEL;
    const apiKey = (flags['api-key'] as string | undefined) ?? (process.env['DEEPWASM_API_KEY'] || undefined);
    if (flags['draft-tokens'] !== undefined && flags['draft'] === undefined) fail('--draft-tokens needs --draft (mtp or a model folder)');
    await probeListen(host, port);
    const model = await loadTextModel(flags, { maxSequences: parallel });
    let server: DeepWasmServer;
    let draft: Awaited<ReturnType<typeof loadDraft>>;
    try {
      // A draft model holds a sequence per generation, as the model does.
      draft = await loadDraft(flags, { maxSequences: parallel });
    } catch (e) {
      await model.close();
      throw e;
    }
    const closeDraft = async (): Promise<void> => {
      if (typeof draft === 'object') await draft.close();
    };
    try {
      server = await DeepWasmServer.start(model, {
        draft,
        draftTokens: flags['draft-tokens'] as number | undefined,
        host,
        port,
        apiKey,
        parallel,
        queue: (flags['queue'] as number | undefined) ?? DEFAULT_QUEUE,
        prefillChunk: (flags['prefill-chunk'] as number | undefined) ?? DEFAULT_PREFILL_CHUNK,
        modelId: basename(resolve(modelDir(flags))),
      });
    } catch (e) {
      await closeDraft();
      await model.close();
      throw e;
    }
    const m = model.model;
    const d = server.draft;
    const drafting = d ? `; drafting ${d.tokens} a step with ${d.kind === 'mtp' ? 'the MTP layer' : flags['draft']}` : '';
    process.stdout.write(
      `DeepWasm serving "${server.modelId}" at ${server.url}/v1 (${m.device}; ${parallel} sequences of ${m.contextLength} tokens${drafting}${apiKey ? '; API key required' : ''}); SIGTERM or Ctrl-C drains and stops\n`,
    );
    const signal = await new Promise<NodeJS.Signals>((resolve) => {
      process.once('SIGINT', () => resolve('SIGINT'));
      process.once('SIGTERM', () => resolve('SIGTERM'));
    });
    const s = server.scheduler;
    process.stderr.write(`${signal}: draining (${s.active} running, ${s.queued} waiting; new requests get 503; a second signal drops them)\n`);
    const drop = (): void => server.abort();
    process.once('SIGINT', drop);
    process.once('SIGTERM', drop);
    await server.close();
    process.off('SIGINT', drop);
    process.off('SIGTERM', drop);
    await closeDraft();
    await model.close();
    return signal === 'SIGINT' ? EXIT_INTERRUPTED : undefined;
  },
};
