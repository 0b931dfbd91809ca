// What --quant means on the GPU, and the device format each weight takes (docs/quantized-format.md:
// q8 is the same format on both backends, and the same weights stay float).
import type { Checkpoint } from '../../checkpoint/checkpoint.js';
import type { DType } from '../../checkpoint/dtypes.js';
import { fail } from '../../errors.js';
import type { Weight } from '../../model/schema.js';
import type { QuantName } from '../../model/weights.js';
import { FMT_BF16, FMT_F32, FMT_FP8, FMT_Q8, ROLE_KV_B } from '../../runtime/constants.js';

/** The weight formats of a CUDA load: as the checkpoint stores them, or one --quant format. */
export type CudaQuant = 'stored' | 'f32' | 'bf16' | 'q8' | 'fp8';

const SUPPORTED = 'the CUDA backend runs weights as stored (f32, bf16, fp8; f16 widened to f32) or as --quant q8, bf16 or f32';

/** The mode a CUDA load uses; fails with one line for what the device cannot run. */
export function cudaQuant(ckpt: Checkpoint, requested?: QuantName): CudaQuant {
  const converted = ckpt.config.deepwasmQuantization?.format;
  if (converted) {
    fail(`${ckpt.dir} was written by "deepwasm convert" (${converted}), which the CUDA backend does not read; load the original checkpoint (--quant q8 gives the same q8 weights)`);
  }
  if (requested === undefined) return 'stored';
  if (requested === 'q4') fail(`--quant q4 is CPU-only: ${SUPPORTED}`);
  if (requested === 'fp8' && ![...ckpt.tensors.values()].some((e) => e.dtype === 'F8_E4M3')) {
    fail(`--quant fp8 keeps FP8 weights as they are, but ${ckpt.dir} has no F8_E4M3 tensors; use q8, bf16 or f32`);
  }
  return requested;
}

/**
 * The device format (FMT_*) of a matrix whose parts the checkpoint stores as `dtypes`. As on the CPU,
 * q8 leaves the embedding and the router float (bf16 when stored so, else f32) and quantizes kv_b;
 * fp8 keeps F8_E4M3 weights and everything else as stored. fp8 stays fp8 only when its scale blocks
 * are a multiple of 8 columns wide (the kernels read 8 weights per scale).
 */
export function deviceFormat(w: Weight, dtypes: readonly DType[], quant: CudaQuant, fp8BlockCols: number): number {
  const float = dtypes.every((d) => d === 'BF16') ? FMT_BF16 : FMT_F32;
  switch (quant) {
    case 'f32':
      return FMT_F32;
    case 'bf16':
      return FMT_BF16;
    case 'q8':
      return w.kind === 'matrix' || w.role === ROLE_KV_B ? FMT_Q8 : float;
    default:
      return dtypes.every((d) => d === 'F8_E4M3') && fp8BlockCols % 8 === 0 ? FMT_FP8 : float;
  }
}
