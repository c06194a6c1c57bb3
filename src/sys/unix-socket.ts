/**
 * SOCK_STREAM unix sockets with file-descriptor passing (SCM_RIGHTS): what a vhost-user back end needs and
 * Node's `net` cannot do.
 *
 * Every socket is created close-on-exec, and received fds too (MSG_CMSG_CLOEXEC).
 *
 * Results:
 * - **would block**: on a non-blocking socket, a call that cannot proceed returns {@link WOULD_BLOCK} (-1) as
 *   its byte count or fd; it never throws EAGAIN.
 * - **end of stream**: `recvWithFds` returns `bytes: 0`.
 * - everything else: {@link SysError} (EINTR is retried inside).
 *
 * Blocking sockets block the calling thread: on the main thread use non-blocking sockets (and a readiness
 * source such as `koffi.node.poll` or {@link Epoll} in a worker).
 *
 * Data passes through one native staging buffer per thread (a `msghdr` must hold stable addresses, which a JS
 * typed array does not have): one copy of at most {@link STAGING_BYTES} per call, nothing allocated on the
 * native side after the first call.
 */
import { lstatSync, unlinkSync } from 'node:fs';
import * as libc from './libc.js';
import { NativeBuffer } from './native-buffer.js';
import { checkFd, Errno, isSysError, SysError } from './sys-error.js';

/** Returned (as a byte count or fd) when a non-blocking call would block (EAGAIN). */
export const WOULD_BLOCK = -1;

// <sys/socket.h>, <fcntl.h> (x86-64 Linux)
const AF_UNIX = 1;
const SOCK_STREAM = 1;
const SOCK_NONBLOCK = 0o4000;
const SOCK_CLOEXEC = 0o2000000;
const SOL_SOCKET = 1;
const SCM_RIGHTS = 1;
const MSG_CTRUNC = 0x8;
const MSG_NOSIGNAL = 0x4000;
const MSG_CMSG_CLOEXEC = 0x40000000;
const F_GETFL = 3;
const F_SETFL = 4;
const O_NONBLOCK = 0o4000;

/** The kernel's limit on fds in one SCM_RIGHTS message (include/net/scm.h); more fails with EINVAL. */
export const SCM_MAX_FD = 253;

/** Most bytes one recvWithFds call reads, and one sendmsg inside sendWithFds writes. */
export const STAGING_BYTES = 64 * 1024;

/** struct sockaddr_un: sa_family_t sun_family (u16) at 0, char sun_path[108] at 2. */
const SOCKADDR_UN_FAMILY = 0;
const SOCKADDR_UN_PATH = 2;
const SUN_PATH_BYTES = 108;

/**
 * struct msghdr (56 bytes, x86-64):
 *   0 void *msg_name; 8 socklen_t msg_namelen (+4 padding); 16 struct iovec *msg_iov; 24 size_t msg_iovlen;
 *   32 void *msg_control; 40 size_t msg_controllen; 48 int msg_flags (+4 padding)
 */
const MSGHDR_NAME = 0;
const MSGHDR_NAMELEN = 8;
const MSGHDR_IOV = 16;
const MSGHDR_IOVLEN = 24;
const MSGHDR_CONTROL = 32;
const MSGHDR_CONTROLLEN = 40;
const MSGHDR_FLAGS = 48;
const MSGHDR_SIZE = 56;

/** struct iovec (16 bytes): 0 void *iov_base; 8 size_t iov_len. */
const IOVEC_BASE = 0;
const IOVEC_LEN = 8;
const IOVEC_SIZE = 16;

/**
 * struct cmsghdr (16-byte header, then data): 0 size_t cmsg_len (header + data, unpadded); 8 int cmsg_level;
 * 12 int cmsg_type. Successive headers start at CMSG_ALIGN (8-byte) boundaries.
 */
const CMSG_LEN_FIELD = 0;
const CMSG_LEVEL = 8;
const CMSG_TYPE = 12;
const CMSG_HEADER = 16;
const CMSG_ALIGNMENT = 8;
const FD_BYTES = 4;

function cmsgAlign(n: number): number {
  return (n + CMSG_ALIGNMENT - 1) & ~(CMSG_ALIGNMENT - 1);
}
/** CMSG_LEN(n): the cmsg_len of a message with n data bytes. */
function cmsgLen(n: number): number {
  return CMSG_HEADER + n;
}
/** CMSG_SPACE(n): the control-buffer room a message with n data bytes takes. */
function cmsgSpace(n: number): number {
  return CMSG_HEADER + cmsgAlign(n);
}

/** One msghdr + iovec + control area per thread, built once; the data staging buffer is allocated on first use. */
const MSG_OFFSET = 0;
const IOV_OFFSET = MSGHDR_SIZE;
const CONTROL_OFFSET = IOV_OFFSET + IOVEC_SIZE;
const CONTROL_BYTES = cmsgSpace(SCM_MAX_FD * FD_BYTES);

interface Scratch {
  /** msghdr, iovec and control area. */
  readonly msg: NativeBuffer;
  /** The data the iovec points at. */
  readonly stage: NativeBuffer;
}
let scratch: Scratch | undefined;

function message(): Scratch {
  if (scratch !== undefined) return scratch;
  const buf = new NativeBuffer(CONTROL_OFFSET + CONTROL_BYTES);
  const stage = new NativeBuffer(STAGING_BYTES);
  const d = buf.data;
  d.setBigUint64(MSG_OFFSET + MSGHDR_NAME, 0n, true);
  d.setUint32(MSG_OFFSET + MSGHDR_NAMELEN, 0, true);
  d.setBigUint64(MSG_OFFSET + MSGHDR_IOV, buf.at(IOV_OFFSET), true);
  d.setBigUint64(MSG_OFFSET + MSGHDR_IOVLEN, 1n, true);
  d.setBigUint64(MSG_OFFSET + MSGHDR_CONTROL, buf.at(CONTROL_OFFSET), true);
  d.setBigUint64(MSG_OFFSET + MSGHDR_CONTROLLEN, 0n, true);
  d.setBigUint64(IOV_OFFSET + IOVEC_BASE, stage.ptr, true);
  d.setBigUint64(IOV_OFFSET + IOVEC_LEN, 0n, true);
  scratch = { msg: buf, stage };
  return scratch;
}

/** Sets a size_t field known to be < 2^32 without allocating a BigInt. */
function setSize(d: DataView, offset: number, value: number): void {
  d.setUint32(offset, value, true);
  d.setUint32(offset + 4, 0, true);
}

function sockaddrUn(path: string, syscall: string): Uint8Array {
  const encoded = Buffer.from(path, 'utf8');
  if (encoded.length === 0 || encoded.length >= SUN_PATH_BYTES) {
    throw new SysError(
      syscall,
      Errno.ENAMETOOLONG,
      path,
      `a unix socket path takes 1 to ${SUN_PATH_BYTES - 1} bytes, this one takes ${encoded.length}`,
    );
  }
  const addr = new Uint8Array(SOCKADDR_UN_PATH + encoded.length + 1); // NUL-terminated
  new DataView(addr.buffer).setUint16(SOCKADDR_UN_FAMILY, AF_UNIX, true);
  addr.set(encoded, SOCKADDR_UN_PATH);
  return addr;
}

function streamSocket(nonBlocking: boolean): number {
  const fd = libc.socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | (nonBlocking ? SOCK_NONBLOCK : 0), 0);
  if (fd < 0) throw new SysError('socket', libc.errno(), 'AF_UNIX SOCK_STREAM');
  return fd;
}

export interface ListenOptions {
  /**
   * If `path` is a unix socket nobody listens on (connect is refused), unlink it first. A live socket (another
   * server) and any other kind of file are never removed: bind then fails with EADDRINUSE.
   */
  readonly unlinkStale?: boolean;
  /** Make the listening socket non-blocking (acceptUnix then returns WOULD_BLOCK when nobody is waiting). */
  readonly nonBlocking?: boolean;
}

/** Creates, binds and listens on a unix stream socket at `path`; returns the listening fd. */
export function listenUnix(path: string, backlog = 128, options: ListenOptions = {}): number {
  const addr = sockaddrUn(path, 'bind');
  if (options.unlinkStale === true) unlinkIfStale(path);
  const fd = streamSocket(options.nonBlocking === true);
  if (libc.bind(fd, addr, addr.length) < 0) {
    const err = libc.errno();
    libc.close(fd);
    throw new SysError(
      'bind',
      err,
      path,
      err === Errno.EADDRINUSE ? 'the path exists (pass unlinkStale to remove a stale socket)' : undefined,
    );
  }
  if (libc.listen(fd, backlog) < 0) {
    const err = libc.errno();
    libc.close(fd);
    throw new SysError('listen', err, backlog);
  }
  return fd;
}

function unlinkIfStale(path: string): void {
  const stat = lstatSync(path, { throwIfNoEntry: false });
  if (stat === undefined || !stat.isSocket()) return;
  let fd: number;
  try {
    fd = connectUnix(path);
  } catch (error) {
    if (isSysError(error, 'ECONNREFUSED')) {
      unlinkSync(path);
      return;
    }
    throw error;
  }
  libc.close(fd);
  throw new SysError(
    'bind',
    Errno.EADDRINUSE,
    path,
    'a server is listening on this socket; not unlinking it',
  );
}

export interface AcceptOptions {
  /** Make the accepted socket non-blocking. */
  readonly nonBlocking?: boolean;
}

/**
 * Accepts one connection on a listening socket. Returns the connected fd, or {@link WOULD_BLOCK} when the
 * listening socket is non-blocking and no connection is pending.
 */
export function acceptUnix(listenFd: number, options: AcceptOptions = {}): number {
  checkFd(listenFd, 'accept4');
  const flags = SOCK_CLOEXEC | (options.nonBlocking === true ? SOCK_NONBLOCK : 0);
  for (;;) {
    const fd = libc.accept4(listenFd, null, null, flags);
    if (fd >= 0) return fd;
    const err = libc.errno();
    if (err === Errno.EINTR) continue;
    if (err === Errno.EAGAIN) return WOULD_BLOCK;
    throw new SysError('accept4', err, listenFd);
  }
}

/** Connects a blocking unix stream socket to `path`; returns its fd. */
export function connectUnix(path: string): number {
  const addr = sockaddrUn(path, 'connect');
  const fd = streamSocket(false);
  if (libc.connect(fd, addr, addr.length) < 0) {
    const err = libc.errno();
    libc.close(fd);
    throw new SysError('connect', err, path);
  }
  return fd;
}

/** A connected pair of unix stream sockets (blocking; see {@link setNonBlocking}). */
export function socketPair(): [number, number] {
  const sv = new Int32Array(2);
  if (libc.socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
    throw new SysError('socketpair', libc.errno(), 'AF_UNIX SOCK_STREAM');
  }
  return [sv[0] ?? -1, sv[1] ?? -1];
}

/**
 * Sends `data` with `fds` attached (SCM_RIGHTS) to the first byte; MSG_NOSIGNAL, so a closed peer is an EPIPE
 * SysError, never SIGPIPE. The fds stay open in this process (the receiver gets duplicates).
 *
 * Returns the bytes sent, which may be fewer than `data.length` (a signal or a full non-blocking socket): the
 * caller sends the rest, without the fds. Returns {@link WOULD_BLOCK} if nothing could be sent.
 */
export function sendWithFds(fd: number, data: Uint8Array, fds: readonly number[] = []): number {
  checkFd(fd, 'sendmsg');
  if (fds.length > SCM_MAX_FD) {
    throw new SysError('sendmsg', Errno.EINVAL, fds.length, `at most ${SCM_MAX_FD} fds fit in one message`);
  }
  if (fds.length > 0 && data.length === 0) {
    throw new SysError(
      'sendmsg',
      Errno.EINVAL,
      fds,
      'fds travel with data: send at least one byte with them',
    );
  }
  for (const passed of fds) checkFd(passed, 'sendmsg');
  const { msg: buf, stage } = message();
  const d = buf.data;
  if (fds.length > 0) {
    d.setBigUint64(CONTROL_OFFSET + CMSG_LEN_FIELD, BigInt(cmsgLen(fds.length * FD_BYTES)), true);
    d.setInt32(CONTROL_OFFSET + CMSG_LEVEL, SOL_SOCKET, true);
    d.setInt32(CONTROL_OFFSET + CMSG_TYPE, SCM_RIGHTS, true);
    let at = CONTROL_OFFSET + CMSG_HEADER;
    for (const passed of fds) {
      d.setInt32(at, passed, true);
      at += FD_BYTES;
    }
  }
  let controlBytes = fds.length > 0 ? cmsgSpace(fds.length * FD_BYTES) : 0;
  let sent = 0;
  while (sent < data.length) {
    const chunk = Math.min(data.length - sent, STAGING_BYTES);
    stage.bytes.set(data.subarray(sent, sent + chunk));
    setSize(d, IOV_OFFSET + IOVEC_LEN, chunk);
    setSize(d, MSG_OFFSET + MSGHDR_CONTROLLEN, controlBytes);
    const n = libc.sendmsg(fd, buf.ptr, MSG_NOSIGNAL);
    if (n < 0) {
      const err = libc.errno();
      if (err === Errno.EINTR) continue;
      if (err === Errno.EAGAIN) return sent > 0 ? sent : WOULD_BLOCK;
      throw new SysError('sendmsg', err, fd);
    }
    controlBytes = 0; // the fds went with the first byte
    sent += n;
    if (n < chunk) break;
  }
  return sent;
}

export interface ReceivedMessage {
  /** Bytes read into `into`; 0 at end of stream; {@link WOULD_BLOCK} on an empty non-blocking socket. */
  bytes: number;
  /** fds received with these bytes (close-on-exec); the caller owns them. */
  fds: number[];
}

/**
 * Reads up to `min(into.length, STAGING_BYTES)` bytes into `into`, with any fds sent with them (at most
 * `maxFds`). The socket is a stream: one call may return several of the peer's messages, or part of one.
 *
 * If the peer attached more fds than `maxFds` (MSG_CTRUNC: the kernel dropped the rest), the fds that did arrive
 * are closed and an EMSGSIZE SysError is thrown whose `value` says how many bytes were read into `into`; the
 * stream cannot be trusted after that.
 */
export function recvWithFds(fd: number, into: Uint8Array, maxFds = 8): ReceivedMessage {
  checkFd(fd, 'recvmsg');
  if (into.length === 0) {
    throw new SysError('recvmsg', Errno.EINVAL, 0, 'the buffer must have room for at least one byte');
  }
  if (!Number.isInteger(maxFds) || maxFds < 0 || maxFds > SCM_MAX_FD) {
    throw new SysError('recvmsg', Errno.EINVAL, maxFds, `maxFds must be an integer in [0, ${SCM_MAX_FD}]`);
  }
  const { msg: buf, stage } = message();
  const d = buf.data;
  const want = Math.min(into.length, STAGING_BYTES);
  let n: number;
  for (;;) {
    setSize(d, IOV_OFFSET + IOVEC_LEN, want);
    setSize(d, MSG_OFFSET + MSGHDR_CONTROLLEN, maxFds > 0 ? cmsgSpace(maxFds * FD_BYTES) : 0);
    d.setInt32(MSG_OFFSET + MSGHDR_FLAGS, 0, true);
    n = libc.recvmsg(fd, buf.ptr, MSG_CMSG_CLOEXEC);
    if (n >= 0) break;
    const err = libc.errno();
    if (err === Errno.EINTR) continue;
    if (err === Errno.EAGAIN) return { bytes: WOULD_BLOCK, fds: [] };
    throw new SysError('recvmsg', err, fd);
  }
  const fds = parseRights(d, d.getUint32(MSG_OFFSET + MSGHDR_CONTROLLEN, true));
  if (n > 0) into.set(stage.bytes.subarray(0, n));
  if ((d.getInt32(MSG_OFFSET + MSGHDR_FLAGS, true) & MSG_CTRUNC) !== 0) {
    for (const received of fds) libc.close(received);
    throw new SysError(
      'recvmsg',
      Errno.EMSGSIZE,
      { bytes: n, fdsClosed: fds.length, maxFds },
      `control data truncated (MSG_CTRUNC): the peer sent more than ${maxFds} fds; the ${fds.length} received ` +
        `were closed, the rest dropped by the kernel; ${n} data bytes were read`,
    );
  }
  return { bytes: n, fds };
}

/** The fds of every SCM_RIGHTS header in the control area, in order. */
function parseRights(d: DataView, controlBytes: number): number[] {
  const fds: number[] = [];
  let offset = 0;
  while (offset + CMSG_HEADER <= controlBytes) {
    const at = CONTROL_OFFSET + offset;
    const len = d.getUint32(at + CMSG_LEN_FIELD, true); // size_t; never ≥ 2^32 inside this control area
    if (len < CMSG_HEADER || offset + len > controlBytes) break;
    if (d.getInt32(at + CMSG_LEVEL, true) === SOL_SOCKET && d.getInt32(at + CMSG_TYPE, true) === SCM_RIGHTS) {
      const count = Math.floor((len - CMSG_HEADER) / FD_BYTES);
      for (let i = 0; i < count; i++) fds.push(d.getInt32(at + CMSG_HEADER + i * FD_BYTES, true));
    }
    offset += cmsgAlign(len);
  }
  return fds;
}

/** Sets or clears O_NONBLOCK on `fd`. */
export function setNonBlocking(fd: number, on: boolean): void {
  checkFd(fd, 'fcntl');
  const flags = libc.fcntl(fd, F_GETFL);
  if (flags < 0) throw new SysError('fcntl', libc.errno(), fd, 'F_GETFL');
  const next = on ? flags | O_NONBLOCK : flags & ~O_NONBLOCK;
  if (next !== flags && libc.fcntl(fd, F_SETFL, next) < 0) {
    throw new SysError('fcntl', libc.errno(), fd, 'F_SETFL');
  }
}

/**
 * Closes `fd`. EINTR counts as closed (on Linux the fd is released before close can be interrupted); EBADF and
 * other errors throw.
 */
export function closeFd(fd: number): void {
  checkFd(fd, 'close');
  if (libc.close(fd) < 0) {
    const err = libc.errno();
    if (err !== Errno.EINTR) throw new SysError('close', err, fd);
  }
}
