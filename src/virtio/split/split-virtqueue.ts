/**
 * `SplitVirtqueue`: the driver side of a split virtqueue (VIRTIO 1.2 §2.7), with the semantics of Linux's
 * drivers/virtio/virtio_ring.c (virtqueue_add_split, virtqueue_kick_prepare_split, virtqueue_get_buf_ctx_split,
 * detach_buf_split, the enable/disable callback family and vring_interrupt).
 *
 * Trust: the device can write the used ring at any time, and may be hostile. Everything the driver needs to
 * stay consistent — the descriptor free list, which heads are outstanding, their tokens, chain lengths,
 * indirect tables and writable lengths — lives in private JavaScript arrays (Linux's desc_extra / desc_state),
 * never read back from guest memory. A used element is validated against that state before anything changes;
 * a bad one breaks the queue ({@link VirtqueueError}) and leaves the private state intact, so every
 * outstanding token can still be taken back with {@link SplitVirtqueue.detachUnusedBuf} or
 * {@link SplitVirtqueue.reset}.
 *
 * Publication: `addBuf` writes the descriptors and the avail.ring entry; avail.idx is stored once per
 * {@link SplitVirtqueue.kickPrepare} (Linux stores it on every add; both are spec-correct, and one store per
 * batch is cheaper). The device does not see a buffer until the next kickPrepare/kick.
 *
 * Memory ordering: avail.idx, avail.flags, used_event, used.idx, used.flags and avail_event are accessed with
 * `Atomics` (sequentially consistent: the spec's write barrier before avail.idx, and the full barriers before
 * reading avail_event / used.idx after publishing an index or an event). Descriptors, avail.ring entries and
 * used elements are plain accesses ordered by those atomics.
 */
import { UsageError, hex } from '../errors.js';
import type { GuestAllocator } from '../guest-allocator.js';
import type { GuestMemory } from '../guest-memory.js';
import { needEvent } from '../ring-index.js';
import type { VirtqueueSpec } from '../driver/config-ops.js';
import type { ScatterEntry, UsedBuffer, Virtqueue } from '../driver/virtqueue.js';
import { VirtioFeature, hasFeature } from '../features.js';
import {
  AVAIL_FLAGS_OFFSET,
  AVAIL_IDX_OFFSET,
  AVAIL_RING_ALIGN,
  AVAIL_RING_OFFSET,
  DESC_ADDR_OFFSET,
  DESC_FLAGS_OFFSET,
  DESC_LEN_OFFSET,
  DESC_NEXT_OFFSET,
  DESC_SIZE,
  DESC_TABLE_ALIGN,
  LEGACY_USED_RING_ALIGN,
  USED_ELEM_ID_OFFSET,
  USED_ELEM_LEN_OFFSET,
  USED_ELEM_SIZE,
  USED_FLAGS_OFFSET,
  USED_IDX_OFFSET,
  USED_RING_ALIGN,
  USED_RING_OFFSET,
  VIRTQ_AVAIL_F_NO_INTERRUPT,
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_WRITE,
  VIRTQ_USED_F_NO_NOTIFY,
  availEventOffset,
  availRingSize,
  descTableSize,
  isValidSplitQueueSize,
  usedEventOffset,
  usedRingSize,
  type SplitQueueAddresses,
} from './layout.js';
import { VirtqueueError, type VirtqueueErrorCode } from './virtqueue-error.js';

// Typed-array indices of the ring fields, derived from the byte layout in layout.ts.
const D32_PER_DESC = DESC_SIZE / 4;
const D16_PER_DESC = DESC_SIZE / 2;
const D32_ADDR_LO = DESC_ADDR_OFFSET / 4;
const D32_ADDR_HI = DESC_ADDR_OFFSET / 4 + 1;
const D32_LEN = DESC_LEN_OFFSET / 4;
const D16_FLAGS = DESC_FLAGS_OFFSET / 2;
const D16_NEXT = DESC_NEXT_OFFSET / 2;
const A16_FLAGS = AVAIL_FLAGS_OFFSET / 2;
const A16_IDX = AVAIL_IDX_OFFSET / 2;
const A16_RING = AVAIL_RING_OFFSET / 2;
const U16_FLAGS = USED_FLAGS_OFFSET / 2;
const U16_IDX = USED_IDX_OFFSET / 2;
const U32_RING = USED_RING_OFFSET / 4;
const U32_PER_ELEM = USED_ELEM_SIZE / 4;
const U32_ID = USED_ELEM_ID_OFFSET / 4;
const U32_LEN = USED_ELEM_LEN_OFFSET / 4;

const TWO_POW_32 = 0x1_0000_0000;
/** §2.7.5.2: the driver MUST NOT add a descriptor chain longer than 2^32 bytes in total. */
const MAX_CHAIN_BYTES = TWO_POW_32;
/** Marks "no indirect table" in the private per-head state (guest address 0 is a valid address). */
const NO_TABLE = -1;

/** Where a split queue's three parts go, and the bytes they span from `descTable`. */
export interface SplitQueueLayout extends SplitQueueAddresses {
  /** Bytes from `descTable` to the end of the used ring (avail_event included). */
  readonly bytes: number;
}

export interface SplitVirtqueueOptions<T> {
  /** Queue index within the device. */
  readonly index: number;
  /** A name for messages (Linux's vq->name). */
  readonly name: string;
  readonly memory: GuestMemory;
  /** Number of descriptors: a power of two from 1 to 32768. */
  readonly size: number;
  readonly addresses: SplitQueueAddresses;
  /** VIRTIO_F_EVENT_IDX was negotiated. */
  readonly eventIdx: boolean;
  /** VIRTIO_F_INDIRECT_DESC was negotiated (needs `allocator` for the tables). */
  readonly indirect: boolean;
  /** Allocates indirect tables; must manage the same `memory`. */
  readonly allocator?: GuestAllocator;
  /** Tells the device there are new buffers (the transport's queue notify). */
  readonly notify: () => void;
  /** Called by {@link SplitVirtqueue.interrupt} when the device signalled used buffers. */
  readonly callback?: (vq: SplitVirtqueue<T>) => void;
}

function isAligned(addr: number, align: number): boolean {
  return addr % align === 0;
}

function alignUp(value: number, align: number): number {
  return Math.ceil(value / align) * align;
}

export class SplitVirtqueue<T = unknown> implements Virtqueue<T> {
  readonly index: number;
  readonly name: string;
  readonly size: number;
  readonly memory: GuestMemory;
  readonly addresses: SplitQueueAddresses;
  readonly eventIdx: boolean;
  readonly indirect: boolean;

  readonly #allocator: GuestAllocator | undefined;
  readonly #notify: () => void;
  readonly #callback: ((vq: SplitVirtqueue<T>) => void) | undefined;
  readonly #mask: number;

  // Views of the ring, built once.
  readonly #desc32: Uint32Array;
  readonly #desc16: Uint16Array;
  readonly #avail16: Uint16Array;
  readonly #used16: Uint16Array;
  readonly #used32: Uint32Array;
  /** u16 index of used_event in the avail ring, of avail_event in the used ring. */
  readonly #usedEvent: number;
  readonly #availEvent: number;

  // Private per-descriptor state (never read from guest memory).
  /** Free-list link of a free descriptor, chain link of a descriptor in a direct chain (desc_extra.next). */
  readonly #next: Uint16Array;
  /** Token of each outstanding head; undefined for every other descriptor. */
  readonly #tokens: (T | undefined)[];
  /** Ring descriptors used by each outstanding head (1 for an indirect buffer). */
  readonly #chainLen: Uint16Array;
  /** Indirect table address per head, or NO_TABLE. */
  readonly #table: Float64Array;
  /** Device-writable bytes per head: the largest used.len the device may report. */
  readonly #writable: Float64Array;

  #freeHead = 0;
  #numFree = 0;
  /** avail.idx including buffers added since the last kickPrepare (Linux's avail_idx_shadow). */
  #availIdx = 0;
  /** avail.idx as last stored to the ring (the `old` of need_event). */
  #availPublished = 0;
  #lastUsed = 0;
  /** Linux's avail_flags_shadow: NO_INTERRUPT while callbacks are disabled. */
  #availFlags = 0;
  /** An interrupt arrived with EVENT_IDX: the device won't interrupt again before used_event is rewritten. */
  #eventTriggered = false;
  /** First head detachUnusedBuf needs to look at. */
  #detachCursor = 0;
  #broken: Error | undefined;

  /**
   * Addresses for a queue of `size` entries at `base`: descriptor table at `base` (16-aligned), avail ring
   * right after it, used ring at the next 4-byte boundary (4096 with `legacy`, where `base` must also be
   * page-aligned, as QueuePFN addresses it).
   */
  static layout(size: number, base: number, options: { legacy?: boolean } = {}): SplitQueueLayout {
    if (!isValidSplitQueueSize(size)) {
      throw new UsageError('INVALID_ARGUMENT', `queue size ${size} is not a power of two ≤ 32768`, size);
    }
    const legacy = options.legacy === true;
    const baseAlign = legacy ? LEGACY_USED_RING_ALIGN : DESC_TABLE_ALIGN;
    if (!Number.isSafeInteger(base) || base < 0 || !isAligned(base, baseAlign)) {
      throw new UsageError('INVALID_ARGUMENT', `ring base ${base} is not aligned to ${baseAlign}`, base);
    }
    const availRing = base + descTableSize(size);
    const usedRing = alignUp(
      availRing + availRingSize(size),
      legacy ? LEGACY_USED_RING_ALIGN : USED_RING_ALIGN,
    );
    return { descTable: base, availRing, usedRing, bytes: usedRing + usedRingSize(size) - base };
  }

  /**
   * Allocates one block for a queue of `size` entries and returns its layout. Give the block back with
   * {@link SplitVirtqueue.release} (after the device stopped using it).
   */
  static allocate(allocator: GuestAllocator, size: number, legacy = false): SplitQueueLayout {
    const align = legacy ? LEGACY_USED_RING_ALIGN : DESC_TABLE_ALIGN;
    const bytes = SplitVirtqueue.layout(size, 0, { legacy }).bytes;
    return SplitVirtqueue.layout(size, allocator.alloc(bytes, align), { legacy });
  }

  /** Frees a ring block made by {@link SplitVirtqueue.allocate}. */
  static release(allocator: GuestAllocator, addresses: SplitQueueAddresses): void {
    allocator.free(addresses.descTable);
  }

  /**
   * The queue a transport's findVqs makes for `spec` (name, callback) on rings it has set up: EVENT_IDX and
   * INDIRECT_DESC use follow the negotiated `features`, and `notify` is the transport's kick.
   */
  static forSpec(
    spec: VirtqueueSpec,
    ring: {
      readonly index: number;
      readonly memory: GuestMemory;
      readonly allocator: GuestAllocator;
      readonly size: number;
      readonly addresses: SplitQueueAddresses;
      readonly features: bigint;
      readonly notify: () => void;
    },
  ): SplitVirtqueue {
    return new SplitVirtqueue<unknown>({
      index: ring.index,
      name: spec.name,
      memory: ring.memory,
      size: ring.size,
      addresses: ring.addresses,
      eventIdx: hasFeature(ring.features, VirtioFeature.VIRTIO_F_EVENT_IDX),
      indirect: hasFeature(ring.features, VirtioFeature.VIRTIO_F_INDIRECT_DESC),
      allocator: ring.allocator,
      notify: ring.notify,
      ...(spec.callback === undefined ? {} : { callback: spec.callback }),
    });
  }

  constructor(options: SplitVirtqueueOptions<T>) {
    const { index, name, memory, size, addresses, eventIdx, indirect, allocator } = options;
    if (!Number.isInteger(index) || index < 0 || index > 0xffff) {
      throw new UsageError('INVALID_ARGUMENT', `queue index ${index} is not a u16`, index);
    }
    if (!isValidSplitQueueSize(size)) {
      throw new UsageError('INVALID_ARGUMENT', `queue size ${size} is not a power of two ≤ 32768`, size);
    }
    if (indirect && allocator === undefined) {
      throw new UsageError('INVALID_ARGUMENT', `${name}: indirect descriptors need an allocator`, name);
    }
    if (allocator !== undefined && allocator.memory !== memory) {
      throw new UsageError('INVALID_ARGUMENT', `${name}: the allocator manages another GuestMemory`, name);
    }
    const parts: [string, number, number, number][] = [
      ['descriptor table', addresses.descTable, descTableSize(size), DESC_TABLE_ALIGN],
      ['available ring', addresses.availRing, availRingSize(size), AVAIL_RING_ALIGN],
      ['used ring', addresses.usedRing, usedRingSize(size), USED_RING_ALIGN],
    ];
    for (const [what, addr, len, align] of parts) {
      if (!Number.isSafeInteger(addr) || addr < 0 || !isAligned(addr, align)) {
        throw new UsageError(
          'INVALID_ARGUMENT',
          `${name}: ${what} address ${addr} is not aligned to ${align}`,
          addr,
        );
      }
      if (!memory.isValidRange(addr, len)) {
        throw new UsageError(
          'INVALID_ARGUMENT',
          `${name}: ${what} ${hex(addr)}+${len} is not guest memory`,
          addr,
        );
      }
      for (const [other, oAddr, oLen] of parts) {
        if (other !== what && addr < oAddr + oLen && oAddr < addr + len) {
          throw new UsageError('INVALID_ARGUMENT', `${name}: ${what} overlaps the ${other}`, addr);
        }
      }
    }

    this.index = index;
    this.name = name;
    this.size = size;
    this.memory = memory;
    this.addresses = {
      descTable: addresses.descTable,
      availRing: addresses.availRing,
      usedRing: addresses.usedRing,
    };
    this.eventIdx = eventIdx;
    this.indirect = indirect;
    this.#allocator = allocator;
    this.#notify = options.notify;
    this.#callback = options.callback;
    this.#mask = size - 1;

    // Each part must lie in one region for the typed views (u16Array/u32Array say so if not).
    this.#desc32 = memory.u32Array(addresses.descTable, size * D32_PER_DESC);
    this.#desc16 = memory.u16Array(addresses.descTable, size * D16_PER_DESC);
    this.#avail16 = memory.u16Array(addresses.availRing, availRingSize(size) / 2);
    this.#used16 = memory.u16Array(addresses.usedRing, usedRingSize(size) / 2);
    this.#used32 = memory.u32Array(addresses.usedRing, (USED_RING_OFFSET + USED_ELEM_SIZE * size) / 4);
    this.#usedEvent = usedEventOffset(size) / 2;
    this.#availEvent = availEventOffset(size) / 2;

    this.#next = new Uint16Array(size);
    this.#tokens = new Array<T | undefined>(size).fill(undefined);
    this.#chainLen = new Uint16Array(size);
    this.#table = new Float64Array(size).fill(NO_TABLE);
    this.#writable = new Float64Array(size);
    this.#init();
  }

  /** Zeroes the ring and resets every index and the free list (vring_init + virtqueue_init). */
  #init(): void {
    this.#desc32.fill(0);
    this.#avail16.fill(0);
    this.#used16.fill(0);
    const next = this.#next;
    for (let i = 0; i < this.size; i++) next[i] = i + 1 < this.size ? i + 1 : 0;
    this.#freeHead = 0;
    this.#numFree = this.size;
    this.#availIdx = 0;
    this.#availPublished = 0;
    this.#lastUsed = 0;
    this.#eventTriggered = false;
    this.#detachCursor = this.size;
    this.#broken = undefined;
    // Without a callback nobody wants interrupts (Linux sets NO_INTERRUPT at creation).
    this.#availFlags = this.#callback === undefined ? VIRTQ_AVAIL_F_NO_INTERRUPT : 0;
    if (!this.eventIdx) Atomics.store(this.#avail16, A16_FLAGS, this.#availFlags);
  }

  get numFree(): number {
    return this.#numFree;
  }

  /** avail.idx including buffers not yet published by kickPrepare. */
  get availIdx(): number {
    return this.#availIdx;
  }

  /** The used index up to which buffers were returned by getBuf. */
  get lastUsedIdx(): number {
    return this.#lastUsed;
  }

  get brokenReason(): Error | undefined {
    return this.#broken;
  }

  isBroken(): boolean {
    return this.#broken !== undefined;
  }

  /** Marks the queue broken (Linux's virtio_break_device), e.g. when the device needs a reset. */
  markBroken(reason: Error): void {
    this.#broken ??= reason;
  }

  addOutbuf(out: readonly ScatterEntry[], token: T): void {
    this.addBuf(out, EMPTY, token);
  }

  addInbuf(inn: readonly ScatterEntry[], token: T): void {
    this.addBuf(EMPTY, inn, token);
  }

  addBuf(out: readonly ScatterEntry[], inn: readonly ScatterEntry[], token: T): void {
    if (this.#broken !== undefined) throw this.#brokenError();
    if (token === undefined) {
      throw new UsageError('INVALID_ARGUMENT', `${this.name}: a buffer's token must not be undefined`, token);
    }
    const outN = out.length;
    const total = outN + inn.length;
    if (total === 0) throw new UsageError('INVALID_ARGUMENT', `${this.name}: empty buffer`, total);
    if (total > this.size) {
      // §2.7.5.3.1: a chain (indirect or not) is never longer than the queue size.
      throw new UsageError(
        'INVALID_ARGUMENT',
        `${this.name}: ${total} scatter entries exceed the queue size ${this.size}`,
        total,
      );
    }
    let readable = 0;
    for (let k = 0; k < outN; k++) readable += checkEntry(out[k] as ScatterEntry, this.name);
    let writable = 0;
    for (let k = 0; k < inn.length; k++) writable += checkEntry(inn[k] as ScatterEntry, this.name);
    if (readable + writable > MAX_CHAIN_BYTES) {
      throw new UsageError(
        'INVALID_ARGUMENT',
        `${this.name}: buffer of ${readable + writable} bytes exceeds 2^32`,
        readable + writable,
      );
    }
    if (this.#numFree === 0) throw this.#fullError(1);

    const head = this.#freeHead;
    const next = this.#next;
    let table = NO_TABLE;
    if (this.indirect && total > 1) {
      // Like Linux, fall back to a direct chain when no table can be allocated.
      table = (this.#allocator as GuestAllocator).tryAlloc(total * DESC_SIZE, DESC_TABLE_ALIGN);
    }
    if (table !== NO_TABLE) {
      this.#writeIndirectTable(table, out, inn);
      this.#writeDesc(head, table, total * DESC_SIZE, VIRTQ_DESC_F_INDIRECT, 0);
      this.#freeHead = next[head] as number;
      this.#numFree -= 1;
      this.#chainLen[head] = 1;
    } else {
      if (this.#numFree < total) throw this.#fullError(total);
      let i = head;
      for (let k = 0; k < total; k++) {
        const e = (k < outN ? out[k] : inn[k - outN]) as ScatterEntry;
        const last = k === total - 1;
        let flags = k < outN ? 0 : VIRTQ_DESC_F_WRITE;
        if (!last) flags |= VIRTQ_DESC_F_NEXT;
        const link = next[i] as number;
        this.#writeDesc(i, e.addr, e.len, flags, last ? 0 : link);
        i = link;
      }
      this.#freeHead = i;
      this.#numFree -= total;
      this.#chainLen[head] = total;
    }
    this.#tokens[head] = token;
    this.#table[head] = table;
    this.#writable[head] = writable;
    if (head < this.#detachCursor) this.#detachCursor = head;

    // The ring entry; avail.idx itself is stored by kickPrepare.
    this.#avail16[A16_RING + (this.#availIdx & this.#mask)] = head;
    this.#availIdx = (this.#availIdx + 1) & 0xffff;
  }

  #writeDesc(i: number, addr: number, len: number, flags: number, next: number): void {
    const d32 = this.#desc32;
    const b32 = i * D32_PER_DESC;
    const lo = addr >>> 0;
    d32[b32 + D32_ADDR_LO] = lo;
    d32[b32 + D32_ADDR_HI] = (addr - lo) / TWO_POW_32;
    d32[b32 + D32_LEN] = len;
    const b16 = i * D16_PER_DESC;
    this.#desc16[b16 + D16_FLAGS] = flags;
    this.#desc16[b16 + D16_NEXT] = next;
  }

  /** Fills an indirect table: entries in order, linked 0 → 1 → … with NEXT, the last one without. */
  #writeIndirectTable(table: number, out: readonly ScatterEntry[], inn: readonly ScatterEntry[]): void {
    const total = out.length + inn.length;
    const region = this.memory.regionFor(table, total * DESC_SIZE);
    const view = region.view;
    let off = table - region.guestAddr;
    for (let k = 0; k < total; k++) {
      const isOut = k < out.length;
      const e = (isOut ? out[k] : inn[k - out.length]) as ScatterEntry;
      const last = k === total - 1;
      const lo = e.addr >>> 0;
      view.setUint32(off + DESC_ADDR_OFFSET, lo, true);
      view.setUint32(off + DESC_ADDR_OFFSET + 4, (e.addr - lo) / TWO_POW_32, true);
      view.setUint32(off + DESC_LEN_OFFSET, e.len, true);
      view.setUint16(
        off + DESC_FLAGS_OFFSET,
        (isOut ? 0 : VIRTQ_DESC_F_WRITE) | (last ? 0 : VIRTQ_DESC_F_NEXT),
        true,
      );
      view.setUint16(off + DESC_NEXT_OFFSET, last ? 0 : k + 1, true);
      off += DESC_SIZE;
    }
  }

  /**
   * Publishes the buffers added since the last call (one avail.idx store) and says whether the device wants
   * a notification: with EVENT_IDX, need_event(avail_event, new, old); without, used.flags lacks NO_NOTIFY.
   * Returns false once broken.
   */
  kickPrepare(): boolean {
    if (this.#broken !== undefined) return false;
    const old = this.#availPublished;
    const idx = this.#availIdx;
    if (idx !== old) {
      // Sequentially consistent: descriptors and ring entries before idx, and a full fence before the loads.
      Atomics.store(this.#avail16, A16_IDX, idx);
      this.#availPublished = idx;
    }
    if (this.eventIdx) return needEvent(Atomics.load(this.#used16, this.#availEvent), idx, old);
    return (Atomics.load(this.#used16, U16_FLAGS) & VIRTQ_USED_F_NO_NOTIFY) === 0;
  }

  /** Notifies the device (nothing once broken). */
  notify(): void {
    if (this.#broken !== undefined) return;
    this.#notify();
  }

  kick(): boolean {
    if (!this.kickPrepare()) return false;
    this.notify();
    return true;
  }

  getBuf(): UsedBuffer<T> | null {
    if (this.#broken !== undefined) throw this.#brokenError();
    const last = this.#lastUsed;
    const usedIdx = Atomics.load(this.#used16, U16_IDX);
    if (usedIdx === last) return null;
    // The device cannot have used more buffers than were made available and not yet returned.
    const pending = (usedIdx - last) & 0xffff;
    const outstanding = (this.#availPublished - last) & 0xffff;
    if (pending > outstanding) {
      this.#fail(
        'USED_IDX_JUMP',
        `used.idx ${usedIdx} is ${pending} past ${last}, but only ${outstanding} buffers are available`,
        usedIdx,
      );
    }
    const e = U32_RING + (last & this.#mask) * U32_PER_ELEM;
    const id = this.#used32[e + U32_ID] as number;
    const len = this.#used32[e + U32_LEN] as number;
    if (id >= this.size) this.#fail('USED_ID_OUT_OF_RANGE', `used id ${id} is out of range`, id);
    const token = this.#tokens[id];
    if (token === undefined) this.#fail('USED_ID_NOT_HEAD', `used id ${id} is not a head`, id);
    const writable = this.#writable[id] as number;
    if (len > writable) {
      this.#fail(
        'USED_LEN_TOO_LARGE',
        `used len ${len} for id ${id} exceeds its ${writable} writable bytes`,
        {
          id,
          len,
        },
      );
    }
    this.#detach(id);
    const nextUsed = (last + 1) & 0xffff;
    this.#lastUsed = nextUsed;
    // With callbacks on, ask for an interrupt at the next used buffer (Linux: virtio_store_mb of used_event).
    if (this.eventIdx && (this.#availFlags & VIRTQ_AVAIL_F_NO_INTERRUPT) === 0) {
      Atomics.store(this.#avail16, this.#usedEvent, nextUsed);
    }
    return { token: token as T, len };
  }

  /** Returns the descriptors of `head` (and its indirect table) to the free list (detach_buf_split). */
  #detach(head: number): void {
    const next = this.#next;
    const n = this.#chainLen[head] as number;
    let i = head;
    for (let k = 1; k < n; k++) i = next[i] as number;
    next[i] = this.#freeHead;
    this.#freeHead = head;
    this.#numFree += n;
    this.#tokens[head] = undefined;
    this.#writable[head] = 0;
    const table = this.#table[head] as number;
    if (table !== NO_TABLE) {
      this.#table[head] = NO_TABLE;
      (this.#allocator as GuestAllocator).free(table);
    }
  }

  disableCb(): void {
    if ((this.#availFlags & VIRTQ_AVAIL_F_NO_INTERRUPT) !== 0) return;
    this.#availFlags |= VIRTQ_AVAIL_F_NO_INTERRUPT;
    // After an event-idx interrupt the device won't send another before used_event moves: nothing to write.
    if (this.#eventTriggered) return;
    // With EVENT_IDX, Linux parks used_event at 0 (an interrupt at most once per 2^16 used buffers).
    if (this.eventIdx) Atomics.store(this.#avail16, this.#usedEvent, 0);
    else Atomics.store(this.#avail16, A16_FLAGS, this.#availFlags);
  }

  #enableInterrupts(): void {
    this.#eventTriggered = false;
    if ((this.#availFlags & VIRTQ_AVAIL_F_NO_INTERRUPT) !== 0) {
      this.#availFlags &= ~VIRTQ_AVAIL_F_NO_INTERRUPT;
      if (!this.eventIdx) Atomics.store(this.#avail16, A16_FLAGS, this.#availFlags);
    }
  }

  enableCbPrepare(): number {
    this.#enableInterrupts();
    const last = this.#lastUsed;
    Atomics.store(this.#avail16, this.#usedEvent, last);
    return last;
  }

  poll(lastUsed: number): boolean {
    if (this.#broken !== undefined) return false;
    return Atomics.load(this.#used16, U16_IDX) !== (lastUsed & 0xffff);
  }

  enableCb(): boolean {
    return !this.poll(this.enableCbPrepare());
  }

  enableCbDelayed(): boolean {
    this.#enableInterrupts();
    const last = this.#lastUsed;
    // Interrupt after 3/4 of the outstanding buffers are used (Linux's threshold).
    const bufs = (((this.#availIdx - last) & 0xffff) * 3) >> 2;
    Atomics.store(this.#avail16, this.#usedEvent, (last + bufs) & 0xffff);
    return ((Atomics.load(this.#used16, U16_IDX) - last) & 0xffff) <= bufs;
  }

  /**
   * The device signalled this queue (vring_interrupt): returns false when there is nothing new (not ours),
   * otherwise calls the callback (unless broken) and returns true.
   */
  interrupt(): boolean {
    if (Atomics.load(this.#used16, U16_IDX) === this.#lastUsed) return false;
    if (this.#broken !== undefined) return true;
    if (this.eventIdx) this.#eventTriggered = true;
    this.#callback?.(this);
    return true;
  }

  /**
   * Takes back one buffer the device never used; null when none is left. Only after the device stopped using
   * the queue (reset). Works on a broken queue. Like Linux, steps avail.idx back for each buffer.
   */
  detachUnusedBuf(): T | null {
    const tokens = this.#tokens;
    for (let i = this.#detachCursor; i < this.size; i++) {
      const token = tokens[i];
      if (token === undefined) continue;
      this.#detach(i);
      this.#detachCursor = i + 1;
      this.#availIdx = (this.#availIdx - 1) & 0xffff;
      this.#availPublished = this.#availIdx;
      Atomics.store(this.#avail16, A16_IDX, this.#availIdx);
      return token;
    }
    this.#detachCursor = this.size;
    return null;
  }

  /**
   * Re-initialises the queue for reuse after the device stopped using it (device or queue reset): hands every
   * outstanding token to `recycle`, frees indirect tables, zeroes the ring and clears the broken state.
   */
  reset(recycle?: (token: T) => void): void {
    for (let i = 0; i < this.size; i++) {
      const token = this.#tokens[i];
      if (token === undefined) continue;
      this.#detach(i);
      recycle?.(token);
    }
    this.#init();
  }

  #fail(code: VirtqueueErrorCode, message: string, value: unknown): never {
    const error = new VirtqueueError(code, `${this.name}: ${message}`, value);
    this.#broken = error;
    throw error;
  }

  #brokenError(): UsageError {
    return new UsageError('QUEUE_BROKEN', `${this.name} is broken: ${this.#broken?.message}`, this.index, {
      cause: this.#broken,
    });
  }

  #fullError(needed: number): UsageError {
    return new UsageError(
      'QUEUE_FULL',
      `${this.name}: ${needed} descriptors needed, ${this.#numFree} free`,
      this.#numFree,
    );
  }
}

const EMPTY: readonly ScatterEntry[] = Object.freeze([]);

/** Validates one scatter entry and returns its length. */
function checkEntry(e: ScatterEntry, name: string): number {
  const { addr, len } = e;
  if (!Number.isSafeInteger(addr) || addr < 0) {
    throw new UsageError('INVALID_ARGUMENT', `${name}: buffer address ${addr} is not a guest address`, addr);
  }
  if (len >>> 0 !== len) {
    throw new UsageError('INVALID_ARGUMENT', `${name}: buffer length ${len} is not a u32`, len);
  }
  return len;
}
