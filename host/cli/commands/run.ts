import type { GenerateResult } from '../../generate/text-model.js';
import { BACKEND_FLAG, CONTEXT_FLAG, EXIT_INTERRUPTED, MEMORY_LIMIT_FLAG, QUANT_FLAG, THREADS_FLAG, type Command } from './command.js';
import type { DraftStats } from '../../generate/speculative.js';
import { BEAM_FLAGS, DRAFT_FLAGS, SAMPLING_FLAGS, TEXT_MODEL_FLAG, beamOptions, generateOptions, loadDraft, loadTextModel } from './generation.js';
import { PROMPT_FLAGS, promptText } from './prompt.js';
import { guardStdout } from './stdio.js';

export const runCommand: Command = {
  name: 'run',
  summary: 'continue a prompt and stream the generated text to stdout',
  description:
    'Encodes --prompt (or the text of --prompt-file) with the tokenizer (BOS included) and streams the continuation to stdout: only the generated ' +
    'text, without a stop string, so it can be piped. A summary (tokens, prefill and decode speed, why it ended) goes ' +
    'to stderr. Sampling is greedy unless --temperature is above 0. --draft decodes speculatively (the summary adds how often drafts were kept); ' +
    '--num-beams runs beam search and prints the best hypothesis when it ends. Ctrl-C stops generating, prints the summary and exits with 130.',
  flags: [
    TEXT_MODEL_FLAG,
    ...PROMPT_FLAGS,
    ...SAMPLING_FLAGS,
    ...DRAFT_FLAGS,
    ...BEAM_FLAGS,
    THREADS_FLAG,
    CONTEXT_FLAG,
    BACKEND_FLAG,
    MEMORY_LIMIT_FLAG,
    QUANT_FLAG,
  ],
  async run(flags) {
    const prompt = await promptText(flags);
    const opts = generateOptions(flags);
    const beams = beamOptions(flags);
    const model = await loadTextModel(flags);
    const draft = await loadDraft(flags).catch(async (e: unknown) => {
      await model.close();
      throw e;
    });
    const abort = new AbortController();
    const stdout = guardStdout(() => abort.abort());
    let interrupted = false;
    const interrupt = (): void => {
      interrupted = true;
      abort.abort();
    };
    process.once('SIGINT', interrupt);
    try {
      let result: Summary;
      if (beams) {
        const best = await model.beamText(prompt, { ...beams, signal: abort.signal });
        process.stdout.write(best.text);
        result = best;
      } else {
        result = await model.generateText(prompt, { ...opts, draft, signal: abort.signal, onToken: (text) => process.stdout.write(text) });
      }
      // A terminal gets the summary on a line of its own; a pipe gets exactly the generated text.
      if (process.stdout.isTTY) process.stdout.write('\n');
      stdout.check();
      process.stderr.write(summary(result) + '\n');
      return interrupted ? EXIT_INTERRUPTED : undefined;
    } finally {
      process.off('SIGINT', interrupt);
      if (typeof draft === 'object') await draft.close();
      await model.close();
    }
  },
};

const REASONS = { stop: 'end of text or stop string', length: 'token limit or full context', abort: 'interrupted' } as const;

type Summary = Pick<GenerateResult, 'tokens' | 'promptTokens' | 'prefillMs' | 'decodeMs' | 'finishReason' | 'draft'> & { score?: number };

function summary(r: Summary): string {
  const rate = (tokens: number, ms: number): string => (tokens > 0 && ms > 0 ? ((tokens * 1000) / ms).toFixed(1) : '-');
  const decoded = Math.max(0, r.tokens.length - 1);
  const extra = r.score !== undefined ? `, beam score ${r.score.toFixed(4)}` : r.draft ? `, ${kept(r.draft)}` : '';
  return `${r.tokens.length} tokens, prefill ${rate(r.promptTokens, r.prefillMs)} tok/s, decode ${rate(decoded, r.decodeMs)} tok/s${extra} (${REASONS[r.finishReason]})`;
}

/** "drafts kept 61% (by position 70%, 52%)": the share of proposed draft tokens the model kept. */
function kept(s: DraftStats): string {
  const pct = (a: number, p: number): string => (p > 0 ? `${Math.round((100 * a) / p)}%` : '-');
  const sum = (x: number[]): number => x.reduce((a, b) => a + b, 0);
  const byPosition = s.proposed.length > 1 ? ` (by position ${s.proposed.map((p, j) => pct(s.accepted[j], p)).join(', ')})` : '';
  return `drafts kept ${pct(sum(s.accepted), sum(s.proposed))}${byPosition}`;
}
