/**
 * Cursor copy-in / copy-out over a descriptor chain's segments: {@link ChainReader} walks the device-readable
 * part, {@link ChainWriter} the device-writable part. Devices use them to parse request headers and fill
 * response buffers without caring how the driver split its buffers into descriptors (§2.7.4.1: "The device
 * MUST NOT make assumptions about the particular arrangement of descriptors").
 *
 * Allocation-light: the cursor keeps the current segment's region bytes and DataView, so scalar reads and
 * writes inside a segment allocate nothing; only `read`/`write` create one subarray per segment touched, and
 * `views` one Uint8Array per segment returned.
 *
 * Running out of bytes for a fixed-size item (`readU32`, `skip`, `views`...) throws a {@link ChainIoError}
 * (`CHAIN_TOO_SHORT`), a {@link GuestFault}: the driver supplied a buffer too short for the request. It lives
 * here, not in `QueueError`, because it does not break the ring: the device decides whether it completes the
 * request with an error status or fails the device. The cursor does not move when it throws.
 *
 * Segments are validated guest memory (checked when the chain was popped), so no access here can leave the
 * guest. The bytes alias guest memory: the guest may change them at any time, so read each field once.
 */
import { GuestFault } from '../errors.js';
import type { GuestMemory, GuestRegion } from '../guest-memory.js';

export type ChainIoErrorCode = 'CHAIN_TOO_SHORT';

/** The chain has fewer bytes than the request needs. `value`: `{ needed, remaining }`. */
export class ChainIoError extends GuestFault<ChainIoErrorCode> {
  constructor(message: string, needed: number, remaining: number) {
    super('CHAIN_TOO_SHORT', message, { needed, remaining });
  }
}

const EMPTY_BYTES = new Uint8Array(0);
const EMPTY_VIEW = new DataView(EMPTY_BYTES.buffer);

/**
 * The cursor shared by {@link ChainReader} and {@link ChainWriter}: a position over the segments
 * `[first, end)` of a flat `[addr, len, addr, len, ...]` array, each segment inside one guest region and
 * non-empty.
 */
abstract class ChainCursor {
  readonly #memory: GuestMemory;
  readonly #segments: readonly number[];
  readonly #end: number;
  readonly #length: number;
  /** Index of the current segment. */
  #seg: number;
  /** The current segment's region bytes and view; the cursor is at `#pos`, the segment ends at `#segEnd`. */
  protected bytes: Uint8Array = EMPTY_BYTES;
  protected view: DataView = EMPTY_VIEW;
  protected pos = 0;
  protected segEnd = 0;
  #remaining: number;

  /**
   * @param segments flat `[addr, len, ...]` pairs, each range inside one region of `memory`, len > 0
   * @param first index (in pairs) of the first segment to walk
   * @param end index (in pairs) one past the last segment
   * @param length the total bytes of those segments
   */
  constructor(memory: GuestMemory, segments: readonly number[], first: number, end: number, length: number) {
    this.#memory = memory;
    this.#segments = segments;
    this.#end = end;
    this.#length = length;
    this.#remaining = length;
    this.#seg = first - 1;
    this.#nextSegment();
  }

  /** Bytes left after the cursor. */
  get remaining(): number {
    return this.#remaining;
  }

  /** Bytes before the cursor (consumed, written or skipped). */
  get position(): number {
    return this.#length - this.#remaining;
  }

  /** Moves the cursor `n` bytes on. Throws `CHAIN_TOO_SHORT` if fewer remain. */
  skip(n: number): void {
    this.need(n, 'skip');
    this.advance(n);
  }

  /**
   * Zero-copy views of the next `n` bytes (one per segment touched), moving the cursor past them. The views
   * alias guest memory. Throws `CHAIN_TOO_SHORT` if fewer than `n` bytes remain.
   */
  views(n: number): Uint8Array[] {
    this.need(n, 'views');
    const out: Uint8Array[] = [];
    let left = n;
    while (left > 0) {
      const k = Math.min(left, this.segEnd - this.pos);
      out.push(this.bytes.subarray(this.pos, this.pos + k));
      this.advance(k);
      left -= k;
    }
    return out;
  }

  /** Throws `CHAIN_TOO_SHORT` unless `n` bytes remain (and `n` is a non-negative integer). */
  protected need(n: number, what: string): void {
    if (!(n >= 0 && Number.isSafeInteger(n) && n <= this.#remaining)) {
      throw new ChainIoError(
        `${what} needs ${n} bytes but the chain's ${this.partName} part has ${this.#remaining} left`,
        n,
        this.#remaining,
      );
    }
  }

  /** Moves `n` bytes on; `n` is at most what remains. */
  protected advance(n: number): void {
    this.#remaining -= n;
    let left = n;
    while (left > 0) {
      const k = Math.min(left, this.segEnd - this.pos);
      this.pos += k;
      left -= k;
      if (this.pos === this.segEnd) this.#nextSegment();
    }
  }

  /** "readable" or "writable", for messages. */
  protected abstract get partName(): string;

  #nextSegment(): void {
    const i = ++this.#seg;
    if (i >= this.#end) {
      this.bytes = EMPTY_BYTES;
      this.view = EMPTY_VIEW;
      this.pos = 0;
      this.segEnd = 0;
      return;
    }
    const addr = this.#segments[2 * i] as number;
    const len = this.#segments[2 * i + 1] as number;
    // The segment was checked to lie in one region when the chain was popped.
    const region = this.#memory.findRegion(addr) as GuestRegion;
    this.bytes = region.bytes;
    this.view = region.view;
    this.pos = addr - region.guestAddr;
    this.segEnd = this.pos + len;
  }
}

/** Reads the device-readable part of a chain, little-endian, as a cursor. */
export class ChainReader extends ChainCursor {
  protected get partName(): string {
    return 'readable';
  }

  /** Copies up to `dst.length` bytes into `dst`; returns the number copied (less only at the end). */
  read(dst: Uint8Array): number {
    const n = Math.min(dst.length, this.remaining);
    let done = 0;
    while (done < n) {
      const k = Math.min(n - done, this.segEnd - this.pos);
      dst.set(this.bytes.subarray(this.pos, this.pos + k), done);
      this.advance(k);
      done += k;
    }
    return n;
  }

  /** Fills all of `dst`, or throws `CHAIN_TOO_SHORT` without moving. */
  readExact(dst: Uint8Array): void {
    this.need(dst.length, 'readExact');
    this.read(dst);
  }

  readU8(): number {
    this.need(1, 'readU8');
    const v = this.bytes[this.pos] as number;
    this.advance(1);
    return v;
  }

  readU16(): number {
    if (this.segEnd - this.pos >= 2) {
      const v = this.view.getUint16(this.pos, true);
      this.advance(2);
      return v;
    }
    this.need(2, 'readU16');
    return this.#slow(2);
  }

  readU32(): number {
    if (this.segEnd - this.pos >= 4) {
      const v = this.view.getUint32(this.pos, true);
      this.advance(4);
      return v;
    }
    this.need(4, 'readU32');
    return this.#slow(4) >>> 0;
  }

  readU64(): bigint {
    if (this.segEnd - this.pos >= 8) {
      const v = this.view.getBigUint64(this.pos, true);
      this.advance(8);
      return v;
    }
    this.need(8, 'readU64');
    const lo = this.#slow(4) >>> 0;
    const hi = this.#slow(4) >>> 0;
    return (BigInt(hi) << 32n) | BigInt(lo);
  }

  /** A little-endian value of `n` ≤ 4 bytes that straddles segments (already checked to be there). */
  #slow(n: number): number {
    let v = 0;
    for (let i = 0; i < n; i++) {
      v += (this.bytes[this.pos] as number) * 2 ** (8 * i);
      this.advance(1);
    }
    return v;
  }
}

/** Writes the device-writable part of a chain, little-endian, as a cursor. */
export class ChainWriter extends ChainCursor {
  protected get partName(): string {
    return 'writable';
  }

  /** Bytes written or skipped so far: what the device reports as the used length (§2.7.8.2). */
  get written(): number {
    return this.position;
  }

  /** Copies up to `src.length` bytes from `src`; returns the number copied (less only at the end). */
  write(src: Uint8Array): number {
    const n = Math.min(src.length, this.remaining);
    let done = 0;
    while (done < n) {
      const k = Math.min(n - done, this.segEnd - this.pos);
      this.bytes.set(src.subarray(done, done + k), this.pos);
      this.advance(k);
      done += k;
    }
    return n;
  }

  /** Writes all of `src`, or throws `CHAIN_TOO_SHORT` without writing anything. */
  writeAll(src: Uint8Array): void {
    this.need(src.length, 'writeAll');
    this.write(src);
  }

  /** Writes `len` bytes of `value` (zero by default). Throws `CHAIN_TOO_SHORT` if fewer remain. */
  fill(len: number, value = 0): void {
    this.need(len, 'fill');
    let left = len;
    while (left > 0) {
      const k = Math.min(left, this.segEnd - this.pos);
      this.bytes.fill(value, this.pos, this.pos + k);
      this.advance(k);
      left -= k;
    }
  }

  writeU8(value: number): void {
    this.need(1, 'writeU8');
    this.bytes[this.pos] = value;
    this.advance(1);
  }

  writeU16(value: number): void {
    if (this.segEnd - this.pos >= 2) {
      this.view.setUint16(this.pos, value, true);
      this.advance(2);
      return;
    }
    this.need(2, 'writeU16');
    this.#slow(value & 0xffff, 2);
  }

  writeU32(value: number): void {
    if (this.segEnd - this.pos >= 4) {
      this.view.setUint32(this.pos, value, true);
      this.advance(4);
      return;
    }
    this.need(4, 'writeU32');
    this.#slow(value >>> 0, 4);
  }

  writeU64(value: bigint): void {
    if (this.segEnd - this.pos >= 8) {
      this.view.setBigUint64(this.pos, value, true);
      this.advance(8);
      return;
    }
    this.need(8, 'writeU64');
    const v = BigInt.asUintN(64, value);
    this.#slow(Number(v & 0xffff_ffffn), 4);
    this.#slow(Number(v >> 32n), 4);
  }

  /** Writes `n` ≤ 4 little-endian bytes of `value` across segments (room already checked). */
  #slow(value: number, n: number): void {
    let v = value;
    for (let i = 0; i < n; i++) {
      this.bytes[this.pos] = v & 0xff;
      v = Math.floor(v / 256);
      this.advance(1);
    }
  }
}
