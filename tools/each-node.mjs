#!/usr/bin/env node
// Runs one node command under each Node the project tests with, one after the other:
//   1. the Node that runs npm (npm_node_execpath; else this one): the Node a user has. On Node 20 that
//      means the plain SIMD128 build, since Node 20 has no relaxed SIMD without a flag (and then
//      returns wrong sums, GUIDE.md §1).
//   2. Node 24 from the devDependency `node` (npm's `node` package, node_modules/node/bin/node), which
//      runs the relaxed-SIMD build, so both builds pass the same suite on every run.
// When both are the same Node, the command runs once. Exits non-zero if any run fails.
//
//   node tools/each-node.mjs <script> [args...]      e.g. node tools/each-node.mjs node_modules/uvu/bin.js dist/test
import { spawnSync } from 'node:child_process';
import { existsSync, realpathSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
const args = process.argv.slice(2);
if (args.length === 0) {
  console.error('usage: node tools/each-node.mjs <script> [args...]');
  process.exit(2);
}

const userNode = process.env.npm_node_execpath || process.execPath;
const pinnedNode = `${root}node_modules/node/bin/node`;
if (!existsSync(pinnedNode)) {
  console.error(
    `${pinnedNode} is missing: the devDependency "node" installs it (npm ci; its preinstall fetches the platform binary, ` +
      'allowed by "allowScripts" in package.json)',
  );
  process.exit(1);
}

const nodes = [userNode];
if (realpathSync(pinnedNode) !== realpathSync(userNode)) nodes.push(pinnedNode);

let failed = false;
for (const node of nodes) {
  const version = spawnSync(node, ['--version'], { encoding: 'utf8' }).stdout.trim();
  console.log(`\n== ${args.join(' ')} under Node ${version} (${node}) ==`);
  const run = spawnSync(node, args, { stdio: 'inherit', cwd: process.cwd() });
  if (run.status !== 0) {
    console.log(`== failed under Node ${version} (exit ${run.status ?? run.signal}) ==`);
    failed = true;
  }
}
process.exit(failed ? 1 : 0);
