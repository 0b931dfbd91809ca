import { convertCheckpoint } from '../../model/convert.js';
import { convertToGguf, GGUF_QUANTS, type GgufQuant } from '../../model/gguf-export.js';
import { fail } from '../../errors.js';
import { parseQuant, type QuantName } from '../../model/weights.js';
import { loadProgress } from '../progress.js';
import { MODEL_FLAG, THREADS_FLAG, type Command } from './command.js';

export const convertCommand: Command = {
  name: 'convert',
  summary: 'write a checkpoint quantized to q8 or q4 that loads without quantizing again, or a GGUF file for llama.cpp',
  description:
    'Quantizes every matrix a matmul reads to q8 (int8) or q4 (4-bit), in groups of 32 columns with one F32 scale each, and ' +
    'writes a checkpoint folder: safetensors with NAME (I8 or U8) and NAME_scale (F32) per matrix, the embeddings, kv_b and ' +
    'the router in float, config.json with quantization_config {"quant_method": "deepwasm"}, and the tokenizer files. ' +
    'The layout is documented in docs/quantized-format.md. With --to gguf it writes one GGUF file for llama.cpp instead ' +
    '(its deepseek2 architecture; --quant q8_0 or q4_0, norms and the router in F32, the MTP layers left out): the same ' +
    'weights in llama.cpp, for the peer benchmark (npm run bench:peers) or to run a model there.',
  flags: [
    { ...MODEL_FLAG, required: true },
    { name: 'quant', kind: 'string', value: 'q8|q4|q8_0|q4_0', required: true, help: 'the format to write (q8_0 and q4_0 with --to gguf)' },
    { name: 'to', kind: 'string', value: 'deepwasm|gguf', help: 'what to write: a deepwasm checkpoint folder (default) or a GGUF file' },
    { name: 'out', kind: 'string', value: 'DIR|FILE', required: true, help: 'new checkpoint folder (must not exist or be empty), or the new .gguf file' },
    THREADS_FLAG,
  ],
  async run(flags) {
    const to = (flags.to as string | undefined) ?? 'deepwasm';
    if (to !== 'deepwasm' && to !== 'gguf') fail(`--to is "${to}": convert writes deepwasm (a checkpoint folder) or gguf`);
    if (to === 'gguf') return toGguf(flags);
    const quant: QuantName = parseQuant(flags.quant as string);
    if (quant !== 'q8' && quant !== 'q4') fail(`--quant is "${quant}": convert writes q8 or q4`);
    const src = flags.model as string;
    const progress = loadProgress(`converting ${src}`);
    const r = await convertCheckpoint(src, flags.out as string, { quant, threads: flags.threads as number | undefined, onProgress: progress.onProgress });
    progress.done();
    process.stderr.write(`wrote ${r.tensors} tensors, ${(r.bytes / 1024 ** 2).toFixed(1)} MiB in ${r.shards} shard(s) to ${flags.out as string}\n`);
  },
};

async function toGguf(flags: Record<string, unknown>): Promise<void> {
  const quant = flags.quant as string;
  if (!GGUF_QUANTS.includes(quant as GgufQuant)) fail(`--quant is "${quant}": --to gguf writes ${GGUF_QUANTS.join(' or ')}`);
  const src = flags.model as string;
  const out = flags.out as string;
  const progress = loadProgress(`converting ${src} to GGUF`);
  const r = await convertToGguf(src, out, { quant: quant as GgufQuant, threads: flags.threads as number | undefined, onProgress: progress.onProgress });
  progress.done();
  process.stderr.write(`wrote ${r.tensors} tensors, ${(r.bytes / 1024 ** 2).toFixed(1)} MiB to ${out}\n`);
}
