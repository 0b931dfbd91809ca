import { fail } from '../errors.js';

const PAGE = 65536;
const ALIGN = 64;
/** wasm32 addresses stop at 4 GiB. */
export const MAX_MEMORY_BYTES = 65536 * PAGE;

/**
 * The host's allocator over the shared memory: a bump pointer with marks. Weights are allocated
 * once at load, the KV cache once per model, and each forward step's temporaries between a mark
 * and a release, so decoding reuses the same bytes every token and the high-water mark stays put.
 * Addresses are plain numbers; `>>> 0` and division keep them right above 2 GiB, where `&` would
 * turn them negative.
 */
export class Arena {
  /** The first address the arena hands out. */
  readonly start: number;
  private top: number;
  private high: number;

  constructor(readonly memory: WebAssembly.Memory, base: number) {
    this.start = alignUp(base >>> 0);
    this.top = this.start;
    this.high = this.top;
  }

  /** Allocates `bytes` (64-byte aligned, not zeroed). `what` names the allocation in errors. */
  alloc(bytes: number, what: string): number {
    const ptr = this.top;
    const end = alignUp(ptr + bytes);
    if (end > MAX_MEMORY_BYTES) {
      fail(
        `out of WebAssembly memory allocating ${what} (${mib(bytes)}): ${mib(ptr)} already in use, ` +
          `and one wasm32 memory holds at most 4096 MiB; use a smaller model, context or prompt`,
      );
    }
    const have = this.memory.buffer.byteLength;
    if (end > have) this.memory.grow(Math.ceil((end - have) / PAGE));
    this.top = end;
    if (end > this.high) this.high = end;
    return ptr;
  }

  allocF32(count: number, what: string): number {
    return this.alloc(count * 4, what);
  }

  mark(): number {
    return this.top;
  }

  release(mark: number): void {
    this.top = mark;
  }

  /** Highest address ever handed out: flat across decode steps when nothing leaks. */
  get highWater(): number {
    return this.high;
  }

  get used(): number {
    return this.top;
  }
}

function alignUp(n: number): number {
  return Math.ceil(n / ALIGN) * ALIGN;
}

function mib(bytes: number): string {
  return `${(bytes / 1048576).toFixed(1)} MiB`;
}
