import { openCheckpoint } from '../../checkpoint/checkpoint.js';
import { parseConfig, type DeepSeekConfig } from '../../checkpoint/config.js';
import type { DType } from '../../checkpoint/dtypes.js';
import { PRESET_NAMES, presetConfig } from '../../checkpoint/presets.js';
import { fail } from '../../errors.js';
import { RAM_SHARE, defaultMemoryLimit, describeUnits, machineRam, placeUnits, planBytes, planUnits, scratchBytes } from '../../model/placement.js';
import { kvRowBytes, modelSchema, parameterCounts, schemaWeights, weightTotals, type Weight } from '../../model/schema.js';
import { parseQuant, quantFor, weightBytes, type QuantMode, type QuantName } from '../../model/weights.js';
import { Runtime } from '../../runtime/runtime.js';
import { CONTEXT_FLAG, MEMORY_LIMIT_FLAG, QUANT_FLAG, type Command } from './command.js';

const GB = 1e9;
const MiB = 1024 * 1024;
/** Bytes in the unit that keeps three digits: GB, MB or KB. */
const gb = (n: number): string => (n >= GB ? `${(n / GB).toFixed(2)} GB` : n >= 1e6 ? `${(n / 1e6).toFixed(2)} MB` : `${(n / 1e3).toFixed(2)} KB`);
const count = (n: number): string => (n >= GB ? `${(n / GB).toFixed(2)} B` : `${(n / 1e6).toFixed(2)} M`);
const mib = (n: number): string => (n >= 10 * MiB ? (n / MiB).toFixed(0) : (n / MiB).toFixed(2));

/** What a checkpoint, or a preset's shape stored as bf16, holds: its config, each tensor's dtype, the stored bytes. */
interface Source {
  name: string;
  config: DeepSeekConfig;
  hasLmHead: boolean;
  has(tensor: string): boolean;
  dtypeOf(tensor: string): DType;
  fp8BlockCols: number;
  /** The load's format: --quant, else the loader's default rule. */
  mode(requested?: QuantName): QuantMode;
  /** The formats this source can load in, for the bytes-per-format line. */
  modes: QuantMode[];
}

function fromCheckpoint(dir: string): Source {
  const ckpt = openCheckpoint(dir);
  try {
    const dtypes = new Map([...ckpt.tensors.values()].map((e) => [e.name, e.dtype]));
    const fp8 = [...dtypes.values()].includes('F8_E4M3');
    const converted = ckpt.config.deepwasmQuantization?.format;
    const stored = { converted, hasFp8: fp8, totalBytes: ckpt.totalBytes };
    return {
      name: dir,
      config: ckpt.config,
      hasLmHead: ckpt.has('lm_head.weight'),
      has: (t) => dtypes.has(t),
      dtypeOf: (t) => dtypes.get(t) ?? fail(`${dir}: the checkpoint has no tensor "${t}", which its config.json needs`),
      fp8BlockCols: ckpt.config.quantization?.blockSize[1] ?? 128,
      mode: (q) => quantFor(dir, stored, q),
      modes: converted ? [converted] : fp8 ? ['fp8', 'bf16', 'q8', 'q4'] : ['f32', 'bf16', 'q8', 'q4'],
    };
  } finally {
    ckpt.close();
  }
}

function fromPreset(name: string): Source {
  const raw = presetConfig(name) ?? fail(`--preset "${name}" is not a preset; presets: ${PRESET_NAMES.join(', ')}`);
  const config = parseConfig({ ...raw, num_nextn_predict_layers: 0 }, `preset ${name}`);
  const stored = parameterCounts(modelSchema(config)).total * 2;
  return {
    name: `preset ${name} (bf16, as deepwasm synth writes it)`,
    config,
    hasLmHead: !config.tieWordEmbeddings,
    has: () => true,
    dtypeOf: () => 'BF16',
    fp8BlockCols: 128,
    mode: (q) => quantFor(`preset ${name}`, { hasFp8: false, totalBytes: stored }, q),
    modes: ['f32', 'bf16', 'q8', 'q4'],
  };
}

export const inspectCommand: Command = {
  name: 'inspect',
  summary: 'print a checkpoint\'s shape, sizes per format and memory plan, without loading it',
  description:
    'Reads config.json and the safetensors headers of --model (or takes a --preset shape, as bf16) and prints the shape, ' +
    'the parameters (and those one token reads), the weights\' bytes in each format they can load in, the KV cache per ' +
    'token, how the weights would lie in WebAssembly memories of at most --memory-limit MiB (units: the embedding, a ' +
    'layer\'s attention with its norms, router and shared experts, each routed expert, a layer\'s KV cache, the head), ' +
    'and whether that fits this machine. No weight is read.',
  flags: [
    { name: 'model', kind: 'string', value: 'DIR', help: 'Hugging Face checkpoint folder' },
    { name: 'preset', kind: 'string', value: PRESET_NAMES.join('|'), help: 'a preset shape instead of a folder (as deepwasm synth writes it: bf16)' },
    QUANT_FLAG,
    CONTEXT_FLAG,
    { name: 'sequences', kind: 'int', value: 'N', min: 1, help: 'sequences the KV-cache pool holds (default 1)' },
    MEMORY_LIMIT_FLAG,
  ],
  async run(flags) {
    const dir = flags.model as string | undefined;
    const preset = flags.preset as string | undefined;
    if ((dir === undefined) === (preset === undefined)) fail('inspect needs exactly one of --model DIR or --preset NAME');
    const src = dir !== undefined ? fromCheckpoint(dir) : fromPreset(preset!);
    const cfg = src.config;
    const requested = flags.quant === undefined ? undefined : parseQuant(flags.quant as string);
    const mode = src.mode(requested);
    const context = (flags.context as number | undefined) ?? Math.min(cfg.maxPositionEmbeddings, 4096);
    const sequences = (flags.sequences as number | undefined) ?? 1;
    if (context > cfg.maxPositionEmbeddings) fail(`--context ${context} exceeds max_position_embeddings (${cfg.maxPositionEmbeddings})`);
    const schema = modelSchema(cfg, { hasLmHead: src.hasLmHead });
    const weights = schemaWeights(schema);
    const rt = await Runtime.create(1);
    try {
      const sizeIn = (m: QuantMode) => (w: Weight): number => {
        if (w.tied || (w.optional && !src.has(w.parts[0].name))) return 0;
        return weightBytes(rt.kernels, cfg, m, w, w.kind === 'vector' ? [] : w.parts.map((t) => src.dtypeOf(t.name)), src.fp8BlockCols);
      };
      const bytesOf = sizeIn(mode);
      const params = parameterCounts(schema);
      const { weights: total, active } = weightTotals(schema, bytesOf);
      const kvPerToken = cfg.numHiddenLayers * kvRowBytes(cfg);
      const scratch = scratchBytes(cfg, context, 256, 1);
      const limit = flags['memory-limit'] !== undefined ? Math.round((flags['memory-limit'] as number) * MiB) : defaultMemoryLimit(scratch);
      const plan = placeUnits(planUnits(schema, bytesOf, kvRowBytes(cfg) * context * sequences), limit);
      const moeLayers = schema.blocks.filter((b) => 'moe' in b.ffn).length;
      const perFormat = src.modes.map((m) => `${m} ${gb(weights.reduce((n, w) => n + sizeIn(m)(w), 0))}`).join(', ');
      const need = planBytes(plan, scratch);
      const ram = machineRam() ?? 0;
      const lines = [
        `model      ${src.name}: ${cfg.modelType}, ${cfg.numHiddenLayers} layers (${cfg.numHiddenLayers - moeLayers} dense, ${moeLayers} MoE` +
          (moeLayers ? `: ${cfg.nRoutedExperts} experts, ${cfg.numExpertsPerTok} per token, ${cfg.nSharedExperts} shared` : '') +
          `), hidden ${cfg.hiddenSize}, ${cfg.numAttentionHeads} heads, vocab ${cfg.vocabSize}` +
          (cfg.numNextnPredictLayers ? `, ${cfg.numNextnPredictLayers} MTP layer (loaded by --draft mtp)` : ''),
        `parameters ${count(params.total)}, ${count(params.active)} read per token`,
        `weights    ${gb(total)} as ${mode === 'stored' ? 'stored' : mode}, ${gb(active)} read per token (each format: ${perFormat})`,
        `KV cache   ${gb(kvPerToken)} per token: ${gb(kvPerToken * context * sequences)} for ${sequences} x ${context} tokens`,
        `memories   ${plan.memories.length} of at most ${mib(limit)} MiB (plus ${Math.ceil(scratch / MiB)} MiB of scratch each):`,
        ...listed(plan.memories.map((m, i) => `  ${String(i).padStart(3)}: ${mib(m.bytes).padStart(5)} MiB  ${describeUnits(m.units, cfg)}`)),
        `machine    ${(ram / 2 ** 30).toFixed(1)} GiB of RAM; the plan needs ${(need / 2 ** 30).toFixed(1)} GiB: ` +
          (need <= ram * RAM_SHARE ? 'it fits' : 'it does not fit (use a smaller --quant, --context or fewer --sequences, or a bigger machine)'),
        need <= ram * RAM_SHARE
          ? `loads      on the CPU here, over ${plan.memories.length} WebAssembly memor${plan.memories.length === 1 ? 'y' : 'ies'}`
          : `loads      not here: it needs ${Math.round(RAM_SHARE * 100)}% of a machine with ${(need / RAM_SHARE / 2 ** 30).toFixed(0)} GiB of RAM; --backend cuda runs it on GPUs with enough memory`,
      ];
      process.stdout.write(lines.join('\n') + '\n');
    } finally {
      await rt.close();
    }
  },
};

/** A long plan's memories: the first ten and the last two, with a line for those between. */
function listed(lines: string[]): string[] {
  if (lines.length <= 16) return lines;
  return [...lines.slice(0, 10), `  ... ${lines.length - 12} more like these ...`, ...lines.slice(-2)];
}
