/**
 * `SwitchFrameRing`: a single-producer single-consumer ring of Ethernet frames in a SharedArrayBuffer, the way
 * frames cross between a switch port and a net device living in another thread (a vhost-user export's worker).
 * Both threads construct a `SwitchFrameRing` over the same buffer; one only writes, the other only reads.
 *
 * Layout (one SharedArrayBuffer):
 *
 * ```
 * control (Int32 words, CONTROL_BYTES)   data (capacity bytes, a power of two)
 * [HEAD TAIL DATA_SEQ CONSUMER_WAITING SPACE_SEQ PRODUCER_WAITING LINK CLOSED ...]
 * record = u32 length | payload | padding to 4 bytes; a record never wraps: a WRAP_MARKER length sends the
 *          reader back to offset 0
 * ```
 *
 * HEAD and TAIL are free-running byte positions (mod 2^32); used = HEAD − TAIL. Ordering: the producer writes the
 * record, then `Atomics.store(HEAD)`; the consumer `Atomics.load(HEAD)`, then reads the record (the sequentially
 * consistent atomics order the plain accesses around them). Wake-ups are suppressed as virtio's are: a reader
 * that finds the ring empty sets CONSUMER_WAITING and re-checks before it sleeps in `Atomics.waitAsync` on
 * DATA_SEQ; the producer bumps DATA_SEQ and notifies only when it swaps CONSUMER_WAITING from 1 to 0. Room for a
 * blocked producer works the same way through PRODUCER_WAITING and SPACE_SEQ. A burst of frames costs one wake-up.
 */

/** Control words (Int32 indices). */
const HEAD = 0;
const TAIL = 1;
const DATA_SEQ = 2;
const CONSUMER_WAITING = 3;
const SPACE_SEQ = 4;
const PRODUCER_WAITING = 5;
const LINK = 6;
const CLOSED = 7;
/** Bytes before the data area (one cache line apart from the data). */
const CONTROL_BYTES = 64;
/** Record length prefix. */
const RECORD_HEADER_BYTES = 4;
/** Records start 4-byte aligned so their length words are aligned Uint32 elements. */
const RECORD_ALIGN = 4;
/** Length word meaning "the rest of the data area is unused, continue at offset 0". */
const WRAP_MARKER = 0xffff_ffff;
/** Smallest and largest data area. */
export const FRAME_RING_MIN_BYTES = 4096;
export const FRAME_RING_MAX_BYTES = 1 << 30;
/** Default data area: 256 KiB (about 3500 64-byte frames, or 170 full-size ones). */
export const FRAME_RING_DEFAULT_BYTES = 256 * 1024;

function align(n: number): number {
  return (n + RECORD_ALIGN - 1) & ~(RECORD_ALIGN - 1);
}

/** Allocates the shared buffer of a ring with `capacity` data bytes (a power of two); the link starts up. */
export function createFrameRingBuffer(capacity: number = FRAME_RING_DEFAULT_BYTES): SharedArrayBuffer {
  if (
    !Number.isInteger(capacity) ||
    capacity < FRAME_RING_MIN_BYTES ||
    capacity > FRAME_RING_MAX_BYTES ||
    (capacity & (capacity - 1)) !== 0
  ) {
    throw new RangeError(
      `frame ring capacity must be a power of two in ${FRAME_RING_MIN_BYTES}..${FRAME_RING_MAX_BYTES}, got ${capacity}`,
    );
  }
  const sab = new SharedArrayBuffer(CONTROL_BYTES + capacity);
  new Int32Array(sab, 0, CONTROL_BYTES / 4)[LINK] = 1;
  return sab;
}

export class SwitchFrameRing {
  readonly buffer: SharedArrayBuffer;
  readonly capacity: number;
  /** Largest frame a record can hold: half the data area, so a record always fits after a wrap. */
  readonly maxFrame: number;
  readonly #control: Int32Array;
  readonly #bytes: Uint8Array;
  readonly #words: Uint32Array;
  readonly #mask: number;

  constructor(buffer: SharedArrayBuffer) {
    const capacity = buffer.byteLength - CONTROL_BYTES;
    if (capacity < FRAME_RING_MIN_BYTES || (capacity & (capacity - 1)) !== 0) {
      throw new RangeError(`not a frame ring buffer: ${buffer.byteLength} bytes`);
    }
    this.buffer = buffer;
    this.capacity = capacity;
    this.maxFrame = capacity / 2 - RECORD_HEADER_BYTES;
    this.#control = new Int32Array(buffer, 0, CONTROL_BYTES / 4);
    this.#bytes = new Uint8Array(buffer, CONTROL_BYTES, capacity);
    this.#words = new Uint32Array(buffer, CONTROL_BYTES, capacity / 4);
    this.#mask = capacity - 1;
  }

  // ---- producer ----

  /**
   * Copies one frame (the concatenation of `bufs`, `length` bytes) into the ring; false when there is no room
   * (nothing written). The caller checked `length` against `maxFrame`.
   */
  tryWrite(bufs: readonly Uint8Array[], length: number): boolean {
    const c = this.#control;
    const head = Atomics.load(c, HEAD) >>> 0;
    const tail = Atomics.load(c, TAIL) >>> 0;
    const free = this.capacity - ((head - tail) >>> 0);
    const offset = head & this.#mask;
    const record = align(RECORD_HEADER_BYTES + length);
    const toEnd = this.capacity - offset;
    let start = offset;
    let advance = record;
    if (record > toEnd) {
      // Skip the tail end of the data area.
      advance = toEnd + record;
      start = 0;
    }
    if (advance > free) return false;
    if (start !== offset) this.#words[offset >> 2] = WRAP_MARKER;
    this.#words[start >> 2] = length;
    let pos = start + RECORD_HEADER_BYTES;
    for (const b of bufs) {
      this.#bytes.set(b, pos);
      pos += b.length;
    }
    Atomics.store(c, HEAD, (head + advance) | 0);
    if (Atomics.exchange(c, CONSUMER_WAITING, 0) !== 0) {
      Atomics.add(c, DATA_SEQ, 1);
      Atomics.notify(c, DATA_SEQ);
    }
    return true;
  }

  /**
   * Resolves once the consumer has freed room after the last failed `tryWrite` (or at once if it already has:
   * the caller simply retries). Returns null when the ring is not full any more.
   */
  waitWritable(length: number): Promise<unknown> | null {
    const c = this.#control;
    const seq = Atomics.load(c, SPACE_SEQ);
    Atomics.store(c, PRODUCER_WAITING, 1);
    if (this.#fits(length)) {
      Atomics.store(c, PRODUCER_WAITING, 0);
      return null;
    }
    return waitOn(c, SPACE_SEQ, seq);
  }

  #fits(length: number): boolean {
    const c = this.#control;
    const head = Atomics.load(c, HEAD) >>> 0;
    const free = this.capacity - ((head - (Atomics.load(c, TAIL) >>> 0)) >>> 0);
    const record = align(RECORD_HEADER_BYTES + length);
    const toEnd = this.capacity - (head & this.#mask);
    return (record > toEnd ? toEnd + record : record) <= free;
  }

  // ---- consumer ----

  /** The next frame as a view into the ring (valid until `consume`), or null when empty. */
  peek(): Uint8Array | null {
    const c = this.#control;
    let tail = Atomics.load(c, TAIL) >>> 0;
    const head = Atomics.load(c, HEAD) >>> 0;
    if (tail === head) return null;
    let offset = tail & this.#mask;
    let length = this.#words[offset >> 2] as number;
    if (length === WRAP_MARKER) {
      tail = (tail + (this.capacity - offset)) >>> 0;
      Atomics.store(c, TAIL, tail | 0);
      offset = 0;
      length = this.#words[0] as number;
    }
    return this.#bytes.subarray(offset + RECORD_HEADER_BYTES, offset + RECORD_HEADER_BYTES + length);
  }

  /** Releases the frame `peek` returned. */
  consume(frame: Uint8Array): void {
    const c = this.#control;
    const tail = Atomics.load(c, TAIL) >>> 0;
    Atomics.store(c, TAIL, (tail + align(RECORD_HEADER_BYTES + frame.length)) | 0);
    if (Atomics.exchange(c, PRODUCER_WAITING, 0) !== 0) {
      Atomics.add(c, SPACE_SEQ, 1);
      Atomics.notify(c, SPACE_SEQ);
    }
  }

  /** Bytes of frames (and their records) waiting. */
  get used(): number {
    return (Atomics.load(this.#control, HEAD) - Atomics.load(this.#control, TAIL)) >>> 0;
  }

  /**
   * Arms the wake-up for the next frame. Returns null when a frame is already there (read it now), else a
   * promise that resolves when the producer wrote after this call.
   */
  waitReadable(): Promise<unknown> | null {
    const c = this.#control;
    const seq = Atomics.load(c, DATA_SEQ);
    Atomics.store(c, CONSUMER_WAITING, 1);
    if (Atomics.load(c, HEAD) !== Atomics.load(c, TAIL)) {
      Atomics.store(c, CONSUMER_WAITING, 0);
      return null;
    }
    return waitOn(c, DATA_SEQ, seq);
  }

  // ---- shared state ----

  get linkUp(): boolean {
    return Atomics.load(this.#control, LINK) !== 0;
  }

  /** Sets the link word and wakes the consumer so it notices. */
  setLink(up: boolean): void {
    Atomics.store(this.#control, LINK, up ? 1 : 0);
    this.#wakeConsumer();
  }

  get closed(): boolean {
    return Atomics.load(this.#control, CLOSED) !== 0;
  }

  /** Marks the ring abandoned by one side and wakes the other side's waits. */
  close(): void {
    Atomics.store(this.#control, CLOSED, 1);
    this.#wakeConsumer();
    Atomics.add(this.#control, SPACE_SEQ, 1);
    Atomics.notify(this.#control, SPACE_SEQ);
  }

  #wakeConsumer(): void {
    Atomics.add(this.#control, DATA_SEQ, 1);
    Atomics.notify(this.#control, DATA_SEQ);
  }
}

function waitOn(control: Int32Array, index: number, seq: number): Promise<unknown> {
  const r = Atomics.waitAsync(control, index, seq);
  return r.async ? r.value : Promise.resolve(r.value);
}
