/**
 * `SysError`: a failed system call, with the errno decoded.
 *
 * Every function in src/sys reports failure this way (never by a -1 return, except the documented
 * "would block" results). The fields mirror Node's own system errors (`err.code`, `err.errno`, `err.syscall`),
 * so `err.code === 'EAGAIN'` reads the same whichever layer raised it; `value` is the offending argument
 * (an fd, a path, an offset...).
 *
 * Preconditions the kernel would reject anyway (an unaligned mmap offset, too many fds in one message) are
 * checked before the call and reported with the errno the kernel would have returned and a message that says
 * which rule was broken.
 */
import { getSystemErrorMap } from 'node:util';

/** Node's table errno → [name, description] (libuv keys it by the negated errno). */
const systemErrors = getSystemErrorMap();

/**
 * The symbolic name of a positive errno value as Node spells it, e.g. 11 → `EAGAIN`, 95 → `ENOTSUP` (Linux's
 * EOPNOTSUPP is the same value); `E<n>` for values libuv does not know.
 */
export function errnoName(errno: number): string {
  return systemErrors.get(-errno)?.[0] ?? `E${errno}`;
}

/** Descriptions libuv words for sockets only, reworded for every kind of fd. */
const descriptionOverrides = new Map<number, string>([[95, 'operation not supported']]);

function errnoDescription(errno: number): string {
  return descriptionOverrides.get(errno) ?? systemErrors.get(-errno)?.[1] ?? 'unknown error';
}

/** Linux errno values this folder tests for or raises itself (x86-64; asm-generic/errno-base.h, errno.h). */
export const Errno = {
  EINTR: 4,
  ENXIO: 6,
  EBADF: 9,
  EAGAIN: 11,
  EINVAL: 22,
  ENAMETOOLONG: 36,
  EMSGSIZE: 90,
  EADDRINUSE: 98,
  ECONNREFUSED: 111,
} as const;

function formatValue(value: unknown): string {
  if (typeof value === 'bigint') return `${value}n`;
  if (typeof value === 'string') return JSON.stringify(value);
  if (typeof value === 'number' || typeof value === 'boolean' || value === undefined || value === null) {
    return String(value);
  }
  try {
    return JSON.stringify(value, (_key, v: unknown) => (typeof v === 'bigint' ? `${v}n` : v));
  } catch {
    return Object.prototype.toString.call(value);
  }
}

export class SysError extends Error {
  /** The errno name, e.g. `EAGAIN`, `EBADF` (as Node's `util.getSystemErrorName` spells it). */
  readonly code: string;
  /** The positive errno value, e.g. 11. */
  readonly errno: number;
  /** The call that failed, e.g. `recvmsg`, `mmap`. */
  readonly syscall: string;
  /** The offending value: the fd, path, offset... the call was given. */
  readonly value: unknown;

  /**
   * @param detail optional explanation appended to the message (which rule was broken, what was done about it)
   */
  constructor(syscall: string, errno: number, value: unknown, detail?: string) {
    const code = errnoName(errno);
    super(
      `${syscall} failed: ${code} (${errnoDescription(errno)})${detail === undefined ? '' : `: ${detail}`}; ` +
        `value: ${formatValue(value)}`,
    );
    this.name = 'SysError';
    this.code = code;
    this.errno = errno;
    this.syscall = syscall;
    this.value = value;
  }
}

/** True when `error` is a {@link SysError}, optionally with the given code. */
export function isSysError(error: unknown, code?: string): error is SysError {
  return error instanceof SysError && (code === undefined || error.code === code);
}

/**
 * Checks a file descriptor argument: a non-negative 32-bit integer, else EBADF (what the kernel returns for -1),
 * so a bad value never reaches koffi's integer conversion.
 */
export function checkFd(fd: number, syscall: string): void {
  if (!Number.isInteger(fd) || fd < 0 || fd > 0x7fffffff) {
    throw new SysError(syscall, Errno.EBADF, fd, 'not a file descriptor');
  }
}

const MAX_OFF_T = (1n << 63n) - 1n;

/** Checks a file offset or size argument (`off_t`): an integer in [0, 2^63), else EINVAL. Returns it as bigint. */
export function toOffset(value: number | bigint, syscall: string, what: string): bigint {
  if (typeof value === 'bigint') {
    if (value >= 0n && value <= MAX_OFF_T) return value;
  } else if (Number.isSafeInteger(value) && value >= 0) {
    return BigInt(value);
  }
  throw new SysError(syscall, Errno.EINVAL, value, `${what} must be an integer in [0, 2^63)`);
}
