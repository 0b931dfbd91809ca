// The thread pool lives in wasm: every thread runs this module over one shared memory. The calling
// thread publishes a step (operation, item count, arguments) on a job board in that memory, wakes the
// workers through memory.atomic.notify, takes its own share and waits for a counter to reach zero.
// Work is split by output items (rows, heads), each item computed by the same code whatever the
// thread count and whichever thread takes it, so results are bit-identical for 1 and N threads.
//
// Threads claim the items in shrinking chunks (guided scheduling) rather than fixed equal shares: the
// cores of a shared VM do not run at one speed (a neighbour's work slows one of them), and with fixed
// shares the faster thread waited for the slower one at the end of every step. The first chunks are
// large, so a decode matmul still streams long runs of rows.

import { GEN, ITEMS, NEXT, OP, PENDING, STOP, THREADS, attachBoard, board } from './board';
import { runTask } from './tasks';

// Spinning before parking saves the 3-9 µs wake-up latency of atomic.wait between steps.
const SPINS: i32 = 4000;

/** Claims and runs chunks of the current step until none is left: each chunk a 1 / (2 * threads) share
 * of the items still unclaimed, so the chunks shrink towards the end and threads finish together. */
function runShare(tid: i32): void {
  const n = load<i32>(board + ITEMS);
  const op = load<i32>(board + OP);
  const parts = 2 * load<i32>(board + THREADS);
  let begin = atomic.load<i32>(board + NEXT);
  while (begin < n) {
    const end = begin + max(1, (n - begin) / parts);
    const seen = atomic.cmpxchg<i32>(board + NEXT, begin, end);
    if (seen == begin) {
      runTask(op, begin, end, tid);
      begin = atomic.load<i32>(board + NEXT);
    } else {
      begin = seen;
    }
  }
}

export function pool_init(boardPtr: usize, threads: i32): void {
  attachBoard(boardPtr);
  store<i32>(board + THREADS, threads);
}

/** Runs `op` over `items` work items on all threads; returns when every share is done. */
export function parallel(op: i32, items: i32): void {
  const threads = load<i32>(board + THREADS);
  store<i32>(board + OP, op);
  store<i32>(board + ITEMS, items);
  if (threads == 1 || items == 1) {
    runTask(op, 0, items, 0);
    return;
  }
  atomic.store<i32>(board + PENDING, threads - 1);
  atomic.store<i32>(board + NEXT, 0);
  atomic.add<i32>(board + GEN, 1); // seq-cst: publishes OP, ITEMS, NEXT and the arguments
  atomic.notify(board + GEN, threads - 1);
  runShare(0);
  let spins = 0;
  let left = atomic.load<i32>(board + PENDING);
  while (left != 0) {
    if (++spins > SPINS) memory.atomic.wait32(board + PENDING, left, -1);
    left = atomic.load<i32>(board + PENDING);
  }
}

/** A worker thread's whole life: wait for a step, run its share, report, until told to stop.
 * seenGeneration is the generation when the pool was made, so a worker that starts late still takes
 * the step published before it arrived (the caller waits for every share before the next step). */
export function worker_loop(boardPtr: usize, tid: i32, seenGeneration: i32): void {
  attachBoard(boardPtr);
  let seen = seenGeneration;
  while (true) {
    let spins = 0;
    let gen = atomic.load<i32>(board + GEN);
    while (gen == seen) {
      if (++spins > SPINS) memory.atomic.wait32(board + GEN, seen, -1);
      gen = atomic.load<i32>(board + GEN);
    }
    seen = gen;
    if (atomic.load<i32>(board + STOP) != 0) return;
    runShare(tid);
    if (atomic.sub<i32>(board + PENDING, 1) == 1) atomic.notify(board + PENDING, 1);
  }
}

export function pool_stop(): void {
  atomic.store<i32>(board + STOP, 1);
  atomic.add<i32>(board + GEN, 1);
  atomic.notify(board + GEN, -1);
}
