#!/usr/bin/env node
// Writes assembly/constants.ts, the one definition of the numbers the core, the host and the CUDA library
// share, into host/runtime/constants.ts and kernels-gpu/include/dw_constants.h. `--check` writes nothing
// and exits 1 when either file differs from what would be written.
import { readFileSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
const SOURCE = 'assembly/constants.ts';
const TS_OUT = 'host/runtime/constants.ts';
const C_OUT = 'kernels-gpu/include/dw_constants.h';

/** The source as a list of items: { comment } (a section line or doc comment) or { name, value }. */
export function parseConstants(text) {
  const items = [];
  const seen = new Set();
  text.split('\n').forEach((line, i) => {
    const t = line.trim();
    if (t === '' || t.startsWith('//')) {
      if (t.startsWith('//') && i > 4) items.push({ section: t.slice(2).trim() });
      return;
    }
    if (t.startsWith('/**')) {
      items.push({ doc: t.replace(/^\/\*\*\s*/, '').replace(/\s*\*\/$/, '') });
      return;
    }
    const m = /^export const ([A-Z][A-Z0-9_]*): i32 = (-?\d+);$/.exec(t);
    if (!m) throw new Error(`${SOURCE}:${i + 1}: expected "export const NAME: i32 = VALUE;", got "${t}"`);
    if (seen.has(m[1])) throw new Error(`${SOURCE}:${i + 1}: ${m[1]} is defined twice`);
    seen.add(m[1]);
    items.push({ name: m[1], value: Number(m[2]) });
  });
  return items;
}

const BANNER = `generated from ${SOURCE} by tools/gen-constants.mjs (npm run build): edit that file, not this one`;

function typescript(items) {
  const lines = [`// ${BANNER}.`];
  for (const it of items) {
    if (it.section) lines.push('', `// ${it.section}`);
    else if (it.doc) lines.push(`/** ${it.doc} */`);
    else lines.push(`export const ${it.name} = ${it.value};`);
  }
  return lines.join('\n') + '\n';
}

function c(items) {
  const lines = [`/* ${BANNER}. */`, '#ifndef DW_CONSTANTS_H', '#define DW_CONSTANTS_H'];
  for (const it of items) {
    if (it.section) lines.push('', `/* ${it.section} */`);
    else if (it.doc) lines.push(`/* ${it.doc} */`);
    else lines.push(`#define DW_${it.name} ${it.value}`);
  }
  lines.push('', '#endif');
  return lines.join('\n') + '\n';
}

export function generated() {
  const items = parseConstants(readFileSync(root + SOURCE, 'utf8'));
  return { [TS_OUT]: typescript(items), [C_OUT]: c(items) };
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const check = process.argv.includes('--check');
  let stale = 0;
  for (const [path, text] of Object.entries(generated())) {
    let old = null;
    try {
      old = readFileSync(root + path, 'utf8');
    } catch {}
    if (old === text) continue;
    if (check) {
      console.error(`${path} is out of date with ${SOURCE}: run node tools/gen-constants.mjs`);
      stale++;
    } else writeFileSync(root + path, text);
  }
  process.exit(stale ? 1 : 0);
}
