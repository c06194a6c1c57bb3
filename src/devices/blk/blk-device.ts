/**
 * `BlkDevice`: the virtio block device model (VIRTIO 1.2 §5.2) over a {@link BlockBackend}. It implements
 * {@link VirtioDevice} and knows nothing of its transport.
 *
 * ```ts
 * const device = new BlkDevice({ backend: new MemoryBackend(64 << 20), serial: 'ringvm-disk0', numQueues: 2 });
 * const transport = new LoopbackTransport(device); // or any other transport
 * ```
 *
 * Features offered: VERSION_1, EVENT_IDX and INDIRECT_DESC (both can be turned off), SEG_MAX, BLK_SIZE, FLUSH,
 * MQ (more than one queue), RO (read-only device or back end), DISCARD and WRITE_ZEROES (when the back end has
 * them and the device is writable), SIZE_MAX (when `sizeMax` is given).
 *
 * Processing. A kick pops every available chain (notifications disabled while draining, then re-enabled with
 * the §2.7.10 re-check), parses it ({@link parseBlkRequest}) and submits it to the back end without waiting:
 * any number of requests are in flight (at most the queue size, which the ring enforces), and they complete in
 * whatever order the back end finishes them (§5.2: requests are "serviced (probably out of order)"). Completions
 * are collected and published once per burst: the first completion schedules a microtask that adds every
 * pending used element, stores used.idx once per queue and interrupts only if `needsNotification` says so.
 *
 * Synchronous completion. When the back end offers `readvSync`/`writevSync` (a raw image served from the
 * device's own worker thread), reads and writes run inside the kick and complete at once, without a promise;
 * so do GET_ID and rejected requests. Everything a pass over the ring completed this way is published before
 * notifications are re-enabled: one used.idx store and at most one interrupt per pass, in the same turn as the
 * kick, with no microtask between the I/O and the interrupt; a long pass also publishes every
 * {@link BLK_SYNC_PUBLISH_BATCH} completions, so the driver works on them while the device goes on. (Writes in writethrough mode, FLUSH, DISCARD and
 * WRITE_ZEROES stay asynchronous.)
 *
 * Faults. A chain the split ring refuses (a `QueueError`) or a request with no status byte (see the decision
 * table in blk-request.ts) is a guest fault: the device reports it through `context.fail` (DEVICE_NEEDS_RESET)
 * and pops nothing more until reset; requests already in flight still complete. Everything else is answered
 * with a status byte. A back end failure answers VIRTIO_BLK_S_IOERR.
 *
 * Reset while I/O is in flight. Each activation is a generation; a request completing after a reset (or a
 * reset and a new activation) belongs to an old generation and is dropped: its status byte and the used ring
 * are never written. The data buffers of an in-flight IN can still be filled by the back end after the reset,
 * as DMA in flight on real hardware would be (QEMU drains synchronously at reset; a device here cannot block):
 * a host that reuses guest memory after a reset awaits {@link BlkDevice.idle} first.
 *
 * Flush guarantee (§5.2.6.2: a write is stable once it completed and a FLUSH sent after its completion
 * completed). This device guarantees more: a FLUSH completes only after every write-type request (OUT, DISCARD,
 * WRITE_ZEROES) popped before it — on any queue, completed or still in flight — has finished at the back end
 * and `backend.flush()` has returned. When the driver does not negotiate VIRTIO_BLK_F_FLUSH the device runs
 * writethrough (§5.2.6.2 case 1: writes must be stable when completed): every write-type request is followed
 * by `backend.flush()` before it completes.
 */
import type { DeviceContext, VirtioDevice } from '../../virtio/device/virtio-device.js';
import { GuestFault, HostIoError, UsageError, type VirtioError } from '../../virtio/errors.js';
import { VirtioFeature, featureSet, hasFeature } from '../../virtio/features.js';
import type { DescriptorChain } from '../../virtio/split/descriptor-chain.js';
import {
  BLK_CONFIG_BLK_SIZE,
  BLK_CONFIG_CAPACITY,
  BLK_CONFIG_DISCARD_SECTOR_ALIGNMENT,
  BLK_CONFIG_MAX_DISCARD_SECTORS,
  BLK_CONFIG_MAX_DISCARD_SEG,
  BLK_CONFIG_MAX_WRITE_ZEROES_SECTORS,
  BLK_CONFIG_MAX_WRITE_ZEROES_SEG,
  BLK_CONFIG_NUM_QUEUES,
  BLK_CONFIG_SEG_MAX,
  BLK_CONFIG_SIZE,
  BLK_CONFIG_SIZE_MAX,
  BLK_CONFIG_WRITEBACK,
  BLK_CONFIG_WRITE_ZEROES_MAY_UNMAP,
  BlkFeature,
  BlkStatus,
  SECTOR_SHIFT,
  SECTOR_SIZE,
  VIRTIO_BLK_ID_BYTES,
  VIRTIO_ID_BLOCK,
} from './blk-layout.js';
import { parseBlkRequest, type BlkRange, type BlkRequest, type BlkRequestLimits } from './blk-request.js';
import type { BlockBackend } from './block-backend.js';

/** Default queue size (descriptors per request queue). */
export const BLK_DEFAULT_QUEUE_SIZE = 256;
/**
 * Default `max_discard_seg` / `max_write_zeroes_seg`: each segment is one back-end call, so the bound caps the
 * work one request can queue. Linux asks for up to 256; 32 keeps one request's work small.
 */
export const BLK_DEFAULT_MAX_RANGE_SEGMENTS = 32;
/**
 * Default `max_discard_sectors` / `max_write_zeroes_sectors`: 4 GiB - 512 bytes in 512-byte sectors, the largest
 * segment whose byte length still fits a u32 (QEMU advertises half of that).
 */
export const BLK_DEFAULT_MAX_RANGE_SECTORS = 0x7f_ffff;
/**
 * Synchronous completions after which a pass over the ring publishes (one used.idx store, an interrupt if the
 * driver asks) before popping on: the driver then consumes the first requests and refills the ring while the
 * device serves the rest, instead of the two taking turns over the whole ring. Measured with the host-only
 * bench at queue depth 32 (docs/benchmarks.md): 8 beat both publishing once per pass and smaller batches.
 */
export const BLK_SYNC_PUBLISH_BATCH = 8;
/** num_queues is a le16. */
const MAX_QUEUES = 0xffff;

export interface BlkDeviceOptions {
  readonly backend: BlockBackend;
  /** The GET_ID string: ASCII, at most 20 bytes (default: empty, GET_ID returns 20 NULs). */
  readonly serial?: string;
  /** Request queues (default 1); VIRTIO_BLK_F_MQ is offered when more than 1. */
  readonly numQueues?: number;
  /** Maximum size of each queue, a power of two (default {@link BLK_DEFAULT_QUEUE_SIZE}). */
  readonly queueSize?: number;
  /** Serve the disk read-only even if the back end is writable (VIRTIO_BLK_F_RO). */
  readonly readOnly?: boolean;
  /** `seg_max`: data descriptors per request (default: queue size - 2, as QEMU). */
  readonly segMax?: number;
  /** `size_max`: offered (VIRTIO_BLK_F_SIZE_MAX) only when given; advice to the driver, not enforced. */
  readonly sizeMax?: number;
  /** Offer DISCARD when the back end supports it (default true). */
  readonly discard?: boolean;
  /** Offer WRITE_ZEROES when the back end supports it (default true). */
  readonly writeZeroes?: boolean;
  readonly maxDiscardSectors?: number;
  readonly maxDiscardSegments?: number;
  readonly maxWriteZeroesSectors?: number;
  readonly maxWriteZeroesSegments?: number;
  /** Offer VIRTIO_F_EVENT_IDX (default true). */
  readonly eventIdx?: boolean;
  /** Offer VIRTIO_F_INDIRECT_DESC (default true). */
  readonly indirect?: boolean;
  /**
   * Every request answered with an error status (a `BlkRequestError`) or failed by the back end (a
   * `HostIoError`), with its queue: for logging.
   */
  readonly onRequestError?: (error: VirtioError, queueIndex: number) => void;
}

/** Counters, for tests and benchmarks. */
export interface BlkDeviceStats {
  /** Requests popped and parsed. */
  requests: number;
  /** Requests whose used element was published. */
  completed: number;
  /** used.idx stores (one per queue per completion burst). */
  publishes: number;
  /** Used-buffer interrupts signalled. */
  interrupts: number;
  /** Completions dropped because the device was reset while they were in flight. */
  dropped: number;
  /** Reads and writes completed through the back end's synchronous methods (`readvSync`/`writevSync`). */
  synchronous: number;
}

const { VIRTIO_BLK_S_OK, VIRTIO_BLK_S_IOERR } = BlkStatus;

export class BlkDevice implements VirtioDevice {
  readonly deviceType = VIRTIO_ID_BLOCK;
  readonly deviceFeatures: bigint;
  readonly queueMaxSizes: readonly number[];
  readonly configSize = BLK_CONFIG_SIZE;
  readonly backend: BlockBackend;
  /** Capacity in 512-byte sectors. */
  readonly capacity: number;
  readonly readOnly: boolean;
  readonly stats: BlkDeviceStats = {
    requests: 0,
    completed: 0,
    publishes: 0,
    interrupts: 0,
    dropped: 0,
    synchronous: 0,
  };

  readonly #config: Uint8Array;
  readonly #serial: Uint8Array;
  readonly #blockSize: number;
  readonly #segMax: number;
  readonly #discard: { maxSectors: number; maxSegments: number } | undefined;
  readonly #writeZeroes: { maxSectors: number; maxSegments: number } | undefined;
  readonly #onRequestError: ((error: VirtioError, queueIndex: number) => void) | undefined;

  #context: DeviceContext | undefined;
  /** Bumped at every activation and reset: completions of an older generation are dropped. */
  #generation = 0;
  /** A guest fault was reported: pop nothing more until reset. */
  #failed = false;
  #limits: BlkRequestLimits;
  /** VIRTIO_BLK_F_FLUSH not negotiated: every write is made stable before it completes. */
  #writethrough = false;
  /** Per queue: `[head, len, head, len, ...]` completed but not yet in the used ring. */
  #completions: number[][];
  #publishScheduled = false;
  /** Inside #drain: completions are published at the end of the pass, not from a microtask. */
  #draining = 0;
  /** Back-end operations in flight (of every generation). */
  #inFlight = 0;
  #idleWaiters: (() => void)[] = [];
  /** Write-type requests in flight, for FLUSH ordering. */
  readonly #writes = new Set<Promise<unknown>>();

  constructor(options: BlkDeviceOptions) {
    const backend = options.backend;
    this.backend = backend;
    const numQueues = options.numQueues ?? 1;
    if (!Number.isInteger(numQueues) || numQueues < 1 || numQueues > MAX_QUEUES) {
      throw new UsageError(
        'INVALID_ARGUMENT',
        `numQueues ${numQueues} is not from 1 to ${MAX_QUEUES}`,
        numQueues,
      );
    }
    const queueSize = options.queueSize ?? BLK_DEFAULT_QUEUE_SIZE;
    this.queueMaxSizes = new Array<number>(numQueues).fill(queueSize);
    if (!Number.isSafeInteger(backend.size) || backend.size < 0) {
      throw new UsageError(
        'INVALID_ARGUMENT',
        `back end size ${backend.size} is not a byte count`,
        backend.size,
      );
    }
    this.capacity = Math.floor(backend.size / SECTOR_SIZE);
    const blockSize = backend.logicalBlockSize ?? SECTOR_SIZE;
    if (!Number.isInteger(blockSize) || blockSize < SECTOR_SIZE || (blockSize & (blockSize - 1)) !== 0) {
      throw new UsageError(
        'INVALID_ARGUMENT',
        `logical block size ${blockSize} is not a power of two ≥ ${SECTOR_SIZE}`,
        blockSize,
      );
    }
    this.#blockSize = blockSize;
    this.#segMax = u32Option('segMax', options.segMax ?? Math.max(1, queueSize - 2), 1);
    this.readOnly = options.readOnly === true || backend.readOnly;
    this.#serial = encodeSerial(options.serial ?? '');
    this.#onRequestError = options.onRequestError;

    const rangeLimits = (
      enabled: boolean,
      sectors: number | undefined,
      segs: number | undefined,
      what: string,
    ) =>
      enabled
        ? {
            maxSectors: u32Option(`max${what}Sectors`, sectors ?? BLK_DEFAULT_MAX_RANGE_SECTORS, 1),
            maxSegments: u32Option(`max${what}Segments`, segs ?? BLK_DEFAULT_MAX_RANGE_SEGMENTS, 1),
          }
        : undefined;
    this.#discard = rangeLimits(
      !this.readOnly && options.discard !== false && backend.discard !== undefined,
      options.maxDiscardSectors,
      options.maxDiscardSegments,
      'Discard',
    );
    this.#writeZeroes = rangeLimits(
      !this.readOnly && options.writeZeroes !== false && backend.writeZeroes !== undefined,
      options.maxWriteZeroesSectors,
      options.maxWriteZeroesSegments,
      'WriteZeroes',
    );

    const bits: number[] = [
      VirtioFeature.VIRTIO_F_VERSION_1,
      BlkFeature.VIRTIO_BLK_F_SEG_MAX,
      BlkFeature.VIRTIO_BLK_F_BLK_SIZE,
      BlkFeature.VIRTIO_BLK_F_FLUSH,
    ];
    if (options.eventIdx !== false) bits.push(VirtioFeature.VIRTIO_F_EVENT_IDX);
    if (options.indirect !== false) bits.push(VirtioFeature.VIRTIO_F_INDIRECT_DESC);
    if (numQueues > 1) bits.push(BlkFeature.VIRTIO_BLK_F_MQ);
    if (this.readOnly) bits.push(BlkFeature.VIRTIO_BLK_F_RO);
    if (this.#discard !== undefined) bits.push(BlkFeature.VIRTIO_BLK_F_DISCARD);
    if (this.#writeZeroes !== undefined) bits.push(BlkFeature.VIRTIO_BLK_F_WRITE_ZEROES);
    if (options.sizeMax !== undefined) bits.push(BlkFeature.VIRTIO_BLK_F_SIZE_MAX);
    this.deviceFeatures = featureSet(...bits);

    this.#config = this.#buildConfig(numQueues, options.sizeMax, backend.writeZeroesMayUnmap === true);
    this.#limits = this.#limitsFor(0n);
    this.#completions = this.queueMaxSizes.map(() => []);
  }

  // ---- configuration space (§5.2.4) ----

  #buildConfig(numQueues: number, sizeMax: number | undefined, mayUnmap: boolean): Uint8Array {
    const config = new Uint8Array(BLK_CONFIG_SIZE);
    const v = new DataView(config.buffer);
    v.setBigUint64(BLK_CONFIG_CAPACITY, BigInt(this.capacity), true);
    if (sizeMax !== undefined) v.setUint32(BLK_CONFIG_SIZE_MAX, u32Option('sizeMax', sizeMax, 1), true);
    v.setUint32(BLK_CONFIG_SEG_MAX, this.#segMax, true);
    v.setUint32(BLK_CONFIG_BLK_SIZE, this.#blockSize, true);
    // Informational without VIRTIO_BLK_F_CONFIG_WCE (not offered): the device caches writes until FLUSH.
    config[BLK_CONFIG_WRITEBACK] = 1;
    v.setUint16(BLK_CONFIG_NUM_QUEUES, numQueues, true);
    const sectorsPerBlock = this.#blockSize >> SECTOR_SHIFT;
    if (this.#discard !== undefined) {
      v.setUint32(BLK_CONFIG_MAX_DISCARD_SECTORS, this.#discard.maxSectors, true);
      v.setUint32(BLK_CONFIG_MAX_DISCARD_SEG, this.#discard.maxSegments, true);
      v.setUint32(BLK_CONFIG_DISCARD_SECTOR_ALIGNMENT, sectorsPerBlock, true);
    }
    if (this.#writeZeroes !== undefined) {
      v.setUint32(BLK_CONFIG_MAX_WRITE_ZEROES_SECTORS, this.#writeZeroes.maxSectors, true);
      v.setUint32(BLK_CONFIG_MAX_WRITE_ZEROES_SEG, this.#writeZeroes.maxSegments, true);
      config[BLK_CONFIG_WRITE_ZEROES_MAY_UNMAP] = mayUnmap ? 1 : 0;
    }
    return config;
  }

  readConfig(offset: number, dst: Uint8Array): void {
    dst.set(this.#config.subarray(offset, offset + dst.length));
  }

  /** Every field is read-only (`writeback` is writable only with VIRTIO_BLK_F_CONFIG_WCE, not offered). */
  writeConfig(): void {
    // Ignored.
  }

  // ---- lifecycle ----

  /** Back-end operations still in flight, of any generation. */
  get inFlight(): number {
    return this.#inFlight;
  }

  /** Resolves when no back-end operation is in flight (after a reset: no late write into guest buffers). */
  idle(): Promise<void> {
    if (this.#inFlight === 0) return Promise.resolve();
    return new Promise((resolve) => this.#idleWaiters.push(resolve));
  }

  activate(context: DeviceContext): void {
    this.#generation++;
    this.#context = context;
    this.#failed = false;
    this.#completions = this.queueMaxSizes.map(() => []);
    this.#limits = this.#limitsFor(context.features);
    this.#writethrough = !hasFeature(context.features, BlkFeature.VIRTIO_BLK_F_FLUSH);
    // Buffers made available before DRIVER_OK (without a kick) are served now.
    for (let i = 0; i < context.queues.length; i++) this.#drain(i);
  }

  queueNotify(queueIndex: number): void {
    this.#drain(queueIndex);
  }

  reset(): void {
    this.#generation++;
    this.#context = undefined;
    this.#failed = false;
    this.#completions = this.queueMaxSizes.map(() => []);
  }

  #limitsFor(features: bigint): BlkRequestLimits {
    return {
      capacity: this.capacity,
      readOnly: this.readOnly,
      blockSize: this.#blockSize,
      segMax: this.#segMax,
      discard: hasFeature(features, BlkFeature.VIRTIO_BLK_F_DISCARD) ? this.#discard : undefined,
      writeZeroes: hasFeature(features, BlkFeature.VIRTIO_BLK_F_WRITE_ZEROES) ? this.#writeZeroes : undefined,
    };
  }

  // ---- request processing ----

  /** Pops every available chain of queue `queueIndex` and starts it; §2.7.10 re-check after re-enabling. */
  #drain(queueIndex: number): void {
    const context = this.#context;
    const queue = context?.queues[queueIndex];
    if (context === undefined || queue === undefined || !queue.isActive) return;
    this.#draining++;
    try {
      for (;;) {
        if (this.#failed) return;
        queue.disableNotification();
        try {
          for (let chain = queue.popChain(); chain !== null; chain = queue.popChain()) {
            this.#start(queueIndex, chain);
            // #completions holds [head, len] pairs.
            if ((this.#completions[queueIndex] as number[]).length >= 2 * BLK_SYNC_PUBLISH_BATCH)
              this.#publishQueue(context, queueIndex);
          }
        } catch (e) {
          if (!(e instanceof GuestFault)) throw e;
          this.#failed = true;
          context.fail(e as GuestFault);
          return;
        }
        // What this pass completed synchronously: published now, before the re-check.
        this.#publishQueue(context, queueIndex);
        if (!queue.enableNotification()) return;
      }
    } finally {
      this.#draining--;
      // A pass cut short (a guest fault): its completions are published as asynchronous ones are.
      if (this.#draining === 0) this.#schedulePublish();
    }
  }

  /** Parses and submits one request; throws a GuestFault when it cannot be answered. */
  #start(queueIndex: number, chain: DescriptorChain): void {
    const request = parseBlkRequest(chain, this.#limits);
    this.stats.requests++;
    const generation = this.#generation;
    if (request.op === 'reject') {
      this.#onRequestError?.(request.error, queueIndex);
      this.#complete(generation, queueIndex, request, request.status);
      return;
    }
    if (request.op === 'get-id') {
      fillId(request.data, this.#serial);
      this.#complete(generation, queueIndex, request, VIRTIO_BLK_S_OK);
      return;
    }
    if (request.op === 'read' || (request.op === 'write' && !this.#writethrough)) {
      const backend = this.backend;
      if (request.op === 'read' ? backend.readvSync !== undefined : backend.writevSync !== undefined) {
        this.stats.synchronous++;
        this.#complete(generation, queueIndex, request, this.#executeSync(request, queueIndex));
        return;
      }
    }
    this.#inFlight++;
    const done = this.#execute(request, queueIndex);
    if (request.op === 'write' || request.op === 'discard' || request.op === 'write-zeroes') {
      this.#writes.add(done);
      void done.then(() => this.#writes.delete(done));
    }
    void done.then((status) => {
      this.#inFlight--;
      this.#complete(generation, queueIndex, request, status);
      if (this.#inFlight === 0) {
        const waiters = this.#idleWaiters;
        this.#idleWaiters = [];
        for (const w of waiters) w();
      }
    });
  }

  /** Runs one request against the back end; resolves with its status (never rejects). */
  async #execute(request: BlkRequest, queueIndex: number): Promise<number> {
    const backend = this.backend;
    try {
      switch (request.op) {
        case 'read':
          if (request.length > 0) await backend.readv(request.offset, request.data);
          break;
        case 'write':
          if (request.length > 0) await backend.writev(request.offset, request.data);
          if (this.#writethrough) await backend.flush();
          break;
        case 'flush': {
          // Every write-type request popped before this flush, on any queue, finishes first.
          const earlier = [...this.#writes];
          if (earlier.length > 0) await Promise.allSettled(earlier);
          await backend.flush();
          break;
        }
        case 'discard':
        case 'write-zeroes':
          await this.#ranges(request.op, request.ranges);
          if (this.#writethrough) await backend.flush();
          break;
        default:
          break;
      }
      return VIRTIO_BLK_S_OK;
    } catch (e) {
      return this.#failedRequest(e, request, queueIndex);
    }
  }

  /** A read or write through the back end's synchronous method (present: checked by the caller). */
  #executeSync(request: BlkRequest & { readonly op: 'read' | 'write' }, queueIndex: number): number {
    try {
      if (request.length > 0) {
        if (request.op === 'read') this.backend.readvSync?.(request.offset, request.data);
        else this.backend.writevSync?.(request.offset, request.data);
      }
      return VIRTIO_BLK_S_OK;
    } catch (e) {
      return this.#failedRequest(e, request, queueIndex);
    }
  }

  /** Reports a back-end failure and gives the status that answers it. */
  #failedRequest(e: unknown, request: BlkRequest, queueIndex: number): number {
    const error =
      e instanceof HostIoError
        ? e
        : new HostIoError(
            `block back end failed: ${e instanceof Error ? e.message : String(e)}`,
            request.op,
            {
              cause: e,
            },
          );
    this.#onRequestError?.(error, queueIndex);
    return VIRTIO_BLK_S_IOERR;
  }

  async #ranges(op: 'discard' | 'write-zeroes', ranges: readonly BlkRange[]): Promise<void> {
    const backend = this.backend;
    for (const r of ranges) {
      if (r.length === 0) continue;
      if (op === 'discard') await backend.discard?.(r.offset, r.length);
      else if (backend.writeZeroes !== undefined) await backend.writeZeroes(r.offset, r.length, r.unmap);
    }
  }

  /**
   * Writes the status byte and queues the used element, unless the device was reset since the request was
   * popped (then nothing in guest memory is touched).
   */
  #complete(generation: number, queueIndex: number, request: BlkRequest, status: number): void {
    const context = this.#context;
    if (generation !== this.#generation || context === undefined) {
      this.stats.dropped++;
      return;
    }
    context.memory.writeU8(request.statusAddress, status);
    (this.#completions[queueIndex] as number[]).push(request.head, request.usedLength);
    // Inside a pass over the ring, #drain publishes when the pass ends.
    if (this.#draining === 0) this.#schedulePublish();
  }

  #schedulePublish(): void {
    if (this.#publishScheduled || !this.#completions.some((pending) => pending.length > 0)) return;
    this.#publishScheduled = true;
    queueMicrotask(this.#publish);
  }

  /** Adds every pending used element, one used.idx store per queue, and interrupts where the driver wants. */
  readonly #publish = (): void => {
    this.#publishScheduled = false;
    const context = this.#context;
    if (context === undefined) return;
    for (let queueIndex = 0; queueIndex < this.#completions.length; queueIndex++)
      this.#publishQueue(context, queueIndex);
  };

  /** Publishes queue `queueIndex`'s pending used elements (one used.idx store) and interrupts if asked. */
  #publishQueue(context: DeviceContext, queueIndex: number): void {
    const pending = this.#completions[queueIndex];
    if (pending === undefined || pending.length === 0) return;
    const queue = context.queues[queueIndex];
    if (queue === undefined) return;
    for (let i = 0; i < pending.length; i += 2) queue.addUsed(pending[i] as number, pending[i + 1] as number);
    this.stats.completed += pending.length >> 1;
    pending.length = 0;
    queue.publishUsed();
    this.stats.publishes++;
    if (queue.needsNotification()) {
      this.stats.interrupts++;
      context.interrupt.signalUsed(queueIndex);
    }
  }
}

/** Copies the id into the data views, NUL-padding the rest of the data area (§5.2.6: a NUL-padded string). */
function fillId(data: readonly Uint8Array[], id: Uint8Array): void {
  let done = 0;
  for (const view of data) {
    const n = Math.max(0, Math.min(view.length, id.length - done));
    if (n > 0) view.set(id.subarray(done, done + n));
    view.fill(0, n);
    done += n;
  }
}

function encodeSerial(serial: string): Uint8Array {
  if (serial.length > VIRTIO_BLK_ID_BYTES) {
    throw new UsageError(
      'INVALID_ARGUMENT',
      `serial "${serial}" is longer than ${VIRTIO_BLK_ID_BYTES} bytes`,
      serial,
    );
  }
  const bytes = new Uint8Array(serial.length);
  for (let i = 0; i < serial.length; i++) {
    const c = serial.charCodeAt(i);
    if (c === 0 || c > 0x7f) {
      throw new UsageError('INVALID_ARGUMENT', `serial "${serial}" is not NUL-free ASCII`, serial);
    }
    bytes[i] = c;
  }
  return bytes;
}

function u32Option(name: string, value: number, min: number): number {
  if (!Number.isInteger(value) || value < min || value > 0xffff_ffff) {
    throw new UsageError('INVALID_ARGUMENT', `${name} ${value} is not a u32 ≥ ${min}`, value);
  }
  return value;
}
