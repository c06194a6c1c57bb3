/**
 * `RawFileBackend`: a raw disk image — a regular file on the host whose bytes are the disk's bytes — as a
 * {@link BlockBackend}.
 *
 * ```ts
 * const backend = await RawFileBackend.open('/var/lib/images/disk.raw', { readOnly: false });
 * const device = new BlkDevice({ backend, serial: 'disk0' });
 * // ... later
 * await backend.close();
 * ```
 *
 * - **Open**: O_RDWR, or O_RDONLY when `readOnly` (the file is then never opened for writing, so not even a bug
 *   could change it); never O_CREAT or O_TRUNC: the image must exist. The path is stat'ed before the open and
 *   the descriptor fstat'ed after it: only regular files are accepted (a FIFO would block the open, a directory
 *   or socket is not an image); block devices are refused with their own code. O_NONBLOCK is set so that even
 *   a path swapped for a FIFO between the two checks cannot hang the open (it has no effect on regular files).
 *   Every failure is a {@link BlockBackendError} naming the path.
 * - **Size**: the file's size at open. The device's capacity is fixed from it.
 * - **Data**: `FileHandle.readv` / `writev` at explicit positions (preadv/pwritev on libuv's thread pool, so
 *   requests run concurrently) straight from/to the guest-memory views — zero copy. Short transfers continue
 *   where they stopped (a kernel may transfer less than asked, libuv caps one call at IOV_MAX buffers).
 * - **Reads past end of file** (the file shrank under us after open): the missing bytes read as zeros, as
 *   QEMU's raw driver does, rather than failing the request: the guest sees the same thing as for a sparse hole.
 * - **Map**: `map()` lists the file's data and holes (lseek SEEK_DATA / SEEK_HOLE) as {@link MapExtent}s, the way
 *   qemu-img map reports a raw image: holes read as zeros, everything stored plainly at its own offset.
 * - **Flush**: `fdatasync` (nothing to do on a read-only image).
 * - **Discard**: fallocate(PUNCH_HOLE | KEEP_SIZE): the range is deallocated and reads back as zeros. On a file
 *   system without hole punching (EOPNOTSUPP) discard does nothing: it is only a hint (§5.2.6.2 "MAY").
 * - **Write zeroes**: fallocate(ZERO_RANGE | KEEP_SIZE), or PUNCH_HOLE | KEEP_SIZE when the driver allows unmap;
 *   when the file system refuses (EOPNOTSUPP) the back end writes zeros itself. After the first refusal the
 *   fallocate mode is not tried again.
 *
 * fallocate is a synchronous FFI call (src/sys/file.ts): it blocks the event loop for the duration of the
 * syscall, which for hole punching and zeroing is metadata work, usually short.
 */
import { constants, promises as fs, readvSync, writevSync, type Stats } from 'node:fs';
import type { BlockBackend } from '../../devices/blk/block-backend.js';
import {
  FALLOC_FL_KEEP_SIZE,
  FALLOC_FL_PUNCH_HOLE,
  FALLOC_FL_ZERO_RANGE,
  fallocate,
  seekData,
  seekHole,
} from '../../sys/file.js';
import { HostIoError } from '../../virtio/errors.js';
import { BlockBackendError } from './block-backend-error.js';
import type { MapExtent } from './map-extent.js';

/** Buffers per preadv/pwritev call: Linux's IOV_MAX (libuv would cap a longer list there anyway). */
const IOV_MAX = 1024;
/** The shared source of zeros for the write-zeroes fallback, and the size of each write from it. */
const ZERO_CHUNK = 1 << 20;
/** Zero chunks per pwritev call in the fallback (16 MiB per call). */
const ZERO_CHUNKS_PER_CALL = 16;
/** errno of EOPNOTSUPP / ENOTSUP on Linux (the same value): the file system cannot do this fallocate mode. */
const EOPNOTSUPP = 95;
const UNSUPPORTED_CODES: ReadonlySet<unknown> = new Set(['EOPNOTSUPP', 'ENOTSUP', 'ENOSYS']);

let zeroChunk: Uint8Array | undefined;

export interface RawFileOpenOptions {
  /** Open O_RDONLY; the device is then read-only (VIRTIO_BLK_F_RO). */
  readonly readOnly?: boolean;
  /**
   * How reads and writes run. `threads` (default): preadv/pwritev on libuv's thread pool, so many requests are
   * in flight and the calling thread never blocks. `sync`: preadv/pwritev in the calling thread — one system
   * call, no thread hop, no promise; the lowest latency for a device in its own worker thread serving a page-
   * cached image, at the price of one request at a time per thread. The back end then also offers
   * `readvSync`/`writevSync`, which a device uses to complete requests without a promise.
   */
  readonly io?: 'threads' | 'sync';
}

export class RawFileBackend implements BlockBackend {
  readonly path: string;
  readonly size: number;
  readonly readOnly: boolean;
  readonly logicalBlockSize = 512;
  /** writeZeroes with unmap punches a hole. */
  readonly writeZeroesMayUnmap = true;

  /**
   * With `io: 'sync'`: reads and writes done before returning (see {@link BlockBackend.readvSync}); undefined
   * otherwise.
   */
  readonly readvSync: ((offset: number, bufs: readonly Uint8Array[]) => void) | undefined;
  readonly writevSync: ((offset: number, bufs: readonly Uint8Array[]) => void) | undefined;

  readonly #handle: fs.FileHandle;
  readonly #syncIo: boolean;
  #closed = false;
  #punchHole = true;
  #zeroRange = true;

  private constructor(path: string, handle: fs.FileHandle, size: number, readOnly: boolean, syncIo: boolean) {
    this.path = path;
    this.#handle = handle;
    this.#syncIo = syncIo;
    this.size = size;
    this.readOnly = readOnly;
    this.readvSync = syncIo
      ? (offset, bufs) => {
          this.#transferSync('read', offset, bufs);
        }
      : undefined;
    this.writevSync = syncIo
      ? (offset, bufs) => {
          if (this.readOnly) throw this.#readOnlyError('write', offset, totalLength(bufs));
          this.#transferSync('write', offset, bufs);
        }
      : undefined;
  }

  /** Opens the raw image at `path`. Rejects with a {@link BlockBackendError} naming the path. */
  static async open(path: string, options: RawFileOpenOptions = {}): Promise<RawFileBackend> {
    const readOnly = options.readOnly === true;
    let before: Stats;
    try {
      before = await fs.stat(path);
    } catch (e) {
      throw openError(path, e, readOnly);
    }
    checkKind(path, before);
    let handle: fs.FileHandle;
    try {
      handle = await fs.open(path, (readOnly ? constants.O_RDONLY : constants.O_RDWR) | constants.O_NONBLOCK);
    } catch (e) {
      throw openError(path, e, readOnly);
    }
    try {
      const st = await handle.stat();
      checkKind(path, st);
      return new RawFileBackend(path, handle, st.size, readOnly, options.io === 'sync');
    } catch (e) {
      await handle.close();
      if (e instanceof BlockBackendError) throw e;
      throw openError(path, e, readOnly);
    }
  }

  /** The host file descriptor (for FFI calls such as fallocate). */
  get fd(): number {
    return this.#handle.fd;
  }

  readv(offset: number, bufs: readonly Uint8Array[]): Promise<void> {
    return this.#transfer('read', offset, bufs);
  }

  writev(offset: number, bufs: readonly Uint8Array[]): Promise<void> {
    if (this.readOnly) return Promise.reject(this.#readOnlyError('write', offset, totalLength(bufs)));
    return this.#transfer('write', offset, bufs);
  }

  async flush(): Promise<void> {
    this.#checkOpen('flush', 0, 0);
    if (this.readOnly) return;
    try {
      await this.#handle.datasync();
    } catch (e) {
      throw this.#ioError('flush', 0, 0, e);
    }
  }

  discard(offset: number, length: number): Promise<void> {
    return settle(() => {
      this.#checkOpen('discard', offset, length);
      if (this.readOnly) throw this.#readOnlyError('discard', offset, length);
      if (!this.#punchHole || length === 0) return;
      try {
        fallocate(this.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length);
      } catch (e) {
        if (!isUnsupported(e)) throw this.#ioError('discard', offset, length, e);
        this.#punchHole = false; // a hint only: nothing to do without hole punching
      }
    });
  }

  async writeZeroes(offset: number, length: number, unmap: boolean): Promise<void> {
    this.#checkOpen('write zeroes', offset, length);
    if (this.readOnly) throw this.#readOnlyError('write zeroes', offset, length);
    if (length === 0) return;
    if (unmap && this.#punchHole) {
      try {
        fallocate(this.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length);
        return;
      } catch (e) {
        if (!isUnsupported(e)) throw this.#ioError('write zeroes', offset, length, e);
        this.#punchHole = false;
      }
    }
    if (this.#zeroRange) {
      try {
        fallocate(this.fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, offset, length);
        return;
      } catch (e) {
        if (!isUnsupported(e)) throw this.#ioError('write zeroes', offset, length, e);
        this.#zeroRange = false;
      }
    }
    // The file system can do neither: write zeros, up to ZERO_CHUNKS_PER_CALL chunks per pwritev.
    const zero = (zeroChunk ??= new Uint8Array(ZERO_CHUNK));
    let pos = offset;
    const end = offset + length;
    while (pos < end) {
      const bufs: Uint8Array[] = [];
      let n = 0;
      while (pos + n < end && bufs.length < ZERO_CHUNKS_PER_CALL) {
        const k = Math.min(ZERO_CHUNK, end - pos - n);
        bufs.push(k === ZERO_CHUNK ? zero : zero.subarray(0, k));
        n += k;
      }
      await this.#transfer('write', pos, bufs);
      pos += n;
    }
  }

  /**
   * The data and holes of `[0, size)` in order: data extents `{ data: true, zero: false }`, holes
   * `{ data: false, zero: true }`, both at `offset` = their own start, depth 0. A file system that does not
   * track holes reports one data extent.
   */
  *map(): Generator<MapExtent> {
    this.#checkOpen('map', 0, this.size);
    const fd = this.fd;
    let pos = 0;
    while (pos < this.size) {
      let dataAt: number;
      let holeAt: number;
      try {
        dataAt = Math.min(seekData(fd, pos) ?? this.size, this.size);
        holeAt = dataAt < this.size ? Math.min(seekHole(fd, dataAt) ?? this.size, this.size) : this.size;
      } catch (e) {
        throw this.#ioError('map', pos, this.size - pos, e);
      }
      if (dataAt > pos)
        yield {
          start: pos,
          length: dataAt - pos,
          data: false,
          zero: true,
          present: true,
          depth: 0,
          offset: pos,
        };
      if (holeAt > dataAt) {
        yield {
          start: dataAt,
          length: holeAt - dataAt,
          data: true,
          zero: false,
          present: true,
          depth: 0,
          offset: dataAt,
        };
      }
      pos = holeAt;
    }
  }

  /** Closes the file; later calls fail with a HostIoError. Idempotent. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#handle.close();
  }

  /** preadv / pwritev of every byte of `bufs` at `offset`, continuing after short transfers. */
  async #transfer(kind: 'read' | 'write', offset: number, bufs: readonly Uint8Array[]): Promise<void> {
    if (this.#syncIo) {
      this.#transferSync(kind, offset, bufs);
      return;
    }
    const cursor = this.#cursor(kind, offset, bufs);
    for (let batch = cursor.batch(); batch !== null; batch = cursor.batch()) {
      let n: number;
      try {
        n =
          kind === 'read'
            ? (await this.#handle.readv(batch, cursor.pos)).bytesRead
            : (await this.#handle.writev(batch, cursor.pos)).bytesWritten;
      } catch (e) {
        throw this.#ioError(kind, offset, cursor.total, e);
      }
      if (!cursor.advance(n)) return;
    }
  }

  /** {@link #transfer} in the calling thread (readvSync / writevSync): no promise, no thread hop. */
  #transferSync(kind: 'read' | 'write', offset: number, bufs: readonly Uint8Array[]): void {
    const cursor = this.#cursor(kind, offset, bufs);
    const fd = this.#handle.fd;
    for (let batch = cursor.batch(); batch !== null; batch = cursor.batch()) {
      let n: number;
      try {
        n = kind === 'read' ? readvSync(fd, batch, cursor.pos) : writevSync(fd, batch, cursor.pos);
      } catch (e) {
        throw this.#ioError(kind, offset, cursor.total, e);
      }
      if (!cursor.advance(n)) return;
    }
  }

  #cursor(kind: 'read' | 'write', offset: number, bufs: readonly Uint8Array[]): TransferCursor {
    const cursor = new TransferCursor(this.path, kind, offset, bufs);
    this.#checkOpen(kind, offset, cursor.total);
    return cursor;
  }

  #checkOpen(what: string, offset: number, length: number): void {
    if (this.#closed) {
      throw new HostIoError(`${this.path}: ${what} at ${offset}+${length} after close`, {
        path: this.path,
        offset,
        length,
      });
    }
  }

  #readOnlyError(what: string, offset: number, length: number): HostIoError {
    return new HostIoError(`${this.path}: ${what} at ${offset}+${length} refused: opened read-only`, {
      path: this.path,
      offset,
      length,
    });
  }

  #ioError(what: string, offset: number, length: number, cause: unknown): HostIoError {
    const reason = cause instanceof Error ? cause.message : String(cause);
    return new HostIoError(
      `${this.path}: ${what} at ${offset}+${length} failed: ${reason}`,
      { path: this.path, offset, length },
      { cause },
    );
  }
}

/**
 * Progress of one preadv/pwritev transfer over `bufs`: the next batch of at most IOV_MAX buffers, and how a
 * (possibly short) transfer advances it.
 */
class TransferCursor {
  readonly total: number;
  /** File position of the next batch. */
  pos: number;
  readonly #path: string;
  readonly #kind: 'read' | 'write';
  readonly #offset: number;
  readonly #bufs: readonly Uint8Array[];
  /** The buffer being transferred and how much of it is done. */
  #index = 0;
  #done = 0;
  readonly #batch: Uint8Array[] = [];

  constructor(path: string, kind: 'read' | 'write', offset: number, bufs: readonly Uint8Array[]) {
    this.#path = path;
    this.#kind = kind;
    this.#offset = offset;
    this.#bufs = bufs;
    this.total = totalLength(bufs);
    this.pos = offset;
  }

  /** The buffers still to transfer (at most IOV_MAX), or null when every byte is done. Reused between calls. */
  batch(): Uint8Array[] | null {
    const bufs = this.#bufs;
    while (this.#index < bufs.length && (bufs[this.#index] as Uint8Array).length === this.#done) {
      this.#index++;
      this.#done = 0;
    }
    if (this.#index >= bufs.length) return null;
    const batch = this.#batch;
    batch.length = 0;
    for (let i = this.#index; i < bufs.length && batch.length < IOV_MAX; i++) {
      const b = bufs[i] as Uint8Array;
      const part = i === this.#index ? b.subarray(this.#done) : b;
      if (part.length > 0) batch.push(part);
    }
    return batch;
  }

  /**
   * Records `n` bytes transferred; false when the transfer is over (end of file on a read: the rest of the
   * buffers is zero-filled, see the module comment). Throws when a write made no progress.
   */
  advance(n: number): boolean {
    const bufs = this.#bufs;
    if (n === 0) {
      if (this.#kind === 'write') {
        throw new HostIoError(`${this.#path}: write at ${this.pos} made no progress`, {
          path: this.#path,
          offset: this.#offset,
        });
      }
      for (let i = this.#index; i < bufs.length; i++)
        (bufs[i] as Uint8Array).fill(0, i === this.#index ? this.#done : 0);
      return false;
    }
    this.pos += n;
    let left = n;
    while (left > 0) {
      const room = (bufs[this.#index] as Uint8Array).length - this.#done;
      if (left >= room) {
        left -= room;
        this.#index++;
        this.#done = 0;
      } else {
        this.#done += left;
        left = 0;
      }
    }
    return true;
  }
}

function checkKind(path: string, st: Stats): void {
  if (st.isBlockDevice()) {
    throw new BlockBackendError(
      'BLOCK_DEVICE_UNSUPPORTED',
      path,
      'is a block device; the raw-file back end serves regular image files only',
    );
  }
  if (!st.isFile()) {
    const kind = st.isDirectory()
      ? 'a directory'
      : st.isFIFO()
        ? 'a FIFO'
        : st.isSocket()
          ? 'a socket'
          : st.isCharacterDevice()
            ? 'a character device'
            : 'not a regular file';
    throw new BlockBackendError('NOT_A_REGULAR_FILE', path, `is ${kind}, not a regular image file`);
  }
}

function openError(path: string, e: unknown, readOnly: boolean): BlockBackendError {
  const code = (e as { code?: unknown } | null)?.code;
  const reason = e instanceof Error ? e.message : String(e);
  const options = { cause: e };
  switch (code) {
    case 'ENOENT':
    case 'ENOTDIR':
      return new BlockBackendError('NOT_FOUND', path, 'no such file', options);
    case 'EACCES':
    case 'EPERM':
      return new BlockBackendError(
        'PERMISSION_DENIED',
        path,
        `permission denied (opening ${readOnly ? 'read-only' : 'read-write'})`,
        options,
      );
    case 'EROFS':
      return new BlockBackendError(
        'PERMISSION_DENIED',
        path,
        'is on a read-only file system; open it with readOnly',
        options,
      );
    case 'EISDIR':
      return new BlockBackendError('NOT_A_REGULAR_FILE', path, 'is a directory', options);
    default:
      return new BlockBackendError('OPEN_FAILED', path, `cannot be opened: ${reason}`, options);
  }
}

function isUnsupported(e: unknown): boolean {
  const err = e as { code?: unknown; errno?: unknown } | null;
  return err !== null && (err.errno === EOPNOTSUPP || UNSUPPORTED_CODES.has(err.code));
}

function totalLength(bufs: readonly Uint8Array[]): number {
  let n = 0;
  for (const b of bufs) n += b.length;
  return n;
}

/** Runs `fn` now and returns its outcome as a promise (a throw becomes a rejection). */
function settle(fn: () => void): Promise<void> {
  try {
    fn();
    return Promise.resolve();
  } catch (e) {
    return Promise.reject(e instanceof Error ? e : new Error(String(e)));
  }
}
