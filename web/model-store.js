// Model files kept in the origin private file system (OPFS), so that a reload does not download them again. A
// download is written chunk by chunk through a sync access handle (this runs in a worker) and read back the same way,
// straight into wasm memory, so no file is ever held whole on the JS heap, whatever its size (real shards are 4-9 GB).
// The Cache API would need one Response per entry, which Chromium cannot make of a buffer over ~2 GiB, and its Blobs
// read back through FileReaderSync at ~115 MB/s where a sync access handle read 1-8 GB/s (both measured here).
// A file is stored as <key> (its bytes) and <key>.json (its size and the server's ETag), the second written last, so
// that a download cut short is never taken for a cached file; <key> is the SHA-256 of the file's URL.

const DIR = 'deepwasm-models-v1';
/** The Cache API store of the demo's first version, whole files as single entries: dropped, not to hold the space. */
const OLD_CACHE = 'deepwasm-models-v1';
/** At most this much per read call: a call blocks this worker, and a huge one gains nothing. */
const READ_PIECE = 256 * 1024 * 1024;

export const fileName = (url) => new URL(url).pathname.split('/').pop() || url;

/** What the server says of a file: its Content-Length and the tag that changes when it is replaced. */
export const lengthOf = (res) => Number(res.headers.get('content-length')) || 0;
export const tagOf = (res) => res.headers.get('etag') ?? res.headers.get('last-modified');

/** The store, or null where this worker has no OPFS with sync access handles (not a secure context, an old browser). */
export async function openModelStore() {
  if (typeof caches !== 'undefined') await caches.delete(OLD_CACHE).catch(() => false);
  if (!navigator.storage?.getDirectory || typeof globalThis.FileSystemFileHandle?.prototype.createSyncAccessHandle !== 'function') return null;
  const root = await navigator.storage.getDirectory().catch(() => null);
  return root && new ModelStore(await root.getDirectoryHandle(DIR, { create: true }));
}

async function keyOf(url) {
  const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', new TextEncoder().encode(url)));
  return [...digest].map((b) => b.toString(16).padStart(2, '0')).join('');
}

/** A cached file as host/edge.ts reads it ({ size, read }): synchronous reads into the caller's view. close() when loaded. */
class CachedFile {
  constructor(handle) {
    this.handle = handle;
    this.size = handle.getSize();
  }

  read(offset, dst) {
    for (let done = 0; done < dst.length; ) {
      const n = this.handle.read(dst.subarray(done, done + Math.min(READ_PIECE, dst.length - done)), { at: offset + done });
      if (n <= 0) throw new RangeError(`the cached file ends at ${offset + done}, before ${offset + dst.length}`);
      done += n;
    }
  }

  close() {
    this.handle.close();
  }
}

class ModelStore {
  constructor(dir) {
    this.dir = dir;
  }

  /**
   * The cached file, or null when it is not wholly cached, or when `remote` (what the server says of it now,
   * { length, tag }; null when it cannot be asked) shows that it was replaced. What is stale or incomplete is deleted.
   */
  async open(url, remote) {
    const key = await keyOf(url);
    const manifest = await this.manifest(key);
    if (manifest && (!remote || (remote.length === manifest.length && remote.tag === manifest.tag))) {
      const file = await this.reader(key, url);
      if (file?.size === manifest.size) return file;
      file?.close();
    }
    await this.remove(key, url);
    return null;
  }

  /** Writes the body of `res` (the download of `url`) to the store, calling onBytes(n) as bytes arrive; returns open()'s file. */
  async put(url, res, onBytes) {
    const key = await keyOf(url);
    const handle = await this.handle(key, url, 'readwrite').catch(async (e) => {
      await this.remove(key, url).catch(() => {});
      throw e;
    });
    const reader = res.body.getReader();
    let size = 0;
    let readError = null;
    try {
      handle.truncate(0);
      for (;;) {
        const next = await reader.read().catch((e) => {
          readError = e;
          throw e;
        });
        if (next.done) break;
        for (let at = 0; at < next.value.length; ) {
          const n = handle.write(next.value.subarray(at), { at: size + at });
          if (n <= 0) throw new Error(`wrote ${n} bytes at ${size + at}`);
          at += n;
        }
        size += next.value.length;
        onBytes(next.value.length);
      }
      handle.flush();
    } catch (e) {
      handle.close();
      await reader.cancel().catch(() => {});
      await this.remove(key, url).catch(() => {});
      throw new Error(putError(fileName(url), size, readError ?? e));
    }
    handle.close();
    await this.writeManifest(key, url, { url, size, length: lengthOf(res), tag: tagOf(res) });
    return this.reader(key, url);
  }

  async manifest(key) {
    try {
      const file = await (await this.dir.getFileHandle(`${key}.json`)).getFile();
      return JSON.parse(await file.text());
    } catch {
      return null;
    }
  }

  async writeManifest(key, url, manifest) {
    const handle = await this.handle(`${key}.json`, url, 'readwrite');
    try {
      handle.truncate(0);
      handle.write(new TextEncoder().encode(JSON.stringify(manifest)), { at: 0 });
      handle.flush();
    } finally {
      handle.close();
    }
  }

  /** The cached bytes, or null when there are none. */
  async reader(key, url) {
    const handle = await this.handle(key, url, 'read-only');
    return handle && new CachedFile(handle);
  }

  /** A sync access handle (null for reading a file that is not there); another tab using the file holds a lock that says so. */
  async handle(name, url, mode) {
    try {
      return await (await this.dir.getFileHandle(name, { create: mode === 'readwrite' })).createSyncAccessHandle({ mode });
    } catch (e) {
      if (e?.name === 'NotFoundError' && mode === 'read-only') return null;
      if (e?.name === 'NoModificationAllowedError') throw new Error(`${fileName(url)}: another tab is using the cached copy; close it, or wait for its load to finish`);
      if (e?.name === 'QuotaExceededError') throw new Error(`${fileName(url)}: ${FULL}`);
      throw new Error(`${fileName(url)}: cannot open the cached copy (${e?.name}: ${e?.message})`);
    }
  }

  async remove(key, url) {
    for (const name of [`${key}.json`, key]) {
      try {
        await this.dir.removeEntry(name);
      } catch (e) {
        if (e?.name === 'NotFoundError') continue;
        throw new Error(`${fileName(url)}: cannot replace the cached copy (${e?.name}: ${e?.message}); is the model open in another tab?`);
      }
    }
  }
}

const FULL = "the browser's storage for this site is full (QuotaExceededError); free disk space or clear this site's data";

function putError(name, size, e) {
  const mib = `${(size / 1048576).toFixed(1)} MiB`;
  if (e?.name === 'QuotaExceededError') return `${name}: after caching ${mib}, ${FULL}`;
  return `${name}: downloading into the browser's storage failed after ${mib} (${e?.name ?? 'Error'}: ${e?.message ?? String(e)})`;
}
