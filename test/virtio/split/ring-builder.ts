/**
 * An independent, deliberately naive driver-side split ring writer for tests: it lays out descriptors, avail
 * entries and indirect tables byte by byte with DataView, using offsets written out from the spec (VIRTIO 1.2
 * §2.7) rather than the constants of the code under test, so expected bytes never come from SplitQueue.
 *
 * Layout (little-endian):
 *   descriptor i at desc + 16·i: u64 addr @0, u32 len @8, u16 flags @12, u16 next @14
 *   avail: u16 flags @0, u16 idx @2, u16 ring[i] @4 + 2·i, u16 used_event @4 + 2·N
 *   used:  u16 flags @0, u16 idx @2, {u32 id @4 + 8·i, u32 len @8 + 8·i}, u16 avail_event @4 + 8·N
 */
import { GuestMemory } from '../../../src/virtio/guest-memory.js';

export const F_NEXT = 1;
export const F_WRITE = 2;
export const F_INDIRECT = 4;

export interface BufferSpec {
  readonly addr: number | bigint;
  readonly len: number;
  /** Device-writable. */
  readonly write?: boolean;
}

/** A little-endian DataView over `len` guest bytes at `addr` (one region). */
export function guestView(memory: GuestMemory, addr: number, len: number): DataView {
  const bytes = memory.slice(addr, len);
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

export class RingBuilder {
  readonly memory: GuestMemory;
  readonly size: number;
  readonly desc: number;
  readonly avail: number;
  readonly used: number;
  readonly #d: DataView;
  readonly #a: DataView;
  readonly #u: DataView;
  /** The driver's avail.idx (what it will publish next). */
  #availIdx = 0;

  constructor(memory: GuestMemory, size: number, desc: number, avail: number, used: number) {
    this.memory = memory;
    this.size = size;
    this.desc = desc;
    this.avail = avail;
    this.used = used;
    this.#d = guestView(memory, desc, 16 * size);
    this.#a = guestView(memory, avail, 6 + 2 * size);
    this.#u = guestView(memory, used, 6 + 8 * size);
  }

  /** The queue configuration a transport would pass on. */
  configure(q: {
    size: number;
    descTable: number;
    availRing: number;
    usedRing: number;
    ready: boolean;
  }): void {
    q.size = this.size;
    q.descTable = this.desc;
    q.availRing = this.avail;
    q.usedRing = this.used;
    q.ready = true;
  }

  /** Writes descriptor `i` of the queue's table. */
  setDesc(i: number, addr: number | bigint, len: number, flags: number, next = 0): void {
    writeDesc(this.#d, 16 * i, addr, len, flags, next);
  }

  /**
   * Writes `bufs` as a chain into descriptors `indices` (NEXT links in order) and returns the head.
   */
  chain(indices: readonly number[], bufs: readonly BufferSpec[]): number {
    bufs.forEach((b, k) => {
      const last = k === bufs.length - 1;
      this.setDesc(
        indices[k]!,
        b.addr,
        b.len,
        (b.write === true ? F_WRITE : 0) | (last ? 0 : F_NEXT),
        last ? 0 : indices[k + 1]!,
      );
    });
    return indices[0]!;
  }

  /** Writes an indirect table at `table` holding `bufs` chained 0 → 1 → ...; returns its length in bytes. */
  indirectTable(table: number, bufs: readonly BufferSpec[]): number {
    const dv = guestView(this.memory, table, 16 * bufs.length);
    bufs.forEach((b, k) => {
      const last = k === bufs.length - 1;
      writeDesc(
        dv,
        16 * k,
        b.addr,
        b.len,
        (b.write === true ? F_WRITE : 0) | (last ? 0 : F_NEXT),
        last ? 0 : k + 1,
      );
    });
    return 16 * bufs.length;
  }

  /** Writes raw entry `k` of an indirect table at `table`. */
  setIndirectEntry(
    table: number,
    k: number,
    addr: number | bigint,
    len: number,
    flags: number,
    next = 0,
  ): void {
    writeDesc(guestView(this.memory, table + 16 * k, 16), 0, addr, len, flags, next);
  }

  /** Puts `heads` in the avail ring and publishes avail.idx (driver steps 2–5 of §2.7.13). */
  makeAvailable(...heads: number[]): void {
    for (const h of heads) {
      this.#a.setUint16(4 + 2 * (this.#availIdx % this.size), h, true);
      this.#availIdx = (this.#availIdx + 1) & 0xffff;
    }
    this.#a.setUint16(2, this.#availIdx, true);
  }

  /** The driver's avail.idx; setting it writes the ring's idx field directly (no entries). */
  get availIdx(): number {
    return this.#availIdx;
  }

  set availIdx(value: number) {
    this.#availIdx = value & 0xffff;
    this.#a.setUint16(2, this.#availIdx, true);
  }

  /** Writes avail.ring[slot] without publishing. */
  setAvailEntry(slot: number, head: number): void {
    this.#a.setUint16(4 + 2 * slot, head, true);
  }

  set availFlags(value: number) {
    this.#a.setUint16(0, value, true);
  }

  set usedEvent(value: number) {
    this.#a.setUint16(4 + 2 * this.size, value, true);
  }

  get usedIdx(): number {
    return this.#u.getUint16(2, true);
  }

  set usedIdx(value: number) {
    this.#u.setUint16(2, value, true);
  }

  get usedFlags(): number {
    return this.#u.getUint16(0, true);
  }

  get availEvent(): number {
    return this.#u.getUint16(4 + 8 * this.size, true);
  }

  set availEvent(value: number) {
    this.#u.setUint16(4 + 8 * this.size, value, true);
  }

  /** Used element at ring slot `slot`. */
  usedElem(slot: number): { id: number; len: number } {
    return { id: this.#u.getUint32(4 + 8 * slot, true), len: this.#u.getUint32(8 + 8 * slot, true) };
  }
}

function writeDesc(
  dv: DataView,
  off: number,
  addr: number | bigint,
  len: number,
  flags: number,
  next: number,
): void {
  dv.setBigUint64(off, BigInt(addr), true);
  dv.setUint32(off + 8, len, true);
  dv.setUint16(off + 12, flags, true);
  dv.setUint16(off + 14, next, true);
}

/** Guard-byte pattern around every region of {@link guardedMemory}. */
export const GUARD_BYTE = 0xa5;
const GUARD = 0x1000;

export interface GuardedMemory {
  readonly memory: GuestMemory;
  /** Every host byte outside the guest regions, which must keep {@link GUARD_BYTE}. */
  guardsIntact(): boolean;
}

/**
 * Guest memory whose regions sit in one host buffer separated by 4 KiB guard areas filled with
 * {@link GUARD_BYTE}, so a stray access outside the guest would show. Regions adjacent in guest address space
 * are still separated in the host buffer, so a range crossing them must be split to be read correctly.
 */
export function guardedMemory(regions: readonly { guestAddr: number; size: number }[]): GuardedMemory {
  let hostSize = GUARD;
  for (const r of regions) hostSize += r.size + GUARD;
  const host = new Uint8Array(new ArrayBuffer(hostSize)).fill(GUARD_BYTE);
  const guards: [number, number][] = [];
  let off = 0;
  const inits = regions.map((r) => {
    guards.push([off, off + GUARD]);
    off += GUARD;
    const bytes = host.subarray(off, off + r.size);
    bytes.fill(0);
    off += r.size;
    return { guestAddr: r.guestAddr, bytes };
  });
  guards.push([off, off + GUARD]);
  return {
    memory: new GuestMemory(inits),
    guardsIntact(): boolean {
      for (const [a, b] of guards) for (let i = a; i < b; i++) if (host[i] !== GUARD_BYTE) return false;
      return true;
    },
  };
}
