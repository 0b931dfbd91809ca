import { BACKEND_NAMES } from '../../model/backend.js';
import { QUANT_NAMES } from '../../model/weights.js';
import type { FlagSpec, Flags } from '../args.js';

/** A CLI subcommand: its flags, one-line summary and what it does. */
export interface Command {
  name: string;
  /** One line for the command list. */
  summary: string;
  /** What --help says about the command, when there is more to say than the summary. */
  description?: string;
  flags: FlagSpec[];
  /** Resolves to the exit code when it is not 0 (EXIT_INTERRUPTED after Ctrl-C). */
  run(flags: Flags): Promise<void | number>;
}

/** What shells report for a process ended by SIGINT (128 + 2), so scripts can tell an interrupted run from a finished one. */
export const EXIT_INTERRUPTED = 130;

/** Flags that several commands share. */
export const MODEL_FLAG: FlagSpec = { name: 'model', kind: 'string', value: 'DIR', help: 'Hugging Face checkpoint folder (config.json + *.safetensors)' };
export const THREADS_FLAG: FlagSpec = { name: 'threads', kind: 'int', value: 'N', min: 1, max: 256, help: 'threads per kernel (default: all cores)' };
export const CONTEXT_FLAG: FlagSpec = { name: 'context', kind: 'int', value: 'N', min: 1, help: 'most tokens per sequence (default: min(max_position_embeddings, 4096))' };
export const BACKEND_FLAG: FlagSpec = {
  name: 'backend',
  kind: 'string',
  value: BACKEND_NAMES.join('|'),
  help: 'where to run: the WebAssembly CPU core (default), an NVIDIA GPU (needs npm run build:gpu) or a WebGPU device (Dawn in Node)',
};
export const MEMORY_LIMIT_FLAG: FlagSpec = {
  name: 'memory-limit',
  kind: 'number',
  value: 'MIB',
  min: 0.001,
  help: 'CPU: most MiB of weights and KV cache per WebAssembly memory, decimals allowed (default: 4096 less the scratch); a larger model spans several memories',
};
export const QUANT_FLAG: FlagSpec = {
  name: 'quant',
  kind: 'string',
  value: QUANT_NAMES.join('|'),
  help: 'weight format (default: as stored up to 1 GiB, q8 above; fp8 checkpoints stay fp8; see docs/quantized-format.md)',
};
