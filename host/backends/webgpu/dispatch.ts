/// <reference types="@webgpu/types" />
// A step recorded as a list of dispatches and copies, encoded into command buffers submitted as the step
// goes (flush) and at its end (submit): every dispatch's parameters go into one uniform buffer (one
// aligned slot each per step), written before the command buffer that reads them. Pipelines are
// compiled once per kernel and weight format.
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
  | { kind: 'dispatch'; k: Compiled; params: number[]; buffers: GPUBuffer[]; grid: [number, number, number]; tag: string }
  | { kind: 'copy'; src: GPUBuffer; srcOff: number; dst: GPUBuffer; dstOff: number; bytes: number };

/** Most workgroups along one dimension: larger counts fold into the next dimension. */
const MAX_GROUPS = 65535;

/** Workgroups for one thread per element of n, over x and y (kernels index gid.x + gid.y * nwg.x * WORKGROUP). */
export function threadsGrid(n: number): [number, number, number] {
  const groups = Math.max(1, Math.ceil(n / WORKGROUP));
  const x = Math.min(groups, MAX_GROUPS);
  return [x, Math.ceil(groups / x), 1];
}

/** Workgroups for one per row group (x, folded into z past the limit) and per input row (y). */
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

  /** Compiles (once) the kernel, for a weight format when it reads weights (with w_chunk when `dot`). */
  async compile(def: KernelDef, fmt?: GpuFormat, dot = false): Promise<Compiled> {
    const key = `${def.name}/${fmt ?? ''}`;
    const have = this.compiled.get(key);
    if (have) return have;
    const code = kernelSource(def, this.subgroups, fmt === undefined ? '' : formatWgsl(fmt, dot, def.vec4));
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
 * The ops of one step. Decode steps repeat the same dispatches with the same buffers, so the n-th
 * dispatch's bind group is kept and reused while it binds the same buffers: a step creates none after the first.
 */
export class Recorder {
  private ops: Op[] = [];
  private uniform: GPUBuffer | null = null;
  private readonly slot: number;
  private readonly groups: (BoundGroup | undefined)[] = [];
  /** Profiling: only dispatches of this tag are recorded (null: all). */
  only: string | null = null;
  /** Profiling: when set, counts the dispatches asked for by tag. */
  tags: Map<string, number> | null = null;
  /** Dispatches of the step flushed so far: the next one's parameter slot. */
  private n = 0;
  private retired: GPUBuffer[] = [];

  constructor(private readonly device: GPUDevice) {
    this.slot = Math.max(256, device.limits.minUniformBufferOffsetAlignment);
  }

  /** `tag` names the dispatch's family in profiles (what it computes, e.g. "attn.o"). */
  dispatch(k: Compiled, params: number[], buffers: GPUBuffer[], grid: [number, number, number], tag = ''): void {
    if (params.length !== k.types.length) fail(`WebGPU backend: a kernel takes ${k.types.length} parameters, was given ${params.length}`);
    if (this.tags) this.tags.set(tag, (this.tags.get(tag) ?? 0) + 1);
    if (this.only !== null && tag !== this.only) return;
    this.ops.push({ kind: 'dispatch', k, params, buffers, grid, tag });
  }

  copy(src: GPUBuffer, srcOff: number, dst: GPUBuffer, dstOff: number, bytes: number): void {
    this.ops.push({ kind: 'copy', src, srcOff, dst, dstOff, bytes });
  }

  /** Submits what was recorded and ends the step: the next dispatch takes the first parameter slot again. */
  submit(): void {
    this.flush();
    this.n = 0;
    for (const b of this.retired) b.destroy();
    this.retired = [];
  }

  /**
   * Writes the parameters, encodes the ops recorded since the last flush in order and submits them as one
   * command buffer, within the step: the device starts on the step's first layers while the host still
   * records the rest. Each dispatch of a step has its own parameter slot; a uniform buffer outgrown
   * mid-step is kept alive until the step ends (earlier bind groups point into it).
   */
  flush(): void {
    const dispatches = this.ops.filter((o) => o.kind === 'dispatch').length;
    const need = Math.max(1, this.n + dispatches) * this.slot;
    if (!this.uniform || this.uniform.size < need) {
      if (this.uniform) this.retired.push(this.uniform);
      this.uniform = this.device.createBuffer({ size: Math.max(need, 2 * (this.uniform?.size ?? 0)), usage: USAGE.UNIFORM | USAGE.COPY_DST });
    }
    const first = this.n;
    const data = new ArrayBuffer(Math.max(1, dispatches) * this.slot);
    const u32 = new Uint32Array(data);
    const f32 = new Float32Array(data);
    const enc = this.device.createCommandEncoder();
    let pass: GPUComputePassEncoder | null = null;
    for (const op of this.ops) {
      if (op.kind === 'copy') {
        pass?.end();
        pass = null;
        enc.copyBufferToBuffer(op.src, op.srcOff, op.dst, op.dstOff, op.bytes);
        continue;
      }
      const base = ((this.n - first) * this.slot) / 4;
      op.params.forEach((v, i) => {
        if (op.k.types[i] === 'f32') f32[base + i] = v;
        else u32[base + i] = v;
      });
      pass ??= enc.beginComputePass();
      pass.setPipeline(op.k.pipeline);
      pass.setBindGroup(0, this.groupFor(this.n, op.k, op.buffers));
      pass.dispatchWorkgroups(...op.grid);
      this.n++;
    }
    pass?.end();
    if (dispatches > 0) this.device.queue.writeBuffer(this.uniform, first * this.slot, data, 0, dispatches * this.slot);
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
