/**
 * `SplitQueue`: the device side of a split virtqueue (VIRTIO 1.2 §2.7), what QEMU's hw/virtio/virtio.c and
 * rust-vmm's virtio-queue do: pop available descriptor chains, return them through the used ring, and decide
 * when either side needs a notification.
 *
 * Every input from the driver is checked (see the project's hostile-input note): a bad configuration makes
 * {@link SplitQueue.activate} throw a {@link QueueError}; a bad ring or chain makes {@link SplitQueue.popChain}
 * throw one and leaves the queue broken (pop returns null) until {@link SplitQueue.reset}, so a device never
 * re-reads the same bad head forever. No access ever leaves guest memory: the three ring parts are checked once
 * at activation, every buffer address when its chain is popped.
 *
 * Memory ordering (§2.7.13, §2.7.8.2, Linux virtio_ring.c / vhost.c): avail.idx, used.idx, the flags and the
 * event fields are accessed with `Atomics` on typed views (sequentially consistent: each access is also a
 * full barrier). Descriptors and ring entries are read with plain loads after the Atomics load of avail.idx
 * (the read barrier the spec asks for); used elements are written with plain stores before the Atomics store
 * of used.idx (the write barrier). The hot path allocates only the chain object and its segment array.
 */
import { UsageError, hex } from '../errors.js';
import { hasFeature, VirtioFeature } from '../features.js';
import { GuestMemoryError, type GuestMemory } from '../guest-memory.js';
import { needEvent, RING_INDEX_MASK } from '../ring-index.js';
import { DescriptorChain } from './descriptor-chain.js';
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
  INDIRECT_TABLE_MAX_ENTRIES,
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
} from './layout.js';
import { QueueError, type QueueErrorCode } from './queue-error.js';

/**
 * A descriptor address's high 32 bits must stay below 2^21, i.e. the address below 2^53: JavaScript numbers
 * hold addresses exactly up to there, and {@link GuestMemory} refuses regions beyond it, so any larger address
 * (including every addr + len that would wrap past 2^64, hostile item 9) is outside guest memory.
 */
const DESC_ADDR_HI_LIMIT = 2 ** 21;

/**
 * Largest readable or writable part of one chain, in bytes: a le32 (used.len is a le32, §2.7.8, and devices
 * count request lengths in 32 bits). Hostile item 9.
 */
const CHAIN_PART_MAX_BYTES = 0xffff_ffff;

/** Largest chain in total (§2.7.5.2: "Drivers MUST NOT add a descriptor chain longer than 2^32 bytes in total"). */
const CHAIN_MAX_BYTES = 2 ** 32;

// Word and half-word indices into the typed views, derived from the byte layout in layout.ts. Descriptor words
// are u32 (little-endian host): flags and next share word 3, flags in the low half.
const DESC_WORDS = DESC_SIZE / 4;
const DESC_ADDR_LO_WORD = DESC_ADDR_OFFSET / 4;
const DESC_ADDR_HI_WORD = DESC_ADDR_OFFSET / 4 + 1;
const DESC_LEN_WORD = DESC_LEN_OFFSET / 4;
const DESC_FLAGS_NEXT_WORD = DESC_FLAGS_OFFSET / 4;
const DESC_NEXT_SHIFT = (DESC_NEXT_OFFSET - DESC_FLAGS_OFFSET) * 8;
const AVAIL_FLAGS_HALF = AVAIL_FLAGS_OFFSET / 2;
const AVAIL_IDX_HALF = AVAIL_IDX_OFFSET / 2;
const AVAIL_RING_HALF = AVAIL_RING_OFFSET / 2;
const USED_FLAGS_HALF = USED_FLAGS_OFFSET / 2;
const USED_IDX_HALF = USED_IDX_OFFSET / 2;
const USED_RING_WORD = USED_RING_OFFSET / 4;
const USED_ELEM_WORDS = USED_ELEM_SIZE / 4;
const USED_ID_WORD = USED_ELEM_ID_OFFSET / 4;
const USED_LEN_WORD = USED_ELEM_LEN_OFFSET / 4;

export class SplitQueue {
  /** Queue index within the device. */
  readonly index: number;
  /** Largest size the device supports (the transport's QueueNumMax / queue_size on reset). */
  readonly maxSize: number;

  // Configuration written by the transport before activation (the driver's view of the queue).
  /** Queue size chosen by the driver; defaults to `maxSize`. */
  size: number;
  /** Guest address of the descriptor table (queue_desc). */
  descTable = 0;
  /** Guest address of the available ring / driver area (queue_driver). */
  availRing = 0;
  /** Guest address of the used ring / device area (queue_device). */
  usedRing = 0;
  /** Whether the driver enabled the queue (queue_enable / QueueReady). */
  ready = false;

  // State set by activate().
  #memory: GuestMemory | null = null;
  /** Descriptor table as u32 words. */
  #desc: Uint32Array = new Uint32Array(0);
  /** Available ring as u16: flags, idx, ring[size], used_event. */
  #avail: Uint16Array = new Uint16Array(0);
  /** Used ring as u32 words (elements) ... */
  #used32: Uint32Array = new Uint32Array(0);
  /** ... and as u16 (flags, idx, avail_event). */
  #used16: Uint16Array = new Uint16Array(0);
  #active = false;
  #mask = 0;
  #activeSize = 0;
  #eventIdx = false;
  #indirect = false;
  #usedEventHalf = 0;
  #availEventHalf = 0;

  // Ring state.
  #nextAvail = 0;
  /** The last avail.idx read (vhost's shadow avail_idx): entries up to it need no new load of avail.idx. */
  #availIdxShadow = 0;
  #nextUsed = 0;
  /** used.idx as last stored. */
  #publishedUsed = 0;
  /** used.idx when needsNotification last ran (the `old` of need_event). */
  #signalledUsed = 0;
  /** Something was published since needsNotification last ran. */
  #unsignalled = false;
  /** One byte per head: 1 while the chain is in flight (popped, not yet used). Hostile item 16. */
  #inFlightMap: Uint8Array = new Uint8Array(0);
  #inFlight = 0;
  #brokenReason: QueueError | null = null;

  // Scratch state of the chain being walked (instance fields, so the walk allocates nothing else).
  #segs: number[] = [];
  #readableSegs = 0;
  #readLen = 0;
  #writeLen = 0;
  #sawWritable = false;
  #count = 0;

  constructor(index: number, maxSize: number) {
    if (!isValidSplitQueueSize(maxSize)) {
      throw new UsageError(
        'INVALID_ARGUMENT',
        `queue ${index}: maximum size ${maxSize} is not a power of two from 1 to 32768`,
        maxSize,
      );
    }
    this.index = index;
    this.maxSize = maxSize;
    this.size = maxSize;
  }

  /** Whether {@link activate} succeeded (and no reset since). A broken queue is still active. */
  get isActive(): boolean {
    return this.#active;
  }

  /** Whether a guest fault broke the queue; popChain returns null until reset. */
  get broken(): boolean {
    return this.#brokenReason !== null;
  }

  /** The fault that broke the queue, or null. */
  get brokenReason(): QueueError | null {
    return this.#brokenReason;
  }

  /** Whether VIRTIO_F_EVENT_IDX is in use (from the features given to activate). */
  get eventIdx(): boolean {
    return this.#eventIdx;
  }

  /** Chains popped and not yet returned with addUsed. */
  get inFlight(): number {
    return this.#inFlight;
  }

  /** The avail ring index the next pop reads (vhost-user GET/SET_VRING_BASE). */
  get nextAvail(): number {
    return this.#nextAvail;
  }

  set nextAvail(value: number) {
    this.#nextAvail = checkRingIndex(this.index, 'nextAvail', value);
    this.#availIdxShadow = this.#nextAvail;
  }

  /** The used ring index the next addUsed writes; used.idx after the next publish. */
  get nextUsed(): number {
    return this.#nextUsed;
  }

  set nextUsed(value: number) {
    this.#nextUsed = checkRingIndex(this.index, 'nextUsed', value);
    this.#publishedUsed = this.#nextUsed;
    this.#signalledUsed = this.#nextUsed;
    this.#unsignalled = false;
  }

  /**
   * Validates the configuration against `memory` and builds the ring views; `features` are the negotiated
   * features (VIRTIO_F_EVENT_IDX and VIRTIO_F_INDIRECT_DESC matter here). Keeps nextAvail / nextUsed (a
   * vhost-user back end sets them first) and chains in flight when the size is unchanged. Throws a
   * {@link QueueError} and leaves the queue inactive if the driver configured it wrongly.
   */
  activate(memory: GuestMemory, features: bigint): void {
    this.#active = false;
    this.#memory = null;
    const size = this.size;
    if (!this.ready) {
      throw new QueueError(
        'QUEUE_NOT_READY',
        `queue ${this.index}: activated before it was enabled`,
        this.index,
      );
    }
    // §2.7: "Queue Size value is always a power of 2. The maximum Queue Size value is 32768." Item 1.
    if (!isValidSplitQueueSize(size) || size > this.maxSize) {
      throw new QueueError(
        'QUEUE_SIZE_INVALID',
        `queue ${this.index}: size ${size} is not a power of two from 1 to ${this.maxSize}`,
        size,
      );
    }
    // §2.7.1: each part's first byte is aligned as the §2.7 table says; the size column includes the event
    // fields, so they are checked too. Each part must also be one host mapping (as QEMU's region caches
    // require) so it can be viewed as one typed array. Item 2.
    this.#checkPart(memory, 'descriptor table', this.descTable, DESC_TABLE_ALIGN, descTableSize(size));
    this.#checkPart(memory, 'available ring', this.availRing, AVAIL_RING_ALIGN, availRingSize(size));
    this.#checkPart(memory, 'used ring', this.usedRing, USED_RING_ALIGN, usedRingSize(size));

    this.#desc = memory.u32Array(this.descTable, descTableSize(size) / 4);
    this.#avail = memory.u16Array(this.availRing, availRingSize(size) / 2);
    this.#used16 = memory.u16Array(this.usedRing, usedRingSize(size) / 2);
    // The u32 view stops before avail_event (6 + 8N is not a multiple of 4).
    this.#used32 = memory.u32Array(this.usedRing, (USED_RING_OFFSET + USED_ELEM_SIZE * size) / 4);
    this.#usedEventHalf = usedEventOffset(size) / 2;
    this.#availEventHalf = availEventOffset(size) / 2;
    this.#eventIdx = hasFeature(features, VirtioFeature.VIRTIO_F_EVENT_IDX);
    this.#indirect = hasFeature(features, VirtioFeature.VIRTIO_F_INDIRECT_DESC);
    if (this.#inFlightMap.length !== size) {
      this.#inFlightMap = new Uint8Array(size);
      this.#inFlight = 0;
    }
    this.#activeSize = size;
    this.#mask = size - 1;
    this.#availIdxShadow = this.#nextAvail;
    this.#memory = memory;
    this.#active = true;
  }

  #checkPart(memory: GuestMemory, what: string, addr: number, align: number, len: number): void {
    if (!Number.isSafeInteger(addr) || addr < 0) {
      throw new QueueError(
        'QUEUE_OUTSIDE_MEMORY',
        `queue ${this.index}: ${what} address ${String(addr)} is not in guest memory`,
        addr,
      );
    }
    if (addr % align !== 0) {
      throw new QueueError(
        'QUEUE_MISALIGNED',
        `queue ${this.index}: ${what} at ${hex(addr)} is not ${align}-byte aligned`,
        addr,
      );
    }
    try {
      memory.regionFor(addr, len);
    } catch (e) {
      if (!(e instanceof GuestMemoryError)) throw e;
      throw new QueueError(
        'QUEUE_OUTSIDE_MEMORY',
        `queue ${this.index}: ${what} ${hex(addr)}+${len} is not inside one guest memory region`,
        addr,
        { cause: e },
      );
    }
  }

  /** Whether the driver has made chains available that were not popped yet (false when inactive or broken). */
  hasAvailable(): boolean {
    return this.availableCount() !== 0;
  }

  /** How many chains the driver made available beyond nextAvail (0 when inactive or broken). Not validated. */
  availableCount(): number {
    if (!this.#active || this.#brokenReason !== null) return 0;
    return (Atomics.load(this.#avail, AVAIL_IDX_HALF) - this.#nextAvail) & RING_INDEX_MASK;
  }

  /**
   * The next available chain, validated and copied out of the descriptor table; null when none is available,
   * or when the queue is inactive or broken. A bad ring or chain throws a {@link QueueError} and breaks the
   * queue. The chain is in flight until {@link addUsed} returns its head.
   */
  popChain(): DescriptorChain | null {
    if (!this.#active || this.#brokenReason !== null) return null;
    const nextAvail = this.#nextAvail;
    if (nextAvail === this.#availIdxShadow) {
      // §2.7.13: the driver exposes entries by storing avail.idx after them; this Atomics load is the read
      // barrier, so the ring entries and descriptors read below are at least as new.
      const availIdx = Atomics.load(this.#avail, AVAIL_IDX_HALF);
      if (availIdx === nextAvail) return null;
      const pending = (availIdx - nextAvail) & RING_INDEX_MASK;
      // §2.7.6.1: avail.idx never decreases, and the ring has `size` entries, so it can never be more than
      // `size` ahead of what the device has consumed. Item 5.
      if (pending > this.#activeSize) {
        this.#fail(
          'AVAIL_IDX_JUMP',
          `avail.idx ${availIdx} is ${pending} entries past the next index ${nextAvail}; the ring has ${this.#activeSize}`,
          availIdx,
        );
      }
      // Each chain the driver has outstanding holds at least its own head descriptor, so at most `size` exist:
      // the new ones, those in flight, and those used but not yet published (the driver has not got them
      // back). Item 16.
      const outstanding =
        pending + this.#inFlight + ((this.#nextUsed - this.#publishedUsed) & RING_INDEX_MASK);
      if (outstanding > this.#activeSize) {
        this.#fail(
          'TOO_MANY_IN_FLIGHT',
          `${pending} new chains with ${this.#inFlight} in flight and ${outstanding - pending - this.#inFlight} used but unpublished exceed the queue size ${this.#activeSize}`,
          outstanding,
        );
      }
      this.#availIdxShadow = availIdx;
    }

    const head = this.#avail[AVAIL_RING_HALF + (nextAvail & this.#mask)] as number;
    // Item 6.
    if (head >= this.#activeSize) {
      this.#fail(
        'HEAD_OUT_OF_RANGE',
        `avail.ring[${nextAvail & this.#mask}] = ${head} is not below the queue size ${this.#activeSize}`,
        head,
      );
    }
    // The driver may reuse a head only after the device returned it (§2.7.14). Item 16.
    if (this.#inFlightMap[head] !== 0) {
      this.#fail('HEAD_IN_FLIGHT', `head ${head} was made available again while still in flight`, head);
    }

    this.#segs = [];
    this.#readableSegs = 0;
    this.#readLen = 0;
    this.#writeLen = 0;
    this.#sawWritable = false;
    this.#count = 0;
    this.#walkDirect(head);

    const chain = new DescriptorChain(
      this.#memory as GuestMemory,
      head,
      this.#segs,
      this.#readableSegs,
      this.#readLen,
      this.#writeLen,
      this.#count,
    );
    this.#nextAvail = (nextAvail + 1) & RING_INDEX_MASK;
    this.#inFlightMap[head] = 1;
    this.#inFlight++;
    return chain;
  }

  /** Walks a chain in the descriptor table from `head`. */
  #walkDirect(head: number): void {
    const desc = this.#desc;
    const size = this.#activeSize;
    let idx = head;
    // §2.7.5.3.1: "A driver MUST NOT create a descriptor chain longer than the Queue Size"; a loop would be
    // one. The TTL bounds the walk whatever the table holds. Item 8.
    let ttl = size;
    for (;;) {
      if (ttl === 0) {
        this.#fail(
          'CHAIN_TOO_LONG',
          `chain at head ${head} is longer than the queue size ${size}, or loops`,
          head,
        );
      }
      ttl--;
      const w = idx * DESC_WORDS;
      const flagsNext = desc[w + DESC_FLAGS_NEXT_WORD] as number;
      const flags = flagsNext & 0xffff;
      const lo = desc[w + DESC_ADDR_LO_WORD] as number;
      const hi = desc[w + DESC_ADDR_HI_WORD] as number;
      const len = desc[w + DESC_LEN_WORD] as number;
      if ((flags & VIRTQ_DESC_F_INDIRECT) !== 0) {
        // §2.7.5.3.1. Items 15 and 14.
        if (!this.#indirect) {
          this.#fail(
            'INDIRECT_NOT_NEGOTIATED',
            `descriptor ${idx} is indirect but VIRTIO_F_INDIRECT_DESC was not negotiated`,
            idx,
          );
        }
        if ((flags & VIRTQ_DESC_F_NEXT) !== 0) {
          this.#fail('INDIRECT_WITH_NEXT', `descriptor ${idx} has both INDIRECT and NEXT`, idx);
        }
        // §2.7.5.3.2: zero or more direct descriptors followed by one indirect one is valid; its WRITE flag is
        // ignored. Having no NEXT, it ends the direct part.
        this.#walkIndirect(idx, lo, hi, len);
        return;
      }
      this.#count++;
      this.#addBuffer(lo, hi, len, flags, idx, -1);
      if ((flags & VIRTQ_DESC_F_NEXT) === 0) return;
      const next = flagsNext >>> DESC_NEXT_SHIFT;
      // Item 7.
      if (next >= size) {
        this.#fail(
          'DESC_NEXT_OUT_OF_RANGE',
          `descriptor ${idx} has next = ${next}, not below the queue size ${size}`,
          next,
        );
      }
      idx = next;
    }
  }

  /** Walks the indirect table that descriptor `descIdx` (addr `hi:lo`, `len` bytes) points to. §2.7.5.3. */
  #walkIndirect(descIdx: number, lo: number, hi: number, len: number): void {
    // Item 13: the table is a whole number of descriptors, at least one, at most INDIRECT_TABLE_MAX_ENTRIES.
    if (len === 0 || len % DESC_SIZE !== 0 || len / DESC_SIZE > INDIRECT_TABLE_MAX_ENTRIES) {
      this.#fail(
        'INDIRECT_TABLE_INVALID',
        `descriptor ${descIdx}: indirect table length ${len} is not a multiple of ${DESC_SIZE} from ${DESC_SIZE} to ${DESC_SIZE * INDIRECT_TABLE_MAX_ENTRIES}`,
        len,
      );
    }
    // The table must be guest memory, in one region (as QEMU requires: it is read as one mapping). Item 10.
    const addr = hi * 2 ** 32 + lo;
    const region = hi < DESC_ADDR_HI_LIMIT ? (this.#memory as GuestMemory).findRegion(addr) : undefined;
    if (region === undefined || addr + len > region.end) {
      this.#fail(
        'INDIRECT_TABLE_INVALID',
        `descriptor ${descIdx}: indirect table ${hex(u64(hi, lo))}+${len} is not inside one guest memory region`,
        u64(hi, lo),
      );
    }
    const view = region.view;
    const base = addr - region.guestAddr;
    const entries = len / DESC_SIZE;
    let i = 0;
    // The table's own length bounds the walk (loops inside the table). Item 8.
    let ttl = entries;
    for (;;) {
      if (ttl === 0) {
        this.#fail(
          'CHAIN_TOO_LONG',
          `indirect table of descriptor ${descIdx} (${entries} entries) holds a chain that loops`,
          descIdx,
        );
      }
      ttl--;
      const off = base + i * DESC_SIZE;
      const flags = view.getUint16(off + DESC_FLAGS_OFFSET, true);
      // §2.7.5.3.1: "The driver MUST NOT set the VIRTQ_DESC_F_INDIRECT flag within an indirect descriptor".
      // Item 14.
      if ((flags & VIRTQ_DESC_F_INDIRECT) !== 0) {
        this.#fail(
          'INDIRECT_NESTED',
          `entry ${i} of the indirect table of descriptor ${descIdx} is indirect`,
          i,
        );
      }
      this.#count++;
      this.#addBuffer(
        view.getUint32(off + DESC_ADDR_OFFSET, true),
        view.getUint32(off + DESC_ADDR_OFFSET + 4, true),
        view.getUint32(off + DESC_LEN_OFFSET, true),
        flags,
        descIdx,
        i,
      );
      if ((flags & VIRTQ_DESC_F_NEXT) === 0) return;
      const next = view.getUint16(off + DESC_NEXT_OFFSET, true);
      // Item 7, inside an indirect table.
      if (next >= entries) {
        this.#fail(
          'DESC_NEXT_OUT_OF_RANGE',
          `entry ${i} of the indirect table of descriptor ${descIdx} has next = ${next}, not below its ${entries} entries`,
          next,
        );
      }
      i = next;
    }
  }

  /**
   * Adds one buffer descriptor to the chain being walked: ordering and length checks, then its segments, split
   * where it crosses from one region into an adjacent one. `entry` ≥ 0 when it is an indirect table entry.
   */
  #addBuffer(lo: number, hi: number, len: number, flags: number, descIdx: number, entry: number): void {
    if ((flags & VIRTQ_DESC_F_WRITE) !== 0) {
      this.#sawWritable = true;
      this.#writeLen += len;
    } else {
      // §2.7.4.2: "The driver MUST place any device-writable descriptor elements after any device-readable
      // descriptor elements." Item 12.
      if (this.#sawWritable) {
        this.#fail(
          'READABLE_AFTER_WRITABLE',
          `${where(descIdx, entry)} is device-readable but follows a device-writable one`,
          entry >= 0 ? entry : descIdx,
        );
      }
      this.#readLen += len;
    }
    // §2.7.5.2 and the le32 used.len. Item 9.
    const total = this.#readLen + this.#writeLen;
    if (
      this.#readLen > CHAIN_PART_MAX_BYTES ||
      this.#writeLen > CHAIN_PART_MAX_BYTES ||
      total > CHAIN_MAX_BYTES
    ) {
      this.#fail(
        'CHAIN_LENGTH_OVERFLOW',
        `chain reaches ${total} bytes at ${where(descIdx, entry)} (${this.#readLen} readable, ${this.#writeLen} writable)`,
        total,
      );
    }
    // Item 11: a zero-length descriptor is legal at ring level and contributes no bytes; its address is
    // never accessed, so it is not checked.
    if (len === 0) return;
    // Items 9 and 10: every byte must be guest memory; crossing into an adjacent region is fine (two segments),
    // crossing a hole or the end of memory is not.
    if (hi >= DESC_ADDR_HI_LIMIT) this.#badAddress(lo, hi, len, descIdx, entry, -1);
    const memory = this.#memory as GuestMemory;
    const segs = this.#segs;
    const writable = this.#sawWritable;
    let addr = hi * 2 ** 32 + lo;
    let left = len;
    do {
      const region = memory.findRegion(addr);
      if (region === undefined) this.#badAddress(lo, hi, len, descIdx, entry, addr);
      const n = Math.min(left, region.end - addr);
      segs.push(addr, n);
      if (!writable) this.#readableSegs++;
      addr += n;
      left -= n;
    } while (left > 0);
  }

  #badAddress(lo: number, hi: number, len: number, descIdx: number, entry: number, reached: number): never {
    const addr = u64(hi, lo);
    const start = reached < 0 || reached === hi * 2 ** 32 + lo;
    const reason =
      addr + BigInt(len) > 2n ** 64n
        ? 'wraps past 2^64'
        : start
          ? 'is not in guest memory'
          : `reaches ${hex(reached)}, which is not guest memory (a hole or the end of memory)`;
    this.#fail(
      'DESC_ADDRESS_INVALID',
      `${where(descIdx, entry)}: buffer ${hex(addr)}+${len} ${reason}`,
      addr,
    );
  }

  /** Marks the queue broken and throws. */
  #fail(code: QueueErrorCode, message: string, value: unknown): never {
    const error = new QueueError(code, `queue ${this.index}: ${message}`, value);
    this.#brokenReason = error;
    throw error;
  }

  /**
   * Writes the used element for the chain at `head` with `len` bytes written (§2.7.8), not yet visible to the
   * driver: call {@link publishUsed} after a batch. Throws a UsageError if `head` is not in flight.
   */
  addUsed(head: number, len: number): void {
    if (!this.#active) {
      throw new UsageError('INVALID_STATE', `queue ${this.index}: addUsed on an inactive queue`, head);
    }
    if (!(Number.isInteger(head) && head >= 0 && head < this.#activeSize && this.#inFlightMap[head] === 1)) {
      throw new UsageError('NOT_IN_FLIGHT', `queue ${this.index}: head ${head} is not in flight`, head);
    }
    if (!(Number.isInteger(len) && len >= 0 && len <= 0xffff_ffff)) {
      throw new UsageError('INVALID_ARGUMENT', `queue ${this.index}: used length ${len} is not a u32`, len);
    }
    const w = USED_RING_WORD + (this.#nextUsed & this.#mask) * USED_ELEM_WORDS;
    // Plain stores: publishUsed's Atomics store of used.idx orders them before the index (§2.7.8.2: "The
    // device MUST set len prior to updating the used idx").
    this.#used32[w + USED_ID_WORD] = head;
    this.#used32[w + USED_LEN_WORD] = len;
    this.#nextUsed = (this.#nextUsed + 1) & RING_INDEX_MASK;
    this.#inFlightMap[head] = 0;
    this.#inFlight--;
  }

  /**
   * Gives back the most recently popped chain, not yet used (QEMU's virtqueue_unpop): nextAvail moves back one
   * entry and the head is no longer in flight, so the next pop returns the same chain again (validated anew).
   * A device that pops buffers ahead of data it cannot size in advance (virtio-net receive with mergeable
   * buffers) returns the ones it did not fill. Chains must be given back in the reverse order of popping, and
   * only chains popped after the last one used; a head not in flight is a UsageError.
   */
  unpop(head: number): void {
    if (!this.#active) {
      throw new UsageError('INVALID_STATE', `queue ${this.index}: unpop on an inactive queue`, head);
    }
    if (!(Number.isInteger(head) && head >= 0 && head < this.#activeSize && this.#inFlightMap[head] === 1)) {
      throw new UsageError('NOT_IN_FLIGHT', `queue ${this.index}: head ${head} is not in flight`, head);
    }
    this.#inFlightMap[head] = 0;
    this.#inFlight--;
    this.#nextAvail = (this.#nextAvail - 1) & RING_INDEX_MASK;
  }

  /** Makes every used element added so far visible: one store of used.idx for the whole batch. */
  publishUsed(): void {
    if (!this.#active || this.#publishedUsed === this.#nextUsed) return;
    Atomics.store(this.#used16, USED_IDX_HALF, this.#nextUsed);
    this.#publishedUsed = this.#nextUsed;
    this.#unsignalled = true;
  }

  /** {@link addUsed} then {@link publishUsed}. */
  pushUsed(head: number, len: number): void {
    this.addUsed(head, len);
    this.publishUsed();
  }

  /**
   * Whether the driver wants a used buffer notification for what was published since the last call (§2.7.7.2);
   * false if nothing was. Call after {@link publishUsed}.
   */
  needsNotification(): boolean {
    if (!this.#active || !this.#unsignalled) return false;
    this.#unsignalled = false;
    const newIdx = this.#publishedUsed;
    if (this.#eventIdx) {
      const oldIdx = this.#signalledUsed;
      this.#signalledUsed = newIdx;
      // The Atomics store of used.idx and this Atomics load are sequentially consistent: the full barrier
      // the spec requires between publishing and reading used_event.
      const usedEvent = Atomics.load(this.#avail, this.#usedEventHalf);
      return needEvent(usedEvent, newIdx, oldIdx);
    }
    this.#signalledUsed = newIdx;
    // Without EVENT_IDX: "If flags is 1, the device SHOULD NOT send a notification."
    return (Atomics.load(this.#avail, AVAIL_FLAGS_HALF) & VIRTQ_AVAIL_F_NO_INTERRUPT) === 0;
  }

  /**
   * Asks the driver not to send available buffer notifications (§2.7.10): sets VRING_USED_F_NO_NOTIFY without
   * EVENT_IDX. With EVENT_IDX it does nothing: avail_event stays where it was, behind avail.idx, so the driver
   * does not notify until it passes it again (as Linux vhost does).
   */
  disableNotification(): void {
    if (!this.#active || this.#eventIdx) return;
    Atomics.store(this.#used16, USED_FLAGS_HALF, VIRTQ_USED_F_NO_NOTIFY);
  }

  /**
   * Asks for available buffer notifications again (§2.7.10): clears VRING_USED_F_NO_NOTIFY, or with EVENT_IDX
   * sets avail_event = nextAvail. Then re-reads avail.idx (the Atomics store is the full barrier) and returns
   * true if chains are already available: the caller must pop again, as no notification will come for them.
   */
  enableNotification(): boolean {
    if (!this.#active || this.#brokenReason !== null) return false;
    if (this.#eventIdx) Atomics.store(this.#used16, this.#availEventHalf, this.#nextAvail);
    else Atomics.store(this.#used16, USED_FLAGS_HALF, 0);
    return Atomics.load(this.#avail, AVAIL_IDX_HALF) !== this.#nextAvail;
  }

  /**
   * Asks for an available buffer notification when the driver makes a chain available *after* those it has
   * made available already, popped or not (Linux vhost_enable_notify): for a device that needs more buffers
   * than are available and gives back the ones it popped ({@link unpop}), such as virtio-net receive with
   * mergeable buffers. Clears VRING_USED_F_NO_NOTIFY, or with EVENT_IDX sets avail_event to the current
   * avail.idx; then re-reads avail.idx and returns true if it moved meanwhile (pop again: no notification
   * will come for those).
   */
  enableNotificationForNew(): boolean {
    if (!this.#active || this.#brokenReason !== null) return false;
    const seen = Atomics.load(this.#avail, AVAIL_IDX_HALF);
    if (this.#eventIdx) Atomics.store(this.#used16, this.#availEventHalf, seen);
    else Atomics.store(this.#used16, USED_FLAGS_HALF, 0);
    return Atomics.load(this.#avail, AVAIL_IDX_HALF) !== seen;
  }

  /** Back to the unconfigured state: size = maxSize, addresses 0, not ready, indices 0, not broken. */
  reset(): void {
    this.size = this.maxSize;
    this.descTable = 0;
    this.availRing = 0;
    this.usedRing = 0;
    this.ready = false;
    this.#active = false;
    this.#memory = null;
    this.#desc = new Uint32Array(0);
    this.#avail = new Uint16Array(0);
    this.#used32 = new Uint32Array(0);
    this.#used16 = new Uint16Array(0);
    this.#activeSize = 0;
    this.#mask = 0;
    this.#eventIdx = false;
    this.#indirect = false;
    this.#nextAvail = 0;
    this.#availIdxShadow = 0;
    this.#nextUsed = 0;
    this.#publishedUsed = 0;
    this.#signalledUsed = 0;
    this.#unsignalled = false;
    this.#inFlightMap = new Uint8Array(0);
    this.#inFlight = 0;
    this.#brokenReason = null;
    this.#segs = [];
  }
}

function checkRingIndex(queue: number, what: string, value: number): number {
  if (!(Number.isInteger(value) && value >= 0 && value <= RING_INDEX_MASK)) {
    throw new UsageError('INVALID_ARGUMENT', `queue ${queue}: ${what} ${value} is not a 16-bit index`, value);
  }
  return value;
}

/** The u64 `hi:lo` as a bigint (fault paths only). */
function u64(hi: number, lo: number): bigint {
  return (BigInt(hi) << 32n) | BigInt(lo);
}

/** "descriptor 3" or "entry 2 of the indirect table of descriptor 3", for messages. */
function where(descIdx: number, entry: number): string {
  return entry < 0
    ? `descriptor ${descIdx}`
    : `entry ${entry} of the indirect table of descriptor ${descIdx}`;
}
