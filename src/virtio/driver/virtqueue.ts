/**
 * The driver-side virtqueue API, after Linux's include/linux/virtio.h: a driver adds scatter-gather buffers
 * with a token, kicks, and later gets the token back with the number of bytes the device wrote. Implemented by
 * {@link SplitVirtqueue} (and later the packed ring).
 */

/** One driver buffer in guest-physical memory. */
export interface ScatterEntry {
  readonly addr: number;
  readonly len: number;
}

/** A buffer the device has used: the token given to `addBuf`, and the bytes the device wrote. */
export interface UsedBuffer<T> {
  readonly token: T;
  readonly len: number;
}

export interface Virtqueue<T = unknown> {
  readonly index: number;
  readonly name: string;
  /** Number of descriptors in the ring. */
  readonly size: number;
  /** Descriptors currently free. */
  readonly numFree: number;

  /**
   * Exposes a buffer to the device: `out` entries are device-readable, `inn` device-writable. Throws a
   * UsageError (`QUEUE_FULL` when there is no room, `QUEUE_BROKEN` once broken). The buffer is not seen by the
   * device until {@link kick} (or a later add + kick).
   */
  addBuf(out: readonly ScatterEntry[], inn: readonly ScatterEntry[], token: T): void;
  addOutbuf(out: readonly ScatterEntry[], token: T): void;
  addInbuf(inn: readonly ScatterEntry[], token: T): void;

  /** Publishes added buffers and decides whether the device wants a notification (virtqueue_kick_prepare). */
  kickPrepare(): boolean;
  /** Notifies the device (virtqueue_notify). */
  notify(): void;
  /** kickPrepare + notify when needed; returns whether the device was notified. */
  kick(): boolean;

  /** The next used buffer, or null. A bad used element breaks the queue and throws a DeviceFault. */
  getBuf(): UsedBuffer<T> | null;

  /** Asks the device not to interrupt (a hint). */
  disableCb(): void;
  /** Re-enables interrupts; returns false if used buffers are already pending (the caller must poll again). */
  enableCb(): boolean;
  /** Re-enables interrupts and returns an opaque value for {@link poll} (virtqueue_enable_cb_prepare). */
  enableCbPrepare(): number;
  /** Whether used buffers arrived since `enableCbPrepare` returned `lastUsed`. */
  poll(lastUsed: number): boolean;
  /** Like enableCb, but asks for an interrupt only after most outstanding buffers are used (event idx). */
  enableCbDelayed(): boolean;

  /** Takes back a buffer the device never used (after reset or before freeing the queue); null when none. */
  detachUnusedBuf(): T | null;

  isBroken(): boolean;
  /** Why the queue broke, if it did. */
  readonly brokenReason: Error | undefined;
}
