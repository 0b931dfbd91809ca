#!/usr/bin/env node
// `npm run bench:peers`: deepwasm and llama.cpp on the same weights, interleaved in one run, as ratios.
//
//   node bench/peers.mjs [--model DIR] [--quants q8,q4] [--threads 2] [--rounds 3] [--prompt-tokens 64]
//       [--gen-tokens 32] [--work bench/.peers]
//
// llama.cpp comes from npm's node-llama-cpp (pinned below): the llama.cpp source it ships as
// llama/gitRelease.bundle is cloned and its llama-bench built natively with cmake (-DGGML_NATIVE=ON, this
// machine's AVX-512/VNNI), once, under --work; its prebuilt binaries through node-llama-cpp's API ran at ~0.6x of
// a native llama-bench here (GUIDE.md §3), so the native build is the peer to beat. The model: --model (a bf16,
// f32 or fp8 checkpoint), by default the synthetic v3-2k6 shape made under --work. Each format is written both
// ways from that one checkpoint: `deepwasm convert --quant q8|q4` and `deepwasm convert --to gguf --quant
// q8_0|q4_0` (32-weight blocks both; deepwasm keeps f32 scales, ggml f16 ones). Each round runs, per format,
// `deepwasm bench --json` then `llama-bench -o json` with the same threads, prompt and generated tokens, so
// each pair sees the same minute of this shared machine; the ratio per round is the number to read.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

const NODE_LLAMA_CPP = '3.22.1';
const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const CLI = join(ROOT, 'dist/host/cli/main.js');
const GGUF_QUANT = { q8: 'q8_0', q4: 'q4_0' };

function parseArgs(argv) {
  const flags = {};
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (!a.startsWith('--') || i + 1 >= argv.length) die(`unexpected argument ${a} (flags take a value: --name VALUE)`);
    flags[a.slice(2)] = argv[++i];
  }
  const known = ['model', 'quants', 'threads', 'rounds', 'prompt-tokens', 'gen-tokens', 'work'];
  for (const k of Object.keys(flags)) if (!known.includes(k)) die(`unknown flag --${k} (known: ${known.map((n) => '--' + n).join(', ')})`);
  return flags;
}

function die(message) {
  console.error(`bench:peers: ${message}`);
  process.exit(2);
}

/** Runs a command with its output shown; dies naming it when it fails. */
function sh(cmd, args, opts = {}) {
  console.error(`$ ${cmd} ${args.join(' ')}`);
  const r = spawnSync(cmd, args, { stdio: opts.capture ? ['ignore', 'pipe', 'inherit'] : 'inherit', encoding: 'utf8', cwd: opts.cwd, maxBuffer: 64 << 20 });
  if (r.status !== 0) die(`${cmd} ${args.join(' ')} failed (exit ${r.status ?? r.signal})`);
  return r.stdout;
}

/**
 * The CPU flags llama.cpp is built with: -DGGML_NATIVE=ON, except on a CPU with AMX, where llama.cpp v0.5.0's
 * AMX buffer takes the deepseek2 attn_k_b matrix and its matmul then refuses the permuted activations MLA
 * multiplies it with (the scheduler aborts: GGML_ASSERT(*cur_backend_id != -1)); there every other
 * instruction set the CPU reports is named instead, AMX left out.
 */
function isaFlags() {
  const cpu = fs.existsSync('/proc/cpuinfo') ? fs.readFileSync('/proc/cpuinfo', 'utf8') : '';
  const has = (f) => new RegExp(`\\b${f}\\b`).test(cpu);
  if (!has('amx_int8')) return { flags: ['-DGGML_NATIVE=ON'], what: '-DGGML_NATIVE=ON' };
  const isa = { avx: 'AVX', avx2: 'AVX2', fma: 'FMA', f16c: 'F16C', bmi2: 'BMI2', avx_vnni: 'AVX_VNNI', avx512f: 'AVX512', avx512vbmi: 'AVX512_VBMI', avx512_vnni: 'AVX512_VNNI', avx512_bf16: 'AVX512_BF16' };
  const on = Object.entries(isa).filter(([f]) => has(f)).map(([, o]) => o);
  return { flags: ['-DGGML_NATIVE=OFF', ...on.map((o) => `-DGGML_${o}=ON`)], what: `this CPU's ${on.join(', ')} without AMX (llama.cpp's AMX path aborts on deepseek2's MLA)` };
}

/** node-llama-cpp's llama.cpp, with llama-bench built for this CPU; returns the binary and what it is. */
function llamaBench(work) {
  const pkg = join(work, 'npm');
  const bundle = join(pkg, 'node_modules/node-llama-cpp/llama/gitRelease.bundle');
  if (!fs.existsSync(bundle)) {
    fs.mkdirSync(pkg, { recursive: true });
    // Only the package (its bundle of llama.cpp's source): the prebuilt binaries are optional dependencies.
    sh('npm', ['install', '--prefix', pkg, '--no-audit', '--no-fund', '--omit=optional', '--ignore-scripts', `node-llama-cpp@${NODE_LLAMA_CPP}`]);
  }
  const src = join(work, 'llama.cpp');
  if (!fs.existsSync(join(src, 'CMakeLists.txt'))) sh('git', ['clone', '-q', bundle, src]);
  const { flags, what } = isaFlags();
  const bin = join(src, 'build/bin/llama-bench');
  if (!fs.existsSync(bin)) {
    sh('cmake', ['-S', src, '-B', join(src, 'build'), ...flags, '-DLLAMA_CURL=OFF', '-DLLAMA_OPENSSL=OFF', '-DLLAMA_BUILD_TESTS=OFF', '-DCMAKE_BUILD_TYPE=Release']);
    sh('cmake', ['--build', join(src, 'build'), '--target', 'llama-bench', '-j', String(os.cpus().length)]);
  }
  const info = JSON.parse(fs.readFileSync(join(pkg, 'node_modules/node-llama-cpp/llama/llama.cpp.info.json'), 'utf8'));
  return { bin, what: `llama.cpp ${info.tag} (node-llama-cpp ${NODE_LLAMA_CPP}'s bundled source), llama-bench built here, ${what}` };
}

/** The source checkpoint and, for each format, its deepwasm folder and GGUF file (made once). */
function prepare(work, model, quants) {
  let src = model;
  if (!src) {
    src = join(work, 'models/v3-2k6');
    if (!fs.existsSync(join(src, 'config.json'))) sh(process.execPath, [CLI, 'synth', '--preset', 'v3-2k6', '--out', src, '--force']);
  }
  const name = src.replace(/\/+$/, '').split('/').pop();
  return quants.map((q) => {
    const dw = join(work, 'models', `${name}-${q}`);
    const gguf = join(work, 'models', `${name}-${GGUF_QUANT[q]}.gguf`);
    if (!fs.existsSync(join(dw, 'config.json'))) sh(process.execPath, [CLI, 'convert', '--model', src, '--quant', q, '--out', dw]);
    if (!fs.existsSync(gguf)) sh(process.execPath, [CLI, 'convert', '--model', src, '--to', 'gguf', '--quant', GGUF_QUANT[q], '--out', gguf]);
    return { quant: q, dw, gguf };
  });
}

function runDeepwasm(dir, f) {
  const out = sh(process.execPath, [CLI, 'bench', '--model', dir, '--json', '--threads', f.threads, '--prompt-tokens', f.prompt, '--gen-tokens', f.gen], { capture: true });
  const r = JSON.parse(out.trim().split('\n').pop());
  return { prefill: r.prefill_tok_s, decode: r.decode_tok_s };
}

function runLlama(bin, gguf, f) {
  const out = sh(bin, ['-m', gguf, '-t', f.threads, '-p', f.prompt, '-n', f.gen, '-r', '1', '-o', 'json'], { capture: true });
  const rows = JSON.parse(out);
  const pick = (p, n) => rows.find((r) => r.n_prompt === p && r.n_gen === n)?.avg_ts;
  return { prefill: pick(Number(f.prompt), 0), decode: pick(0, Number(f.gen)) };
}

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const fmt = (x) => x.toFixed(2);
const range = (xs) => `[${fmt(Math.min(...xs))}, ${fmt(Math.max(...xs))}]`;

const flags = parseArgs(process.argv.slice(2));
const f = { threads: flags.threads ?? '2', prompt: flags['prompt-tokens'] ?? '64', gen: flags['gen-tokens'] ?? '32' };
const rounds = Number(flags.rounds ?? 3);
if (!Number.isInteger(rounds) || rounds < 1) die(`--rounds must be a whole number >= 1, got ${flags.rounds}`);
const quants = (flags.quants ?? 'q8,q4').split(',');
for (const q of quants) if (!GGUF_QUANT[q]) die(`--quants takes q8 and/or q4, got ${q}`);
if (!fs.existsSync(CLI)) die(`${CLI} is missing: run npm run build first`);
const work = resolve(flags.work ?? join(ROOT, 'bench/.peers'));

const peer = llamaBench(work);
const models = prepare(work, flags.model, quants);
const results = models.map(() => []);
console.log(JSON.stringify({ machine: os.cpus()[0].model, cores: os.cpus().length, node: process.version, peer: peer.what, rounds, ...f }));
for (let round = 1; round <= rounds; round++) {
  for (const [i, m] of models.entries()) {
    const dw = runDeepwasm(m.dw, f);
    const ll = runLlama(peer.bin, m.gguf, f);
    const r = { round, quant: m.quant, deepwasm: dw, llama: ll, decode_ratio: dw.decode / ll.decode, prefill_ratio: dw.prefill / ll.prefill };
    results[i].push(r);
    console.log(JSON.stringify(r));
  }
}

console.log(`\n| format | deepwasm decode tok/s | llama.cpp decode tok/s | decode ratio, median [range] | deepwasm prefill(${f.prompt}) tok/s | llama.cpp prefill tok/s | prefill ratio, median [range] |`);
console.log('| --- | --- | --- | --- | --- | --- | --- |');
for (const [i, m] of models.entries()) {
  const rs = results[i];
  const col = (pick) => fmt(median(rs.map(pick)));
  const dr = rs.map((r) => r.decode_ratio);
  const pr = rs.map((r) => r.prefill_ratio);
  console.log(`| ${m.quant} vs ${GGUF_QUANT[m.quant].toUpperCase()} | ${col((r) => r.deepwasm.decode)} | ${col((r) => r.llama.decode)} | **${fmt(median(dr))}** ${range(dr)} | ${col((r) => r.deepwasm.prefill)} | ${col((r) => r.llama.prefill)} | **${fmt(median(pr))}** ${range(pr)} |`);
}
