/**
 * `ImageFile`: the host file under a qcow2 image, with synchronous positioned I/O (pread/pwrite/preadv/pwritev in
 * the calling thread, continuing after short transfers) and fdatasync. Synchronous on purpose: a qcow2 image
 * served by a vhost-user export runs in the export's worker thread, where a request (data and metadata) completes
 * inside the kick that brought it. Every host failure is a `HostIoError` naming the file and the range.
 */
import {
  closeSync,
  constants,
  fdatasyncSync,
  fstatSync,
  ftruncateSync,
  openSync,
  readSync,
  readvSync,
  statSync,
  writeSync,
  writevSync,
} from 'node:fs';
import { HostIoError } from '../../../virtio/errors.js';
import { BlockBackendError } from '../block-backend-error.js';

/** Buffers per preadv/pwritev call: Linux's IOV_MAX. */
const IOV_MAX = 1024;

export class ImageFile {
  readonly path: string;
  readonly readOnly: boolean;
  readonly fd: number;
  /**
   * fdatasync really syncs. false (qemu's cache=unsafe, for a destination that is worthless until the whole copy
   * completes anyway): every sync is skipped, so the write ordering survives a process crash but not a power cut.
   */
  readonly durable: boolean;
  #closed = false;
  /** Something was written since the last fdatasync. */
  #written = false;
  /** The file's size at open, raised by every write past it: bytes at or past it read as zeros. */
  #end: number;

  private constructor(path: string, fd: number, readOnly: boolean, durable: boolean) {
    this.path = path;
    this.fd = fd;
    this.readOnly = readOnly;
    this.durable = durable;
    this.#end = fstatSync(fd).size;
  }

  /** One past the last byte the file holds (as far as this process wrote or found it at open). */
  get end(): number {
    return this.#end;
  }

  /** Opens an existing regular file; a {@link BlockBackendError} names the path on failure. */
  static open(path: string, readOnly: boolean, durable = true): ImageFile {
    let fd: number;
    try {
      const st = statSync(path);
      if (!st.isFile()) {
        throw new BlockBackendError('NOT_A_REGULAR_FILE', path, 'is not a regular image file');
      }
      fd = openSync(path, (readOnly ? constants.O_RDONLY : constants.O_RDWR) | constants.O_NONBLOCK);
    } catch (e) {
      if (e instanceof BlockBackendError) throw e;
      const code = (e as { code?: unknown } | null)?.code;
      if (code === 'ENOENT' || code === 'ENOTDIR')
        throw new BlockBackendError('NOT_FOUND', path, 'no such file', { cause: e });
      if (code === 'EACCES' || code === 'EPERM' || code === 'EROFS') {
        throw new BlockBackendError(
          'PERMISSION_DENIED',
          path,
          `permission denied (opening ${readOnly ? 'read-only' : 'read-write'})`,
          {
            cause: e,
          },
        );
      }
      throw new BlockBackendError(
        'OPEN_FAILED',
        path,
        `cannot be opened: ${e instanceof Error ? e.message : String(e)}`,
        {
          cause: e,
        },
      );
    }
    return new ImageFile(path, fd, readOnly, durable);
  }

  /** Creates (or truncates) `path` for a new image. */
  static create(path: string): ImageFile {
    let fd: number;
    try {
      fd = openSync(path, constants.O_RDWR | constants.O_CREAT | constants.O_TRUNC, 0o644);
    } catch (e) {
      throw new BlockBackendError(
        'OPEN_FAILED',
        path,
        `cannot be created: ${e instanceof Error ? e.message : String(e)}`,
        {
          cause: e,
        },
      );
    }
    return new ImageFile(path, fd, false, true);
  }

  /** The file's current size in bytes. */
  size(): number {
    try {
      return fstatSync(this.fd).size;
    } catch (e) {
      throw this.#error('fstat', 0, 0, e);
    }
  }

  /** Bytes actually allocated on the host (st_blocks × 512). */
  allocatedBytes(): number {
    try {
      return fstatSync(this.fd).blocks * 512;
    } catch (e) {
      throw this.#error('fstat', 0, 0, e);
    }
  }

  /** Reads `buf.length` bytes at `pos`; bytes past the end of the file read as zeros. */
  read(buf: Uint8Array, pos: number): void {
    let done = 0;
    while (done < buf.length) {
      let n: number;
      try {
        n = readSync(this.fd, buf, done, buf.length - done, pos + done);
      } catch (e) {
        throw this.#error('read', pos, buf.length, e);
      }
      if (n === 0) {
        buf.fill(0, done);
        return;
      }
      done += n;
    }
  }

  /** Writes all of `buf` at `pos`. */
  write(buf: Uint8Array, pos: number): void {
    this.#written = true;
    if (pos + buf.length > this.#end) this.#end = pos + buf.length;
    let done = 0;
    while (done < buf.length) {
      let n: number;
      try {
        n = writeSync(this.fd, buf, done, buf.length - done, pos + done);
      } catch (e) {
        throw this.#error('write', pos, buf.length, e);
      }
      if (n === 0) throw this.#error('write', pos, buf.length, new Error('no progress'));
      done += n;
    }
  }

  /** preadv of every byte of `bufs` at `pos` (zero-filled past the end of the file). */
  readv(bufs: readonly Uint8Array[], pos: number): void {
    if (bufs.length === 1) {
      this.read(bufs[0] as Uint8Array, pos);
      return;
    }
    this.#vector('read', bufs, pos);
  }

  /** pwritev of every byte of `bufs` at `pos`. */
  writev(bufs: readonly Uint8Array[], pos: number): void {
    if (bufs.length === 1) {
      this.write(bufs[0] as Uint8Array, pos);
      return;
    }
    this.#written = true;
    let total = 0;
    for (const b of bufs) total += b.length;
    if (pos + total > this.#end) this.#end = pos + total;
    this.#vector('write', bufs, pos);
  }

  /** fdatasync: everything written so far is durable. */
  datasync(): void {
    this.#written = false;
    if (!this.durable) return;
    try {
      fdatasyncSync(this.fd);
    } catch (e) {
      this.#written = true;
      throw this.#error('fdatasync', 0, 0, e);
    }
  }

  /** A write barrier: fdatasync when anything was written since the last one (the ordering point between writes). */
  syncIfWritten(): void {
    if (this.#written) this.datasync();
  }

  truncate(length: number): void {
    this.#end = length;
    try {
      ftruncateSync(this.fd, length);
    } catch (e) {
      throw this.#error('ftruncate', length, 0, e);
    }
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    closeSync(this.fd);
  }

  #vector(kind: 'read' | 'write', bufs: readonly Uint8Array[], pos: number): void {
    let total = 0;
    for (const b of bufs) total += b.length;
    let index = 0;
    let skip = 0;
    let at = pos;
    const batch: Uint8Array[] = [];
    while (index < bufs.length) {
      batch.length = 0;
      for (let i = index; i < bufs.length && batch.length < IOV_MAX; i++) {
        const b = bufs[i] as Uint8Array;
        const part = i === index ? b.subarray(skip) : b;
        if (part.length > 0) batch.push(part);
      }
      if (batch.length === 0) return;
      let n: number;
      try {
        n = kind === 'read' ? readvSync(this.fd, batch, at) : writevSync(this.fd, batch, at);
      } catch (e) {
        throw this.#error(kind, pos, total, e);
      }
      if (n === 0) {
        if (kind === 'write') throw this.#error('write', pos, total, new Error('no progress'));
        for (let i = index; i < bufs.length; i++) (bufs[i] as Uint8Array).fill(0, i === index ? skip : 0);
        return;
      }
      at += n;
      while (n > 0 && index < bufs.length) {
        const room = (bufs[index] as Uint8Array).length - skip;
        if (n >= room) {
          n -= room;
          index++;
          skip = 0;
        } else {
          skip += n;
          n = 0;
        }
      }
      while (index < bufs.length && (bufs[index] as Uint8Array).length === skip) {
        index++;
        skip = 0;
      }
    }
  }

  #error(what: string, offset: number, length: number, cause: unknown): HostIoError {
    const reason = cause instanceof Error ? cause.message : String(cause);
    return new HostIoError(
      `${this.path}: ${what} at ${offset}+${length} failed: ${reason}`,
      { path: this.path, offset, length },
      { cause },
    );
  }
}
