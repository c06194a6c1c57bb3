/**
 * # virtio-blk driver (VIRTIO 1.2 §5.2, after Linux drivers/block/virtio_blk.c)
 *
 * `VirtioBlkDriver` registers on a {@link VirtioBus} (id table: device 2, any vendor) and works on any transport
 * that implements the driver model's config ops; it never sees the transport. Probe reads the configuration
 * (capacity, blk_size, seg_max, size_max, num_queues, discard and write-zeroes limits), refuses one it cannot
 * handle with a {@link BlkDriverError} `BAD_CONFIG` (the bus then reports PROBE_FAILED and sets FAILED), and sets
 * up one request queue per device queue (MQ, up to {@link VirtioBlkDriverOptions.maxQueues}).
 *
 * The bound device's API is a {@link VirtioBlkDisk} (`driver.disk(dev)`): `read`, `write`, `readInto`, `writeFrom`, `flush`, `getId`,
 * `discard`, `writeZeroes`, each a Promise. Any number may be in flight: requests are spread over the queues
 * round robin, wait in a per-queue backlog when a ring is full, and complete by token (the request object itself
 * is the ring token). A request larger than what one descriptor may carry (`size_max`, or 4 MiB) is split into
 * several, issued together. Kicks are coalesced: one per queue per microtask turn, whatever number of requests
 * were added in it.
 *
 * Argument errors are thrown before anything is sent: a write, discard or write-zeroes on a read-only device
 * (`READ_ONLY`), a range past the capacity (`OUT_OF_RANGE`), a length that is not whole 512-byte sectors
 * (`INVALID_ARGUMENT`), a command the device did not offer (`UNSUPPORTED`). Device answers: `IO_ERROR`
 * (VIRTIO_BLK_S_IOERR), `UNSUPPORTED` (VIRTIO_BLK_S_UNSUPP). A queue the device breaks (bad used element) fails
 * its requests with `QUEUE_BROKEN`; removing the device fails what is left with `REMOVED`.
 *
 * Buffers: each request's header and status live in a slot of a per-disk pool ({@link BLK_SLOT_BYTES} each,
 * carved from the transport's allocator {@link BLK_SLOTS_PER_CHUNK} at a time and reused, never freed per
 * request). `read` and `write` copy the data through a buffer allocated per request. The zero-copy pair
 * `readInto` / `writeFrom` works on a {@link BlkBuffer} the caller took with `allocBuffer`: the device reads
 * and writes the caller's guest memory directly, and the caller reuses the buffer for as many requests as it
 * likes (one request at a time per byte of it), then gives it back with `freeBuffer`.
 *
 * The wire layout comes from src/devices/blk/blk-layout.ts (pure constants, shared with the device model; see
 * docs/drivers.md for the proposal to move it to the spec core).
 */
import { DriverError, boundData, queueBrokenMessage } from '../driver-error.js';
import {
  BLK_CONFIG_BLK_SIZE,
  BLK_CONFIG_CAPACITY,
  BLK_CONFIG_MAX_DISCARD_SECTORS,
  BLK_CONFIG_MAX_DISCARD_SEG,
  BLK_CONFIG_MAX_WRITE_ZEROES_SECTORS,
  BLK_CONFIG_MAX_WRITE_ZEROES_SEG,
  BLK_CONFIG_NUM_QUEUES,
  BLK_CONFIG_SEG_MAX,
  BLK_CONFIG_SIZE_MAX,
  BLK_DWZ_FLAGS_OFFSET,
  BLK_DWZ_NUM_SECTORS_OFFSET,
  BLK_DWZ_SECTOR_OFFSET,
  BLK_DWZ_SEGMENT_SIZE,
  BLK_REQ_HEADER_SIZE,
  BLK_REQ_RESERVED_OFFSET,
  BLK_REQ_SECTOR_OFFSET,
  BLK_REQ_TYPE_OFFSET,
  BlkFeature,
  BlkRequestType,
  BlkStatus,
  SECTOR_SIZE,
  VIRTIO_BLK_ID_BYTES,
  VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
  VIRTIO_ID_BLOCK,
} from '../../devices/blk/blk-layout.js';
import type { VirtioBusDevice } from '../../virtio/driver/virtio-bus-device.js';
import { VIRTIO_DEV_ANY_ID, type VirtioDriver } from '../../virtio/driver/virtio-driver.js';
import type { ScatterEntry, Virtqueue } from '../../virtio/driver/virtqueue.js';
import { UsageError } from '../../virtio/errors.js';
import type { GuestAllocator } from '../../virtio/guest-allocator.js';
import type { GuestMemory } from '../../virtio/guest-memory.js';

const NS_PER_MS = 1e6;

/** Largest data buffer of one request when the device sets no size_max. */
export const BLK_DEFAULT_MAX_SEGMENT = 4 << 20;
/**
 * Bytes of one request's header slot: the 16-byte header, a 16-byte discard/write-zeroes segment and the
 * status byte, rounded up so slots stay 16-byte aligned.
 */
export const BLK_SLOT_BYTES = 48;
/** Header slots carved from the allocator at once when the pool is empty. */
export const BLK_SLOTS_PER_CHUNK = 64;
/** Alignment of {@link VirtioBlkDisk.allocBuffer} buffers: a page, like the buffers O_DIRECT wants. */
export const BLK_BUFFER_ALIGN = 4096;

/**
 * A data buffer in guest memory for zero-copy I/O ({@link VirtioBlkDisk.readInto} / `writeFrom`). `bytes`
 * aliases the guest memory the device reads and writes: what a `readInto` put there is valid once its promise
 * resolved, and it must not change while a `writeFrom` of it is in flight.
 */
export interface BlkBuffer {
  /** Guest address of the first byte. */
  readonly addr: number;
  readonly length: number;
  /** A view of the guest memory (no copy). */
  readonly bytes: Uint8Array;
}

export type BlkDriverErrorCode =
  | 'READ_ONLY'
  | 'OUT_OF_RANGE'
  | 'INVALID_ARGUMENT'
  | 'UNSUPPORTED'
  | 'IO_ERROR'
  | 'BAD_CONFIG'
  | 'QUEUE_BROKEN'
  | 'REMOVED'
  | 'NOT_BOUND';

export class BlkDriverError extends DriverError<BlkDriverErrorCode> {}

/** What probe read from the device configuration (sizes in bytes unless named sectors). */
export interface BlkConfig {
  /** Capacity in 512-byte sectors. */
  readonly capacity: number;
  /** Logical block size (VIRTIO_BLK_F_BLK_SIZE, else 512). */
  readonly blkSize: number;
  /** Maximum data segments per request (VIRTIO_BLK_F_SEG_MAX, else unlimited: 0). */
  readonly segMax: number;
  /** Maximum bytes per segment (VIRTIO_BLK_F_SIZE_MAX, else 0). */
  readonly sizeMax: number;
  /** Request queues the device has (VIRTIO_BLK_F_MQ, else 1). */
  readonly numQueues: number;
  readonly readOnly: boolean;
  readonly flush: boolean;
  /** Sectors per discard segment; 0: no discard. */
  readonly maxDiscardSectors: number;
  /** Sectors per write-zeroes segment; 0: no write zeroes. */
  readonly maxWriteZeroesSectors: number;
}

export interface VirtioBlkDriverOptions {
  /** Request queues to use at most (default 4). */
  readonly maxQueues?: number;
  /** Ring size per queue (default: the device's maximum). */
  readonly queueSize?: number;
  /**
   * Polled completions (Linux's polled block I/O, io_uring IOPOLL): after each kick the driver spins on the
   * used ring for up to this many nanoseconds, with the queue's interrupts suppressed, and completes what it
   * finds there; only when the window passes with nothing used does it fall back to the interrupt. The spin
   * holds the caller's event loop (at most this long per kick), so it pays off where a wake-up costs more than
   * the spin: short requests on a device that answers within microseconds. Default 0: interrupts only.
   */
  readonly pollNs?: number;
}

/** What {@link VirtioBlkDriverOptions.pollNs} polling did on a disk. */
export interface BlkPollStats {
  /** Spins that found used requests (each one an interrupt not needed). */
  hits: number;
  /** Spins whose window passed with nothing used (the interrupt completes those requests). */
  misses: number;
}

/** One request on a ring; also its token. */
interface Request {
  readonly type: number;
  /** Header (16 bytes), then an optional discard/write-zeroes segment, then the status byte. */
  readonly block: number;
  readonly statusAddr: number;
  /** Data buffer (0 when none) and its length. */
  readonly data: number;
  readonly dataLen: number;
  /** The data buffer was allocated for this request (freed with it), not lent by the caller. */
  readonly ownsData: boolean;
  readonly out: ScatterEntry[];
  readonly inn: ScatterEntry[];
  readonly resolve: (req: Request) => void;
  readonly reject: (error: Error) => void;
}

interface QueueState {
  readonly vq: Virtqueue<Request>;
  readonly inFlight: Set<Request>;
  readonly backlog: Request[];
  kickPending: boolean;
}

/** A bound virtio-blk device: the driver's per-device state and its I/O API. */
export class VirtioBlkDisk {
  readonly dev: VirtioBusDevice;
  readonly memory: GuestMemory;
  readonly allocator: GuestAllocator;
  #config: BlkConfig;
  readonly #queues: QueueState[] = [];
  #next = 0;
  #removed: BlkDriverError | undefined;
  /** Free header slots (guest addresses), and the chunks they were carved from. */
  readonly #slots: number[] = [];
  readonly #slotChunks: number[] = [];
  /** Buffers handed out by allocBuffer and not yet freed. */
  readonly #buffers = new WeakSet<BlkBuffer>();
  /** The polling window after a kick, in ms (0: no polling). */
  readonly #pollMs: number;
  readonly pollStats: BlkPollStats = { hits: 0, misses: 0 };

  /** @internal made by the driver's probe */
  constructor(dev: VirtioBusDevice, config: BlkConfig, pollNs = 0) {
    this.dev = dev;
    this.memory = dev.ops.memory;
    this.allocator = dev.ops.allocator;
    this.#config = config;
    this.#pollMs = pollNs / NS_PER_MS;
  }

  get config(): BlkConfig {
    return this.#config;
  }

  /** Capacity in bytes. */
  get size(): number {
    return this.#config.capacity * SECTOR_SIZE;
  }

  /** Requests on the rings or waiting for room. */
  get inFlight(): number {
    let n = 0;
    for (const q of this.#queues) n += q.inFlight.size + q.backlog.length;
    return n;
  }

  get numQueues(): number {
    return this.#queues.length;
  }

  /** Reads `length` bytes (whole sectors) from `sector`. */
  async read(sector: number, length: number): Promise<Uint8Array> {
    this.#checkRange(sector, length);
    const out = new Uint8Array(length);
    await Promise.all(
      this.#chunks(sector, length).map(async ([s, off, len]) => {
        const req = this.#dataRequest(BlkRequestType.VIRTIO_BLK_T_IN, s, len, undefined);
        try {
          await this.#submit(req);
          this.memory.read(req.data, out.subarray(off, off + len));
        } finally {
          this.#free(req);
        }
      }),
    );
    return out;
  }

  /** Writes `data` (whole sectors) at `sector`. Rejects READ_ONLY on a read-only device without sending. */
  async write(sector: number, data: Uint8Array): Promise<void> {
    this.#checkWritable('write');
    this.#checkRange(sector, data.length);
    await Promise.all(
      this.#chunks(sector, data.length).map(async ([s, off, len]) => {
        const req = this.#dataRequest(BlkRequestType.VIRTIO_BLK_T_OUT, s, len, data.subarray(off, off + len));
        try {
          await this.#submit(req);
        } finally {
          this.#free(req);
        }
      }),
    );
  }

  /**
   * A buffer of `length` bytes of guest memory for {@link readInto} / {@link writeFrom}, page-aligned. Throws
   * the allocator's `OUT_OF_MEMORY` UsageError when the transport's memory is exhausted.
   */
  allocBuffer(length: number): BlkBuffer {
    this.#checkLive();
    if (!Number.isSafeInteger(length) || length <= 0) {
      throw new BlkDriverError('INVALID_ARGUMENT', `buffer length ${length} is not positive`, length);
    }
    const addr = this.allocator.alloc(length, BLK_BUFFER_ALIGN);
    const buffer: BlkBuffer = { addr, length, bytes: this.memory.slice(addr, length) };
    this.#buffers.add(buffer);
    return buffer;
  }

  /** Gives back a buffer from {@link allocBuffer}; no request of it may be in flight. */
  freeBuffer(buffer: BlkBuffer): void {
    if (!this.#buffers.delete(buffer)) {
      throw new BlkDriverError('INVALID_ARGUMENT', 'not a live buffer of this disk', buffer.addr);
    }
    this.allocator.free(buffer.addr);
  }

  /**
   * Reads `length` bytes (whole sectors, default the whole buffer) from `sector` straight into `buffer`'s guest
   * memory: no copy on this side.
   */
  async readInto(sector: number, buffer: BlkBuffer, length = buffer.length): Promise<void> {
    await this.#lent(BlkRequestType.VIRTIO_BLK_T_IN, sector, buffer, length);
  }

  /** Writes the first `length` bytes of `buffer` (whole sectors, default all of it) at `sector`, with no copy. */
  async writeFrom(sector: number, buffer: BlkBuffer, length = buffer.length): Promise<void> {
    this.#checkWritable('write');
    await this.#lent(BlkRequestType.VIRTIO_BLK_T_OUT, sector, buffer, length);
  }

  /** Flushes the device's write cache (resolves at once when the device has no FLUSH: it writes through). */
  async flush(): Promise<void> {
    this.#checkLive();
    if (!this.#config.flush) return;
    const req = this.#request(BlkRequestType.VIRTIO_BLK_T_FLUSH, 0, 0, 0);
    try {
      await this.#submit(req);
    } finally {
      this.#free(req);
    }
  }

  /** The device id string (GET_ID: up to 20 bytes, NUL-padded; QEMU's is the drive's `serial`). */
  async getId(): Promise<string> {
    this.#checkLive();
    const req = this.#dataRequest(BlkRequestType.VIRTIO_BLK_T_GET_ID, 0, VIRTIO_BLK_ID_BYTES, undefined);
    try {
      await this.#submit(req);
      const bytes = this.memory.slice(req.data, VIRTIO_BLK_ID_BYTES);
      const end = bytes.indexOf(0);
      return String.fromCharCode(...bytes.subarray(0, end < 0 ? bytes.length : end));
    } finally {
      this.#free(req);
    }
  }

  /** Discards `count` sectors from `sector` (VIRTIO_BLK_F_DISCARD). */
  async discard(sector: number, count: number): Promise<void> {
    await this.#dwz(BlkRequestType.VIRTIO_BLK_T_DISCARD, sector, count, 0, this.#config.maxDiscardSectors);
  }

  /** Writes zeroes to `count` sectors from `sector` (VIRTIO_BLK_F_WRITE_ZEROES); `unmap` lets it deallocate. */
  async writeZeroes(sector: number, count: number, options: { unmap?: boolean } = {}): Promise<void> {
    await this.#dwz(
      BlkRequestType.VIRTIO_BLK_T_WRITE_ZEROES,
      sector,
      count,
      options.unmap === true ? VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP : 0,
      this.#config.maxWriteZeroesSectors,
    );
  }

  // ---- driver internals ----

  /** @internal */
  _setQueues(vqs: readonly Virtqueue<Request>[]): void {
    for (const vq of vqs) this.#queues.push({ vq, inFlight: new Set(), backlog: [], kickPending: false });
  }

  /** @internal The queue's interrupt: complete every used request (Linux virtblk_done). */
  _done(vq: Virtqueue<Request>): void {
    const q = this.#queues.find((s) => s.vq === vq);
    if (q === undefined) return;
    try {
      do {
        vq.disableCb();
        let used;
        while ((used = vq.getBuf()) !== null) this.#complete(q, used.token);
      } while (!vq.enableCb());
    } catch (e) {
      this.#breakQueue(q, e);
      return;
    }
    this.#drainBacklog(q);
  }

  /** @internal Fails everything left (device removed or reset) and frees its buffers. */
  _fail(error: BlkDriverError): void {
    this.#removed ??= error;
    for (const q of this.#queues) {
      for (const req of [...q.inFlight, ...q.backlog.splice(0)]) {
        q.inFlight.delete(req);
        req.reject(error);
      }
    }
  }

  /** @internal After reset: takes back buffers the device never used. */
  _detachAll(): void {
    for (const q of this.#queues) {
      while (q.vq.detachUnusedBuf() !== null) {
        // the requests were already failed by _fail; their memory is freed by their own finally blocks
      }
    }
  }

  /** @internal */
  _updateCapacity(capacity: number): void {
    this.#config = { ...this.#config, capacity };
  }

  /** IN / OUT on a caller's buffer, split like any request larger than a segment. */
  async #lent(type: number, sector: number, buffer: BlkBuffer, length: number): Promise<void> {
    if (!this.#buffers.has(buffer)) {
      throw new BlkDriverError('INVALID_ARGUMENT', 'not a live buffer of this disk', buffer.addr);
    }
    if (length > buffer.length) {
      throw new BlkDriverError(
        'INVALID_ARGUMENT',
        `length ${length} is longer than the ${buffer.length}-byte buffer`,
        length,
      );
    }
    this.#checkRange(sector, length);
    const chunks = this.#chunks(sector, length);
    if (chunks.length === 1) {
      await this.#run(this.#request(type, sector, buffer.addr, 0, length, false));
      return;
    }
    await Promise.all(
      chunks.map(([s, off, len]) => this.#run(this.#request(type, s, buffer.addr + off, 0, len, false))),
    );
  }

  /** Submits and frees the request when it settles. */
  async #run(req: Request): Promise<void> {
    try {
      await this.#submit(req);
    } finally {
      this.#free(req);
    }
  }

  #dwz(type: number, sector: number, count: number, flags: number, maxSectors: number): Promise<void> {
    this.#checkWritable(type === BlkRequestType.VIRTIO_BLK_T_DISCARD ? 'discard' : 'write zeroes');
    if (maxSectors === 0) {
      return Promise.reject(
        new BlkDriverError(
          'UNSUPPORTED',
          `${this.dev.name}: the device does not support ${type === BlkRequestType.VIRTIO_BLK_T_DISCARD ? 'discard' : 'write zeroes'}`,
          type,
        ),
      );
    }
    if (!Number.isSafeInteger(count) || count <= 0) {
      return Promise.reject(
        new BlkDriverError('INVALID_ARGUMENT', `sector count ${count} is not positive`, count),
      );
    }
    this.#checkRange(sector, count * SECTOR_SIZE);
    const parts: Promise<unknown>[] = [];
    for (let s = sector; s < sector + count; s += maxSectors) {
      const n = Math.min(maxSectors, sector + count - s);
      const req = this.#request(type, s, 0, BLK_DWZ_SEGMENT_SIZE);
      const seg = req.block + BLK_REQ_HEADER_SIZE;
      this.memory.writeU64(seg + BLK_DWZ_SECTOR_OFFSET, BigInt(s));
      this.memory.writeU32(seg + BLK_DWZ_NUM_SECTORS_OFFSET, n);
      this.memory.writeU32(seg + BLK_DWZ_FLAGS_OFFSET, flags);
      parts.push(
        this.#submit(req).finally(() => {
          this.#free(req);
        }),
      );
    }
    return Promise.all(parts).then(() => undefined);
  }

  /** Splits [sector, +length) into requests no larger than one segment may be. */
  #chunks(sector: number, length: number): [number, number, number][] {
    const max = Math.max(
      SECTOR_SIZE,
      Math.floor((this.#config.sizeMax || BLK_DEFAULT_MAX_SEGMENT) / SECTOR_SIZE) * SECTOR_SIZE,
    );
    const out: [number, number, number][] = [];
    for (let off = 0; off < length; off += max)
      out.push([sector + off / SECTOR_SIZE, off, Math.min(max, length - off)]);
    return out;
  }

  #dataRequest(type: number, sector: number, length: number, src: Uint8Array | undefined): Request {
    const data = this.allocator.alloc(length, 16);
    if (src !== undefined) this.memory.write(data, src);
    try {
      return this.#request(type, sector, data, 0, length, true);
    } catch (e) {
      this.allocator.free(data);
      throw e;
    }
  }

  /**
   * A request with its header+status block (`extra` bytes of readable segment after the header) and an
   * optional data buffer (`data`, `dataLen`; writable for IN and GET_ID, readable otherwise).
   */
  #request(
    type: number,
    sector: number,
    data: number,
    extra: number,
    dataLen = 0,
    ownsData = false,
  ): Request {
    this.#checkLive();
    const block = this.#takeSlot();
    const m = this.memory;
    m.writeU32(block + BLK_REQ_TYPE_OFFSET, type);
    m.writeU32(block + BLK_REQ_RESERVED_OFFSET, 0);
    m.writeU64(block + BLK_REQ_SECTOR_OFFSET, BigInt(sector));
    const statusAddr = block + BLK_REQ_HEADER_SIZE + extra;
    m.writeU8(statusAddr, 0xff);
    const out: ScatterEntry[] = [{ addr: block, len: BLK_REQ_HEADER_SIZE + extra }];
    const inn: ScatterEntry[] = [];
    const deviceWrites =
      type === BlkRequestType.VIRTIO_BLK_T_IN || type === BlkRequestType.VIRTIO_BLK_T_GET_ID;
    if (dataLen > 0) (deviceWrites ? inn : out).push({ addr: data, len: dataLen });
    inn.push({ addr: statusAddr, len: 1 });
    let resolve!: (req: Request) => void;
    let reject!: (error: Error) => void;
    const done = new Promise<Request>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    const req: Request & { done: Promise<Request> } = {
      type,
      block,
      statusAddr,
      data: dataLen > 0 ? data : 0,
      dataLen,
      ownsData: ownsData && dataLen > 0,
      out,
      inn,
      resolve,
      reject,
      done,
    };
    return req;
  }

  #free(req: Request): void {
    this.#slots.push(req.block);
    if (req.ownsData) this.allocator.free(req.data);
  }

  /** A header slot from the pool, carving a new chunk from the allocator when it is empty. */
  #takeSlot(): number {
    const slot = this.#slots.pop();
    if (slot !== undefined) return slot;
    const chunk = this.allocator.alloc(BLK_SLOT_BYTES * BLK_SLOTS_PER_CHUNK, 16);
    this.#slotChunks.push(chunk);
    for (let i = BLK_SLOTS_PER_CHUNK - 1; i > 0; i--) this.#slots.push(chunk + i * BLK_SLOT_BYTES);
    return chunk;
  }

  /** @internal After removal (nothing is on the rings any more): the slot pool goes back to the allocator. */
  _releaseSlots(): void {
    for (const chunk of this.#slotChunks.splice(0)) this.allocator.free(chunk);
    this.#slots.length = 0;
  }

  /** Puts the request on a queue (or its backlog) and resolves when the device completed it with OK. */
  #submit(req: Request): Promise<Request> {
    const done = (req as Request & { done: Promise<Request> }).done;
    const q = this.#queues[this.#next++ % this.#queues.length];
    if (q === undefined) {
      req.reject(new BlkDriverError('NOT_BOUND', `${this.dev.name}: no request queues`, 0));
      return done;
    }
    if (q.vq.isBroken()) {
      req.reject(this.#brokenError(q));
      return done;
    }
    if (q.backlog.length !== 0 || !this.#add(q, req)) q.backlog.push(req);
    return done;
  }

  /** Adds to the ring; false when full. */
  #add(q: QueueState, req: Request): boolean {
    try {
      q.vq.addBuf(req.out, req.inn, req);
    } catch (e) {
      if (e instanceof UsageError && e.code === 'QUEUE_FULL') return false;
      req.reject(e instanceof UsageError && e.code === 'QUEUE_BROKEN' ? this.#brokenError(q) : toError(e));
      return true;
    }
    q.inFlight.add(req);
    this.#scheduleKick(q);
    return true;
  }

  #scheduleKick(q: QueueState): void {
    if (q.kickPending) return;
    q.kickPending = true;
    queueMicrotask(() => {
      q.kickPending = false;
      if (q.vq.isBroken()) return;
      q.vq.kick();
      if (this.#pollMs > 0) this.#pollUsed(q);
    });
  }

  /**
   * Spins on the used ring for the polling window with the queue's interrupts off and completes what arrives
   * (Linux's virtblk_poll). Interrupts stay off while nothing is in flight, as the next request's kick polls
   * again; with requests still on the ring (queue depth > 1, or a window that passed) they are turned back on,
   * so every request completes whether or not anyone polls again.
   */
  #pollUsed(q: QueueState): void {
    const vq = q.vq;
    try {
      vq.disableCb();
      const deadline = performance.now() + this.#pollMs;
      let found = 0;
      for (;;) {
        let used;
        while ((used = vq.getBuf()) !== null) {
          this.#complete(q, used.token);
          found++;
        }
        if (found !== 0 || q.inFlight.size === 0 || performance.now() >= deadline) break;
      }
      if (found !== 0) this.pollStats.hits++;
      else this.pollStats.misses++;
      while (q.inFlight.size !== 0 && !vq.enableCb()) {
        let used;
        while ((used = vq.getBuf()) !== null) this.#complete(q, used.token);
      }
    } catch (e) {
      this.#breakQueue(q, e);
      return;
    }
    this.#drainBacklog(q);
  }

  #drainBacklog(q: QueueState): void {
    while (q.backlog.length !== 0) {
      const req = q.backlog[0] as Request;
      if (!this.#add(q, req)) return;
      q.backlog.shift();
    }
  }

  #complete(q: QueueState, req: Request): void {
    q.inFlight.delete(req);
    const status = this.memory.readU8(req.statusAddr);
    if (status === BlkStatus.VIRTIO_BLK_S_OK) {
      req.resolve(req);
      return;
    }
    const code: BlkDriverErrorCode = status === BlkStatus.VIRTIO_BLK_S_UNSUPP ? 'UNSUPPORTED' : 'IO_ERROR';
    req.reject(
      new BlkDriverError(
        code,
        `${this.dev.name}: request type ${req.type} failed with status ${status}${status === BlkStatus.VIRTIO_BLK_S_UNSUPP ? ' (unsupported)' : ''}`,
        status,
      ),
    );
  }

  #breakQueue(q: QueueState, cause: unknown): void {
    const error = this.#brokenError(q, cause);
    for (const req of [...q.inFlight, ...q.backlog.splice(0)]) {
      q.inFlight.delete(req);
      req.reject(error);
    }
  }

  #brokenError(q: QueueState, cause: unknown = q.vq.brokenReason): BlkDriverError {
    return new BlkDriverError('QUEUE_BROKEN', queueBrokenMessage(this.dev, q.vq.name, cause), q.vq.index, {
      cause,
    });
  }

  #checkLive(): void {
    if (this.#removed !== undefined) throw this.#removed;
  }

  #checkWritable(what: string): void {
    this.#checkLive();
    if (this.#config.readOnly) {
      throw new BlkDriverError('READ_ONLY', `${this.dev.name}: ${what} on a read-only device`, what);
    }
  }

  #checkRange(sector: number, length: number): void {
    this.#checkLive();
    if (!Number.isSafeInteger(length) || length <= 0 || length % SECTOR_SIZE !== 0) {
      throw new BlkDriverError(
        'INVALID_ARGUMENT',
        `length ${length} is not a positive multiple of ${SECTOR_SIZE}`,
        length,
      );
    }
    if (
      !Number.isSafeInteger(sector) ||
      sector < 0 ||
      sector + length / SECTOR_SIZE > this.#config.capacity
    ) {
      throw new BlkDriverError(
        'OUT_OF_RANGE',
        `${this.dev.name}: sectors ${sector}+${length / SECTOR_SIZE} are outside the ${this.#config.capacity}-sector disk`,
        sector,
      );
    }
  }
}

function toError(e: unknown): Error {
  return e instanceof Error ? e : new Error(String(e));
}

/** The virtio-blk driver; one instance serves any number of devices. */
export class VirtioBlkDriver implements VirtioDriver {
  readonly name = 'virtio-blk';
  readonly idTable = [{ device: VIRTIO_ID_BLOCK, vendor: VIRTIO_DEV_ANY_ID }];
  readonly featureTable = [
    BlkFeature.VIRTIO_BLK_F_SIZE_MAX,
    BlkFeature.VIRTIO_BLK_F_SEG_MAX,
    BlkFeature.VIRTIO_BLK_F_RO,
    BlkFeature.VIRTIO_BLK_F_BLK_SIZE,
    BlkFeature.VIRTIO_BLK_F_FLUSH,
    BlkFeature.VIRTIO_BLK_F_MQ,
    BlkFeature.VIRTIO_BLK_F_DISCARD,
    BlkFeature.VIRTIO_BLK_F_WRITE_ZEROES,
  ];
  readonly #options: VirtioBlkDriverOptions;

  constructor(options: VirtioBlkDriverOptions = {}) {
    const pollNs = options.pollNs;
    if (pollNs !== undefined && !(Number.isFinite(pollNs) && pollNs >= 0)) {
      throw new BlkDriverError('INVALID_ARGUMENT', `pollNs ${pollNs} is not a non-negative number`, pollNs);
    }
    this.#options = options;
  }

  /** The disk of a device this driver is bound to. */
  disk(dev: VirtioBusDevice): VirtioBlkDisk {
    return boundData(
      dev,
      this,
      VirtioBlkDisk,
      (message, options) => new BlkDriverError('NOT_BOUND', message, dev.index, options),
    );
  }

  async probe(dev: VirtioBusDevice): Promise<void> {
    const config = await readBlkConfig(dev);
    const disk = new VirtioBlkDisk(dev, config, this.#options.pollNs);
    const n = Math.min(config.numQueues, this.#options.maxQueues ?? 4);
    const size = this.#options.queueSize;
    const specs = Array.from({ length: n }, (_, i) => ({
      name: `req.${i}`,
      callback: (vq: Virtqueue) => {
        disk._done(vq as Virtqueue<Request>);
      },
      ...(size === undefined ? {} : { size }),
    }));
    const vqs = await dev.findVqs(specs);
    disk._setQueues(vqs.filter((v): v is Virtqueue => v !== null) as Virtqueue<Request>[]);
    dev.driverData = disk;
  }

  async remove(dev: VirtioBusDevice): Promise<void> {
    const disk = dev.driverData instanceof VirtioBlkDisk ? dev.driverData : undefined;
    await dev.reset();
    disk?._fail(new BlkDriverError('REMOVED', `${dev.name} was removed`, dev.index));
    disk?._detachAll();
    await dev.delVqs();
    disk?._releaseSlots();
  }

  configChanged(dev: VirtioBusDevice): void {
    const disk = dev.driverData instanceof VirtioBlkDisk ? dev.driverData : undefined;
    if (disk === undefined) return;
    void dev.readConfigU64(BLK_CONFIG_CAPACITY).then(
      (capacity) => {
        if (capacity <= BigInt(Math.floor(Number.MAX_SAFE_INTEGER / SECTOR_SIZE)))
          disk._updateCapacity(Number(capacity));
      },
      () => undefined,
    );
  }
}

/** Reads and checks the configuration; throws BAD_CONFIG for values this driver cannot work with. */
async function readBlkConfig(dev: VirtioBusDevice): Promise<BlkConfig> {
  const bad = (what: string, value: unknown): BlkDriverError =>
    new BlkDriverError('BAD_CONFIG', `${dev.name}: ${what}`, value);
  const capacity = await dev.readConfigU64(BLK_CONFIG_CAPACITY);
  if (capacity > BigInt(Math.floor(Number.MAX_SAFE_INTEGER / SECTOR_SIZE))) {
    throw bad(`capacity ${capacity} sectors is beyond 2^53 bytes`, capacity);
  }
  const has = (bit: number) => dev.hasFeature(bit);
  const blkSize = has(BlkFeature.VIRTIO_BLK_F_BLK_SIZE)
    ? await dev.readConfigU32(BLK_CONFIG_BLK_SIZE)
    : SECTOR_SIZE;
  if (blkSize < SECTOR_SIZE || blkSize > 1 << 16 || (blkSize & (blkSize - 1)) !== 0) {
    throw bad(`blk_size ${blkSize} is not a power of two from 512 to 64 KiB`, blkSize);
  }
  const segMax = has(BlkFeature.VIRTIO_BLK_F_SEG_MAX) ? await dev.readConfigU32(BLK_CONFIG_SEG_MAX) : 0;
  if (has(BlkFeature.VIRTIO_BLK_F_SEG_MAX) && segMax === 0)
    throw bad('seg_max is 0: no request could carry data', 0);
  const sizeMax = has(BlkFeature.VIRTIO_BLK_F_SIZE_MAX) ? await dev.readConfigU32(BLK_CONFIG_SIZE_MAX) : 0;
  // qemu-storage-daemon 7.2 offers SIZE_MAX with size_max = 0; Linux reads that as "no limit" (it then uses its
  // own maximum segment size), and so does this driver. A non-zero limit below one sector cannot be served.
  if (has(BlkFeature.VIRTIO_BLK_F_SIZE_MAX) && sizeMax !== 0 && sizeMax < SECTOR_SIZE) {
    throw bad(`size_max ${sizeMax} cannot hold one sector`, sizeMax);
  }
  const numQueues = has(BlkFeature.VIRTIO_BLK_F_MQ) ? await dev.readConfigU16(BLK_CONFIG_NUM_QUEUES) : 1;
  if (numQueues === 0) throw bad('num_queues is 0', 0);
  let maxDiscardSectors = 0;
  if (has(BlkFeature.VIRTIO_BLK_F_DISCARD)) {
    const seg = await dev.readConfigU32(BLK_CONFIG_MAX_DISCARD_SEG);
    maxDiscardSectors = seg === 0 ? 0 : await dev.readConfigU32(BLK_CONFIG_MAX_DISCARD_SECTORS);
  }
  let maxWriteZeroesSectors = 0;
  if (has(BlkFeature.VIRTIO_BLK_F_WRITE_ZEROES)) {
    const seg = await dev.readConfigU32(BLK_CONFIG_MAX_WRITE_ZEROES_SEG);
    maxWriteZeroesSectors = seg === 0 ? 0 : await dev.readConfigU32(BLK_CONFIG_MAX_WRITE_ZEROES_SECTORS);
  }
  return {
    capacity: Number(capacity),
    blkSize,
    segMax,
    sizeMax,
    numQueues,
    readOnly: has(BlkFeature.VIRTIO_BLK_F_RO),
    flush: has(BlkFeature.VIRTIO_BLK_F_FLUSH),
    maxDiscardSectors,
    maxWriteZeroesSectors,
  };
}
