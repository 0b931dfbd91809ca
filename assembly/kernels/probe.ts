// A memory-bandwidth probe: every thread streams its share of a buffer and folds it into a sum, so
// benchmarks can report kernels as a fraction of what the memory delivers. Each thread reads its
// share as four streams at once, a quarter each: the hardware prefetcher follows one stream per
// 4 KiB page, and one stream per core left a third of the bandwidth unused (one core here: 9.3-9.9
// GB/s with one stream, 12-14 with two, 15-17 with four).
import { argP, setP } from '../board';

/** Writes read_probe's arguments (steps.ts) on the job board; returns the step's item count (64-byte blocks). */
@inline export function stageReadProbe(src: usize, bytes: i32, out: usize): i32 {
  setP(0, src);
  setP(1, out);
  return bytes >>> 6;
}

export function readProbeTask(begin: i32, end: i32): void {
  const src = argP(0);
  const quarter = (end - begin) >> 2;
  const stride = <usize>quarter << 6;
  let a = i32x4.splat(0);
  let b = a;
  let c = a;
  let d = a;
  for (let i = begin; i < begin + quarter; i++) {
    const p = src + (<usize>i << 6);
    a = i32x4.add(a, i32x4.add(v128.load(p), v128.load(p + stride)));
    b = i32x4.add(b, i32x4.add(v128.load(p, 16), v128.load(p + stride, 16)));
    c = i32x4.add(c, i32x4.add(v128.load(p, 32), v128.load(p + stride, 32)));
    d = i32x4.add(d, i32x4.add(v128.load(p, 48), v128.load(p + stride, 48)));
    const q = p + 2 * stride;
    a = i32x4.add(a, i32x4.add(v128.load(q), v128.load(q + stride)));
    b = i32x4.add(b, i32x4.add(v128.load(q, 16), v128.load(q + stride, 16)));
    c = i32x4.add(c, i32x4.add(v128.load(q, 32), v128.load(q + stride, 32)));
    d = i32x4.add(d, i32x4.add(v128.load(q, 48), v128.load(q + stride, 48)));
  }
  for (let i = begin + 4 * quarter; i < end; i++) {
    const p = src + (<usize>i << 6);
    a = i32x4.add(a, v128.load(p));
    b = i32x4.add(b, v128.load(p, 16));
    c = i32x4.add(c, v128.load(p, 32));
    d = i32x4.add(d, v128.load(p, 48));
  }
  const s = i32x4.add(i32x4.add(a, b), i32x4.add(c, d));
  atomic.add<i32>(argP(1), i32x4.extract_lane(s, 0) + i32x4.extract_lane(s, 1) + i32x4.extract_lane(s, 2) + i32x4.extract_lane(s, 3));
}
