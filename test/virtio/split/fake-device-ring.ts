/**
 * A minimal device side of a split ring for driver tests, written straight from the spec layout (VIRTIO 1.2
 * §2.7) with DataView and literal offsets. It deliberately shares nothing with src/ (not even layout.ts), so
 * that bytes it reads and writes are an independent check of the driver under test.
 *
 * ```
 * desc[i]  at descTable + 16·i : le64 addr, le32 len, le16 flags, le16 next
 * avail    : le16 flags @0, le16 idx @2, le16 ring[N] @4, le16 used_event @4+2N
 * used     : le16 flags @0, le16 idx @2, {le32 id, le32 len} ring[N] @4, le16 avail_event @4+8N
 * ```
 */

export const F_NEXT = 1;
export const F_WRITE = 2;
export const F_INDIRECT = 4;

export interface FakeDesc {
  readonly addr: number;
  readonly len: number;
  readonly flags: number;
  readonly next: number;
}

export interface FakeChain {
  readonly head: number;
  /** Whether the ring descriptor was an indirect one; `descs` are then the table's entries. */
  readonly indirect: boolean;
  /** The ring descriptor (for indirect buffers: the one pointing at the table). */
  readonly headDesc: FakeDesc;
  readonly descs: readonly FakeDesc[];
  /** Sum of the WRITE descriptors' lengths. */
  readonly writableLen: number;
}

export interface FakeRingAddresses {
  readonly descTable: number;
  readonly availRing: number;
  readonly usedRing: number;
}

/** Builds the 16 bytes of one descriptor, as the spec lays it out. */
export function descBytes(addr: number, len: number, flags: number, next: number): Uint8Array {
  const b = new Uint8Array(16);
  const v = new DataView(b.buffer);
  v.setBigUint64(0, BigInt(addr), true);
  v.setUint32(8, len, true);
  v.setUint16(12, flags, true);
  v.setUint16(14, next, true);
  return b;
}

export class FakeDeviceRing {
  readonly #view: DataView;
  readonly #base: number;
  readonly #n: number;
  readonly #a: FakeRingAddresses;
  /** Next avail index the device will read, and the used index it will write next. */
  lastAvail = 0;
  usedShadow = 0;

  /** `bytes` backs guest memory starting at guest address `guestBase`. */
  constructor(bytes: Uint8Array, guestBase: number, queueSize: number, addresses: FakeRingAddresses) {
    this.#view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    this.#base = guestBase;
    this.#n = queueSize;
    this.#a = addresses;
  }

  #off(addr: number): number {
    return addr - this.#base;
  }

  u16(addr: number): number {
    return this.#view.getUint16(this.#off(addr), true);
  }

  setU16(addr: number, value: number): void {
    this.#view.setUint16(this.#off(addr), value, true);
  }

  /** A copy of `len` guest bytes at `addr`. */
  bytesAt(addr: number, len: number): Uint8Array {
    const o = this.#off(addr);
    return new Uint8Array(
      this.#view.buffer.slice(this.#view.byteOffset + o, this.#view.byteOffset + o + len),
    );
  }

  readDescAt(addr: number): FakeDesc {
    const o = this.#off(addr);
    const v = this.#view;
    return {
      addr: Number(v.getBigUint64(o, true)),
      len: v.getUint32(o + 8, true),
      flags: v.getUint16(o + 12, true),
      next: v.getUint16(o + 14, true),
    };
  }

  readDesc(i: number): FakeDesc {
    return this.readDescAt(this.#a.descTable + 16 * i);
  }

  /** The 16 raw bytes of ring descriptor `i`. */
  descRaw(i: number): Uint8Array {
    return this.bytesAt(this.#a.descTable + 16 * i, 16);
  }

  get availFlags(): number {
    return this.u16(this.#a.availRing);
  }

  get availIdx(): number {
    return this.u16(this.#a.availRing + 2);
  }

  availEntry(slot: number): number {
    return this.u16(this.#a.availRing + 4 + 2 * slot);
  }

  get usedEvent(): number {
    return this.u16(this.#a.availRing + 4 + 2 * this.#n);
  }

  get usedIdx(): number {
    return this.u16(this.#a.usedRing + 2);
  }

  set usedIdx(value: number) {
    this.setU16(this.#a.usedRing + 2, value & 0xffff);
  }

  set usedFlags(value: number) {
    this.setU16(this.#a.usedRing, value);
  }

  set availEvent(value: number) {
    this.setU16(this.#a.usedRing + 4 + 8 * this.#n, value & 0xffff);
  }

  get availEvent(): number {
    return this.u16(this.#a.usedRing + 4 + 8 * this.#n);
  }

  /** Chains made available and not yet popped. */
  get pending(): number {
    return (this.availIdx - this.lastAvail) & 0xffff;
  }

  /** Pops the next available chain (following NEXT links, or an indirect table), or null. */
  pop(): FakeChain | null {
    if (this.lastAvail === this.availIdx) return null;
    const head = this.availEntry(this.lastAvail % this.#n);
    this.lastAvail = (this.lastAvail + 1) & 0xffff;
    const headDesc = this.readDesc(head);
    const descs: FakeDesc[] = [];
    const indirect = (headDesc.flags & F_INDIRECT) !== 0;
    const read = indirect
      ? (i: number) => this.readDescAt(headDesc.addr + 16 * i)
      : (i: number) => this.readDesc(i);
    const limit = indirect ? headDesc.len / 16 : this.#n;
    let d = indirect ? read(0) : headDesc;
    for (;;) {
      descs.push(d);
      if ((d.flags & F_NEXT) === 0) break;
      if (descs.length >= limit) throw new Error('fake device: chain longer than allowed');
      d = read(d.next);
    }
    let writableLen = 0;
    for (const x of descs) if ((x.flags & F_WRITE) !== 0) writableLen += x.len;
    return { head, indirect, headDesc, descs, writableLen };
  }

  /** Pops every available chain. */
  popAll(): FakeChain[] {
    const out: FakeChain[] = [];
    for (let c = this.pop(); c !== null; c = this.pop()) out.push(c);
    return out;
  }

  /** Writes a used element at the next used slot (not yet visible: see {@link publish}). */
  addUsed(id: number, len: number): void {
    this.writeUsedElem(this.usedShadow % this.#n, id, len);
    this.usedShadow = (this.usedShadow + 1) & 0xffff;
  }

  writeUsedElem(slot: number, id: number, len: number): void {
    const o = this.#off(this.#a.usedRing + 4 + 8 * slot);
    this.#view.setUint32(o, id >>> 0, true);
    this.#view.setUint32(o + 4, len >>> 0, true);
  }

  /** Stores used.idx for every element added so far. */
  publish(): void {
    this.usedIdx = this.usedShadow;
  }

  /** addUsed + publish. */
  complete(id: number, len: number): void {
    this.addUsed(id, len);
    this.publish();
  }
}
