/**
 * `GuestAllocator`: hands out guest-physical ranges of a {@link GuestMemory} to the driver side — rings, data
 * buffers, indirect descriptor tables — the way a guest kernel's page/slab allocator would.
 *
 * First fit over an address-ordered free list, with coalescing of neighbours on free. Every allocation lies in
 * one memory region (each region of the managed range is its own arena), so the result can always be viewed
 * with `GuestMemory.slice` / `u16Array` / `u32Array`.
 *
 * The bookkeeping lives in private JavaScript arrays, never in guest memory: the device (or anything else that
 * can write guest memory) cannot corrupt it. The contents of an allocation are not cleared.
 *
 * @example
 * ```ts
 * const memory = GuestMemory.create(1 << 20);
 * const allocator = new GuestAllocator(memory, { base: 0x1000 });
 * const table = allocator.alloc(4 * 16); // 16-byte aligned
 * allocator.free(table);
 * ```
 */
import { UsageError, hex } from './errors.js';
import type { GuestMemory } from './guest-memory.js';

export interface GuestAllocatorOptions {
  /** First guest address managed (default: the start of the lowest region). */
  readonly base?: number;
  /** Bytes managed from `base` (default: up to the end of the highest region). Holes are skipped. */
  readonly size?: number;
}

/** One region's part of the managed range: its free blocks, sorted by address and never adjacent. */
interface Arena {
  readonly start: number;
  readonly end: number;
  /** Start address of each free block, ascending. */
  readonly freeStart: number[];
  /** Size of each free block, parallel to `freeStart`. */
  readonly freeSize: number[];
}

export class GuestAllocator {
  readonly memory: GuestMemory;
  /** Bytes under management (the managed range minus holes between regions). */
  readonly size: number;
  readonly #arenas: Arena[] = [];
  /** Live allocations: address → size. */
  readonly #live = new Map<number, number>();
  #available = 0;

  constructor(memory: GuestMemory, options: GuestAllocatorOptions = {}) {
    this.memory = memory;
    const regions = memory.regions;
    const first = regions[0];
    const last = regions[regions.length - 1];
    if (first === undefined || last === undefined) {
      throw new UsageError('INVALID_ARGUMENT', 'guest memory has no regions', 0);
    }
    const base = options.base ?? first.guestAddr;
    const end = options.size === undefined ? last.end : base + options.size;
    if (!Number.isSafeInteger(base) || base < 0) {
      throw new UsageError('INVALID_ARGUMENT', `allocator base ${base} is not a guest address`, base);
    }
    if (!Number.isSafeInteger(end) || end <= base) {
      throw new UsageError(
        'INVALID_ARGUMENT',
        `allocator size ${options.size} is not a positive byte count`,
        {
          base,
          size: options.size,
        },
      );
    }
    for (const r of regions) {
      const start = Math.max(base, r.guestAddr);
      const stop = Math.min(end, r.end);
      if (stop > start) {
        this.#arenas.push({ start, end: stop, freeStart: [start], freeSize: [stop - start] });
        this.#available += stop - start;
      }
    }
    if (this.#arenas.length === 0) {
      throw new UsageError(
        'INVALID_ARGUMENT',
        `allocator range ${hex(base)}..${hex(end)} contains no guest memory`,
        base,
      );
    }
    this.size = this.#available;
  }

  /** Free bytes (possibly fragmented: a single allocation of this size may still fail). */
  get available(): number {
    return this.#available;
  }

  /** Number of live allocations. */
  get allocations(): number {
    return this.#live.size;
  }

  /**
   * Allocates `size` bytes aligned to `align` (a power of two) and returns the guest address. Throws a
   * UsageError `OUT_OF_MEMORY` when no free block fits.
   */
  alloc(size: number, align = 16): number {
    const addr = this.tryAlloc(size, align);
    if (addr < 0) {
      throw new UsageError(
        'OUT_OF_MEMORY',
        `cannot allocate ${size} bytes aligned to ${align}: ${this.#available} bytes free, fragmented`,
        size,
      );
    }
    return addr;
  }

  /** Like {@link alloc} but returns -1 instead of throwing when no free block fits (for hot paths). */
  tryAlloc(size: number, align = 16): number {
    if (!Number.isSafeInteger(size) || size <= 0) {
      throw new UsageError('INVALID_ARGUMENT', `allocation size ${size} is not a positive byte count`, size);
    }
    if (!Number.isSafeInteger(align) || align <= 0 || (align & (align - 1)) !== 0 || align > 2 ** 30) {
      throw new UsageError('INVALID_ARGUMENT', `alignment ${align} is not a power of two`, align);
    }
    if (size > this.#available) return -1;
    for (const arena of this.#arenas) {
      const starts = arena.freeStart;
      const sizes = arena.freeSize;
      for (let i = 0; i < starts.length; i++) {
        const blockStart = starts[i] as number;
        const blockEnd = blockStart + (sizes[i] as number);
        const addr = Math.ceil(blockStart / align) * align;
        if (addr + size > blockEnd) continue;
        // Carve [addr, addr + size) out of the block: the alignment gap stays free before it, the rest after.
        const before = addr - blockStart;
        const after = blockEnd - (addr + size);
        if (before > 0 && after > 0) {
          sizes[i] = before;
          starts.splice(i + 1, 0, addr + size);
          sizes.splice(i + 1, 0, after);
        } else if (before > 0) {
          sizes[i] = before;
        } else if (after > 0) {
          starts[i] = addr + size;
          sizes[i] = after;
        } else {
          starts.splice(i, 1);
          sizes.splice(i, 1);
        }
        this.#live.set(addr, size);
        this.#available -= size;
        return addr;
      }
    }
    return -1;
  }

  /** Size of the live allocation at `addr`, or undefined. */
  sizeOf(addr: number): number | undefined {
    return this.#live.get(addr);
  }

  /** Returns an allocation. `addr` must be what {@link alloc} returned and not yet freed (INVALID_ARGUMENT). */
  free(addr: number): void {
    const size = this.#live.get(addr);
    if (size === undefined) {
      throw new UsageError('INVALID_ARGUMENT', `${hex(addr)} is not a live allocation`, addr);
    }
    const arena = this.#arenas.find((a) => addr >= a.start && addr < a.end);
    if (arena === undefined) throw new UsageError('INVALID_STATE', `${hex(addr)} is in no arena`, addr);
    this.#live.delete(addr);
    this.#available += size;
    const starts = arena.freeStart;
    const sizes = arena.freeSize;
    // Index of the first free block after addr (binary search: free lists of long-lived queues can grow).
    let lo = 0;
    let hi = starts.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if ((starts[mid] as number) < addr) lo = mid + 1;
      else hi = mid;
    }
    const end = addr + size;
    const prev = lo - 1;
    const joinsPrev = prev >= 0 && (starts[prev] as number) + (sizes[prev] as number) === addr;
    const joinsNext = lo < starts.length && starts[lo] === end;
    if (joinsPrev && joinsNext) {
      sizes[prev] = (sizes[prev] as number) + size + (sizes[lo] as number);
      starts.splice(lo, 1);
      sizes.splice(lo, 1);
    } else if (joinsPrev) {
      sizes[prev] = (sizes[prev] as number) + size;
    } else if (joinsNext) {
      starts[lo] = addr;
      sizes[lo] = size + (sizes[lo] as number);
    } else {
      starts.splice(lo, 0, addr);
      sizes.splice(lo, 0, size);
    }
  }

  /** The free blocks, address-ordered (for tests and diagnostics). */
  freeBlocks(): { addr: number; size: number }[] {
    const out: { addr: number; size: number }[] = [];
    for (const a of this.#arenas) {
      for (let i = 0; i < a.freeStart.length; i++) {
        out.push({ addr: a.freeStart[i] as number, size: a.freeSize[i] as number });
      }
    }
    return out;
  }
}
