/**
 * fallocate(2): preallocate, zero or punch holes in a file — discard and write-zeroes for a block back end.
 */
import * as libc from './libc.js';
import { checkFd, Errno, SysError, toOffset } from './sys-error.js';

// <linux/falloc.h>
/** Do not change the file size even when allocating past the end. */
export const FALLOC_FL_KEEP_SIZE = 0x01;
/** Deallocate the range (reads return zeros); must be combined with FALLOC_FL_KEEP_SIZE. */
export const FALLOC_FL_PUNCH_HOLE = 0x02;
/** Zero the range, keeping (or allocating) its blocks. */
export const FALLOC_FL_ZERO_RANGE = 0x10;

/**
 * fallocate(fd, mode, offset, length) with 64-bit offsets. Mode 0 allocates (and extends the file); see the
 * FALLOC_FL_* constants. EOPNOTSUPP (the file system cannot do it) is thrown as a SysError like any other errno.
 */
export function fallocate(fd: number, mode: number, offset: number | bigint, length: number | bigint): void {
  checkFd(fd, 'fallocate');
  if (!Number.isInteger(mode) || mode < 0 || mode > 0x7fffffff) {
    throw new SysError('fallocate', Errno.EINVAL, mode, 'the mode is a set of FALLOC_FL_* flags');
  }
  const off = toOffset(offset, 'fallocate', 'the offset');
  const len = toOffset(length, 'fallocate', 'the length');
  for (;;) {
    if (libc.fallocate(fd, mode, off, len) === 0) return;
    const err = libc.errno();
    if (err !== Errno.EINTR) throw new SysError('fallocate', err, { fd, mode, offset, length });
  }
}

// <unistd.h>, Linux: lseek whence values that find allocated data and holes in sparse files.
const SEEK_DATA = 3;
const SEEK_HOLE = 4;

function seek(fd: number, offset: number, whence: number, syscall: string): number | undefined {
  checkFd(fd, syscall);
  const off = toOffset(offset, syscall, 'the offset');
  const result = Number(libc.lseek(fd, off, whence));
  if (result >= 0) return result;
  const err = libc.errno();
  // ENXIO: no data (or no hole: never, the end of file counts as one) at or after the offset.
  if (err === Errno.ENXIO) return undefined;
  throw new SysError(syscall, err, { fd, offset });
}

/**
 * lseek(fd, offset, SEEK_DATA): the first offset ≥ `offset` inside allocated data, or undefined when only holes
 * follow up to the end of the file. File systems without hole tracking report the whole file as data.
 */
export function seekData(fd: number, offset: number): number | undefined {
  return seek(fd, offset, SEEK_DATA, 'lseek(SEEK_DATA)');
}

/**
 * lseek(fd, offset, SEEK_HOLE): the first offset ≥ `offset` inside a hole; the end of the file counts as one.
 * Undefined when `offset` is at or past the end.
 */
export function seekHole(fd: number, offset: number): number | undefined {
  return seek(fd, offset, SEEK_HOLE, 'lseek(SEEK_HOLE)');
}
