// Numbers of the parallel steps, shared by the side that publishes them (steps.ts) and tasks.ts.
export const OP_MATMUL: i32 = 0;
export const OP_MLA: i32 = 1;
export const OP_READ_PROBE: i32 = 2;
export const OP_MATMUL_QUANT: i32 = 3;
export const OP_QUANTIZE: i32 = 4;
export const OP_MATMUL_GROUPED: i32 = 5;
export const OP_SILU_MUL: i32 = 6;
