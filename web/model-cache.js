// Model files kept in the Cache API, so that a reload does not download them again. A file is stored as parts of at
// most partBytes, each streamed from the download into the cache without being held (Chromium cannot make a
// Response of a buffer over ~2 GiB, and real shards are 4-9 GB), plus a small manifest at the file's own URL,
// written last, so that a download cut short is never taken for a cached file. A cached part's Blob is backed by the
// browser's disk cache: the model is read from disk into wasm memory piece by piece (host/checkpoint/byte-source.ts).

const CACHE = 'deepwasm-models-v2';
/** Whole files as single entries: dropped, so that they do not hold the space. */
const OLD_CACHES = ['deepwasm-models-v1'];

export const DEFAULT_PART_BYTES = 256 * 1024 * 1024;

export const fileName = (url) => new URL(url).pathname.split('/').pop() || url;

/** Each part is an entry of its own, keyed by a query parameter (the Cache API ignores fragments). */
function partUrl(url, i) {
  const u = new URL(url);
  u.searchParams.set('deepwasm-part', String(i));
  return u.href;
}

/** The Cache API store, or null where there is none (a page that is not a secure context). */
export async function openModelCache() {
  if (typeof caches === 'undefined') return null;
  await Promise.all(OLD_CACHES.map((name) => caches.delete(name).catch(() => false)));
  return new ModelCache(await caches.open(CACHE));
}

class ModelCache {
  constructor(cache) {
    this.cache = cache;
  }

  /**
   * The cached file as one Blob of its parts, or null when it is not wholly cached, or when `remote` (what the server
   * says of the file now, { length, tag }; null when it cannot be asked) shows it was replaced. What is stale or
   * incomplete is deleted.
   */
  async get(url, remote) {
    const entry = await this.cache.match(url);
    if (!entry) return null;
    const manifest = await entry.json().catch(() => null);
    const fresh = manifest && (!remote || (remote.length === manifest.length && remote.tag === manifest.tag));
    const parts = fresh ? await this.parts(url, manifest.parts) : null;
    const blob = parts && new Blob(parts);
    if (blob && blob.size === manifest.size) return blob;
    await this.delete(url, manifest?.parts ?? 0);
    return null;
  }

  async parts(url, count) {
    const blobs = [];
    for (let i = 0; i < count; i++) {
      const res = await this.cache.match(partUrl(url, i));
      if (!res) return null;
      blobs.push(await res.blob());
    }
    return blobs;
  }

  async delete(url, parts) {
    await this.cache.delete(url);
    for (let i = 0; i < parts; i++) await this.cache.delete(partUrl(url, i));
  }

  /** Streams `res` (the download of `url`) into parts, calling onBytes(n) as bytes arrive; returns get()'s Blob. */
  async put(url, res, partBytes, onBytes) {
    const reader = res.body.getReader();
    let pending = null; // the rest of a chunk that ran past a part's end
    let readError = null;
    const next = async () => {
      if (pending) {
        const chunk = pending;
        pending = null;
        return chunk;
      }
      try {
        const { done, value } = await reader.read();
        return done ? null : value;
      } catch (e) {
        readError = e;
        throw e;
      }
    };
    let size = 0;
    let parts = 0;
    try {
      for (let first = await next(); first; first = await next()) {
        pending = first;
        let left = partBytes;
        const body = new ReadableStream({
          async pull(ctrl) {
            let chunk = left > 0 ? await next() : null;
            if (!chunk) return ctrl.close();
            if (chunk.length > left) {
              pending = chunk.subarray(left);
              chunk = chunk.subarray(0, left);
            }
            left -= chunk.length;
            size += chunk.length;
            onBytes(chunk.length);
            ctrl.enqueue(chunk);
          },
        });
        parts++;
        await this.cache.put(partUrl(url, parts - 1), new Response(body, { headers: { 'content-type': 'application/octet-stream' } }));
      }
      const manifest = { size, parts, length: lengthOf(res), tag: tagOf(res) };
      await this.cache.put(url, new Response(JSON.stringify(manifest), { headers: { 'content-type': 'application/json' } }));
    } catch (e) {
      await reader.cancel().catch(() => {});
      await this.delete(url, parts).catch(() => {});
      throw new Error(putError(fileName(url), size, readError ?? e));
    }
    const blob = await this.get(url, null);
    if (!blob) throw new Error(`${fileName(url)}: the browser dropped the cached parts right after they were written; try again, or free disk space`);
    return blob;
  }
}

function putError(name, size, e) {
  const mib = `${(size / 1048576).toFixed(1)} MiB`;
  if (e?.name === 'QuotaExceededError') {
    return `${name}: the browser's storage for this site ran out after caching ${mib} (QuotaExceededError); free disk space or clear this site's data`;
  }
  return `${name}: downloading into the browser cache failed after ${mib} (${e?.name ?? 'Error'}: ${e?.message ?? String(e)})`;
}

/** What the server says of a file: its Content-Length and the tag that changes when it is replaced. */
export const lengthOf = (res) => Number(res.headers.get('content-length')) || 0;
export const tagOf = (res) => res.headers.get('etag') ?? res.headers.get('last-modified');
