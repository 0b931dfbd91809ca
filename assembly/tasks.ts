// The worker side of every parallel step: a plain switch (no function table, so no allocation and
// nothing for a worker's start-up to initialise).
import { OP_MATMUL, OP_MATMUL_GROUPED, OP_MATMUL_QUANT, OP_MLA, OP_QUANTIZE, OP_READ_PROBE, OP_SILU_MUL } from './ops';
import { matmulTask, quantizedMatmulTask } from './kernels/matmul';
import { quantizeTask } from './kernels/quantize';
import { groupedMatmulTask } from './kernels/grouped';
import { mlaTask } from './blocks/mla';
import { readProbeTask } from './kernels/probe';
import { siluMulTask } from './kernels/activation';

export function runTask(op: i32, begin: i32, end: i32, tid: i32): void {
  switch (op) {
    case OP_MATMUL:
      matmulTask(begin, end);
      break;
    case OP_MLA:
      mlaTask(begin, end, tid);
      break;
    case OP_READ_PROBE:
      readProbeTask(begin, end);
      break;
    case OP_MATMUL_QUANT:
      quantizedMatmulTask(begin, end, tid);
      break;
    case OP_QUANTIZE:
      quantizeTask(begin, end, tid);
      break;
    case OP_MATMUL_GROUPED:
      groupedMatmulTask(begin, end, tid);
      break;
    case OP_SILU_MUL:
      siluMulTask(begin, end);
      break;
  }
}
