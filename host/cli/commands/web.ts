import { createReadStream, existsSync, realpathSync, statSync } from 'node:fs';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { basename, extname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { checkModelFolder } from '../../checkpoint/checkpoint.js';
import { DeepWasmError, fail } from '../../errors.js';
import { DEFAULT_MODEL_DIR } from '../../index.js';
import { MEMORY_LIMIT_FLAG, type Command } from './command.js';

const ROOT = fileURLToPath(new URL('../../../../', import.meta.url));
const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.json': 'application/json; charset=utf-8',
  '.wasm': 'application/wasm',
  '.safetensors': 'application/octet-stream',
};

export const webCommand: Command = {
  name: 'web',
  summary: 'serve the browser demo (dist/web), the wasm and a model folder on 127.0.0.1',
  description:
    'Serves the demo page built by "npm run build:web" with the wasm builds under /wasm/, the --model folder under ' +
    '/model/ and what the page shows of it (its name, --memory-limit) as /info.json, on 127.0.0.1, with ' +
    'Cross-Origin-Opener-Policy: same-origin and Cross-Origin-Embedder-Policy: require-corp so that the page is ' +
    'cross-origin isolated. Prints the URL; Ctrl-C stops it.',
  flags: [
    { name: 'port', kind: 'int', value: 'N', min: 0, max: 65535, help: 'port on 127.0.0.1 (default 8080; 0 picks a free one)' },
    { name: 'model', kind: 'string', value: 'DIR', help: 'model folder served as the embedded model (default: the embedded models/tiny)' },
    { ...MEMORY_LIMIT_FLAG, help: `the page loads the model with it: ${MEMORY_LIMIT_FLAG.help.replace(/^CPU: /, '')}` },
    { name: 'no-isolation', kind: 'boolean', help: 'leave out the COOP/COEP headers (for testing the page without cross-origin isolation)' },
  ],
  async run(flags) {
    const web = join(ROOT, 'dist/web');
    if (!existsSync(join(web, 'index.html'))) fail(`${web}/index.html is missing: run "npm run build:web" first`);
    const modelDir = resolve((flags['model'] as string | undefined) ?? DEFAULT_MODEL_DIR);
    checkModelFolder(modelDir);
    const memoryLimitMiB = flags['memory-limit'] as number | undefined;
    const info: PageInfo = { model: basename(modelDir), embedded: realpathSync(modelDir) === realpathSync(DEFAULT_MODEL_DIR), memoryLimitMiB };
    const server = await serveWeb({ web, wasm: join(ROOT, 'build'), model: modelDir, info, isolation: !flags['no-isolation'], port: (flags['port'] as number | undefined) ?? 8080 });
    const { port } = server.address() as AddressInfo;
    process.stdout.write(`DeepWasm web demo: http://127.0.0.1:${port}/ (model ${modelDir}${flags['no-isolation'] ? ', without COOP/COEP' : ''}); Ctrl-C stops\n`);
    await new Promise<void>((done) => {
      const stop = (): void => {
        server.close(() => done());
        server.closeAllConnections();
      };
      process.once('SIGINT', stop);
      process.once('SIGTERM', stop);
    });
  },
};

/** What /info.json tells the page about the served model: its folder's name and the load options it takes. */
export interface PageInfo {
  model: string;
  /** Whether it is the embedded model (models/tiny), which the page names as such. */
  embedded: boolean;
  memoryLimitMiB?: number;
}

export interface WebServerOptions {
  web: string;
  wasm: string;
  model: string;
  info: PageInfo;
  isolation: boolean;
  port: number;
}

/** The demo's HTTP server: /, /main.js, /worker.js, /web-worker.js, /webgpu-thread.js from `web`; /wasm/*.wasm; /model/<file>; /info.json. GET and HEAD only. */
export async function serveWeb(o: WebServerOptions) {
  const server = createServer((req, res) => handle(o, req, res));
  await new Promise<void>((ok, no) => {
    server.once('error', (e: NodeJS.ErrnoException) => no(listenError(e, o.port)));
    server.listen(o.port, '127.0.0.1', () => ok());
  });
  return server;
}

/** The reasons a user's --port cannot be listened on, as one-line errors; anything else stays an internal error. */
function listenError(e: NodeJS.ErrnoException, port: number): Error {
  if (e.code === 'EADDRINUSE') return new DeepWasmError(`--port ${port} is in use; pick another with --port N`);
  if (e.code === 'EACCES') return new DeepWasmError(`--port ${port} needs privileges this user lacks (ports below 1024 usually do); pick another with --port N`);
  return e;
}

function handle(o: WebServerOptions, req: IncomingMessage, res: ServerResponse): void {
  if (o.isolation) {
    res.setHeader('Cross-Origin-Opener-Policy', 'same-origin');
    res.setHeader('Cross-Origin-Embedder-Policy', 'require-corp');
  }
  res.setHeader('Cross-Origin-Resource-Policy', 'same-origin');
  res.setHeader('Cache-Control', 'no-cache');
  if (req.method !== 'GET' && req.method !== 'HEAD') {
    res.writeHead(405, { Allow: 'GET, HEAD' }).end();
    return;
  }
  const path = decodeURIComponent(new URL(req.url ?? '/', 'http://x').pathname);
  if (path === '/info.json') {
    const body = JSON.stringify(o.info);
    res.writeHead(200, { 'Content-Type': TYPES['.json'], 'Content-Length': Buffer.byteLength(body) }).end(req.method === 'HEAD' ? undefined : body);
    return;
  }
  let file: string | undefined;
  const name = (prefix: string): string | undefined => {
    const rest = path.slice(prefix.length);
    return /^[\w.-]+$/.test(rest) && !rest.startsWith('.') ? rest : undefined;
  };
  if (path === '/' || path === '/index.html') file = join(o.web, 'index.html');
  else if (['/main.js', '/worker.js', '/web-worker.js', '/webgpu-thread.js'].includes(path)) file = join(o.web, path.slice(1));
  else if (path.startsWith('/wasm/') && name('/wasm/')?.endsWith('.wasm')) file = join(o.wasm, name('/wasm/')!);
  else if (path.startsWith('/model/') && name('/model/')) file = join(o.model, name('/model/')!);
  const stat = file && existsSync(file) ? statSync(file) : undefined;
  if (!file || !stat?.isFile()) {
    res.writeHead(404, { 'Content-Type': 'text/plain; charset=utf-8' }).end(`not found: ${path}\n`);
    return;
  }
  // The ETag lets the page's cache see that a file it holds was replaced (another --model on the same port).
  const etag = `"${stat.size}-${stat.mtimeMs}"`;
  res.writeHead(200, { 'Content-Type': TYPES[extname(file)] ?? 'application/octet-stream', 'Content-Length': stat.size, ETag: etag });
  if (req.method === 'HEAD') res.end();
  else createReadStream(file).pipe(res);
}
