/// <reference types="@webgpu/types" />
// Reaching a WebGPU device: navigator.gpu where the runtime has one (browsers, Deno), else Dawn's node
// binding from the `webgpu` package. A missing adapter is a one-line error that says what to install.
import { fail } from '../../errors.js';

/** GPUBufferUsage and GPUMapMode bits (the WebGPU specification's numbers; Node has no globals for them). */
export const USAGE = { MAP_READ: 0x1, COPY_SRC: 0x4, COPY_DST: 0x8, UNIFORM: 0x40, STORAGE: 0x80 } as const;
export const MAP_READ = 0x1;

export interface Gpu {
  device: GPUDevice;
  /** "vendor architecture (description)", for summaries and the page. */
  adapter: string;
  subgroups: boolean;
  /** Held so that Dawn's instance lives as long as the device. */
  instance: GPU;
}

const NO_ADAPTER_HINT =
  'no WebGPU adapter. Without a GPU, Debian\'s chromium package ships SwiftShader: run with ' +
  'LD_LIBRARY_PATH=/usr/lib/chromium VK_ICD_FILENAMES=/usr/lib/chromium/vk_swiftshader_icd.json XDG_RUNTIME_DIR=/tmp ' +
  '(or install libvulkan1 and a Vulkan driver)';

async function instance(): Promise<GPU> {
  const nav = (globalThis as { navigator?: { gpu?: GPU } }).navigator;
  if (nav?.gpu) return nav.gpu;
  let mod: { create(flags: string[]): GPU };
  // Named through a variable so that the browser bundle (tools/build-web.mjs) leaves Dawn's native module out.
  const dawn = 'webgpu';
  try {
    mod = (await import(dawn)) as typeof mod;
  } catch (e) {
    fail(`WebGPU backend: this runtime has no navigator.gpu and the "webgpu" package (Dawn) did not load: ${(e as Error).message}`);
  }
  return mod.create([]);
}

/** A device with the adapter's largest buffer limits, and subgroups when the adapter has them and `subgroups` is not false. */
export async function requestGpu(subgroups = true): Promise<Gpu> {
  const gpu = await instance();
  const adapter = await gpu.requestAdapter({ powerPreference: 'high-performance' });
  if (!adapter) fail(`WebGPU backend: ${NO_ADAPTER_HINT}`);
  const useSubgroups = subgroups && adapter.features.has('subgroups');
  const l = adapter.limits;
  const device = await adapter.requestDevice({
    requiredFeatures: useSubgroups ? ['subgroups' as GPUFeatureName] : [],
    requiredLimits: {
      maxStorageBufferBindingSize: l.maxStorageBufferBindingSize,
      maxBufferSize: l.maxBufferSize,
      maxStorageBuffersPerShaderStage: Math.min(l.maxStorageBuffersPerShaderStage, 8),
      maxComputeWorkgroupsPerDimension: l.maxComputeWorkgroupsPerDimension,
    },
  });
  const i = adapter.info;
  const name = [i.vendor, i.architecture].filter(Boolean).join(' ') || 'unknown adapter';
  return { device, adapter: i.description ? `${name} (${i.description})` : name, subgroups: useSubgroups, instance: gpu };
}
