// What every WGSL kernel shares: its parameters (one uniform struct, generated from the names here so the
// host and the shader cannot disagree on the layout), its storage bindings, the entry point, and the
// workgroup reductions, on subgroups where the device has them and through workgroup memory where not.

/** Threads per workgroup of every kernel: the reductions below are written for it. */
export const WORKGROUP = 64;

export type ParamType = 'u32' | 'f32';

export interface BindingDef {
  name: string;
  /** Element type of the storage array: weights are u32 words (bf16 pairs, packed q8/q4), or vec4<u32> where read 16 bytes at a time; activations f32. */
  type: 'f32' | 'u32' | 'vec4<u32>';
  write?: boolean;
}

export interface KernelDef {
  name: string;
  /** Uniform parameters in order: "rows" is u32, "eps:f32" is f32. */
  params: readonly string[];
  bindings: readonly BindingDef[];
  /** WGSL of fn run(wid, lid, gid, nwg) and its helpers; may use p.<param>, the bindings and wg_sum/wg_max/wg_sum4. */
  body: string;
  /** Weights bound as vec4<u32> (formats.ts's vec4 readers). */
  vec4?: boolean;
}

export function paramTypes(def: KernelDef): { name: string; type: ParamType }[] {
  return def.params.map((s) => {
    const [name, type] = s.split(':');
    return { name, type: (type ?? 'u32') as ParamType };
  });
}

function reductions(subgroups: boolean): string {
  if (!subgroups) {
    const tree = (op: string) => `
  red[lid] = v;
  workgroupBarrier();
  for (var s = ${WORKGROUP / 2}u; s > 0u; s >>= 1u) {
    if (lid < s) { red[lid] = ${op}; }
    workgroupBarrier();
  }
  let r = red[0];
  workgroupBarrier();
  return r;`;
    return `
var<workgroup> red: array<f32, ${WORKGROUP}>;
var<workgroup> red4: array<vec4f, ${WORKGROUP}>;
fn wg_sum(v: f32, lid: u32) -> f32 {${tree('red[lid] + red[lid + s]')}
}
fn wg_max(v: f32, lid: u32) -> f32 {${tree('max(red[lid], red[lid + s])')}
}
fn wg_sum4(v: vec4f, lid: u32) -> vec4f {${tree('red4[lid] + red4[lid + s]').replace(/red\[/g, 'red4[')}
}`;
  }
  // One partial per subgroup; invocations of a one-dimensional workgroup fill subgroups in index order
  // on the drivers we run on, so lid / subgroup size names the subgroup.
  const sg = (op: string, combine: string, init: string, arr = 'red') => `
  let s = ${op}(v);
  if (sg_id == 0u) { ${arr}[lid / sg_size] = s; }
  workgroupBarrier();
  var r = ${init};
  for (var i = 0u; i < (${WORKGROUP}u + sg_size - 1u) / sg_size; i++) { r = ${combine}; }
  workgroupBarrier();
  return r;`;
  return `
var<workgroup> red: array<f32, ${WORKGROUP}>;
var<workgroup> red4: array<vec4f, ${WORKGROUP}>;
fn wg_sum(v: f32, lid: u32) -> f32 {${sg('subgroupAdd', 'r + red[i]', '0.0')}
}
fn wg_max(v: f32, lid: u32) -> f32 {${sg('subgroupMax', 'max(r, red[i])', '-3.4e38')}
}
fn wg_sum4(v: vec4f, lid: u32) -> vec4f {${sg('subgroupAdd', 'r + red4[i]', 'vec4f(0.0)', 'red4')}
}`;
}

/** The whole shader: enable line, parameter struct, bindings, reductions, the body and the entry point. */
export function kernelSource(def: KernelDef, subgroups: boolean, formatCode = ''): string {
  const struct = paramTypes(def).map((p) => `  ${p.name}: ${p.type},`).join('\n');
  const binds = def.bindings
    .map((b, i) => `@group(0) @binding(${i + 1}) var<storage, ${b.write ? 'read_write' : 'read'}> ${b.name}: array<${b.type}>;`)
    .join('\n');
  const sgArgs = subgroups ? ', @builtin(subgroup_invocation_id) sgi: u32, @builtin(subgroup_size) sgs: u32' : '';
  return `${subgroups ? 'enable subgroups;\n' : ''}
struct Params {
${struct}
}
@group(0) @binding(0) var<uniform> p: Params;
${binds}
var<private> sg_id: u32;
var<private> sg_size: u32;
${reductions(subgroups)}
${formatCode}
${def.body}
@compute @workgroup_size(${WORKGROUP})
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) lid: u32,
        @builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u${sgArgs}) {
  ${subgroups ? 'sg_id = sgi; sg_size = sgs;' : ''}
  run(wid, lid, gid, nwg);
}
`;
}
