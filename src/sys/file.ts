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
