/**
 * # virtio-rng driver (VIRTIO 1.2 §5.4, after Linux drivers/char/hw_random/virtio-rng.c)
 *
 * `VirtioRngDriver` registers on a {@link VirtioBus} (id table: device 4, any vendor; no feature bits) and works on
 * any transport that implements the driver model's config ops. Probe sets up the one queue (`requestq`).
 *
 * The bound device's API is a {@link VirtioRngSource} (`driver.source(dev)`); `driver.read(n)` reads from the first
 * bound device. `read(n)` resolves to exactly `n` random bytes: it posts device-writable buffers from the
 * transport's allocator (guest memory the device can reach), one request per chunk of at most
 * {@link VirtioRngDriverOptions.chunkSize} bytes, several in flight (up to the ring size, the rest waiting in a
 * backlog), and asks again while the device has filled fewer bytes than were asked (the used length may be
 * anything from 0 to the buffer's size). Concurrent reads share the queue. Kicks are coalesced per microtask.
 *
 * Errors are {@link RngDriverError} with `code`: INVALID_ARGUMENT (thrown before anything is sent),
 * QUEUE_BROKEN (the device returned a bad used element), REMOVED (the device was removed with reads pending, or
 * is used afterwards), NOT_BOUND.
 */
import { DriverError, boundData, queueBrokenMessage } from '../driver-error.js';
import { VIRTIO_ID_RNG } from '../../devices/rng/rng-device.js';
import type { VirtioBusDevice } from '../../virtio/driver/virtio-bus-device.js';
import { VIRTIO_DEV_ANY_ID, type VirtioDriver } from '../../virtio/driver/virtio-driver.js';
import type { Virtqueue } from '../../virtio/driver/virtqueue.js';
import { UsageError } from '../../virtio/errors.js';
import type { GuestAllocator } from '../../virtio/guest-allocator.js';
import type { GuestMemory } from '../../virtio/guest-memory.js';

/** Default largest buffer of one request. */
export const RNG_DEFAULT_CHUNK = 16 * 1024;
/** Most bytes one `read` may ask for (a guard against asking for absurd amounts by mistake). */
export const RNG_MAX_READ = 1 << 30;

export type RngDriverErrorCode = 'INVALID_ARGUMENT' | 'QUEUE_BROKEN' | 'REMOVED' | 'NOT_BOUND';

export class RngDriverError extends DriverError<RngDriverErrorCode> {}

export interface VirtioRngDriverOptions {
  /** Largest buffer of one request in bytes (default {@link RNG_DEFAULT_CHUNK}). */
  readonly chunkSize?: number;
  /** Ring size (default: the device's maximum). */
  readonly queueSize?: number;
}

/** One buffer on the ring; also its token. */
interface Request {
  readonly addr: number;
  readonly len: number;
  readonly resolve: (bytes: number) => void;
  readonly reject: (error: Error) => void;
}

/** A bound virtio-rng device: the driver's per-device state and its API. */
export class VirtioRngSource {
  readonly dev: VirtioBusDevice;
  readonly memory: GuestMemory;
  readonly allocator: GuestAllocator;
  readonly chunkSize: number;
  #vq: Virtqueue<Request> | undefined;
  readonly #inFlight = new Set<Request>();
  readonly #backlog: Request[] = [];
  #kickPending = false;
  #removed: RngDriverError | undefined;

  /** @internal made by the driver's probe */
  constructor(dev: VirtioBusDevice, chunkSize: number) {
    this.dev = dev;
    this.memory = dev.ops.memory;
    this.allocator = dev.ops.allocator;
    this.chunkSize = chunkSize;
  }

  /** Requests on the ring or waiting for room. */
  get inFlight(): number {
    return this.#inFlight.size + this.#backlog.length;
  }

  /** Exactly `n` random bytes from the device. */
  async read(n: number): Promise<Uint8Array> {
    if (!Number.isSafeInteger(n) || n < 0 || n > RNG_MAX_READ) {
      throw new RngDriverError(
        'INVALID_ARGUMENT',
        `byte count ${n} is not an integer in 0..${RNG_MAX_READ}`,
        n,
      );
    }
    this.#checkLive();
    const out = new Uint8Array(n);
    if (n === 0) return out;
    const vq = this.#vq;
    // Enough chunks to fill the ring, no more: further requests are posted as earlier ones complete.
    const parallel = Math.max(1, Math.min(Math.ceil(n / this.chunkSize), vq?.size ?? 1));
    let filled = 0;
    let asked = 0;
    const worker = async (): Promise<void> => {
      while (asked < n) {
        const len = Math.min(this.chunkSize, n - asked);
        asked += len;
        const req = this.#request(len);
        let got: number;
        try {
          got = await this.#submit(req);
          const take = Math.min(got, n - filled);
          this.memory.read(req.addr, out.subarray(filled, filled + take));
          filled += take;
        } finally {
          this.allocator.free(req.addr);
        }
        // A short fill: ask again for what is missing.
        asked -= len - Math.min(got, len);
      }
    };
    await Promise.all(Array.from({ length: parallel }, worker));
    return out;
  }

  // ---- driver internals ----

  /** @internal */
  _setQueue(vq: Virtqueue<Request>): void {
    this.#vq = vq;
  }

  /** @internal The queue's interrupt: complete every used request (Linux random_recv_done). */
  _done(vq: Virtqueue<Request>): void {
    try {
      do {
        vq.disableCb();
        let used;
        while ((used = vq.getBuf()) !== null) {
          this.#inFlight.delete(used.token);
          used.token.resolve(used.len);
        }
      } while (!vq.enableCb());
    } catch (e) {
      this.#failAll(this.#brokenError(e));
      return;
    }
    this.#drainBacklog();
  }

  /** @internal Fails everything left (device removed or reset). */
  _fail(error: RngDriverError): void {
    this.#removed ??= error;
    this.#failAll(error);
  }

  /** @internal After reset: takes back buffers the device never used (their memory is freed by `read`). */
  _detachAll(): void {
    const vq = this.#vq;
    if (vq === undefined) return;
    while (vq.detachUnusedBuf() !== null) {
      // already failed by _fail
    }
  }

  #request(len: number): Request {
    const addr = this.allocator.alloc(len, 16);
    let resolve!: (bytes: number) => void;
    let reject!: (error: Error) => void;
    const done = new Promise<number>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    const req: Request & { done: Promise<number> } = { addr, len, resolve, reject, done };
    return req;
  }

  /** Puts the request on the ring (or the backlog); resolves to the number of bytes the device wrote. */
  #submit(req: Request): Promise<number> {
    const done = (req as Request & { done: Promise<number> }).done;
    const vq = this.#vq;
    if (this.#removed !== undefined) {
      req.reject(this.#removed);
    } else if (vq === undefined) {
      req.reject(new RngDriverError('NOT_BOUND', `${this.dev.name}: no request queue`, 0));
    } else if (vq.isBroken()) {
      req.reject(this.#brokenError(vq.brokenReason));
    } else if (this.#backlog.length !== 0 || !this.#add(vq, req)) {
      this.#backlog.push(req);
    }
    return done;
  }

  /** Adds to the ring; false when full. */
  #add(vq: Virtqueue<Request>, req: Request): boolean {
    try {
      vq.addInbuf([{ addr: req.addr, len: req.len }], req);
    } catch (e) {
      if (e instanceof UsageError && e.code === 'QUEUE_FULL') return false;
      req.reject(
        e instanceof UsageError && e.code === 'QUEUE_BROKEN'
          ? this.#brokenError(vq.brokenReason)
          : e instanceof Error
            ? e
            : new Error(String(e)),
      );
      return true;
    }
    this.#inFlight.add(req);
    if (!this.#kickPending) {
      this.#kickPending = true;
      queueMicrotask(() => {
        this.#kickPending = false;
        if (!vq.isBroken()) vq.kick();
      });
    }
    return true;
  }

  #drainBacklog(): void {
    const vq = this.#vq;
    if (vq === undefined) return;
    while (this.#backlog.length !== 0) {
      if (!this.#add(vq, this.#backlog[0] as Request)) return;
      this.#backlog.shift();
    }
  }

  #failAll(error: RngDriverError): void {
    for (const req of [...this.#inFlight, ...this.#backlog.splice(0)]) {
      this.#inFlight.delete(req);
      req.reject(error);
    }
  }

  #brokenError(cause: unknown): RngDriverError {
    return new RngDriverError(
      'QUEUE_BROKEN',
      queueBrokenMessage(this.dev, this.#vq?.name ?? 'requestq', cause),
      0,
      { cause },
    );
  }

  #checkLive(): void {
    if (this.#removed !== undefined) throw this.#removed;
  }
}

/** The virtio-rng driver; one instance serves any number of devices. */
export class VirtioRngDriver implements VirtioDriver {
  readonly name = 'virtio-rng';
  readonly idTable = [{ device: VIRTIO_ID_RNG, vendor: VIRTIO_DEV_ANY_ID }];
  readonly featureTable: readonly number[] = [];
  readonly #options: VirtioRngDriverOptions;
  readonly #bound: VirtioBusDevice[] = [];

  constructor(options: VirtioRngDriverOptions = {}) {
    const chunk = options.chunkSize;
    if (chunk !== undefined && (!Number.isSafeInteger(chunk) || chunk <= 0 || chunk > 2 ** 31)) {
      throw new RngDriverError('INVALID_ARGUMENT', `chunk size ${chunk} is not a positive byte count`, chunk);
    }
    this.#options = options;
  }

  /** The devices this driver is bound to, in probe order. */
  get devices(): readonly VirtioBusDevice[] {
    return this.#bound;
  }

  /** The random source of a device this driver is bound to. */
  source(dev: VirtioBusDevice): VirtioRngSource {
    return boundData(
      dev,
      this,
      VirtioRngSource,
      (message, options) => new RngDriverError('NOT_BOUND', message, dev.index, options),
    );
  }

  /** Exactly `n` random bytes from the first bound device (Linux's current hwrng). */
  read(n: number): Promise<Uint8Array> {
    const dev = this.#bound[0];
    if (dev === undefined) {
      return Promise.reject(new RngDriverError('NOT_BOUND', `${this.name} has no device`, n));
    }
    return this.source(dev).read(n);
  }

  async probe(dev: VirtioBusDevice): Promise<void> {
    const source = new VirtioRngSource(dev, this.#options.chunkSize ?? RNG_DEFAULT_CHUNK);
    const size = this.#options.queueSize;
    const [vq] = await dev.findVqs([
      {
        name: 'requestq',
        callback: (q: Virtqueue) => {
          source._done(q as Virtqueue<Request>);
        },
        ...(size === undefined ? {} : { size }),
      },
    ]);
    if (vq === null || vq === undefined) {
      throw new RngDriverError('NOT_BOUND', `${dev.name}: the transport made no request queue`, 0);
    }
    source._setQueue(vq as Virtqueue<Request>);
    dev.driverData = source;
    this.#bound.push(dev);
  }

  async remove(dev: VirtioBusDevice): Promise<void> {
    const source = dev.driverData instanceof VirtioRngSource ? dev.driverData : undefined;
    const i = this.#bound.indexOf(dev);
    if (i >= 0) this.#bound.splice(i, 1);
    await dev.reset();
    source?._fail(new RngDriverError('REMOVED', `${dev.name} was removed`, dev.index));
    source?._detachAll();
    await dev.delVqs();
  }
}
