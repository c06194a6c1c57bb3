/**
 * eventfd(2): a 64-bit counter in the kernel, the doorbell of vhost-user (kick and call fds).
 *
 * A write adds to the counter; a read returns it and resets it to 0 (or, with `semaphore`, returns 1 and
 * decrements it). Reading a zero counter blocks, or on a non-blocking eventfd returns 0n: a successful read
 * never returns 0, so 0n means "nothing signalled" (EAGAIN).
 */
import * as libc from './libc.js';
import { NativeBuffer } from './native-buffer.js';
import { checkFd, Errno, SysError } from './sys-error.js';

// <sys/eventfd.h>
const EFD_SEMAPHORE = 1;
const EFD_NONBLOCK = 0o4000;
const EFD_CLOEXEC = 0o2000000;

/** The largest value a write may add: the counter saturates at 2^64 - 2 (2^64 - 1 is EINVAL). */
export const EVENTFD_MAX = 0xfffffffffffffffen;

export interface EventfdOptions {
  /** Reads and writes that would block return 0n / false instead. */
  readonly nonBlocking?: boolean;
  /** Each read returns 1 and decrements the counter by 1. */
  readonly semaphore?: boolean;
}

/** Creates an eventfd (close-on-exec) with the counter at `initval` (a u32). */
export function eventfd(initval = 0, options: EventfdOptions = {}): number {
  if (!Number.isInteger(initval) || initval < 0 || initval > 0xffffffff) {
    throw new SysError('eventfd', Errno.EINVAL, initval, 'the initial value is an unsigned 32-bit integer');
  }
  const flags =
    EFD_CLOEXEC |
    (options.nonBlocking === true ? EFD_NONBLOCK : 0) |
    (options.semaphore === true ? EFD_SEMAPHORE : 0);
  const fd = libc.eventfd(initval, flags);
  if (fd < 0) throw new SysError('eventfd', libc.errno(), initval);
  return fd;
}

/**
 * Adds `value` to the counter (8-byte write). Returns false, having written nothing, when the fd is
 * non-blocking and the addition would overflow the counter (EAGAIN).
 */
export function eventfdWrite(fd: number, value: bigint | number = 1): boolean {
  checkFd(fd, 'write');
  if (
    typeof value === 'number' ? !Number.isSafeInteger(value) || value < 0 : value < 0n || value > EVENTFD_MAX
  ) {
    throw new SysError(
      'write',
      Errno.EINVAL,
      value,
      `an eventfd write adds an integer in [0, ${EVENTFD_MAX}]`,
    );
  }
  for (;;) {
    if (libc.eventfd_write(fd, value) === 0) return true;
    const err = libc.errno();
    if (err === Errno.EINTR) continue;
    if (err === Errno.EAGAIN) return false;
    throw new SysError('write', err, fd);
  }
}

let counter: NativeBuffer | undefined;

/** Reads (and resets, or decrements in semaphore mode) the counter; 0n on a non-blocking fd with nothing to read. */
export function eventfdRead(fd: number): bigint {
  checkFd(fd, 'read');
  counter ??= new NativeBuffer(8);
  for (;;) {
    if (libc.eventfd_read(fd, counter.ptr) === 0) return counter.data.getBigUint64(0, true);
    const err = libc.errno();
    if (err === Errno.EINTR) continue;
    if (err === Errno.EAGAIN) return 0n;
    throw new SysError('read', err, fd);
  }
}
