import { writeSafetensors, type TensorToWrite } from '../../checkpoint/safetensors.js';
import { fail } from '../../errors.js';
import { beamSearch } from '../../generate/beam.js';
import { ModelDraft, MtpDraft } from '../../generate/drafts.js';
import { defaultDraftTokens, resolveSampling } from '../../generate/options.js';
import { Sampler, argmax } from '../../generate/sampler.js';
import { Speculation } from '../../generate/speculative.js';
import type { ModelBackend } from '../../model/backend.js';
import { BEAM_FLAGS, DRAFT_FLAGS, beamOptions } from './generation.js';
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
    'prompt position, row k the logits after feeding gen_ids[k-1]), as safetensors. With --draft the greedy tokens come from speculative ' +
    'decoding (the rows are those of the verifying passes); with --num-beams, gen_ids is beam search\'s best hypothesis (without gen_logits) ' +
    'and F32 "beam_score" [1] its score.',
  flags: [
    { ...MODEL_FLAG, required: true },
    { name: 'ids', kind: 'string', value: 'IDS', required: true, help: 'comma-separated prompt token ids' },
    { name: 'gen', kind: 'int', value: 'N', min: 0, help: 'greedy tokens to decode after the prompt (default 0)' },
    { name: 'out', kind: 'string', value: 'FILE', required: true, help: 'output .safetensors file' },
    ...DRAFT_FLAGS,
    ...BEAM_FLAGS,
    THREADS_FLAG,
    CONTEXT_FLAG,
    BACKEND_FLAG,
    MEMORY_LIMIT_FLAG,
    QUANT_FLAG,
  ],
  async run(flags) {
    const ids = parseIds(flags.ids as string);
    const gen = (flags.gen as number | undefined) ?? 0;
    const draftFlag = flags['draft'] as string | undefined;
    if ((draftFlag !== undefined || flags['num-beams'] !== undefined) && gen === 0) fail(`--${draftFlag !== undefined ? 'draft' : 'num-beams'} needs --gen N: it changes how the tokens after the prompt are made`);
    if (flags['draft-tokens'] !== undefined && draftFlag === undefined) fail('--draft-tokens needs --draft (mtp or a model folder)');
    const beams = beamOptions({ ...flags, 'max-tokens': gen });
    checkOutputFile(flags.out as string, '--out');
    const model = await loadWithProgress(flags.model as string, { ...loadOptions(flags), mtp: draftFlag === 'mtp', maxSequences: beams?.numBeams });
    let draftModel: ModelBackend | undefined;
    try {
      if (draftFlag !== undefined && draftFlag !== 'mtp') draftModel = await loadWithProgress(draftFlag, loadOptions(flags));
      const vocab = model.config.vocabSize;
      const sequence = model.createSequence();
      const logits = model.forward([{ sequence, tokens: ids, logits: 'all' }])[0];
      const tensors: TensorToWrite[] = [{ name: 'logits', dtype: 'F32', shape: [ids.length, vocab], data: logits }];
      if (beams) {
        model.free(sequence);
        const best = await beamSearch(model, ids, { ...beams, eosTokenIds: [...model.config.eosTokenIds] });
        tensors.push({ name: 'gen_ids', dtype: 'I32', shape: [best.tokens.length], data: Int32Array.from(best.tokens) });
        tensors.push({ name: 'beam_score', dtype: 'F32', shape: [1], data: Float32Array.of(best.score) });
      } else if (draftFlag !== undefined) {
        const greedy = resolveSampling({ temperature: 0, seed: 0 });
        if (draftFlag === 'mtp' && !model.mtp) fail(`--draft mtp: ${flags.model as string} has no MTP layer the ${model.backend} backend runs`);
        const draft = draftModel ? new ModelDraft(draftModel, vocab, greedy) : new MtpDraft(model.mtp!, sequence, model.config.hiddenSize, vocab, greedy);
        const spec = new Speculation(model, draft, (flags['draft-tokens'] as number | undefined) ?? defaultDraftTokens(draftModel ? 'model' : 'mtp'), greedy);
        model.truncate(sequence, 0);
        const rows: Float32Array[] = [spec.prefill(sequence, ids).slice()];
        const sampler = new Sampler(vocab, greedy);
        const out = [sampler.sample(rows[0])];
        sampler.accept(out[0]);
        spec.first(out[0]);
        while (out.length < gen) out.push(...spec.step(sequence, sampler, gen - out.length, (row) => rows.push(row.slice())));
        spec.free();
        const genLogits = new Float32Array(gen * vocab);
        rows.forEach((r, k) => genLogits.set(r, k * vocab));
        tensors.push({ name: 'gen_ids', dtype: 'I32', shape: [gen], data: Int32Array.from(out) });
        tensors.push({ name: 'gen_logits', dtype: 'F32', shape: [gen, vocab], data: genLogits });
      } else if (gen > 0) {
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
      await draftModel?.close();
      await model.close();
    }
  },
};

