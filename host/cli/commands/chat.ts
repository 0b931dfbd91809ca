import { createInterface } from 'node:readline';
import { DeepWasmError } from '../../errors.js';
import type { ChatMessage } from '../../tokenizer/index.js';
import { watchUtf8 } from '../utf8.js';
import { BACKEND_FLAG, CONTEXT_FLAG, EXIT_INTERRUPTED, MEMORY_LIMIT_FLAG, QUANT_FLAG, THREADS_FLAG, type Command } from './command.js';
import { DRAFT_FLAGS, SAMPLING_FLAGS, TEXT_MODEL_FLAG, generateOptions, loadDraft, loadTextModel } from './generation.js';
import { guardStdout } from './stdio.js';

export const chatCommand: Command = {
  name: 'chat',
  summary: 'chat with a model: multi-turn, streaming replies, using its chat template',
  description:
    'An interactive chat using the chat template of tokenizer_config.json; replies stream as they are generated. ' +
    'Type /reset to forget the conversation and /exit (or Ctrl-D) to quit; Ctrl-C stops the current reply, and ' +
    'Ctrl-C twice at the prompt quits with exit code 130. When stdin is not a terminal, each line is one user message and each reply ' +
    'is printed followed by a newline, and Ctrl-C stops the reply and quits with 130. The whole conversation is re-read every turn, so it must fit in --context.',
  flags: [
    TEXT_MODEL_FLAG,
    { name: 'system', kind: 'string', value: 'TEXT', help: 'system prompt at the start of the conversation' },
    ...SAMPLING_FLAGS,
    ...DRAFT_FLAGS,
    THREADS_FLAG,
    CONTEXT_FLAG,
    BACKEND_FLAG,
    MEMORY_LIMIT_FLAG,
    QUANT_FLAG,
  ],
  async run(flags) {
    const checked = generateOptions(flags);
    const system = flags['system'] as string | undefined;
    const model = await loadTextModel(flags);
    const draft = await loadDraft(flags).catch(async (e: unknown) => {
      await model.close();
      throw e;
    });
    const opts = { ...checked, draft };
    const interactive = process.stdin.isTTY === true;
    watchUtf8(process.stdin, 'stdin');
    const rl = createInterface({ input: process.stdin, output: interactive ? process.stdout : undefined, terminal: interactive, crlfDelay: Infinity });
    const history: ChatMessage[] = [];
    const reset = (): void => {
      history.length = 0;
      if (system !== undefined) history.push({ role: 'system', content: system });
    };
    const prompt = (): void => {
      if (interactive) rl.prompt();
    };
    let reply: AbortController | undefined;
    let interruptedAtPrompt = false;
    let quitByCtrlC = false;
    const stdout = guardStdout(() => {
      reply?.abort();
      rl.close();
    });
    const interrupt = (): void => {
      // Piped input has no prompt to come back to: Ctrl-C ends the chat.
      if (!interactive || (reply === undefined && interruptedAtPrompt)) {
        quitByCtrlC = true;
        reply?.abort();
        rl.close();
      } else if (reply !== undefined) reply.abort();
      else {
        interruptedAtPrompt = true;
        process.stderr.write('\n(Ctrl-C again or /exit to quit)\n');
        prompt();
      }
    };
    // A terminal's Ctrl-C reaches readline as a key; piped stdin leaves it a signal.
    rl.on('SIGINT', interrupt);
    if (!interactive) process.on('SIGINT', interrupt);
    reset();
    try {
      if (interactive) process.stderr.write('/reset forgets the conversation, /exit quits, Ctrl-C stops a reply.\n');
      prompt();
      for await (const line of rl) {
        // Lines read before stdout failed or Ctrl-C are still queued.
        if (stdout.failed || quitByCtrlC) break;
        interruptedAtPrompt = false;
        const command = line.trim();
        if (command === '/exit') break;
        if (command === '/reset') {
          reset();
          if (interactive) process.stderr.write('(conversation forgotten)\n');
        } else if (command !== '') {
          history.push({ role: 'user', content: line });
          reply = new AbortController();
          try {
            const result = await model.chatText(history, { ...opts, signal: reply.signal, onToken: (text) => process.stdout.write(text) });
            history.push({ role: 'assistant', content: result.text });
            process.stdout.write('\n');
            if (result.finishReason === 'abort') process.stderr.write('(stopped)\n');
          } catch (e) {
            // At a terminal a failed turn (say, a conversation longer than the context) leaves the chat usable.
            if (!interactive || !(e instanceof DeepWasmError)) throw e;
            history.pop();
            process.stderr.write(`error: ${e.message}\n`);
          } finally {
            reply = undefined;
          }
        }
        prompt();
      }
      stdout.check();
      return quitByCtrlC ? EXIT_INTERRUPTED : undefined;
    } finally {
      rl.close();
      process.off('SIGINT', interrupt);
      if (typeof draft === 'object') await draft.close();
      await model.close();
    }
  },
};
