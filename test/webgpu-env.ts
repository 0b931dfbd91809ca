// Where WebGPU runs in the tests: a real adapter when the machine has one, else SwiftShader, the CPU
// Vulkan driver inside Debian's chromium package. Dawn finds libvulkan.so.1 only through the dynamic
// loader's path, which is read when a process starts, so the WebGPU tests run in child processes with
// this environment.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';

const CHROMIUM_LIB = '/usr/lib/chromium';
const ICD = `${CHROMIUM_LIB}/vk_swiftshader_icd.json`;

export function webgpuEnv(): NodeJS.ProcessEnv {
  if (!fs.existsSync(ICD)) return process.env;
  const ld = [CHROMIUM_LIB, process.env.LD_LIBRARY_PATH].filter(Boolean).join(':');
  return { ...process.env, LD_LIBRARY_PATH: ld, VK_ICD_FILENAMES: process.env.VK_ICD_FILENAMES ?? ICD, XDG_RUNTIME_DIR: process.env.XDG_RUNTIME_DIR ?? '/tmp' };
}

const PROBE = `const { create } = await import('webgpu'); const a = await create([]).requestAdapter(); console.log(a ? (a.info.description || a.info.vendor || 'adapter') : '');`;

/** The adapter a child process gets, or null (with why). */
export function webgpuAdapter(): { adapter: string | null; why: string } {
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', PROBE], { env: webgpuEnv(), encoding: 'utf8', timeout: 60_000 });
  const adapter = r.status === 0 ? r.stdout.trim() : '';
  if (adapter) return { adapter, why: '' };
  const dawn = r.stderr.trim().split('\n')[0];
  const why = fs.existsSync(ICD)
    ? `no WebGPU adapter, even on SwiftShader${dawn ? ` (${dawn})` : ''}`
    : `no WebGPU adapter and no SwiftShader (${ICD}: apt-get install -y --no-install-recommends chromium)`;
  return { adapter: null, why };
}
