export { type DType, DTYPE_SIZE, DTYPES, isDType, bf16ToF32, f16ToF32, fp8e4m3ToF32, dequantFp8Blocks } from './dtypes.js';
export {
  type TensorEntry,
  type SafetensorsFile,
  type TensorToWrite,
  openSafetensors,
  readTensorInto,
  readTensorRange,
  writeSafetensors,
  closeFile,
  closeAll,
} from './safetensors.js';
export {
  type DeepSeekConfig,
  type ModelType,
  type TopkMethod,
  type ScoringFunc,
  type YarnScaling,
  type Fp8Quantization,
  parseConfig,
  readConfig,
  isMoeLayer,
} from './config.js';
export { type Checkpoint, openCheckpoint, expectShape } from './checkpoint.js';
