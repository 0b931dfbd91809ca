import { FORMAT_NAMES, GROUPED_DESC_BYTES, type Kernels, type WeightFormat } from './kernels.js';
import type { Runtime } from './runtime.js';

export interface KernelTime {
  name: string;
  ms: number;
  calls: number;
}

/** The time of the matmul and matmul_grouped calls over one shape of weights, and the weight bytes they read. */
export interface MatrixTime extends KernelTime {
  bytes: number;
}

export interface KernelProfile {
  kernels: KernelTime[];
  /** The matmul and matmul_grouped calls again, by format and shape: their times add up to those two kernels'. */
  matrices: MatrixTime[];
}

/**
 * Runs `work` with every kernel of the runtimes (a model's memories) wrapped in a timer (kernel calls are
 * synchronous, parallel ones included, so wall time per call is the kernel's time), and returns the totals
 * by kernel and by matrix shape, largest first. The wrappers cost a little per call, so time the real work
 * without them.
 */
export function profileKernels(runtimes: readonly Runtime[], work: () => void): KernelProfile {
  const totals = new Map<string, KernelTime>();
  const matrices = new Map<string, MatrixTime>();
  const byMatrix = (name: string, ms: number, bytes: number): void => {
    const m = matrices.get(name) ?? { name, ms: 0, calls: 0, bytes: 0 };
    m.ms += ms;
    m.calls++;
    m.bytes += bytes;
    matrices.set(name, m);
  };
  const shapeOf = (fmt: number, rows: number, cols: number): string => `${FORMAT_NAMES[fmt as WeightFormat]} ${rows}x${cols}`;
  const wrap = (rt: Runtime): Kernels => {
    const original = rt.kernels;
    const timed: Record<string, unknown> = {};
    for (const [name, value] of Object.entries(original)) {
      if (typeof value !== 'function') {
        timed[name] = value;
        continue;
      }
      const entry: KernelTime = totals.get(name) ?? { name, ms: 0, calls: 0 };
      totals.set(name, entry);
      timed[name] = (...args: number[]) => {
        const start = performance.now();
        const result = (value as (...a: number[]) => unknown)(...args);
        const ms = performance.now() - start;
        entry.ms += ms;
        entry.calls++;
        if (name === 'matmul') {
          const [fmt, , , , rows, cols, tokens] = args;
          byMatrix(shapeOf(fmt, rows, cols) + (tokens > 1 ? `, ${tokens} tokens` : ''), ms, original.weight_bytes(fmt, rows, cols) >>> 0);
        } else if (name === 'matmul_grouped') {
          const [fmt, desc, n] = args;
          const table = rt.heap().i32;
          const shapes = new Set<string>();
          let bytes = 0;
          for (let e = 0; e < n; e++) {
            const at = (desc + e * GROUPED_DESC_BYTES) / 4;
            shapes.add(shapeOf(fmt, table[at + 3], table[at + 4]) + (table[at + 5] > 1 ? `, ${table[at + 5]} tokens` : ''));
            bytes += original.weight_bytes(fmt, table[at + 3], table[at + 4]) >>> 0;
          }
          byMatrix(`${n} x ${[...shapes].join(' + ')} (grouped)`, ms, bytes);
        }
        return result;
      };
    }
    return timed as unknown as Kernels;
  };
  const originals = runtimes.map((rt) => rt.kernels);
  runtimes.forEach((rt) => Object.defineProperty(rt, 'kernels', { value: wrap(rt) }));
  try {
    work();
  } finally {
    runtimes.forEach((rt, i) => Object.defineProperty(rt, 'kernels', { value: originals[i] }));
  }
  const largestFirst = <T extends KernelTime>(list: Iterable<T>): T[] => [...list].filter((t) => t.calls > 0).sort((a, b) => b.ms - a.ms);
  return { kernels: largestFirst(totals.values()), matrices: largestFirst(matrices.values()) };
}
