// Kernel micro-benchmarks (npm run bench): the machine's read bandwidth, measured with the same
// threads the kernels use, next to matmul in every weight format the runtime defines, in one run, so
// that each kernel reads as a fraction of what the memory can deliver.
//
//   node dist/bench/kernels.bench.js [--threads 1,2] [--time MS] [--json FILE] [--few [--against DIR]]
//
// Bandwidth: read_probe (wasm SIMD, all threads) streams a 1 GiB buffer; two single-thread references
// read the same bytes from JavaScript: a plain typed-array loop and Buffer.indexOf (native memchr).
// Matmul: decode is out[M] = W[M, K] x[K] with M = K = 4096, cycling through enough copies of W
// (>= 256 MiB) that every call streams its weights from DRAM, not from the 32 MiB L3; reported as
// GB/s of weights read and GFLOP/s. Prefill is the same with 64 tokens per call (arithmetic-bound).
// Decode in cache runs the decode kernel over one matrix of ~1 MiB, called again and again, so its
// weights stay in L2: what a call costs when memory is not the limit, fixed costs included (quantizing
// the inputs on the calling thread, the step's hand-off and chunk claims), as the model's small
// matrices pay them.
//
// --few runs only the few-token comparison (a batched decode step or a speculative verify): q8 and q4
// matmul of T = 2, 3, 4, 8 tokens (and a prefill's 64) against T one-token matmuls, the same 4096 x 4096 weights from DRAM,
// the two timed alternately call by call in one process (the machine is shared: the ratio is the number
// to read), next to dot_peak, the relaxed or plain dot's rate from registers. --against DIR (another
// checkout, built) runs its core in the same process and rounds, alternately with this one's. The build
// is the one Runtime.create picks (DEEPWASM_SIMD=plain|relaxed forces one).
import { readFileSync, writeFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { Bench } from 'tinybench';
import { fp8e4m3ToF32 } from '../host/checkpoint/dtypes.js';
import { DOT_PEAK_MACS } from '../host/runtime/constants.js';
import * as K from '../host/runtime/kernels.js';
import { Runtime } from '../host/runtime/runtime.js';

/** How the bench lays out a [rows, cols] matrix of one weight format from f32 values. */
interface FormatEntry {
  bytes(rows: number, cols: number, rt: Runtime): number;
  /** Writes src (row-major f32) in this format; rt is there for formats quantized by a wasm kernel. */
  encode(src: Float32Array, rows: number, cols: number, dst: Uint8Array, rt: Runtime): void;
  /** Once per runtime before its matmuls run, e.g. to register activation scratch for `tokens` x `cols`. */
  setup?(rt: Runtime, tokens: number, cols: number): void;
}

function bf16Encode(src: Float32Array, _rows: number, _cols: number, dst: Uint8Array): void {
  const bits = new Uint32Array(src.buffer, src.byteOffset, src.length);
  const out = new Uint16Array(dst.buffer, dst.byteOffset, src.length);
  for (let i = 0; i < bits.length; i++) out[i] = (bits[i] + 0x7fff + ((bits[i] >>> 16) & 1)) >>> 16;
}

/** q8/q4: the loader's own wasm quantizer writes the blob (f32 source staged in wasm memory). */
function quantizedEntry(fmt: number): FormatEntry {
  return {
    bytes: (r, c, rt) => rt.kernels.weight_bytes(fmt, r, c) >>> 0,
    setup: (rt, _tokens, cols) => rt.ensureQuantScratch(cols),
    encode(src, rows, cols, dst, rt) {
      const mark = rt.arena.mark();
      const staged = rt.arena.allocF32(src.length, 'f32 source');
      rt.f32(staged, src.length).set(src);
      const blob = rt.arena.alloc(dst.length, 'quantized blob');
      rt.kernels.quantize_rows(fmt, blob, rows, K.FMT_F32, staged, rows, cols, 0);
      dst.set(rt.bytes(blob, dst.length));
      rt.arena.release(mark);
    },
  };
}

/** fp8: each value rounded to the nearest e4m3 (block scales of 1), packed by the loader's fp8_pack. */
const FP8: FormatEntry = {
  bytes: (r, c, rt) => rt.kernels.weight_bytes(K.FMT_FP8, r, c) >>> 0,
  setup: (rt, _tokens, cols) => rt.ensureQuantScratch(cols),
  encode(src, rows, cols, dst, rt) {
    const values = new Float32Array(256);
    fp8e4m3ToF32(Uint8Array.from({ length: 256 }, (_, i) => i), values);
    const codes = [...values.keys()].filter((i) => Number.isFinite(values[i])).sort((a, b) => values[a] - values[b]);
    const mark = rt.arena.mark();
    const q = rt.arena.alloc(src.length, 'e4m3 bytes');
    const qView = rt.bytes(q, src.length);
    for (let i = 0; i < src.length; i++) {
      let lo = 0;
      let hi = codes.length - 1;
      while (hi - lo > 1) {
        const mid = (lo + hi) >> 1;
        if (values[codes[mid]] <= src[i]) lo = mid;
        else hi = mid;
      }
      qView[i] = Math.abs(values[codes[lo]] - src[i]) <= Math.abs(values[codes[hi]] - src[i]) ? codes[lo] : codes[hi];
    }
    const scaleCount = Math.ceil(rows / 128) * Math.ceil(cols / 128);
    const scales = rt.arena.allocF32(scaleCount, 'block scales');
    rt.f32(scales, scaleCount).fill(1);
    const blob = rt.arena.alloc(dst.length, 'fp8 blob');
    rt.kernels.fp8_pack(blob, rows, q, scales, rows, cols, 0, 128);
    dst.set(rt.bytes(blob, dst.length));
    rt.arena.release(mark);
  },
};

/**
 * One line per format, keyed by the name after FMT_ in host/runtime/kernels.ts. Every FMT_* the
 * runtime exports is benchmarked; one without an entry here is reported, not skipped silently.
 */
const FORMATS: Record<string, FormatEntry> = {
  F32: { bytes: (r, c) => r * c * 4, encode: (src, _r, _c, dst) => dst.set(new Uint8Array(src.buffer, src.byteOffset, src.byteLength)) },
  BF16: { bytes: (r, c) => r * c * 2, encode: bf16Encode },
  Q8: quantizedEntry(K.FMT_Q8),
  Q4: quantizedEntry(K.FMT_Q4),
  FP8,
};

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
const PROBE_BYTES = GiB;
const ROTATION_BYTES = 256 * MiB;
const M = 4096;
const KDIM = 4096;
const PREFILL_TOKENS = 64;
const CACHE_BYTES = MiB;

function parseArgs(argv: string[]): { threads: number[]; time: number; json?: string; few: boolean; against?: string } {
  const cores = availableParallelism();
  let threads = [...new Set([1, cores])];
  let time = 2000;
  let json: string | undefined;
  let few = false;
  let against: string | undefined;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const v = argv[i + 1];
    if (a === '--threads' && v) (threads = v.split(',').map(Number)), i++;
    else if (a === '--time' && v) (time = Number(v)), i++;
    else if (a === '--json' && v) (json = v), i++;
    else if (a === '--few') few = true;
    else if (a === '--against' && v) (against = v), i++;
    else throw new Error(`unknown argument ${a}; usage: kernels.bench.js [--threads 1,2] [--time MS] [--json FILE] [--few [--against DIR]]`);
  }
  if (threads.some((t) => !Number.isInteger(t) || t < 1)) throw new Error(`--threads wants whole numbers, got ${threads}`);
  if (against && !few) throw new Error('--against DIR goes with --few');
  return { threads, time, json, few, against };
}

/** Deterministic values in [-1, 1): the numbers do not matter, only that they are ordinary floats. */
function randomF32(n: number, seed: number): Float32Array {
  const out = new Float32Array(n);
  let s = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    out[i] = (s >>> 0) / 2 ** 31 - 1;
  }
  return out;
}

interface Row {
  benchmark: string;
  threads: number;
  /** Median time per call in ms. */
  ms: number;
  bytes: number;
  flops: number;
  /** What limits it: memory (streams its bytes once per call) or arithmetic (prefill). */
  bound: 'memory' | 'compute';
}

const { threads: threadCounts, time, json, few, against } = parseArgs(process.argv.slice(2));
const formats = Object.entries(K)
  .filter(([name, v]) => name.startsWith('FMT_') && typeof v === 'number')
  .map(([name, code]) => ({ name: name.slice(4), code: code as number }))
  .sort((a, b) => a.code - b.code);
const missing = formats.filter((f) => !FORMATS[f.name]);
const weightsF32 = randomF32(M * KDIM, 1);
const rows: Row[] = [];

type Case = Omit<Row, 'benchmark' | 'ms'> & { name: string; fn: () => void };

async function measure(bench: Bench, cases: Case[]): Promise<void> {
  for (const c of cases) bench.add(c.name, c.fn);
  await bench.run();
  for (const [i, task] of bench.tasks.entries()) {
    const r = task.result;
    if (r.state !== 'completed') throw new Error(`${task.name}: ${r.state}${'error' in r ? ` (${String(r.error)})` : ''}`);
    const c = cases[i];
    rows.push({ benchmark: c.name, threads: c.threads, ms: r.latency.p50 ?? r.latency.mean, bytes: c.bytes, flops: c.flops, bound: c.bound });
  }
}

/** The few-token sizes, and a prefill's 64 to see that the tiles for few tokens cost prefill nothing. */
const FEW_TOKENS = [2, 3, 4, 8, PREFILL_TOKENS];

/** One build's runtime in the few-token comparison, with its copies of the weights and its buffers. */
interface FewSide {
  label: string;
  rt: Runtime;
  call(tokens: number, one: boolean): number;
  release(): void;
}

function fewSide(label: string, rt: Runtime, name: string): FewSide {
  const code = K[`FMT_${name}` as 'FMT_Q8'];
  const entry = FORMATS[name];
  const mark = rt.arena.mark();
  const x = rt.arena.allocF32(PREFILL_TOKENS * KDIM, 'activations');
  rt.f32(x, PREFILL_TOKENS * KDIM).set(randomF32(PREFILL_TOKENS * KDIM, 2));
  const out = rt.arena.allocF32(PREFILL_TOKENS * M, 'outputs');
  entry.setup?.(rt, PREFILL_TOKENS, KDIM);
  const bytes = entry.bytes(M, KDIM, rt);
  const encoded = new Uint8Array(bytes);
  entry.encode(weightsF32, M, KDIM, encoded, rt);
  const copies = Math.max(2, Math.ceil(ROTATION_BYTES / bytes));
  const ws = Array.from({ length: copies }, (_, c) => {
    const w = rt.arena.alloc(bytes, `${name} weights copy ${c}`);
    rt.bytes(w, bytes).set(encoded);
    return w;
  });
  let next = 0;
  return {
    label,
    rt,
    call(tokens, one) {
      const t0 = performance.now();
      const w = ws[next];
      next = (next + 1) % copies;
      if (one) for (let t = 0; t < tokens; t++) rt.kernels.matmul(code, out + t * M * 4, w, x + t * KDIM * 4, M, KDIM, 1);
      else rt.kernels.matmul(code, out, w, x, M, KDIM, tokens);
      return performance.now() - t0;
    },
    release: () => rt.arena.release(mark),
  };
}

/**
 * --few: per format and T, median ms of matmul(T) and of T matmul(1), timed alternately call by call;
 * with --against DIR the same for DIR's build of the core (DIR/build/*.wasm, the same SIMD level) in the
 * same rounds, so two checkouts compare side by side in one process. dot_peak: one core, this build.
 */
async function fewTokens(): Promise<void> {
  const median = (v: number[]): number => [...v].sort((a, b) => a - b)[v.length >> 1];
  const table: Record<string, string | number>[] = [];
  for (const threads of threadCounts) {
    const rt = await Runtime.create(threads);
    const builds: { label: string; rt: Runtime }[] = [{ label: 'this', rt }];
    if (against) {
      const file = `${against}/build/${rt.simd === 'relaxed' ? 'deepwasm-relaxed.wasm' : 'deepwasm.wasm'}`;
      builds.push({ label: against, rt: await Runtime.create(threads, { module: new WebAssembly.Module(readFileSync(file)) }) });
    }
    const rounds = 1 << 20;
    rt.kernels.dot_peak(rounds);
    const peaks: number[] = [];
    for (let i = 0; i < 5; i++) {
      const t0 = performance.now();
      rt.kernels.dot_peak(rounds);
      peaks.push(performance.now() - t0);
    }
    const peak = (2 * DOT_PEAK_MACS * rounds) / median(peaks) / 1e6;
    console.log(`dot_peak, one core (${rt.simd} build): ${peak.toFixed(1)} GFLOP/s`);
    for (const name of ['Q8', 'Q4']) {
      const sides = builds.map((b) => fewSide(b.label, b.rt, name));
      for (const tokens of [1, ...FEW_TOKENS]) {
        const times = sides.map(() => ({ together: [] as number[], apart: [] as number[] }));
        for (const side of sides) side.call(tokens, false), side.call(tokens, true);
        const until = performance.now() + time * sides.length;
        while (performance.now() < until || times[0].together.length < 5) {
          sides.forEach((side, i) => {
            times[i].together.push(side.call(tokens, false));
            times[i].apart.push(side.call(tokens, true));
          });
        }
        sides.forEach((side, i) => {
          const ms = median(times[i].together);
          const apart = median(times[i].apart);
          const gflops = (2 * M * KDIM * tokens) / ms / 1e6;
          table.push({
            build: side.label,
            format: name,
            threads,
            T: tokens,
            'matmul(T) ms': ms.toFixed(3),
            'T x matmul(1) ms': apart.toFixed(3),
            'T matvecs / matmul(T)': (apart / ms).toFixed(2),
            ...(i > 0 ? { 'this / that, matmul(T)': (median(times[0].together) / ms).toFixed(2) } : {}),
            'GFLOP/s': gflops.toFixed(1),
            'of threads x dot_peak': `${((100 * gflops) / (threads * peak)).toFixed(0)}%`,
          });
        });
      }
      for (const side of sides) side.release();
    }
    for (const b of builds) await b.rt.close();
  }
  console.log(`few-token matmul, ${M}x${KDIM} from DRAM, Node ${process.version}, ${availableParallelism()} cores; medians over ${time} ms per case and build`);
  console.table(table);
}

if (few) {
  await fewTokens();
  process.exit(0);
}

for (const threads of threadCounts) {
  const rt = await Runtime.create(threads);
  const arena = rt.arena;
  const bench = new Bench({ name: `kernels, ${threads} thread(s)`, time, warmupTime: 200 });
  const cases: Case[] = [];

  // Bandwidth: the pages are written first, so the probe reads real memory rather than the zero page.
  const probe = arena.alloc(PROBE_BYTES, 'bandwidth probe buffer');
  const probeOut = arena.alloc(4, 'probe sum');
  rt.bytes(probe, PROBE_BYTES).fill(0x55);
  cases.push({ name: 'read_probe 1 GiB (wasm SIMD)', threads, bytes: PROBE_BYTES, flops: 0, bound: 'memory', fn: () => rt.kernels.read_probe(probe, PROBE_BYTES, probeOut) });
  if (threads === 1) {
    const words = new Int32Array(rt.memory.buffer, probe, PROBE_BYTES / 4);
    let sink = 0;
    cases.push({
      name: 'JS typed-array loop 1 GiB',
      threads: 1,
      bytes: PROBE_BYTES,
      flops: 0,
      bound: 'memory',
      fn: () => {
        let a = 0;
        let b = 0;
        let c = 0;
        let d = 0;
        for (let i = 0; i < words.length; i += 4) {
          a = (a + words[i]) | 0;
          b = (b + words[i + 1]) | 0;
          c = (c + words[i + 2]) | 0;
          d = (d + words[i + 3]) | 0;
        }
        sink ^= a ^ b ^ c ^ d;
      },
    });
    // The q8 prefill tile's arithmetic with nothing waiting for memory: a q8 prefill row's GFLOP/s over threads x this is how
    // close the kernel comes to what 128-bit SIMD allows here.
    const rounds = 1 << 20;
    cases.push({ name: 'q8 prefill tile arithmetic ceiling, one core (dot_peak, registers)', threads: 1, bytes: 0, flops: 2 * DOT_PEAK_MACS * rounds, bound: 'compute', fn: () => void rt.kernels.dot_peak(rounds) });
    const buf = Buffer.from(rt.memory.buffer, probe, PROBE_BYTES);
    cases.push({ name: 'Buffer.indexOf 1 GiB (native memchr)', threads: 1, bytes: PROBE_BYTES, flops: 0, bound: 'memory', fn: () => void (sink ^= buf.indexOf(0xaa)) });
  }
  await measure(bench, cases);
  arena.release(probe);

  // Matmul in every format the runtime knows.
  const mmBench = new Bench({ name: `matmul, ${threads} thread(s)`, time, warmupTime: 200 });
  const mmCases: Case[] = [];
  const x = arena.allocF32(PREFILL_TOKENS * KDIM, 'activations');
  rt.f32(x, PREFILL_TOKENS * KDIM).set(randomF32(PREFILL_TOKENS * KDIM, 2));
  const out = arena.allocF32(PREFILL_TOKENS * M, 'outputs');
  for (const f of formats) {
    const entry = FORMATS[f.name];
    if (!entry) continue;
    const bytes = entry.bytes(M, KDIM, rt);
    const copies = Math.max(2, Math.ceil(ROTATION_BYTES / bytes));
    entry.setup?.(rt, PREFILL_TOKENS, KDIM);
    const encoded = new Uint8Array(bytes);
    entry.encode(weightsF32, M, KDIM, encoded, rt);
    const ws: number[] = [];
    for (let c = 0; c < copies; c++) {
      const w = arena.alloc(bytes, `${f.name} weights copy ${c}`);
      rt.bytes(w, bytes).set(encoded);
      ws.push(w);
    }
    let next = 0;
    const decode = (): void => {
      rt.kernels.matmul(f.code, out, ws[next], x, M, KDIM, 1);
      next = (next + 1) % copies;
    };
    const prefill = (): void => {
      rt.kernels.matmul(f.code, out, ws[next], x, M, KDIM, PREFILL_TOKENS);
      next = (next + 1) % copies;
    };
    const hotRows = Math.max(4, Math.floor(CACHE_BYTES / entry.bytes(1, KDIM, rt)));
    const hotBytes = entry.bytes(hotRows, KDIM, rt);
    const hotEncoded = new Uint8Array(hotBytes);
    entry.encode(weightsF32.subarray(0, hotRows * KDIM), hotRows, KDIM, hotEncoded, rt);
    const hot = arena.alloc(hotBytes, `${f.name} weights in cache`);
    rt.bytes(hot, hotBytes).set(hotEncoded);
    const decodeHot = (): void => rt.kernels.matmul(f.code, out, hot, x, hotRows, KDIM, 1);
    mmCases.push({ name: `matmul ${f.name} ${M}x${KDIM} decode (1 token)`, threads, bytes, flops: 2 * M * KDIM, bound: 'memory', fn: decode });
    mmCases.push({ name: `matmul ${f.name} ${hotRows}x${KDIM} decode, in cache`, threads, bytes: hotBytes, flops: 2 * hotRows * KDIM, bound: 'memory', fn: decodeHot });
    mmCases.push({ name: `matmul ${f.name} ${M}x${KDIM} prefill (${PREFILL_TOKENS} tokens)`, threads, bytes, flops: 2 * M * KDIM * PREFILL_TOKENS, bound: 'compute', fn: prefill });
  }
  await measure(mmBench, mmCases);
  await rt.close();
}

const probeGbs = new Map(rows.filter((r) => r.benchmark.startsWith('read_probe')).map((r) => [r.threads, r.bytes / r.ms / 1e6]));
console.log(`kernels on ${availableParallelism()} cores, Node ${process.version}; medians of ${time} ms per benchmark`);
console.table(
  rows.map((r) => {
    const gbs = r.bytes / r.ms / 1e6;
    return {
      benchmark: r.benchmark,
      threads: r.threads,
      'ms/call': r.ms.toFixed(3),
      'GB/s': gbs.toFixed(2),
      'GFLOP/s': r.flops ? (r.flops / r.ms / 1e6).toFixed(2) : '',
      // Prefill is arithmetic-bound: its weights are read once per 64 tokens, so bandwidth says little.
      'of probe': r.bound === 'compute' ? '' : `${((100 * gbs) / probeGbs.get(r.threads)!).toFixed(0)}%`,
    };
  }),
);
for (const f of missing) console.log(`FMT_${f.name} (code ${f.code}) has no entry in FORMATS in bench/kernels.bench.ts: add one line to benchmark it`);
if (json) {
  writeFileSync(json, JSON.stringify(rows.map((r) => ({ ...r, gb_s: r.bytes / r.ms / 1e6, gflop_s: r.flops / r.ms / 1e6 })), null, 2) + '\n');
  console.log(`wrote ${json}`);
}
