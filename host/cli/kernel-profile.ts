import type { Kernels } from '../runtime/kernels.js';
import type { Runtime } from '../runtime/runtime.js';

export interface KernelTime {
  name: string;
  ms: number;
  calls: number;
}

/**
 * Runs `work` with every kernel of the runtime wrapped in a timer (kernel calls are synchronous, parallel
 * ones included, so wall time per call is the kernel's time), and returns the totals by kernel, largest
 * first. The wrappers cost a little per call, so time the real work without them.
 */
export function profileKernels(rt: Runtime, work: () => void): KernelTime[] {
  const original = rt.kernels;
  const totals = new Map<string, KernelTime>();
  const timed: Record<string, unknown> = {};
  for (const [name, value] of Object.entries(original)) {
    if (typeof value !== 'function') {
      timed[name] = value;
      continue;
    }
    const entry: KernelTime = { name, ms: 0, calls: 0 };
    totals.set(name, entry);
    timed[name] = (...args: number[]) => {
      const start = performance.now();
      const result = (value as (...a: number[]) => unknown)(...args);
      entry.ms += performance.now() - start;
      entry.calls++;
      return result;
    };
  }
  Object.defineProperty(rt, 'kernels', { value: timed as unknown as Kernels });
  try {
    work();
  } finally {
    Object.defineProperty(rt, 'kernels', { value: original });
  }
  return [...totals.values()].filter((t) => t.calls > 0).sort((a, b) => b.ms - a.ms);
}
