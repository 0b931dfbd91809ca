/// <reference types="@webgpu/types" />
// A step recorded as a list of dispatches and copies, then encoded into one command buffer: every
// dispatch's parameters go into one uniform buffer (one aligned slot each) written once before the
// submit. Pipelines are compiled once per kernel and weight format.
import { fail } from '../../errors.js';
import { formatWgsl, FORMAT_NAMES, type GpuFormat } from './formats.js';
import { USAGE } from './gpu.js';
import { kernelSource, paramTypes, WORKGROUP, type KernelDef } from './kernels/kernel.js';

export interface Compiled {
  pipeline: GPUComputePipeline;
  layout: GPUBindGroupLayout;
  types: ('u32' | 'f32')[];
}

type Op =
  | { kind: 'dispatch'; k: Compiled; params: number[]; buffers: GPUBuffer[]; grid: [number, number, number] }
  | { kind: 'copy'; src: GPUBuffer; srcOff: number; dst: GPUBuffer; dstOff: number; bytes: number };

/** Most workgroups along one dimension: larger counts fold into the next dimension. */
const MAX_GROUPS = 65535;

/** Workgroups for one thread per element of n, over x and y (kernels index gid.x + gid.y * nwg.x * WORKGROUP). */
export function threadsGrid(n: number): [number, number, number] {
  const groups = Math.max(1, Math.ceil(n / WORKGROUP));
  const x = Math.min(groups, MAX_GROUPS);
  return [x, Math.ceil(groups / x), 1];
}

/** Workgroups for one per row (x, folded into z past the limit) and per input row (y). */
export function rowsGrid(rows: number, pairs: number): [number, number, number] {
  const x = Math.min(Math.max(rows, 1), MAX_GROUPS);
  return [x, pairs, Math.ceil(rows / x)];
}

export class Kernels {
  private readonly compiled = new Map<string, Compiled>();

  constructor(
    private readonly device: GPUDevice,
    private readonly subgroups: boolean,
  ) {}

  /** Compiles (once) the kernel, for a weight format when it reads weights (with w_block when `dot`). */
  async compile(def: KernelDef, fmt?: GpuFormat, dot = false): Promise<Compiled> {
    const key = `${def.name}/${fmt ?? ''}`;
    const have = this.compiled.get(key);
    if (have) return have;
    const code = kernelSource(def, this.subgroups, fmt === undefined ? '' : formatWgsl(fmt, dot));
    const entries: GPUBindGroupLayoutEntry[] = [
      { binding: 0, visibility: 4 /* GPUShaderStage.COMPUTE */, buffer: { type: 'uniform' } },
      ...def.bindings.map((b, i) => ({ binding: i + 1, visibility: 4, buffer: { type: b.write ? ('storage' as const) : ('read-only-storage' as const) } })),
    ];
    const layout = this.device.createBindGroupLayout({ entries });
    const module = this.device.createShaderModule({ code });
    let pipeline: GPUComputePipeline;
    try {
      pipeline = await this.device.createComputePipelineAsync({
        layout: this.device.createPipelineLayout({ bindGroupLayouts: [layout] }),
        compute: { module, entryPoint: 'main' },
      });
    } catch (e) {
      const info = await module.getCompilationInfo();
      const msgs = info.messages.map((m) => `${m.lineNum}:${m.linePos} ${m.message}`).join('; ');
      fail(`WebGPU backend: kernel ${def.name}${fmt === undefined ? '' : ` (${FORMAT_NAMES[fmt]})`} did not compile: ${msgs || (e as Error).message}`);
    }
    const c: Compiled = { pipeline, layout, types: paramTypes(def).map((p) => p.type) };
    this.compiled.set(key, c);
    return c;
  }

  /** A kernel compiled at load. */
  get(def: KernelDef, fmt?: GpuFormat): Compiled {
    const c = this.compiled.get(`${def.name}/${fmt ?? ''}`);
    if (!c) fail(`WebGPU backend: kernel ${def.name} was not compiled at load`);
    return c;
  }
}

/** A bind group made for the n-th dispatch of a step, with what it binds. */
interface BoundGroup {
  layout: GPUBindGroupLayout;
  uniform: GPUBuffer;
  buffers: GPUBuffer[];
  group: GPUBindGroup;
}

/**
 * The ops of one command buffer. Decode steps repeat the same dispatches with the same buffers, so the n-th
 * dispatch's bind group is kept and reused while it binds the same buffers: a step creates none after the first.
 */
export class Recorder {
  private ops: Op[] = [];
  private uniform: GPUBuffer | null = null;
  private readonly slot: number;
  private readonly groups: (BoundGroup | undefined)[] = [];

  constructor(private readonly device: GPUDevice) {
    this.slot = Math.max(256, device.limits.minUniformBufferOffsetAlignment);
  }

  dispatch(k: Compiled, params: number[], buffers: GPUBuffer[], grid: [number, number, number]): void {
    if (params.length !== k.types.length) fail(`WebGPU backend: a kernel takes ${k.types.length} parameters, was given ${params.length}`);
    this.ops.push({ kind: 'dispatch', k, params, buffers, grid });
  }

  copy(src: GPUBuffer, srcOff: number, dst: GPUBuffer, dstOff: number, bytes: number): void {
    this.ops.push({ kind: 'copy', src, srcOff, dst, dstOff, bytes });
  }

  /** Writes the parameters, encodes every op in order and submits one command buffer. */
  submit(): void {
    const dispatches = this.ops.filter((o) => o.kind === 'dispatch').length;
    const need = Math.max(1, dispatches) * this.slot;
    if (!this.uniform || this.uniform.size < need) {
      this.uniform?.destroy();
      this.uniform = this.device.createBuffer({ size: need, usage: USAGE.UNIFORM | USAGE.COPY_DST });
    }
    const data = new ArrayBuffer(need);
    const u32 = new Uint32Array(data);
    const f32 = new Float32Array(data);
    const enc = this.device.createCommandEncoder();
    let pass: GPUComputePassEncoder | null = null;
    let n = 0;
    for (const op of this.ops) {
      if (op.kind === 'copy') {
        pass?.end();
        pass = null;
        enc.copyBufferToBuffer(op.src, op.srcOff, op.dst, op.dstOff, op.bytes);
        continue;
      }
      const base = (n * this.slot) / 4;
      op.params.forEach((v, i) => {
        if (op.k.types[i] === 'f32') f32[base + i] = v;
        else u32[base + i] = v;
      });
      pass ??= enc.beginComputePass();
      pass.setPipeline(op.k.pipeline);
      pass.setBindGroup(0, this.groupFor(n, op.k, op.buffers));
      pass.dispatchWorkgroups(...op.grid);
      n++;
    }
    pass?.end();
    this.device.queue.writeBuffer(this.uniform!, 0, data, 0, Math.max(1, n) * this.slot);
    this.device.queue.submit([enc.finish()]);
    this.ops = [];
  }

  private groupFor(n: number, k: Compiled, buffers: GPUBuffer[]): GPUBindGroup {
    const uniform = this.uniform!;
    const have = this.groups[n];
    if (have && have.layout === k.layout && have.uniform === uniform && have.buffers.length === buffers.length && have.buffers.every((b, i) => b === buffers[i])) {
      return have.group;
    }
    const group = this.device.createBindGroup({
      layout: k.layout,
      entries: [
        { binding: 0, resource: { buffer: uniform, offset: n * this.slot, size: Math.ceil(k.types.length / 4) * 16 } },
        ...buffers.map((buffer, i) => ({ binding: i + 1, resource: { buffer } })),
      ],
    });
    this.groups[n] = { layout: k.layout, uniform, buffers, group };
    return group;
  }
}
