/**
 * Guest memory: a set of regions that map guest-physical addresses to host bytes (ArrayBuffer,
 * SharedArrayBuffer, or foreign memory such as an mmap seen through `koffi.view`).
 *
 * Addresses and lengths are JavaScript numbers. A guest-physical address is a u64 in the spec; every address
 * this class accepts must be a safe integer (< 2^53), which covers any memory a host can map. Anything larger
 * is outside guest memory by definition, so `addr + len` overflowing 2^64 is reported as out of range before
 * any arithmetic could lose precision.
 *
 * All multi-byte access is little-endian, as virtio 1.x requires.
 */
import { GuestFault, UsageError, hex } from './errors.js';

export type GuestMemoryErrorCode =
  'GUEST_ADDRESS_OUT_OF_RANGE' | 'GUEST_RANGE_SPANS_HOLE' | 'GUEST_RANGE_OVERFLOW';

/** An access fell outside guest memory. Always the guest's fault: the address came from the guest. */
export class GuestMemoryError extends GuestFault<GuestMemoryErrorCode> {
  constructor(code: GuestMemoryErrorCode, message: string, addr: number | bigint, len: number) {
    super(code, message, { addr, len });
  }
}

/** Largest address any region may reach (exclusive end). */
export const MAX_GUEST_ADDRESS = Number.MAX_SAFE_INTEGER;

export interface GuestRegionInit {
  /** Guest-physical address of the first byte. */
  readonly guestAddr: number;
  /** The host bytes backing the region; its length is the region size. */
  readonly bytes: Uint8Array;
}

/** One contiguous region of guest memory. */
export class GuestRegion {
  readonly guestAddr: number;
  readonly size: number;
  /** Exclusive end address. */
  readonly end: number;
  readonly bytes: Uint8Array;
  readonly view: DataView;

  constructor(init: GuestRegionInit) {
    const { guestAddr, bytes } = init;
    if (!Number.isSafeInteger(guestAddr) || guestAddr < 0) {
      throw new UsageError(
        'INVALID_ARGUMENT',
        `region address ${guestAddr} is not a safe non-negative integer`,
        guestAddr,
      );
    }
    if (bytes.length === 0) {
      throw new UsageError('INVALID_ARGUMENT', `region at ${hex(guestAddr)} is empty`, guestAddr);
    }
    if (guestAddr + bytes.length > MAX_GUEST_ADDRESS) {
      throw new UsageError('INVALID_ARGUMENT', `region at ${hex(guestAddr)} ends past 2^53`, guestAddr);
    }
    this.guestAddr = guestAddr;
    this.size = bytes.length;
    this.end = guestAddr + bytes.length;
    this.bytes = bytes;
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }

  contains(addr: number, len: number): boolean {
    return addr >= this.guestAddr && addr + len <= this.end;
  }
}

function checkArgs(addr: number, len: number): void {
  if (!Number.isSafeInteger(len) || len < 0) {
    throw new GuestMemoryError('GUEST_RANGE_OVERFLOW', `length ${len} is not a valid byte count`, addr, len);
  }
  if (!Number.isSafeInteger(addr) || addr < 0 || addr + len > MAX_GUEST_ADDRESS) {
    throw new GuestMemoryError(
      'GUEST_RANGE_OVERFLOW',
      `range ${Number.isSafeInteger(addr) ? hex(addr) : String(addr)}+${len} overflows the address space`,
      addr,
      len,
    );
  }
}

/** A slice of a guest range that lies inside one region. */
export interface GuestSpan {
  readonly region: GuestRegion;
  /** Offset of the span inside `region.bytes`. */
  readonly offset: number;
  readonly length: number;
}

export class GuestMemory {
  /** Regions sorted by address, never overlapping. */
  readonly regions: readonly GuestRegion[];
  #last: GuestRegion;

  constructor(regions: readonly GuestRegionInit[]) {
    if (regions.length === 0)
      throw new UsageError('INVALID_ARGUMENT', 'guest memory needs at least one region', 0);
    const sorted = regions.map((r) => new GuestRegion(r)).sort((a, b) => a.guestAddr - b.guestAddr);
    for (let i = 1; i < sorted.length; i++) {
      const prev = sorted[i - 1] as GuestRegion;
      const cur = sorted[i] as GuestRegion;
      if (cur.guestAddr < prev.end) {
        throw new UsageError(
          'INVALID_ARGUMENT',
          `regions overlap: ${hex(prev.guestAddr)}..${hex(prev.end)} and ${hex(cur.guestAddr)}..${hex(cur.end)}`,
          cur.guestAddr,
        );
      }
    }
    this.regions = sorted;
    this.#last = sorted[0] as GuestRegion;
  }

  /** One region of `size` bytes at guest address 0, backed by a new ArrayBuffer (or SharedArrayBuffer). */
  static create(size: number, options: { shared?: boolean } = {}): GuestMemory {
    const buffer = options.shared === true ? new SharedArrayBuffer(size) : new ArrayBuffer(size);
    return new GuestMemory([{ guestAddr: 0, bytes: new Uint8Array(buffer) }]);
  }

  /** Total bytes across all regions. */
  get size(): number {
    let total = 0;
    for (const r of this.regions) total += r.size;
    return total;
  }

  /** The region holding `addr`, or undefined. */
  findRegion(addr: number): GuestRegion | undefined {
    const last = this.#last;
    if (addr >= last.guestAddr && addr < last.end) return last;
    // Few regions in practice (one per memory slot): a linear scan beats a search.
    for (const r of this.regions) {
      if (addr >= r.guestAddr && addr < r.end) {
        this.#last = r;
        return r;
      }
    }
    return undefined;
  }

  /**
   * The region that holds all of `[addr, addr + len)`, or a typed error. A zero-length range must still start
   * inside a region (or at its end).
   */
  regionFor(addr: number, len: number): GuestRegion {
    const last = this.#last;
    if (
      addr >= last.guestAddr &&
      addr + len <= last.end &&
      Number.isSafeInteger(addr) &&
      Number.isSafeInteger(len) &&
      len >= 0
    ) {
      return last;
    }
    checkArgs(addr, len);
    const region = this.findRegion(addr) ?? (len === 0 ? this.#regionEndingAt(addr) : undefined);
    if (region === undefined) {
      throw new GuestMemoryError(
        'GUEST_ADDRESS_OUT_OF_RANGE',
        `address ${hex(addr)} is not in guest memory`,
        addr,
        len,
      );
    }
    if (addr + len > region.end) {
      const next = this.findRegion(region.end);
      throw new GuestMemoryError(
        next === undefined ? 'GUEST_ADDRESS_OUT_OF_RANGE' : 'GUEST_RANGE_SPANS_HOLE',
        next === undefined
          ? `range ${hex(addr)}+${len} runs past the end of guest memory at ${hex(region.end)}`
          : `range ${hex(addr)}+${len} crosses from one memory region into another at ${hex(region.end)}`,
        addr,
        len,
      );
    }
    return region;
  }

  #regionEndingAt(addr: number): GuestRegion | undefined {
    return this.regions.find((r) => r.end === addr);
  }

  /** True when `[addr, addr + len)` is entirely guest memory (possibly across adjacent regions). */
  isValidRange(addr: number, len: number): boolean {
    try {
      this.checkRange(addr, len);
      return true;
    } catch (e) {
      if (e instanceof GuestMemoryError) return false;
      throw e;
    }
  }

  /**
   * Checks that `[addr, addr + len)` is guest memory, allowing it to cross adjacent regions but not a hole.
   */
  checkRange(addr: number, len: number): void {
    this.forEachSpan(addr, len, () => undefined);
  }

  /**
   * Walks `[addr, addr + len)` as spans that each lie in one region, in address order. Adjacent regions are
   * crossed; a hole or the end of memory is a {@link GuestMemoryError}, raised before `visit` sees any span.
   * Returns the number of spans.
   */
  forEachSpan(addr: number, len: number, visit: (span: GuestSpan) => void): number {
    checkArgs(addr, len);
    const spans: GuestSpan[] = [];
    let cur = addr;
    let left = len;
    do {
      const region = this.findRegion(cur) ?? (left === 0 ? this.#regionEndingAt(cur) : undefined);
      if (region === undefined) {
        throw new GuestMemoryError(
          cur === addr ? 'GUEST_ADDRESS_OUT_OF_RANGE' : 'GUEST_RANGE_SPANS_HOLE',
          cur === addr
            ? `address ${hex(addr)} is not in guest memory`
            : `range ${hex(addr)}+${len} reaches ${hex(cur)}, which is not guest memory`,
          addr,
          len,
        );
      }
      const n = Math.min(left, region.end - cur);
      spans.push({ region, offset: cur - region.guestAddr, length: n });
      cur += n;
      left -= n;
    } while (left > 0);
    for (const span of spans) visit(span);
    return spans.length;
  }

  /**
   * A zero-copy view of `[addr, addr + len)`. The range must lie in one region: use {@link forEachSpan} for
   * ranges that may cross regions. The view aliases guest memory: the guest may change it at any time.
   */
  slice(addr: number, len: number): Uint8Array {
    const region = this.regionFor(addr, len);
    const start = addr - region.guestAddr;
    return region.bytes.subarray(start, start + len);
  }

  /** Copies guest bytes at `addr` into `dst` (any number of regions). */
  read(addr: number, dst: Uint8Array): void {
    let done = 0;
    this.forEachSpan(addr, dst.length, (s) => {
      dst.set(s.region.bytes.subarray(s.offset, s.offset + s.length), done);
      done += s.length;
    });
  }

  /** Copies `src` into guest memory at `addr` (any number of regions). */
  write(addr: number, src: Uint8Array): void {
    let done = 0;
    this.forEachSpan(addr, src.length, (s) => {
      s.region.bytes.set(src.subarray(done, done + s.length), s.offset);
      done += s.length;
    });
  }

  /** Fills `[addr, addr + len)` with `value`. */
  fill(addr: number, len: number, value = 0): void {
    this.forEachSpan(addr, len, (s) => s.region.bytes.fill(value, s.offset, s.offset + s.length));
  }

  readU8(addr: number): number {
    const r = this.regionFor(addr, 1);
    return r.view.getUint8(addr - r.guestAddr);
  }

  readU16(addr: number): number {
    const r = this.regionFor(addr, 2);
    return r.view.getUint16(addr - r.guestAddr, true);
  }

  readU32(addr: number): number {
    const r = this.regionFor(addr, 4);
    return r.view.getUint32(addr - r.guestAddr, true);
  }

  readU64(addr: number): bigint {
    const r = this.regionFor(addr, 8);
    return r.view.getBigUint64(addr - r.guestAddr, true);
  }

  writeU8(addr: number, value: number): void {
    const r = this.regionFor(addr, 1);
    r.view.setUint8(addr - r.guestAddr, value);
  }

  writeU16(addr: number, value: number): void {
    const r = this.regionFor(addr, 2);
    r.view.setUint16(addr - r.guestAddr, value, true);
  }

  writeU32(addr: number, value: number): void {
    const r = this.regionFor(addr, 4);
    r.view.setUint32(addr - r.guestAddr, value, true);
  }

  writeU64(addr: number, value: bigint): void {
    const r = this.regionFor(addr, 8);
    r.view.setBigUint64(addr - r.guestAddr, value, true);
  }

  /**
   * A Uint16Array over `count` little-endian u16 values at `addr` (one region, 2-byte aligned), for ring
   * fields that need `Atomics`. Only valid on little-endian hosts, which {@link HOST_IS_LITTLE_ENDIAN} checks.
   */
  u16Array(addr: number, count: number): Uint16Array {
    const bytes = this.#alignedSlice(addr, count * 2, 2);
    return new Uint16Array(bytes.buffer, bytes.byteOffset, count);
  }

  /** A Uint32Array over `count` little-endian u32 values at `addr` (one region, 4-byte aligned). */
  u32Array(addr: number, count: number): Uint32Array {
    const bytes = this.#alignedSlice(addr, count * 4, 4);
    return new Uint32Array(bytes.buffer, bytes.byteOffset, count);
  }

  #alignedSlice(addr: number, len: number, align: number): Uint8Array {
    if (!HOST_IS_LITTLE_ENDIAN) {
      throw new UsageError('INVALID_STATE', 'typed ring views need a little-endian host', addr);
    }
    const bytes = this.slice(addr, len);
    if (bytes.byteOffset % align !== 0) {
      throw new UsageError(
        'INVALID_ARGUMENT',
        `guest address ${hex(addr)} maps to a host offset not aligned to ${align}`,
        addr,
      );
    }
    return bytes;
  }
}

/** Typed arrays use host byte order; the ring code relies on it being little-endian, as virtio is. */
export const HOST_IS_LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;
