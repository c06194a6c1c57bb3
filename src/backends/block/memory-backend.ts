/**
 * `MemoryBackend`: a {@link BlockBackend} over bytes in memory — a RAM disk, and the back end device tests use
 * to compare what the guest wrote with what the disk holds.
 *
 * ```ts
 * const disk = new MemoryBackend(64 << 20);                 // 64 MiB of zeros
 * const image = new MemoryBackend(bytes, { readOnly: true }); // serve existing bytes, read-only
 * const device = new BlkDevice({ backend: disk });
 * ```
 *
 * Every call completes asynchronously (a resolved promise: the device sees the same ordering as with a real
 * back end). With `sync: true` the disk also offers `readvSync`/`writevSync`, so a device completes reads and
 * writes inside the kick, as it does over a raw image with `io: 'sync'`. Discard zeroes the range (its contents become undefined; zeros keep tests deterministic), write
 * zeroes zeroes it; neither deallocates anything. Ranges outside the disk reject with a `HostIoError` — the
 * device never issues one, so that would be a device bug made visible.
 */
import type { BlockBackend } from '../../devices/blk/block-backend.js';
import { HostIoError, UsageError } from '../../virtio/errors.js';

export interface MemoryBackendOptions {
  /** Refuse writes (the device then offers VIRTIO_BLK_F_RO). */
  readonly readOnly?: boolean;
  /** Also offer `readvSync`/`writevSync` (see {@link BlockBackend.readvSync}). */
  readonly sync?: boolean;
}

export class MemoryBackend implements BlockBackend {
  readonly size: number;
  readonly readOnly: boolean;
  readonly logicalBlockSize = 512;
  /** The disk's contents (aliases the array given to the constructor, if one was). */
  readonly bytes: Uint8Array;
  /** With `sync: true`: reads and writes done before returning; undefined otherwise. */
  readonly readvSync: ((offset: number, bufs: readonly Uint8Array[]) => void) | undefined;
  readonly writevSync: ((offset: number, bufs: readonly Uint8Array[]) => void) | undefined;
  #closed = false;

  /** `content`: a size in bytes (zero-filled) or the bytes to serve (not copied). */
  constructor(content: number | Uint8Array, options: MemoryBackendOptions = {}) {
    if (typeof content === 'number') {
      if (!Number.isSafeInteger(content) || content < 0) {
        throw new UsageError('INVALID_ARGUMENT', `memory disk size ${content} is not a byte count`, content);
      }
      this.bytes = new Uint8Array(content);
    } else {
      this.bytes = content;
    }
    this.size = this.bytes.length;
    this.readOnly = options.readOnly === true;
    const sync = options.sync === true;
    this.readvSync = sync
      ? (offset, bufs) => {
          this.#throwIfRefused('read', offset, totalLength(bufs), false);
          this.#read(offset, bufs);
        }
      : undefined;
    this.writevSync = sync
      ? (offset, bufs) => {
          this.#throwIfRefused('write', offset, totalLength(bufs), true);
          this.#write(offset, bufs);
        }
      : undefined;
  }

  readv(offset: number, bufs: readonly Uint8Array[]): Promise<void> {
    return this.#run('read', offset, totalLength(bufs), false, () => {
      this.#read(offset, bufs);
    });
  }

  writev(offset: number, bufs: readonly Uint8Array[]): Promise<void> {
    return this.#run('write', offset, totalLength(bufs), true, () => {
      this.#write(offset, bufs);
    });
  }

  #read(offset: number, bufs: readonly Uint8Array[]): void {
    let pos = offset;
    for (const b of bufs) {
      b.set(this.bytes.subarray(pos, pos + b.length));
      pos += b.length;
    }
  }

  #write(offset: number, bufs: readonly Uint8Array[]): void {
    let pos = offset;
    for (const b of bufs) {
      this.bytes.set(b, pos);
      pos += b.length;
    }
  }

  flush(): Promise<void> {
    return this.#run('flush', 0, 0, false, () => undefined);
  }

  discard(offset: number, length: number): Promise<void> {
    return this.#run('discard', offset, length, true, () => {
      this.bytes.fill(0, offset, offset + length);
    });
  }

  writeZeroes(offset: number, length: number): Promise<void> {
    return this.#run('write zeroes', offset, length, true, () => {
      this.bytes.fill(0, offset, offset + length);
    });
  }

  close(): Promise<void> {
    this.#closed = true;
    return Promise.resolve();
  }

  #run(what: string, offset: number, length: number, write: boolean, fn: () => void): Promise<void> {
    try {
      this.#throwIfRefused(what, offset, length, write);
    } catch (e) {
      return Promise.reject(e instanceof Error ? e : new Error(String(e)));
    }
    fn();
    return Promise.resolve();
  }

  /** Throws the HostIoError that refuses this call (closed, read-only, outside the disk), if any. */
  #throwIfRefused(what: string, offset: number, length: number, write: boolean): void {
    const value = { offset, length };
    if (this.#closed) throw new HostIoError(`memory disk: ${what} after close`, value);
    if (write && this.readOnly) throw new HostIoError(`memory disk: ${what} refused: read-only`, value);
    if (!(Number.isSafeInteger(offset) && offset >= 0 && length >= 0 && offset + length <= this.size)) {
      throw new HostIoError(
        `memory disk: ${what} at ${offset}+${length} is outside its ${this.size} bytes`,
        value,
      );
    }
  }
}

function totalLength(bufs: readonly Uint8Array[]): number {
  let n = 0;
  for (const b of bufs) n += b.length;
  return n;
}
