/**
 * `RngDevice`: virtio entropy device (VIRTIO 1.2 §5.4). One queue, `requestq`: the driver makes device-writable
 * buffers available and the device fills them with random bytes; the used length is the number of bytes filled.
 *
 * The bytes come from an injected entropy source, by default `globalThis.crypto.getRandomValues` (WebCrypto: no
 * Node import, so the device runs in a worker or a browser too), asked for at most
 * {@link RNG_SOURCE_CHUNK_BYTES} at a time (WebCrypto's per-call limit). The source fills a private scratch
 * buffer that is then copied into guest memory, so a source that refuses views over shared memory (browsers'
 * getRandomValues does) works with shared guest memory as well.
 *
 * Hostile input: device-readable descriptors (§5.4.6.1: the driver MUST NOT place driver-readable buffers) are
 * skipped, and a chain with no writable part is returned with used length 0 — neither is worth a reset. A
 * request is served up to {@link RNG_MAX_REQUEST_BYTES}: a chain may describe up to 4 GiB by pointing many
 * descriptors at the same pages, and the device must not spend unbounded time on one buffer.
 *
 * ```ts
 * const rng = new RngDevice();                                  // crypto.getRandomValues
 * const fixed = new RngDevice({ source: (buf) => buf.fill(7) }); // deterministic, for tests
 * ```
 */
import type { DeviceContext, VirtioDevice } from '../../virtio/device/virtio-device.js';
import { GuestFault, UsageError } from '../../virtio/errors.js';
import { TRANSPORT_FEATURES } from '../../virtio/features.js';
import type { DescriptorChain } from '../../virtio/split/descriptor-chain.js';
import type { SplitQueue } from '../../virtio/split/split-queue.js';

/** Virtio device id of the entropy device (§5). */
export const VIRTIO_ID_RNG = 4;
/** The only queue. */
export const RNG_REQUEST_QUEUE = 0;
/** Default maximum queue size. */
export const RNG_DEFAULT_QUEUE_SIZE = 64;
/** Largest buffer handed to the entropy source in one call (WebCrypto getRandomValues refuses more than 65536). */
export const RNG_SOURCE_CHUNK_BYTES = 65536;
/** Most bytes one request is filled with (see the module comment); Linux asks for at most a few KiB. */
export const RNG_MAX_REQUEST_BYTES = 1 << 20;

/** Fills `buf` with random bytes. */
export type EntropySource = (buf: Uint8Array) => void;

export interface RngDeviceOptions {
  /** Entropy source (default `globalThis.crypto.getRandomValues`). */
  readonly source?: EntropySource;
  /** Maximum queue size (default {@link RNG_DEFAULT_QUEUE_SIZE}). */
  readonly queueSize?: number;
  /** Most bytes per request (default {@link RNG_MAX_REQUEST_BYTES}). */
  readonly maxRequestBytes?: number;
}

export class RngDevice implements VirtioDevice {
  readonly deviceType = VIRTIO_ID_RNG;
  readonly deviceFeatures = TRANSPORT_FEATURES;
  readonly queueMaxSizes: readonly number[];
  /** The entropy device has no configuration space (§5.4.4). */
  readonly configSize = 0;

  /** Requests served since construction. */
  requests = 0;
  /** Random bytes written into guest buffers since construction. */
  bytes = 0;

  readonly #source: EntropySource;
  readonly #maxRequest: number;
  readonly #scratch = new Uint8Array(RNG_SOURCE_CHUNK_BYTES);
  #context: DeviceContext | undefined;
  #failed = false;

  constructor(options: RngDeviceOptions = {}) {
    this.#source = options.source ?? defaultSource();
    this.queueMaxSizes = [options.queueSize ?? RNG_DEFAULT_QUEUE_SIZE];
    const max = options.maxRequestBytes ?? RNG_MAX_REQUEST_BYTES;
    if (!Number.isSafeInteger(max) || max < 1) {
      throw new UsageError('INVALID_ARGUMENT', `maxRequestBytes ${max} is not a positive integer`, max);
    }
    this.#maxRequest = max;
  }

  readConfig(): void {
    // No configuration space: the controller never calls this with a non-empty range.
  }

  writeConfig(): void {
    // No configuration space.
  }

  activate(context: DeviceContext): void {
    this.#context = context;
    this.#failed = false;
    this.#serve();
  }

  queueNotify(queueIndex: number): void {
    if (queueIndex === RNG_REQUEST_QUEUE) this.#serve();
  }

  reset(): void {
    this.#context = undefined;
    this.#failed = false;
  }

  /** Fills every available request, in batches (one used.idx store each), then re-enables kicks and re-checks. */
  #serve(): void {
    const context = this.#context;
    const queue: SplitQueue | undefined = context?.queues[RNG_REQUEST_QUEUE];
    if (context === undefined || this.#failed || queue === undefined || !queue.isActive) return;
    for (;;) {
      queue.disableNotification();
      let used = 0;
      try {
        for (let chain = queue.popChain(); chain !== null; chain = queue.popChain()) {
          queue.addUsed(chain.head, this.#fill(chain));
          used++;
        }
      } catch (e) {
        if (!(e instanceof GuestFault)) throw e;
        this.#failed = true;
        context.fail(e as GuestFault);
        return;
      } finally {
        if (used > 0) {
          queue.publishUsed();
          if (queue.needsNotification()) context.interrupt.signalUsed(RNG_REQUEST_QUEUE);
        }
      }
      if (!queue.enableNotification()) return;
    }
  }

  /** Fills the chain's writable part (up to the request limit); returns the bytes written. */
  #fill(chain: DescriptorChain): number {
    const writer = chain.writer();
    let left = Math.min(chain.writableLength, this.#maxRequest);
    while (left > 0) {
      const chunk = this.#scratch.subarray(0, Math.min(left, RNG_SOURCE_CHUNK_BYTES));
      this.#source(chunk);
      writer.write(chunk);
      left -= chunk.length;
    }
    this.requests++;
    this.bytes += writer.written;
    return writer.written;
  }
}

function defaultSource(): EntropySource {
  const crypto = (globalThis as { crypto?: { getRandomValues?: (buf: Uint8Array) => Uint8Array } }).crypto;
  const getRandomValues = crypto?.getRandomValues;
  if (crypto === undefined || getRandomValues === undefined) {
    throw new UsageError(
      'INVALID_STATE',
      'no globalThis.crypto.getRandomValues here: pass an entropy source to RngDevice',
      undefined,
    );
  }
  return (buf) => {
    getRandomValues.call(crypto, buf);
  };
}
