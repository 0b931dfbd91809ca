import { fileURLToPath } from 'node:url';
import { openSafetensors, readTensorInto } from '../host/checkpoint/safetensors.js';

/** Tests run from dist/test; fixtures stay in the source tree. */
export const FIXTURES = fileURLToPath(new URL('../../test/fixtures/', import.meta.url));
export const MODEL_FIXTURES = ['v3-tiny', 'v2-lite-tiny', 'v3-odd-bf16-sharded', 'v3-fp8-blocks'];

export interface Expected {
  inputIds: Int32Array;
  logits: Float32Array;
  genIds: Int32Array;
  genLogits: Float32Array;
  vocab: number;
}

export function readExpected(path: string): Expected {
  const f = openSafetensors(path);
  const get = (name: string) => {
    const e = f.tensors.get(name)!;
    const bytes = new Uint8Array(e.nbytes);
    readTensorInto(e, bytes);
    return { bytes, shape: e.shape };
  };
  const logits = get('logits');
  return {
    inputIds: new Int32Array(get('input_ids').bytes.buffer),
    logits: new Float32Array(logits.bytes.buffer),
    genIds: new Int32Array(get('gen_ids').bytes.buffer),
    genLogits: new Float32Array(get('gen_logits').bytes.buffer),
    vocab: logits.shape[1],
  };
}

export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length ${a.length} != ${b.length}`);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

export function argmax(a: ArrayLike<number>, from = 0, n = a.length): number {
  let best = from;
  for (let i = from + 1; i < from + n; i++) if (a[i] > a[best]) best = i;
  return best - from;
}
