#!/usr/bin/env node
// Real-size runs (issue 12, point 6): checkpoints far bigger than CI can hold, so this is run by hand and
// its output goes into bench/RESULTS.md.
//
//   node bench/real-size.mjs prepare [--dir /work/big] [--presets v3-2k6,16B] [--quants q8,q4] [--keep-bf16]
//     synth each preset (bf16), convert it to each format, delete the bf16 checkpoint (16B bf16 is 31 GB);
//     prints wall time and peak RSS of every step.
//   node bench/real-size.mjs bench [--threads 2] [--prompt-tokens 64] [--gen-tokens 32] [--rounds 2]
//       [--context N] [--wait-idle PCT] [--no-run] DIR[@MIB]...
//     `deepwasm bench --json` on every DIR, round after round in the given order (so a small one-memory
//     model and a big one see the same machine minutes apart), then a greedy `deepwasm run` per DIR.
//     DIR@MIB runs DIR with --memory-limit MIB: the same weights over several memories, beside the same
//     model in one, is what placement costs with nothing else changed. Prints a table and one JSON line
//     per run. The VM is shared: each run records the CPU the rest of the machine used during it
//     (others_cpu_share, of all cores), and --wait-idle PCT starts each run only once the machine has
//     been below PCT% busy for a second (waiting 10 minutes at most).
//
// Peak RSS is measured from outside (GNU time's wait4 maxrss, else /proc/PID/status VmHWM polled), so a
// process that dies of memory still has a number; bench's own load_peak_rss_bytes is the peak at the end
// of the load, before any token, which is the number to hold against the weights.
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import { join, resolve, basename, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const CLI = join(ROOT, 'dist/host/cli/main.js');
const GNU_TIME = '/usr/bin/time';
const hasGnuTime = fs.existsSync(GNU_TIME);

function parseArgs(argv) {
  const flags = {};
  const rest = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (!a.startsWith('--')) rest.push(a);
    else if (a === '--keep-bf16' || a === '--no-run') flags[a.slice(2)] = true;
    else flags[a.slice(2)] = argv[++i];
  }
  return { flags, rest };
}

/** Runs node CLI args; resolves with the exit code, stdout, stderr, wall seconds and peak RSS in bytes. */
function measure(args, { echo = true } = {}) {
  return new Promise((done) => {
    const timeFile = join(os.tmpdir(), `real-size-time-${process.pid}-${Date.now()}`);
    const cmd = hasGnuTime ? GNU_TIME : process.execPath;
    const argv = hasGnuTime ? ['-f', '%M %U %S', '-o', timeFile, process.execPath, CLI, ...args] : [CLI, ...args];
    const cpuBefore = machineCpu();
    const start = performance.now();
    const child = spawn(cmd, argv, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    let hwm = 0;
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => {
      err += d;
      // The progress bar redraws with \r; pass it through so a long load shows where it is.
      if (echo) process.stderr.write(d);
    });
    // Without GNU time: the child is node itself, and VmHWM is its peak so far.
    const poll = hasGnuTime
      ? null
      : setInterval(() => {
          try {
            const m = /VmHWM:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${child.pid}/status`, 'utf8'));
            if (m) hwm = Math.max(hwm, Number(m[1]) * 1024);
          } catch {}
        }, 100);
    child.on('close', (code, signal) => {
      if (poll) clearInterval(poll);
      const secs = (performance.now() - start) / 1000;
      const cpuAfter = machineCpu();
      let peak = hwm;
      let others = null;
      if (hasGnuTime) {
        try {
          const lines = fs.readFileSync(timeFile, 'utf8').trim().split('\n');
          const [kb, user, sys] = lines[lines.length - 1].split(' ').map(Number);
          peak = kb * 1024;
          // What the rest of the machine ran meanwhile, as a share of all its cores: the VM is shared.
          if (cpuBefore && cpuAfter) others = Math.max(0, (cpuAfter.busy - cpuBefore.busy - (user + sys)) / (secs * os.cpus().length));
          fs.rmSync(timeFile);
        } catch {}
      }
      done({ code: code ?? (signal ? 128 : 1), signal, out, err, secs, peak, others });
    });
  });
}

/** Busy CPU seconds of the whole machine so far (all cores; /proc/stat counts in USER_HZ = 100). */
function machineCpu() {
  try {
    const f = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
    const [user, nice, system, idle, iowait, irq, softirq, steal] = f;
    return { busy: (user + nice + system + irq + softirq + steal) / 100, idle: (idle + iowait) / 100 };
  } catch {
    return null;
  }
}

/** Waits (at most maxSecs) until the machine's busy share over one second is below pct percent; returns the last share. */
async function waitIdle(pct, maxSecs = 600) {
  const end = Date.now() + maxSecs * 1000;
  for (;;) {
    const a = machineCpu();
    await new Promise((r) => setTimeout(r, 1000));
    const b = machineCpu();
    if (!a || !b) return null;
    const busy = (100 * (b.busy - a.busy)) / (b.busy - a.busy + b.idle - a.idle || 1);
    if (busy < pct || Date.now() > end) return +busy.toFixed(1);
  }
}

const GB = 1e9;
const gb = (n) => (n / GB).toFixed(2);
const cmdText = (args) => `deepwasm ${args.join(' ')}`;
/** The one-line error the CLI printed, or why the process ended. */
function failure(r) {
  const lines = r.err.split(/[\r\n]+/).map((l) => l.trim()).filter(Boolean);
  const e = lines.filter((l) => l.startsWith('error:')).pop();
  if (e) return e;
  if (r.signal) return `killed by ${r.signal}${r.signal === 'SIGKILL' ? ' (out of memory?)' : ''}`;
  return lines.pop() ?? `exit code ${r.code}`;
}
function dirBytes(dir) {
  let n = 0;
  for (const f of fs.readdirSync(dir)) n += fs.statSync(join(dir, f)).size;
  return n;
}
function table(header, rows) {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => String(r[i]).length)));
  const line = (cells) => '| ' + cells.map((c, i) => String(c).padEnd(widths[i])).join(' | ') + ' |';
  return [line(header), '| ' + widths.map((w) => '-'.repeat(w)).join(' | ') + ' |', ...rows.map(line)].join('\n');
}
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0 ? NaN : s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

async function prepare(flags) {
  const dir = resolve(flags.dir ?? '/work/big');
  const presets = (flags.presets ?? 'v3-2k6,16B').split(',');
  const quants = (flags.quants ?? 'q8,q4').split(',');
  fs.mkdirSync(dir, { recursive: true });
  const rows = [];
  const step = async (what, args, out) => {
    process.stderr.write(`\n$ ${cmdText(args)}\n`);
    const r = await measure(args);
    const row = { step: what, command: cmdText(args), ok: r.code === 0, wall_s: +r.secs.toFixed(1), peak_rss_bytes: r.peak };
    if (r.code === 0) row.output_bytes = dirBytes(out);
    else row.error = failure(r);
    console.log(JSON.stringify(row));
    rows.push(row);
    if (r.code !== 0) throw new Error(`${what} failed: ${row.error}`);
  };
  for (const p of presets) {
    const bf16 = join(dir, p.toLowerCase());
    await step(`synth ${p}`, ['synth', '--preset', p, '--out', bf16, '--force'], bf16);
    for (const q of quants) {
      const out = `${bf16}-${q}`;
      fs.rmSync(out, { recursive: true, force: true });
      await step(`convert ${p} ${q}`, ['convert', '--model', bf16, '--quant', q, '--out', out], out);
    }
    if (!flags['keep-bf16']) fs.rmSync(bf16, { recursive: true, force: true });
  }
  console.log(
    '\n' +
      table(
        ['step', 'wall s', 'peak RSS GB', 'output GB', 'peak/output'],
        rows.map((r) => [r.step, r.wall_s.toFixed(1), gb(r.peak_rss_bytes), gb(r.output_bytes), (r.peak_rss_bytes / r.output_bytes).toFixed(3)]),
      ),
  );
}

/** The weight format a folder holds: the deepwasm quantization it was converted to, else its torch dtype. */
function formatOf(dir) {
  try {
    const c = JSON.parse(fs.readFileSync(join(dir, 'config.json'), 'utf8'));
    return c.quantization_config?.quant_method === 'deepwasm' ? c.quantization_config.format : (c.torch_dtype ?? '?');
  } catch {
    return '?';
  }
}

async function bench(flags, dirs) {
  if (dirs.length === 0) throw new Error('bench: give one or more model folders');
  const rounds = Number(flags.rounds ?? 2);
  const common = ['--threads', flags.threads ?? '2', '--prompt-tokens', flags['prompt-tokens'] ?? '64', '--gen-tokens', flags['gen-tokens'] ?? '32'];
  if (flags.context) common.push('--context', flags.context);
  console.log(JSON.stringify({ machine: cpuModel(), cores: os.cpus().length, ram_bytes: os.totalmem(), node: process.version, rounds, flags: common.join(' ') }));
  const runs = [];
  const modelArgs = (entry) => {
    const m = /^(.*)@(\d+)$/.exec(entry);
    return m ? ['--model', m[1], '--memory-limit', m[2]] : ['--model', entry];
  };
  const dirOf = (entry) => modelArgs(entry)[1];
  for (let round = 1; round <= rounds; round++) {
    for (const d of dirs) {
      const args = ['bench', ...modelArgs(d), '--json', ...common];
      const busyBefore = flags['wait-idle'] ? await waitIdle(Number(flags['wait-idle'])) : null;
      const loadavg = +os.loadavg()[0].toFixed(2);
      process.stderr.write(`\n[round ${round}] $ ${cmdText(args)}\n`);
      const r = await measure(args);
      const row = { round, model: d, format: formatOf(dirOf(d)), command: cmdText(args), loadavg_1m: loadavg, busy_before_pct: busyBefore, others_cpu_share: r.others === null ? null : +r.others.toFixed(3), ok: r.code === 0, wall_s: +r.secs.toFixed(1), process_peak_rss_bytes: r.peak };
      if (r.code === 0) {
        const last = r.out.trim().split('\n').pop();
        Object.assign(row, JSON.parse(last));
        row.share_of_probe = row.read_probe_gb_s ? +(row.decode_gb_s / row.read_probe_gb_s).toFixed(3) : null;
        row.load_rss_over_weights = +(row.load_peak_rss_bytes / row.weight_bytes).toFixed(3);
      } else row.error = failure(r);
      console.log(JSON.stringify(row));
      runs.push(row);
    }
  }

  // Against a one-memory run of the same format (the same folder when it ran in one memory, else the
  // smallest): compared within each round (the machine moves between rounds), then the median of the rounds.
  const rows = [];
  const notes = [];
  for (const d of dirs) {
    const mine = runs.filter((r) => r.model === d);
    const ok = mine.filter((r) => r.ok);
    for (const r of mine.filter((r) => !r.ok)) notes.push(`${basename(d)}, round ${r.round}: ${r.error}`);
    if (ok.length === 0) {
      rows.push([basename(d), mine[0].format, '', 'did not load (below)', '', '', '', '', '', '', '', '', '0']);
      continue;
    }
    const ref = ok[0].memories > 1
      ? dirs
          .filter((o) => o !== d && formatOf(dirOf(o)) === formatOf(dirOf(d)))
          .map((o) => runs.filter((r) => r.model === o && r.ok))
          .filter((rs) => rs.length > 0 && rs[0].memories === 1)
          .sort((a, b) => Number(dirOf(b[0].model) === dirOf(d)) - Number(dirOf(a[0].model) === dirOf(d)) || a[0].weight_bytes - b[0].weight_bytes)[0]
      : undefined;
    const ratios = ref ? ok.map((r) => r.decode_gb_s / (ref.find((x) => x.round === r.round)?.decode_gb_s ?? NaN)).filter(Number.isFinite) : [];
    const m = (key) => median(ok.map((r) => r[key]));
    rows.push([
      basename(d),
      ok[0].format,
      String(ok[0].memories ?? ''),
      `${m('load_s').toFixed(1)} s, ${m('load_gb_s').toFixed(2)} GB/s`,
      `${gb(m('load_peak_rss_bytes'))} / ${gb(ok[0].weight_bytes)} (${((m('load_rss_over_weights') - 1) * 100).toFixed(1)}%)`,
      gb(m('process_peak_rss_bytes')),
      m('prefill_tok_s').toFixed(2),
      m('decode_tok_s').toFixed(2),
      m('decode_gb_s').toFixed(2),
      `${m('read_probe_gb_s').toFixed(1)} (${(m('share_of_probe') * 100).toFixed(0)}%)`,
      ok.every((r) => r.others_cpu_share !== null) ? `${(m('others_cpu_share') * 100).toFixed(0)}%` : '',
      ratios.length ? `${median(ratios).toFixed(3)} vs ${basename(ref[0].model)} [${Math.min(...ratios).toFixed(3)}, ${Math.max(...ratios).toFixed(3)}]` : '',
      String(ok.length),
    ]);
  }
  console.log(
    '\n' +
      table(
        ['model', 'format', 'memories', 'load (time, rate)', 'load peak RSS / weights GB', 'process peak RSS GB', 'prefill tok/s', 'decode tok/s', 'decode GB/s', 'probe GB/s (share)', 'others\' CPU', 'decode GB/s ratio (median [range])', 'runs'],
        rows,
      ) +
      (notes.length ? '\n\n' + notes.join('\n') : ''),
  );

  if (flags['no-run']) return;
  for (const d of dirs.filter((e) => !/@\d+$/.test(e))) {
    const args = ['run', '--model', d, '--prompt', 'Once upon a time', '--max-tokens', '16', '--temperature', '0', '--threads', flags.threads ?? '2'];
    process.stderr.write(`\n$ ${cmdText(args)}\n`);
    const r = await measure(args, { echo: false });
    const summary = r.err.split(/[\r\n]+/).filter((l) => /tok\/s/.test(l)).pop();
    console.log(JSON.stringify({ model: d, command: cmdText(args), ok: r.code === 0, text: r.out, summary: summary ?? null, ...(r.code ? { error: failure(r) } : {}), peak_rss_bytes: r.peak }));
  }
}

function cpuModel() {
  try {
    return /model name\s*:\s*(.*)/.exec(fs.readFileSync('/proc/cpuinfo', 'utf8'))?.[1] ?? os.cpus()[0]?.model;
  } catch {
    return os.cpus()[0]?.model;
  }
}

const [mode, ...argv] = process.argv.slice(2);
const { flags, rest } = parseArgs(argv);
if (!fs.existsSync(CLI)) throw new Error(`${CLI} is missing: npm run build first`);
if (mode === 'prepare') await prepare(flags);
else if (mode === 'bench') await bench(flags, rest);
else {
  process.stderr.write('usage: node bench/real-size.mjs prepare [--dir D] [--presets v3-2k6,16B] [--quants q8,q4] [--keep-bf16]\n' +
    '       node bench/real-size.mjs bench [--threads 2] [--prompt-tokens 64] [--gen-tokens 32] [--rounds 2] [--context N] [--wait-idle PCT] [--no-run] DIR[@MIB]...\n');
  process.exit(2);
}
