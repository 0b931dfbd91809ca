// readTensorRange reads any piece of a tensor, from a file descriptor or from a source held in chunks (the edge and
// browser paths), with ranges that cross chunk boundaries; the sources behind it and their errors.
import * as fs from 'node:fs';
import * as os from 'node:os';
import { join } from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { bytesFromStream, ChunkedBytes, type RandomAccessBytes } from '../host/checkpoint/byte-source.js';
import { closeAll, openSafetensors, readTensorInto, readTensorRange, writeSafetensors, type SafetensorsFile, type TensorEntry } from '../host/checkpoint/index.js';
import { safetensorsFromSource } from '../host/checkpoint/safetensors.js';
import { DeepWasmError } from '../host/errors.js';

const tmp = fs.mkdtempSync(join(os.tmpdir(), 'deepwasm-range-'));
const PATH = join(tmp, 'model.safetensors');

/** A deterministic byte pattern, different per tensor. */
function pattern(n: number, seed: number): Uint8Array {
  const b = new Uint8Array(n);
  let x = seed * 2654435761;
  for (let i = 0; i < n; i++) b[i] = (x = (x * 1103515245 + 12345) >>> 0) >>> 24;
  return b;
}

const TENSORS = [
  { name: 'a', dtype: 'F32' as const, shape: [37, 13], data: pattern(37 * 13 * 4, 1) },
  { name: 'b', dtype: 'BF16' as const, shape: [3], data: pattern(6, 2) },
  { name: 'c', dtype: 'U8' as const, shape: [5000], data: pattern(5000, 3) },
];
writeSafetensors(PATH, TENSORS);
const FILE = new Uint8Array(fs.readFileSync(PATH));

/** The file cut into chunks of irregular sizes, 1 byte up to a few hundred. */
function chunks(bytes: Uint8Array): Uint8Array[] {
  const out: Uint8Array[] = [];
  for (let at = 0, i = 0; at < bytes.length; i++) {
    const n = [1, 7, 0, 300, 2, 129, 64][i % 7];
    out.push(bytes.slice(at, at + n));
    at += n;
  }
  return out;
}

function throwsDW(fn: () => unknown, needle: RegExp): void {
  try {
    fn();
  } catch (e) {
    assert.instance(e, DeepWasmError, `expected a DeepWasmError, got ${String(e)}`);
    assert.match((e as Error).message, needle);
    return;
  }
  assert.unreachable('expected a DeepWasmError');
}

async function rejects(fn: () => Promise<unknown>, needle: RegExp): Promise<void> {
  try {
    await fn();
  } catch (e) {
    assert.instance(e, DeepWasmError, `expected a DeepWasmError, got ${String(e)}`);
    assert.match((e as Error).message, needle);
    return;
  }
  assert.unreachable('expected a DeepWasmError');
}

const sources: [string, () => SafetensorsFile][] = [
  ['fd', () => openSafetensors(PATH)],
  ['chunks', () => safetensorsFromSource('model.safetensors', new ChunkedBytes(chunks(FILE)))],
];

for (const [kind, open] of sources) {
  test(`readTensorRange (${kind}): every range of every tensor, across chunk boundaries`, () => {
    const file = open();
    for (const t of TENSORS) {
      const e = file.tensors.get(t.name)!;
      const whole = new Uint8Array(e.nbytes);
      readTensorInto(e, whole);
      assert.equal(whole, t.data, `${t.name} whole`);
      const n = t.data.length;
      for (let start = 0; start < n; start += Math.max(1, n >> 5)) {
        for (const len of [0, 1, 2, 3, 9, 130, 301, n - start]) {
          if (start + len > n) continue;
          const dst = new Uint8Array(len);
          readTensorRange(e, start, dst);
          assert.equal(dst, t.data.subarray(start, start + len), `${t.name} [${start}, ${start + len})`);
        }
      }
    }
    closeAll();
  });

  test(`readTensorRange (${kind}): a range outside the tensor names the tensor and its size`, () => {
    const e = open().tensors.get('b')!;
    throwsDW(() => readTensorRange(e, 4, new Uint8Array(3)), /model\.safetensors: tensor "b" has 6 bytes; cannot read bytes \[4, 7\) of it/);
    throwsDW(() => readTensorRange(e, -1, new Uint8Array(1)), /tensor "b" has 6 bytes; cannot read bytes \[-1, 0\)/);
    throwsDW(() => readTensorInto(e, new Uint8Array(5)), /tensor "b" needs 6 bytes, destination holds 5/);
    closeAll();
  });
}

test('readTensorRange: a file cut short after its header was read says where it ends', () => {
  const path = join(tmp, 'cut.safetensors');
  fs.copyFileSync(PATH, path);
  const e = openSafetensors(path).tensors.get('c')!;
  fs.truncateSync(path, e.offset + 100);
  throwsDW(() => readTensorRange(e, 50, new Uint8Array(200)), new RegExp(`cut\\.safetensors: tensor "c" needs bytes \\[${e.offset + 50}, ${e.offset + 250}\\) but the file ends at ${e.offset + 100}; truncated\\?`));
  closeAll();
});

test('readTensorRange: a source that fails names the file and the tensor', () => {
  const good = new ChunkedBytes([FILE]);
  let failing = false;
  const flaky: RandomAccessBytes = {
    size: good.size,
    read(offset, dst) {
      if (failing) throw new Error('NotReadableError: the blob is gone');
      good.read(offset, dst);
    },
  };
  const e = safetensorsFromSource('shard-2.safetensors', flaky).tensors.get('a') as TensorEntry;
  failing = true;
  throwsDW(() => readTensorRange(e, 0, new Uint8Array(8)), /shard-2\.safetensors: reading tensor "a" failed \(NotReadableError: the blob is gone\)/);
  throwsDW(() => safetensorsFromSource('shard-2.safetensors', flaky), /shard-2\.safetensors: reading the safetensors header failed \(NotReadableError/);
});

test('ChunkedBytes: reads outside its bytes are refused', () => {
  const b = new ChunkedBytes([new Uint8Array(3), new Uint8Array(4)]);
  assert.is(b.size, 7);
  assert.throws(() => b.read(5, new Uint8Array(3)), /bytes \[5, 8\) lie outside \[0, 7\)/);
});

const streamOf = (parts: unknown[]): ReadableStream<Uint8Array> =>
  new ReadableStream({
    start(c) {
      for (const p of parts) c.enqueue(p as Uint8Array);
      c.close();
    },
  });

test('bytesFromStream: a stream of many small chunks gives the same bytes', async () => {
  const b = await bytesFromStream('model.safetensors', streamOf(chunks(FILE)));
  assert.is(b.size, FILE.length);
  const all = new Uint8Array(b.size);
  b.read(0, all);
  assert.equal(all, FILE);
  const e = safetensorsFromSource('model.safetensors', b).tensors.get('c')!;
  const dst = new Uint8Array(1000);
  readTensorRange(e, 1234, dst);
  assert.equal(dst, TENSORS[2].data.subarray(1234, 2234));
});

test('bytesFromStream: a chunk that is not bytes, or a stream that fails, names the file', async () => {
  await rejects(() => bytesFromStream('x.safetensors', streamOf([new Uint8Array(2), 'text'])), /x\.safetensors: the stream gave a chunk that is not a Uint8Array \(\[object String\]\)/);
  const broken = new ReadableStream<Uint8Array>({
    pull(c) {
      c.error(new Error('connection reset'));
    },
  });
  await rejects(() => bytesFromStream('y.safetensors', broken), /y\.safetensors: reading the stream failed \(connection reset\)/);
});

test.after(() => fs.rmSync(tmp, { recursive: true, force: true }));

test.run();
