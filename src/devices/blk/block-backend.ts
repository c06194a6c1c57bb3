/**
 * `BlockBackend`: the host storage a {@link BlkDevice} serves, as the device sees it — byte-addressed, vectored,
 * asynchronous. Devices depend on this small interface, never on a concrete back end: the raw-image back end
 * lives in src/backends/block, tests and RAM disks use an in-memory one.
 *
 * Contract:
 * - Offsets and lengths are bytes; the device only issues ranges inside `[0, size)`, in whole 512-byte
 *   sectors (and whole `logicalBlockSize` blocks when that is larger).
 * - `readv` fills every byte of `bufs` (a back end whose storage ends early zero-fills); `writev` writes every
 *   byte. The buffers alias guest memory (zero copy): a back end must not keep them after the promise settles.
 * - Many calls may be in flight at once, in any order; the device orders what needs ordering (FLUSH).
 * - A host failure rejects with a `HostIoError` (src/virtio/errors.ts); the device answers the request with
 *   VIRTIO_BLK_S_IOERR and carries on. Anything else thrown is treated the same way.
 * - `discard` and `writeZeroes` are optional: the device offers VIRTIO_BLK_F_DISCARD / VIRTIO_BLK_F_WRITE_ZEROES
 *   only when the back end has them.
 * - `readvSync` and `writevSync` are optional: a back end whose reads and writes run in the calling thread anyway
 *   (a raw image with `io: 'sync'`, a synchronous RAM disk) offers them, and the device then completes a read or
 *   write in the same turn as the kick that brought it — no promise, no microtask, one used-ring publish and at
 *   most one interrupt per burst. They block the caller for the duration of the I/O: a device whose back end has
 *   them belongs in a thread of its own (a vhost-user export's worker), not on a thread that must stay
 *   responsive.
 */
export interface BlockBackend {
  /** Size in bytes. The disk's capacity is `floor(size / 512)` sectors; a partial last sector is not used. */
  readonly size: number;
  /** Writes are refused (the device offers VIRTIO_BLK_F_RO and never calls writev/discard/writeZeroes). */
  readonly readOnly: boolean;
  /** The back end's logical block size in bytes (a power of two ≥ 512); default 512. */
  readonly logicalBlockSize?: number;
  /**
   * Whether `writeZeroes(..., unmap = true)` may deallocate storage (the config field
   * `write_zeroes_may_unmap`); default false.
   */
  readonly writeZeroesMayUnmap?: boolean;

  /** Reads `sum(bufs[i].length)` bytes at `offset` into `bufs`, in order. Rejects with `HostIoError`. */
  readv(offset: number, bufs: readonly Uint8Array[]): Promise<void>;
  /** Writes `bufs`, in order, at `offset`. Rejects with `HostIoError`. */
  writev(offset: number, bufs: readonly Uint8Array[]): Promise<void>;
  /**
   * `readv`, done before returning, in the calling thread. Throws `HostIoError` (anything else thrown is treated
   * the same way). The buffers are not kept after the call.
   */
  readonly readvSync?: ((offset: number, bufs: readonly Uint8Array[]) => void) | undefined;
  /** `writev`, done before returning, in the calling thread. Throws `HostIoError`. */
  readonly writevSync?: ((offset: number, bufs: readonly Uint8Array[]) => void) | undefined;
  /** Makes every write that completed before this call durable (fdatasync). */
  flush(): Promise<void>;
  /** The range's contents become undefined; the back end may deallocate it (a hint: may do nothing). */
  discard?(offset: number, length: number): Promise<void>;
  /** The range reads back as zeros afterwards; with `unmap` the back end may deallocate it. */
  writeZeroes?(offset: number, length: number, unmap: boolean): Promise<void>;
  /** Releases the host resource; no call may follow. */
  close(): Promise<void>;
}
