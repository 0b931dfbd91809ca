// The job board in shared memory: the step the calling thread publishes (operation, item count,
// arguments), the pool's counters (pool.ts), and after them the quantized kernels' scratch. A kernel's
// task reads its arguments through the accessors here, never through the pool, so the imports run one
// way: board <- kernels <- tasks (the op switch) <- pool (parallel, worker_loop) <- steps (the exported
// kernels that publish a step) <- index.

// Layout (bytes from the board's base; the host allocates BOARD_BYTES + BOARD_EXTRA_BYTES, 64-byte aligned).
export const GEN: usize = 0; // generation: bumped once per step; workers wait on it
export const PENDING: usize = 64; // workers still busy with the current step (own cache line)
export const NEXT: usize = 96; // the first item no thread has claimed yet
export const THREADS: usize = 128;
export const STOP: usize = 132;
export const OP: usize = 136;
export const ITEMS: usize = 140;
const ARGS: usize = 192; // MAX_ARGS i32 slots, then MAX_ARGS f32 slots
export const MAX_ARGS: i32 = 24;
export const BOARD_BYTES: i32 = 192 + MAX_ARGS * 8;
// In the BOARD_EXTRA_BYTES past BOARD_BYTES (assembly/constants.ts): where the scratch is, kept in memory
// rather than in globals, which are per instance.
const SCRATCH_PTR: usize = <usize>BOARD_BYTES;
const SCRATCH_SIZE: usize = <usize>BOARD_BYTES + 4;

// Per instance: each thread's instance knows where the board is; the module keeps no other state.
export let board: usize = 0;

@inline export function attachBoard(ptr: usize): void {
  board = ptr;
}

@inline export function argI(k: i32): i32 {
  return load<i32>(board + ARGS + (<usize>k << 2));
}

@inline export function argP(k: i32): usize {
  return <usize>load<u32>(board + ARGS + (<usize>k << 2));
}

@inline export function argF(k: i32): f32 {
  return load<f32>(board + ARGS + (<usize>(MAX_ARGS + k) << 2));
}

@inline export function setI(k: i32, v: i32): void {
  store<i32>(board + ARGS + (<usize>k << 2), v);
}

@inline export function setP(k: i32, v: usize): void {
  store<u32>(board + ARGS + (<usize>k << 2), <u32>v);
}

@inline export function setF(k: i32, v: f32): void {
  store<f32>(board + ARGS + (<usize>(MAX_ARGS + k) << 2), v);
}

/** Registers the quantized kernels' scratch area (64-byte aligned); every thread finds it through the board. */
export function set_scratch(ptr: usize, bytes: usize): void {
  store<u32>(board + SCRATCH_PTR, <u32>ptr);
  store<u32>(board + SCRATCH_SIZE, <u32>bytes);
}

@inline export function scratchPtr(): usize {
  return <usize>load<u32>(board + SCRATCH_PTR);
}

@inline export function scratchBytes(): usize {
  return <usize>load<u32>(board + SCRATCH_SIZE);
}
