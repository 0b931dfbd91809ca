import { writeSafetensors, type TensorToWrite } from '../../checkpoint/safetensors.js';
import { fail } from '../../errors.js';
import { argmax } from '../../generate/sampler.js';
import { checkOutputFile } from '../files.js';
import { loadOptions, loadWithProgress } from '../load.js';
import { BACKEND_FLAG, CONTEXT_FLAG, MODEL_FLAG, MEMORY_LIMIT_FLAG, QUANT_FLAG, THREADS_FLAG, type Command } from './command.js';

/** Parses "1,2,3" into token ids, naming the bad entry when one is not a whole number. */
function parseIds(text: string): number[] {
  const parts = text.split(',').map((s) => s.trim());
  if (parts.length === 1 && parts[0] === '') fail('--ids is empty: expected comma-separated token ids, e.g. --ids 0,15,7');
  return parts.map((p, i) => {
    if (!/^\d+$/.test(p)) fail(`--ids entry ${i} is "${p}": expected a whole number token id`);
    return Number(p);
  });
}

export const logitsCommand: Command = {
  name: 'logits',
  summary: 'write the logits of token ids (prefill, then optional greedy decode) to a safetensors file',
  description:
    'Runs token ids through the model in one prefill pass and writes the logits at every position (F32 "logits" [T, V]); ' +
    'with --gen N also decodes N greedy tokens from the cache (I32 "gen_ids" [N], F32 "gen_logits" [N, V]: row 0 is the last ' +
    'prompt position, row k the logits after feeding gen_ids[k-1]), as safetensors.',
  flags: [
    { ...MODEL_FLAG, required: true },
    { name: 'ids', kind: 'string', value: 'IDS', required: true, help: 'comma-separated prompt token ids' },
    { name: 'gen', kind: 'int', value: 'N', min: 0, help: 'greedy tokens to decode after the prompt (default 0)' },
    { name: 'out', kind: 'string', value: 'FILE', required: true, help: 'output .safetensors file' },
    THREADS_FLAG,
    CONTEXT_FLAG,
    BACKEND_FLAG,
    MEMORY_LIMIT_FLAG,
    QUANT_FLAG,
  ],
  async run(flags) {
    const ids = parseIds(flags.ids as string);
    const gen = (flags.gen as number | undefined) ?? 0;
    checkOutputFile(flags.out as string, '--out');
    const model = await loadWithProgress(flags.model as string, loadOptions(flags));
    try {
      const vocab = model.config.vocabSize;
      const sequence = model.createSequence();
      const logits = model.forward([{ sequence, tokens: ids, logits: 'all' }])[0];
      const tensors: TensorToWrite[] = [{ name: 'logits', dtype: 'F32', shape: [ids.length, vocab], data: logits }];
      if (gen > 0) {
        const genIds = new Int32Array(gen);
        const genLogits = new Float32Array(gen * vocab);
        let step = logits.subarray((ids.length - 1) * vocab);
        for (let k = 0; k < gen; k++) {
          genLogits.set(step, k * vocab);
          genIds[k] = argmax(step);
          if (k + 1 < gen) step = model.forward([{ sequence, tokens: [genIds[k]] }])[0];
        }
        tensors.push({ name: 'gen_ids', dtype: 'I32', shape: [gen], data: genIds });
        tensors.push({ name: 'gen_logits', dtype: 'F32', shape: [gen, vocab], data: genLogits });
      }
      writeSafetensors(flags.out as string, tensors);
    } finally {
      await model.close();
    }
  },
};

