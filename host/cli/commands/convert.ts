import { convertCheckpoint } from '../../model/convert.js';
import { fail } from '../../errors.js';
import { parseQuant, type QuantName } from '../../model/weights.js';
import { loadProgress } from '../progress.js';
import { MODEL_FLAG, THREADS_FLAG, type Command } from './command.js';

export const convertCommand: Command = {
  name: 'convert',
  summary: 'write a checkpoint quantized to q8 or q4 that loads without quantizing again',
  description:
    'Quantizes every matrix a matmul reads to q8 (int8) or q4 (4-bit), in groups of 32 columns with one F32 scale each, and ' +
    'writes a checkpoint folder: safetensors with NAME (I8 or U8) and NAME_scale (F32) per matrix, the embeddings, kv_b and ' +
    'the router in float, config.json with quantization_config {"quant_method": "deepwasm"}, and the tokenizer files. ' +
    'The layout is documented in docs/quantized-format.md.',
  flags: [
    { ...MODEL_FLAG, required: true },
    { name: 'quant', kind: 'string', value: 'q8|q4', required: true, help: 'the format to write' },
    { name: 'out', kind: 'string', value: 'DIR', required: true, help: 'new checkpoint folder (must not exist or be empty)' },
    THREADS_FLAG,
  ],
  async run(flags) {
    const quant: QuantName = parseQuant(flags.quant as string);
    if (quant !== 'q8' && quant !== 'q4') fail(`--quant is "${quant}": convert writes q8 or q4`);
    const src = flags.model as string;
    const progress = loadProgress(`converting ${src}`);
    const r = await convertCheckpoint(src, flags.out as string, { quant, threads: flags.threads as number | undefined, onProgress: progress.onProgress });
    progress.done();
    process.stderr.write(`wrote ${r.tensors} tensors, ${(r.bytes / 1024 ** 2).toFixed(1)} MiB in ${r.shards} shard(s) to ${flags.out as string}\n`);
  },
};
