// Which build 'auto' runs, chosen by measuring both on this machine: relaxed SIMD (vpdpbusd on AVX-VNNI) is
// faster on the Intel VMs this project measured, but on an AMD Zen 4 VM Node 24's relaxed build was not faster
// than the plain one at q8 (GUIDE.md §3). So, once per machine, CPU model and Node version, the hot kernels
// (q8 and q4 decode over a matrix that stays in cache, so the arithmetic shows rather than the memory, and a
// q8 prefill tile) run in both builds, alternated; the faster build is kept in a small JSON file and reused.
// DEEPWASM_SIMD=plain|relaxed (or the simd load option) overrides it.
import * as fs from 'node:fs';
import { cpus, homedir } from 'node:os';
import { dirname, join } from 'node:path';
import { FMT_F32, FMT_Q4, FMT_Q8 } from './constants.js';
import type { SimdLevel } from './features.js';
import type { Runtime } from './runtime.js';

export interface Calibration {
  level: SimdLevel;
  /** Per kernel, plain time / relaxed time (above 1: relaxed is faster). */
  speedups: Record<string, number>;
  /** Where the choice is kept (undefined when it could not be written). */
  file?: string;
  /** Whether this process measured it (false: read from the file). */
  measured: boolean;
}

/** Relaxed must beat plain by this much overall to be kept: within noise, the plain build is the safe one. */
const MARGIN = 1.02;
const ROWS = 512;
const COLS = 2048;
const PREFILL_TOKENS = 16;
const ROUNDS = 5;
/** Calls per kernel per round: ~1-3 ms each in cache on one thread. */
const CALLS = 8;

/** The file the choice is kept in: DEEPWASM_CACHE_DIR, else XDG_CACHE_HOME/deepwasm, else ~/.cache/deepwasm. */
export function calibrationFile(): string {
  const dir = process.env.DEEPWASM_CACHE_DIR ?? join(process.env.XDG_CACHE_HOME ?? join(homedir(), '.cache'), 'deepwasm');
  return join(dir, 'simd-choice.json');
}

/** What the choice depends on: the CPU, the engine, and the two builds' bytes (a rebuild measures again). */
function calibrationKey(builds: Record<SimdLevel, Uint8Array>): string {
  const size = (b: Uint8Array) => b.length;
  let h = 0x811c9dc5;
  for (const b of [builds.simd128, builds.relaxed]) for (let i = 0; i < b.length; i += 4099) h = Math.imul(h ^ b[i], 0x01000193) >>> 0;
  return `${cpus()[0]?.model ?? 'cpu'}|${process.version}|${size(builds.simd128)}:${size(builds.relaxed)}:${h.toString(16)}`;
}

let chosen: Promise<Calibration> | undefined;

/**
 * The build 'auto' runs on this machine (relaxed SIMD already known to work): read from the calibration file,
 * or measured now (about half a second) and written there. Once per process.
 */
export function calibratedLevel(builds: Record<SimdLevel, Uint8Array>, create: (level: SimdLevel) => Promise<Runtime>): Promise<Calibration> {
  chosen ??= (async () => {
    // Deno without --allow-env / --allow-sys refuses the home folder and the CPU's name: then measure, keep nothing.
    let where: { file: string; key: string } | undefined;
    try {
      where = { file: calibrationFile(), key: calibrationKey(builds) };
    } catch {
      where = undefined;
    }
    const kept = where ? readKept(where.file)[where.key] : undefined;
    if (kept && (kept.level === 'relaxed' || kept.level === 'simd128')) return { ...kept, file: where!.file, measured: false };
    const c = await measure(create);
    const written = where !== undefined && write(where.file, where.key, c);
    return { ...c, file: written ? where!.file : undefined, measured: true };
  })();
  return chosen;
}

function readKept(file: string): Record<string, Omit<Calibration, 'file' | 'measured'>> {
  try {
    const v = JSON.parse(fs.readFileSync(file, 'utf8')) as unknown;
    return v && typeof v === 'object' ? (v as Record<string, Omit<Calibration, 'file' | 'measured'>>) : {};
  } catch {
    return {};
  }
}

/** Keeps the choice beside those of other engines and builds; a cache that cannot be written only costs a re-measure. */
function write(file: string, key: string, c: Omit<Calibration, 'file' | 'measured'>): boolean {
  try {
    fs.mkdirSync(dirname(file), { recursive: true });
    const all = readKept(file);
    all[key] = { level: c.level, speedups: c.speedups };
    const tmp = `${file}.${process.pid}.tmp`;
    fs.writeFileSync(tmp, JSON.stringify(all, null, 2) + '\n');
    fs.renameSync(tmp, file);
    return true;
  } catch {
    return false;
  }
}

interface Bench {
  name: string;
  run(): void;
}

/** The kernels of one build over the same deterministic values. */
function kernelsOf(rt: Runtime): Bench[] {
  const k = rt.kernels;
  rt.ensureQuantScratch(COLS);
  const src = rt.arena.allocF32(ROWS * COLS, 'calibration weights');
  const values = rt.f32(src, ROWS * COLS);
  let s = 1;
  for (let i = 0; i < values.length; i++) values[i] = ((s = (Math.imul(s, 1103515245) + 12345) >>> 0) / 2 ** 32 - 0.5) * 0.1;
  const x = rt.arena.allocF32(PREFILL_TOKENS * COLS, 'calibration activations');
  rt.f32(x, PREFILL_TOKENS * COLS).set(values.subarray(0, PREFILL_TOKENS * COLS));
  const out = rt.arena.allocF32(PREFILL_TOKENS * ROWS, 'calibration outputs');
  const blob = (fmt: number): number => {
    const w = rt.arena.alloc(k.weight_bytes(fmt, ROWS, COLS) >>> 0, 'calibration blob');
    k.quantize_rows(fmt, w, ROWS, FMT_F32, src, ROWS, COLS, 0);
    return w;
  };
  const q8 = blob(FMT_Q8);
  const q4 = blob(FMT_Q4);
  return [
    { name: 'q8 decode', run: () => k.matmul(FMT_Q8, out, q8, x, ROWS, COLS, 1) },
    { name: 'q4 decode', run: () => k.matmul(FMT_Q4, out, q4, x, ROWS, COLS, 1) },
    { name: `q8 prefill ${PREFILL_TOKENS}`, run: () => k.matmul(FMT_Q8, out, q8, x, ROWS, COLS, PREFILL_TOKENS) },
  ];
}

function time(b: Bench): number {
  const t0 = performance.now();
  for (let i = 0; i < CALLS; i++) b.run();
  return performance.now() - t0;
}

/** Both builds on one thread, rounds alternated so that both see the same moments of a shared machine; best of rounds. */
async function measure(create: (level: SimdLevel) => Promise<Runtime>): Promise<Omit<Calibration, 'file' | 'measured'>> {
  const plain = await create('simd128');
  const relaxed = await create('relaxed');
  try {
    const a = kernelsOf(plain);
    const b = kernelsOf(relaxed);
    for (const x of [...a, ...b]) x.run();
    const best = (n: number) => Array.from({ length: n }, () => Infinity);
    const ta = best(a.length);
    const tb = best(b.length);
    for (let r = 0; r < ROUNDS; r++) {
      for (let i = 0; i < a.length; i++) {
        ta[i] = Math.min(ta[i], time(a[i]));
        tb[i] = Math.min(tb[i], time(b[i]));
      }
    }
    const speedups: Record<string, number> = {};
    let logSum = 0;
    for (let i = 0; i < a.length; i++) {
      const s = ta[i] / tb[i];
      speedups[a[i].name] = Math.round(s * 1000) / 1000;
      logSum += Math.log(s);
    }
    return { level: Math.exp(logSum / a.length) >= MARGIN ? 'relaxed' : 'simd128', speedups };
  } finally {
    await plain.close();
    await relaxed.close();
  }
}
