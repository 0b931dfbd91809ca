// A memory-bandwidth probe: every thread streams its share of a buffer and folds it into a sum, the
// same access pattern as a matvec over weights, so benchmarks can report kernels as a fraction of it.
import { argI, argP, parallel, setI, setP } from '../pool';
import { OP_READ_PROBE } from '../ops';

/** Reads `bytes` bytes (a multiple of 64) at src on all threads; writes one f32 per thread to out. */
export function read_probe(src: usize, bytes: i32, out: usize): void {
  setP(0, src);
  setI(1, bytes >>> 6);
  setP(2, out);
  parallel(OP_READ_PROBE, bytes >>> 6);
}

export function readProbeTask(begin: i32, end: i32, tid: i32): void {
  const src = argP(0);
  let a = i32x4.splat(0);
  let b = a;
  let c = a;
  let d = a;
  for (let i = begin; i < end; i++) {
    const p = src + (<usize>i << 6);
    a = i32x4.add(a, v128.load(p));
    b = i32x4.add(b, v128.load(p, 16));
    c = i32x4.add(c, v128.load(p, 32));
    d = i32x4.add(d, v128.load(p, 48));
  }
  const s = i32x4.add(i32x4.add(a, b), i32x4.add(c, d));
  store<i32>(argP(2) + (<usize>tid << 2), i32x4.extract_lane(s, 0) ^ i32x4.extract_lane(s, 3));
}
