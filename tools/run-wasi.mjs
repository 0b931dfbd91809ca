// Runs build/deepwasm-wasi.wasm under node:wasi with a packed image on stdin:
//   node tools/run-wasi.mjs build/deepwasm-wasi.wasm IMAGE ID... [--steps N]
// (the same as `wasmtime build/deepwasm-wasi.wasm ID... --steps N < IMAGE` in any WASI runtime).
import { openSync, readFileSync } from 'node:fs';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { WASI } from 'node:wasi';

const [wasmPath, imagePath, ...args] = process.argv.slice(2);
if (!wasmPath || !imagePath) {
  console.error('usage: node tools/run-wasi.mjs WASM IMAGE ID... [--steps N]');
  process.exit(2);
}
const stdin = openSync(imagePath, 'r');
const wasi = new WASI({ version: 'preview1', args: ['deepwasm-wasi', ...args], stdin, returnOnExit: true });
const module = await WebAssembly.compile(readFileSync(wasmPath));
const instance = await WebAssembly.instantiate(module, wasi.getImportObject());
// Node 22.23's garbage collector crashed (SIGSEGV in its stack walk) when a collection, set off by the
// new instance's 64 MiB memory, ran inside a WASI call with our frames on the stack. Collect first.
setFlagsFromString('--expose-gc');
runInNewContext('gc')();
process.exitCode = wasi.start(instance);
