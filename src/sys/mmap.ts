/**
 * Shared memory: memfd_create(2), ftruncate(2), and MAP_SHARED mappings exposed as zero-copy `Uint8Array`s.
 *
 * This is how a vhost-user back end sees guest RAM: the front end sends each memory region as an fd, the back end
 * maps it here and builds its GuestMemory over `bytes`.
 */
import koffi from 'koffi';
import * as libc from './libc.js';
import { checkFd, Errno, SysError, toOffset } from './sys-error.js';

// <sys/mman.h>, <unistd.h>
const PROT_READ = 0x1;
const PROT_WRITE = 0x2;
const MAP_SHARED = 0x01;
const MAP_FAILED = 0xffffffffffffffffn; // (void *) -1 as koffi decodes it
const MFD_CLOEXEC = 0x1;
const MFD_ALLOW_SEALING = 0x2;
const SC_PAGESIZE = 30;

let pageBytes = 0;

/** The system page size (sysconf(_SC_PAGESIZE)): mmap offsets must be multiples of it. */
export function pageSize(): number {
  if (pageBytes === 0) {
    const size = libc.sysconf(SC_PAGESIZE);
    if (size <= 0) throw new SysError('sysconf', libc.errno(), '_SC_PAGESIZE');
    pageBytes = size;
  }
  return pageBytes;
}

/**
 * A MAP_SHARED mapping. `bytes` is a zero-copy view of the mapped pages: writes through it are seen by every
 * other mapping of the same file, in this process or another, and vice versa.
 *
 * After {@link unmap} the pages are gone but `bytes` (and any view made from its buffer) still points at them:
 * touching it then crashes the process (SIGSEGV). Drop every view before calling unmap; a second unmap is refused
 * with an EINVAL SysError instead of unmapping whatever the address space holds there by then.
 */
export class MappedMemory {
  /** The mapped pages (length = the mapped length). Invalid after {@link unmap}. */
  readonly bytes: Uint8Array;
  /** The mapping's address in this process. */
  readonly address: libc.Pointer;
  readonly length: number;
  #mapped = true;

  /** @internal use {@link mapShared} */
  constructor(address: libc.Pointer, length: number) {
    this.address = address;
    this.length = length;
    this.bytes = new Uint8Array(koffi.view(address, length));
  }

  get isMapped(): boolean {
    return this.#mapped;
  }

  /** munmap(2). Throws an EINVAL SysError if already unmapped. */
  unmap(): void {
    if (!this.#mapped) {
      throw new SysError('munmap', Errno.EINVAL, this.address, 'this mapping was already unmapped');
    }
    if (libc.munmap(this.address, this.length) < 0) throw new SysError('munmap', libc.errno(), this.address);
    this.#mapped = false;
  }
}

export interface MapOptions {
  /** Map PROT_READ only (writes through `bytes` then crash the process). Default: read-write. */
  readonly readOnly?: boolean;
}

/**
 * Maps `length` bytes of `fd` from `offset` (a multiple of {@link pageSize}) MAP_SHARED, read-write.
 * The mapping holds its own reference to the file: `fd` may be closed afterwards.
 */
export function mapShared(
  fd: number,
  length: number,
  offset: number | bigint = 0,
  options: MapOptions = {},
): MappedMemory {
  checkFd(fd, 'mmap');
  if (!Number.isSafeInteger(length) || length <= 0) {
    throw new SysError('mmap', Errno.EINVAL, length, 'the length must be a positive integer');
  }
  const off = toOffset(offset, 'mmap', 'the offset');
  const page = BigInt(pageSize());
  if (off % page !== 0n) {
    throw new SysError(
      'mmap',
      Errno.EINVAL,
      offset,
      `the offset must be a multiple of the page size (${page}); it is ${off % page} bytes past a page boundary`,
    );
  }
  const prot = options.readOnly === true ? PROT_READ : PROT_READ | PROT_WRITE;
  const address = libc.mmap(null, length, prot, MAP_SHARED, fd, off);
  if (address === MAP_FAILED) throw new SysError('mmap', libc.errno(), { fd, length, offset });
  try {
    return new MappedMemory(address, length);
  } catch (error) {
    libc.munmap(address, length); // koffi.view refused (e.g. longer than an ArrayBuffer may be)
    throw error;
  }
}

export interface MemfdOptions {
  /** MFD_ALLOW_SEALING: allow fcntl(F_ADD_SEALS) on the fd. */
  readonly allowSealing?: boolean;
}

/** memfd_create(2): an anonymous file in RAM (close-on-exec), size 0 until {@link ftruncate}. */
export function memfdCreate(name: string, options: MemfdOptions = {}): number {
  const fd = libc.memfd_create(name, MFD_CLOEXEC | (options.allowSealing === true ? MFD_ALLOW_SEALING : 0));
  if (fd < 0) throw new SysError('memfd_create', libc.errno(), name);
  return fd;
}

/** ftruncate(2): sets the file's size (64-bit). */
export function ftruncate(fd: number, size: number | bigint): void {
  checkFd(fd, 'ftruncate');
  const length = toOffset(size, 'ftruncate', 'the size');
  for (;;) {
    if (libc.ftruncate(fd, length) === 0) return;
    const err = libc.errno();
    if (err !== Errno.EINTR) throw new SysError('ftruncate', err, { fd, size });
  }
}
