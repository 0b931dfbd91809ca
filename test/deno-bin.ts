// The deno binary of the `deno` devDependency: it comes in the optional platform package @deno/<os>-<arch>[-glibc], and
// deno's bin.cjs links it into node_modules/deno on the first `npx deno` (package.json denies deno's postinstall, which
// would do that at install time).
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const EXE = process.platform === 'win32' ? 'deno.exe' : 'deno';

export function denoBinary(): string {
  const candidates = [join(ROOT, 'node_modules', 'deno', EXE)];
  const platform = `@deno/${process.platform}-${process.arch}${process.platform === 'linux' ? '-glibc' : ''}`;
  try {
    candidates.push(join(dirname(createRequire(join(ROOT, 'package.json')).resolve(`${platform}/package.json`)), EXE));
  } catch {
    // not installed: reported below
  }
  const found = candidates.find((p) => existsSync(p));
  if (!found) {
    throw new Error(`the deno binary is missing (looked for ${candidates.join(', ')}); deno is a devDependency: run "npm ci" (it needs the optional package ${platform})`);
  }
  return found;
}

/** No update check (CI has no network) and no permission prompts: a missing permission is an error. */
export const DENO_ENV = { ...process.env, DENO_NO_UPDATE_CHECK: '1', DENO_NO_PROMPT: '1', NO_COLOR: '1' };
