// Bundles the browser demo (web/) into dist/web/: the page script, the worker that owns the model (host/edge.ts),
// the pool thread it starts when cross-origin isolated (host/runtime/web-worker.ts, as web-worker.js next to
// worker.js, where host/runtime/runtime.ts looks for it), the WebGPU device thread (host/backends/webgpu/thread.ts,
// as webgpu-thread.js, where host/backends/webgpu/model.ts looks for it) and index.html. node: builtins are imported by shared host modules; on the edge path only node:path's
// basename and join are called (to name files in messages), so node:path gets a small POSIX stand-in and the others
// resolve to empty modules.
import { build } from 'esbuild';
import { copyFileSync, mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const out = join(root, 'dist/web');
mkdirSync(out, { recursive: true });

const PATH = `
const basename = (p, ext) => { const b = String(p).replace(/\\/+$/, '').split('/').pop() ?? ''; return ext && b.endsWith(ext) ? b.slice(0, -ext.length) : b; };
const dirname = (p) => { const i = String(p).replace(/\\/+$/, '').lastIndexOf('/'); return i < 0 ? '.' : i === 0 ? '/' : String(p).slice(0, i); };
const join = (...parts) => parts.filter((x) => x !== '').join('/').replace(/\\/+/g, '/') || '.';
const extname = (p) => { const b = basename(p); const i = b.lastIndexOf('.'); return i <= 0 ? '' : b.slice(i); };
module.exports = { basename, dirname, join, extname, resolve: join, sep: '/' };
`;

const emptyNodeBuiltins = {
  name: 'empty-node-builtins',
  setup(b) {
    b.onResolve({ filter: /^node:/ }, (args) => ({ path: args.path, namespace: 'empty-node' }));
    b.onLoad({ filter: /.*/, namespace: 'empty-node' }, (args) => ({ contents: args.path === 'node:path' ? PATH : 'module.exports = {};', loader: 'js' }));
  },
};

await build({
  entryPoints: {
    main: join(root, 'web/main.js'),
    worker: join(root, 'web/worker.js'),
    'web-worker': join(root, 'host/runtime/web-worker.ts'),
    'webgpu-thread': join(root, 'host/backends/webgpu/thread.ts'),
  },
  outdir: out,
  bundle: true,
  format: 'esm',
  platform: 'browser',
  target: 'es2022',
  minify: false,
  sourcemap: false,
  logLevel: 'warning',
  plugins: [emptyNodeBuiltins],
});
copyFileSync(join(root, 'web/index.html'), join(out, 'index.html'));
console.log(`web demo written to ${out}`);
