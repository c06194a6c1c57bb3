/**
 * # virtio-balloon driver (VIRTIO 1.2 §5.5, after Linux drivers/virtio/virtio_balloon.c)
 *
 * `VirtioBalloonDriver` registers on a {@link VirtioBus} (id table: device 5, any vendor) and works on any
 * transport that implements the driver model's config ops. The pages it puts in the balloon are real 4 KiB
 * pages of guest memory, taken from the transport's allocator (so nothing else in ringvm uses them while the
 * device has them) and given back to it on deflate.
 *
 * - **Inflate** (queue 0): pages allocated page-aligned from `ops.allocator`, their page frame numbers (guest
 *   address >> 12, le32) sent in batches of at most {@link BALLOON_PFNS_PER_BUFFER}; once the device has used a
 *   batch, `actual` in the configuration is updated (Linux update_balloon_size).
 * - **Deflate** (queue 1): the device is always told before a page is used again (as if MUST_TELL_HOST had been
 *   negotiated), then the pages go back to the allocator and `actual` is updated.
 * - **Target**: the device's `num_pages` is read at probe and on every configuration-change interrupt, and the
 *   balloon moves towards it; `setTarget(pages)` sets a target of the driver's own (the next device change
 *   overrides it). Moves are serialized; `settled()` resolves when the balloon is at its target (or as close as
 *   the allocator allowed: an inflate stops early when no page is free, like Linux when alloc_page fails).
 * - **Stats** (queue 2, VIRTIO_BALLOON_F_STATS_VQ): after DRIVER_OK one buffer of statistics is queued; the
 *   device returns it when it wants fresh numbers (its request), and the driver answers with a new buffer:
 *   MEMFREE and AVAIL (bytes free in the allocator), MEMTOT (guest memory size).
 *
 * Errors are {@link BalloonDriverError} with `code`: INVALID_ARGUMENT (thrown before anything is sent),
 * QUEUE_BROKEN, REMOVED, NOT_BOUND, BAD_CONFIG (a target beyond guest memory is clamped, never refused).
 */
import { DriverError, boundData, queueBrokenMessage } from '../driver-error.js';
import type { VirtioBusDevice } from '../../virtio/driver/virtio-bus-device.js';
import { VIRTIO_DEV_ANY_ID, type VirtioDriver } from '../../virtio/driver/virtio-driver.js';
import type { Virtqueue } from '../../virtio/driver/virtqueue.js';
import type { GuestAllocator } from '../../virtio/guest-allocator.js';
import type { GuestMemory } from '../../virtio/guest-memory.js';

export const VIRTIO_ID_BALLOON = 5;
/** Balloon page size: PFNs are in 4 KiB units whatever the guest's page size (VIRTIO_BALLOON_PFN_SHIFT). */
export const BALLOON_PAGE_SHIFT = 12;
export const BALLOON_PAGE_SIZE = 1 << BALLOON_PAGE_SHIFT;
/** PFNs per inflate/deflate buffer (Linux VIRTIO_BALLOON_ARRAY_PFNS_MAX). */
export const BALLOON_PFNS_PER_BUFFER = 256;

export const BalloonFeature = {
  VIRTIO_BALLOON_F_MUST_TELL_HOST: 0,
  VIRTIO_BALLOON_F_STATS_VQ: 1,
  VIRTIO_BALLOON_F_DEFLATE_ON_OOM: 2,
} as const;

/** `struct virtio_balloon_config` offsets. */
export const BALLOON_CONFIG_NUM_PAGES = 0;
export const BALLOON_CONFIG_ACTUAL = 4;

/** Statistic tags (`struct virtio_balloon_stat`: le16 tag, le64 val, packed: 10 bytes). */
export const BalloonStatTag = {
  SWAP_IN: 0,
  SWAP_OUT: 1,
  MAJFLT: 2,
  MINFLT: 3,
  MEMFREE: 4,
  MEMTOT: 5,
  AVAIL: 6,
  CACHES: 7,
} as const;
export const BALLOON_STAT_SIZE = 10;

export type BalloonDriverErrorCode =
  'INVALID_ARGUMENT' | 'QUEUE_BROKEN' | 'REMOVED' | 'NOT_BOUND' | 'BAD_CONFIG';

export class BalloonDriverError extends DriverError<BalloonDriverErrorCode> {}

/** A statistic as sent to the device. */
export interface BalloonStat {
  readonly tag: number;
  readonly value: bigint;
}

interface Waiter {
  readonly resolve: () => void;
  readonly reject: (error: Error) => void;
}

/** A bound virtio-balloon device: the pages it holds, its target, and the moves between them. */
export class VirtioBalloon {
  readonly dev: VirtioBusDevice;
  readonly memory: GuestMemory;
  readonly allocator: GuestAllocator;
  /** Guest addresses of the pages in the balloon, in inflate order (deflate takes the newest first). */
  readonly #pages: number[] = [];
  #target = 0;
  #inflateq: Virtqueue<Waiter> | undefined;
  #deflateq: Virtqueue<Waiter> | undefined;
  #statsq: Virtqueue<number> | undefined;
  /** The PFN array of one inflate/deflate buffer (one move at a time, so one buffer serves both queues). */
  #pfnBuffer = 0;
  #statsBuffer = 0;
  #chain: Promise<void> = Promise.resolve();
  #removed: BalloonDriverError | undefined;
  #lastError: Error | undefined;
  /** Stats requests answered (the device returned the stats buffer and got a fresh one). */
  statsRequests = 0;

  /** @internal made by the driver's probe */
  constructor(dev: VirtioBusDevice) {
    this.dev = dev;
    this.memory = dev.ops.memory;
    this.allocator = dev.ops.allocator;
  }

  /** Pages in the balloon (what `actual` tells the device). */
  get actual(): number {
    return this.#pages.length;
  }

  /** The number of pages the balloon is moving towards. */
  get target(): number {
    return this.#target;
  }

  /** Whether the stats queue was negotiated. */
  get hasStats(): boolean {
    return this.#statsq !== undefined;
  }

  /** The last failure of a background move (a configuration-change target), if any. */
  get lastError(): Error | undefined {
    return this.#lastError;
  }

  /** Moves the balloon to `pages` and resolves when it got there (or as close as free memory allowed). */
  setTarget(pages: number): Promise<void> {
    this.#checkLive();
    if (!Number.isSafeInteger(pages) || pages < 0 || pages > 0xffff_ffff) {
      throw new BalloonDriverError('INVALID_ARGUMENT', `balloon target ${pages} is not a page count`, pages);
    }
    this.#target = pages;
    return this.#enqueue();
  }

  /** Adds `pages` pages to the balloon (target += pages). */
  inflate(pages: number): Promise<void> {
    this.#checkCount(pages);
    return this.setTarget(this.#target + pages);
  }

  /** Takes `pages` pages out of the balloon (target −= pages, not below 0). */
  deflate(pages: number): Promise<void> {
    this.#checkCount(pages);
    return this.setTarget(Math.max(0, this.#target - pages));
  }

  /** Resolves when every move asked so far has finished. */
  settled(): Promise<void> {
    return this.#chain.catch(() => undefined);
  }

  /** The statistics the driver reports now. */
  currentStats(): BalloonStat[] {
    const free = BigInt(this.allocator.available);
    return [
      { tag: BalloonStatTag.MEMFREE, value: free },
      { tag: BalloonStatTag.MEMTOT, value: BigInt(this.memory.size) },
      { tag: BalloonStatTag.AVAIL, value: free },
    ];
  }

  // ---- driver internals ----

  /** @internal */
  _setQueues(inflateq: Virtqueue, deflateq: Virtqueue, statsq: Virtqueue | undefined): void {
    this.#inflateq = inflateq as Virtqueue<Waiter>;
    this.#deflateq = deflateq as Virtqueue<Waiter>;
    this.#statsq = statsq as Virtqueue<number> | undefined;
    this.#pfnBuffer = this.allocator.alloc(4 * BALLOON_PFNS_PER_BUFFER, 64);
    if (statsq !== undefined) this.#statsBuffer = this.allocator.alloc(BALLOON_STAT_SIZE * 8, 16);
  }

  /** @internal After DRIVER_OK: primes the stats queue with a first buffer (Linux init_vqs). */
  _startStats(): void {
    if (this.#statsq !== undefined) this.#sendStats();
  }

  /** @internal A used inflate/deflate buffer: wake its waiter. */
  _done(vq: Virtqueue<Waiter>): void {
    try {
      do {
        vq.disableCb();
        let used;
        while ((used = vq.getBuf()) !== null) used.token.resolve();
      } while (!vq.enableCb());
    } catch (e) {
      this.#breakQueue(vq, e);
    }
  }

  /** @internal The device returned the stats buffer: that is its request for fresh statistics. */
  _statsDone(vq: Virtqueue<number>): void {
    try {
      let got = false;
      do {
        vq.disableCb();
        while (vq.getBuf() !== null) got = true;
      } while (!vq.enableCb());
      if (got && this.#removed === undefined) {
        this.statsRequests++;
        this.#sendStats();
      }
    } catch (e) {
      this.#lastError = toError(e);
    }
  }

  /** @internal The device's num_pages changed (or probe): follow it. */
  _followDevice(numPages: number): void {
    if (this.#removed !== undefined) return;
    this.#target = numPages;
    this.#enqueue().catch((e: unknown) => {
      this.#lastError = toError(e);
    });
  }

  /** @internal Device removed: pending moves fail; the pages are reclaimed (the device is reset). */
  _remove(error: BalloonDriverError): void {
    this.#removed ??= error;
  }

  /** @internal After reset: every page back to the allocator, buffers freed. */
  _releaseAll(): void {
    for (const vq of [this.#inflateq, this.#deflateq]) {
      let w;
      while (vq !== undefined && (w = vq.detachUnusedBuf()) !== null)
        w.reject(this.#removed ?? removedError(this));
    }
    while (this.#statsq !== undefined && this.#statsq.detachUnusedBuf() !== null) {
      // the stats buffer is freed below
    }
    for (const page of this.#pages.splice(0)) this.allocator.free(page);
    if (this.#pfnBuffer !== 0) this.allocator.free(this.#pfnBuffer);
    if (this.#statsBuffer !== 0) this.allocator.free(this.#statsBuffer);
    this.#pfnBuffer = 0;
    this.#statsBuffer = 0;
  }

  #enqueue(): Promise<void> {
    const next = this.#chain.catch(() => undefined).then(() => this.#move());
    this.#chain = next;
    return next;
  }

  /** Inflates or deflates in batches until `actual` equals the target (read afresh after each batch). */
  async #move(): Promise<void> {
    for (;;) {
      this.#checkLive();
      const diff = this.#target - this.#pages.length;
      if (diff === 0) return;
      if (diff > 0) {
        if (!(await this.#inflateBatch(Math.min(diff, BALLOON_PFNS_PER_BUFFER)))) return;
      } else {
        await this.#deflateBatch(Math.min(-diff, BALLOON_PFNS_PER_BUFFER));
      }
      await this.dev.writeConfigU32(BALLOON_CONFIG_ACTUAL, this.#pages.length);
    }
  }

  /** One inflate buffer; false when no page could be allocated (out of memory: stop where we are). */
  async #inflateBatch(n: number): Promise<boolean> {
    const pages: number[] = [];
    for (let i = 0; i < n; i++) {
      const page = this.allocator.tryAlloc(BALLOON_PAGE_SIZE, BALLOON_PAGE_SIZE);
      if (page < 0) break;
      pages.push(page);
    }
    if (pages.length === 0) return false;
    try {
      await this.#tell(this.#inflateq, pages);
    } catch (e) {
      for (const p of pages) this.allocator.free(p);
      throw e;
    }
    this.#pages.push(...pages);
    return true;
  }

  async #deflateBatch(n: number): Promise<void> {
    const pages = this.#pages.slice(this.#pages.length - n);
    await this.#tell(this.#deflateq, pages);
    this.#pages.length -= n;
    for (const p of pages) this.allocator.free(p);
  }

  /** Sends one PFN array on `vq` and waits until the device has used it. */
  #tell(vq: Virtqueue<Waiter> | undefined, pages: readonly number[]): Promise<void> {
    if (vq === undefined) {
      return Promise.reject(new BalloonDriverError('NOT_BOUND', `${this.dev.name}: no queues`, 0));
    }
    pages.forEach((page, i) => {
      this.memory.writeU32(this.#pfnBuffer + 4 * i, page / BALLOON_PAGE_SIZE);
    });
    return new Promise<void>((resolve, reject) => {
      try {
        vq.addOutbuf([{ addr: this.#pfnBuffer, len: 4 * pages.length }], { resolve, reject });
        vq.kick();
      } catch (e) {
        reject(this.#brokenError(vq, e));
      }
    });
  }

  #sendStats(): void {
    const vq = this.#statsq;
    if (vq === undefined) return;
    const stats = this.currentStats();
    stats.forEach((s, i) => {
      const at = this.#statsBuffer + BALLOON_STAT_SIZE * i;
      this.memory.writeU16(at, s.tag);
      this.memory.writeU64(at + 2, s.value);
    });
    try {
      vq.addOutbuf([{ addr: this.#statsBuffer, len: BALLOON_STAT_SIZE * stats.length }], 0);
      vq.kick();
    } catch (e) {
      this.#lastError = toError(e);
    }
  }

  #breakQueue(vq: Virtqueue<Waiter>, cause: unknown): void {
    const error = this.#brokenError(vq, cause);
    this.#lastError = error;
    let w;
    while ((w = vq.detachUnusedBuf()) !== null) w.reject(error);
  }

  #brokenError(vq: Virtqueue<Waiter>, cause: unknown = vq.brokenReason): BalloonDriverError {
    return new BalloonDriverError('QUEUE_BROKEN', queueBrokenMessage(this.dev, vq.name, cause), vq.index, {
      cause,
    });
  }

  #checkLive(): void {
    if (this.#removed !== undefined) throw this.#removed;
  }

  #checkCount(pages: number): void {
    if (!Number.isSafeInteger(pages) || pages < 0) {
      throw new BalloonDriverError(
        'INVALID_ARGUMENT',
        `page count ${pages} is not a non-negative integer`,
        pages,
      );
    }
  }
}

function removedError(b: VirtioBalloon): BalloonDriverError {
  return new BalloonDriverError('REMOVED', `${b.dev.name} was removed`, b.dev.index);
}

function toError(e: unknown): Error {
  return e instanceof Error ? e : new Error(String(e));
}

export interface VirtioBalloonDriverOptions {
  /** Follow the device's num_pages (default true); false: only `setTarget` moves the balloon. */
  readonly followDevice?: boolean;
}

/** The virtio-balloon driver; one instance serves any number of devices. */
export class VirtioBalloonDriver implements VirtioDriver {
  readonly name = 'virtio-balloon';
  readonly idTable = [{ device: VIRTIO_ID_BALLOON, vendor: VIRTIO_DEV_ANY_ID }];
  readonly featureTable = [
    BalloonFeature.VIRTIO_BALLOON_F_MUST_TELL_HOST,
    BalloonFeature.VIRTIO_BALLOON_F_STATS_VQ,
  ];
  readonly #options: VirtioBalloonDriverOptions;

  constructor(options: VirtioBalloonDriverOptions = {}) {
    this.#options = options;
  }

  /** The balloon of a device this driver is bound to. */
  balloon(dev: VirtioBusDevice): VirtioBalloon {
    return boundData(
      dev,
      this,
      VirtioBalloon,
      (message, options) => new BalloonDriverError('NOT_BOUND', message, dev.index, options),
    );
  }

  async probe(dev: VirtioBusDevice): Promise<void> {
    const balloon = new VirtioBalloon(dev);
    const stats = dev.hasFeature(BalloonFeature.VIRTIO_BALLOON_F_STATS_VQ);
    const vqs = await dev.findVqs([
      {
        name: 'inflate',
        callback: (vq) => {
          balloon._done(vq as Virtqueue<Waiter>);
        },
      },
      {
        name: 'deflate',
        callback: (vq) => {
          balloon._done(vq as Virtqueue<Waiter>);
        },
      },
      ...(stats
        ? [
            {
              name: 'stats',
              callback: (vq: Virtqueue) => {
                balloon._statsDone(vq as Virtqueue<number>);
              },
            },
          ]
        : []),
    ]);
    const [inflateq, deflateq, statsq] = vqs;
    if (inflateq === null || inflateq === undefined || deflateq === null || deflateq === undefined) {
      throw new BalloonDriverError('BAD_CONFIG', `${dev.name}: inflate/deflate queues missing`, vqs.length);
    }
    balloon._setQueues(inflateq, deflateq, statsq ?? undefined);
    dev.driverData = balloon;
    await dev.ready();
    balloon._startStats();
    if (this.#options.followDevice !== false) {
      balloon._followDevice(await dev.readConfigU32(BALLOON_CONFIG_NUM_PAGES));
    }
  }

  async remove(dev: VirtioBusDevice): Promise<void> {
    const balloon = dev.driverData instanceof VirtioBalloon ? dev.driverData : undefined;
    balloon?._remove(new BalloonDriverError('REMOVED', `${dev.name} was removed`, dev.index));
    await dev.reset();
    balloon?._releaseAll();
    await dev.delVqs();
  }

  configChanged(dev: VirtioBusDevice): void {
    const balloon = dev.driverData instanceof VirtioBalloon ? dev.driverData : undefined;
    if (balloon === undefined || this.#options.followDevice === false) return;
    void dev.readConfigU32(BALLOON_CONFIG_NUM_PAGES).then(
      (numPages) => {
        balloon._followDevice(numPages);
      },
      () => undefined,
    );
  }
}
