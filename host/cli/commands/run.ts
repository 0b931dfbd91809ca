import type { GenerateResult } from '../../generate/text-model.js';
import { BACKEND_FLAG, CONTEXT_FLAG, EXIT_INTERRUPTED, MEMORY_LIMIT_FLAG, QUANT_FLAG, THREADS_FLAG, type Command } from './command.js';
import { SAMPLING_FLAGS, TEXT_MODEL_FLAG, generateOptions, loadTextModel } from './generation.js';
import { PROMPT_FLAGS, promptText } from './prompt.js';
import { guardStdout } from './stdio.js';

export const runCommand: Command = {
  name: 'run',
  summary: 'continue a prompt and stream the generated text to stdout',
  description:
    'Encodes --prompt (or the text of --prompt-file) with the tokenizer (BOS included) and streams the continuation to stdout: only the generated ' +
    'text, without a stop string, so it can be piped. A summary (tokens, prefill and decode speed, why it ended) goes ' +
    'to stderr. Sampling is greedy unless --temperature is above 0. Ctrl-C stops generating, prints the summary and exits with 130.',
  flags: [
    TEXT_MODEL_FLAG,
    ...PROMPT_FLAGS,
    ...SAMPLING_FLAGS,
    THREADS_FLAG,
    CONTEXT_FLAG,
    BACKEND_FLAG,
    MEMORY_LIMIT_FLAG,
    QUANT_FLAG,
  ],
  async run(flags) {
    const prompt = await promptText(flags);
    const opts = generateOptions(flags);
    const model = await loadTextModel(flags);
    const abort = new AbortController();
    const stdout = guardStdout(() => abort.abort());
    let interrupted = false;
    const interrupt = (): void => {
      interrupted = true;
      abort.abort();
    };
    process.once('SIGINT', interrupt);
    try {
      const result = await model.generateText(prompt, { ...opts, signal: abort.signal, onToken: (text) => process.stdout.write(text) });
      // A terminal gets the summary on a line of its own; a pipe gets exactly the generated text.
      if (process.stdout.isTTY) process.stdout.write('\n');
      stdout.check();
      process.stderr.write(summary(result) + '\n');
      return interrupted ? EXIT_INTERRUPTED : undefined;
    } finally {
      process.off('SIGINT', interrupt);
      await model.close();
    }
  },
};

const REASONS = { stop: 'end of text or stop string', length: 'token limit or full context', abort: 'interrupted' } as const;

function summary(r: GenerateResult): string {
  const rate = (tokens: number, ms: number): string => (tokens > 0 && ms > 0 ? ((tokens * 1000) / ms).toFixed(1) : '-');
  const decoded = Math.max(0, r.tokens.length - 1);
  return `${r.tokens.length} tokens, prefill ${rate(r.promptTokens, r.prefillMs)} tok/s, decode ${rate(decoded, r.decodeMs)} tok/s (${REASONS[r.finishReason]})`;
}
