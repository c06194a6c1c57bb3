/**
 * epoll(7): wait on many fds (kick eventfds, sockets, taps) in one blocking call.
 *
 * `wait` with a timeout blocks the calling thread: use it in a worker thread (a koffi call made in a worker
 * blocks only that worker), or with timeout 0 as a poll. On the main thread a blocking wait freezes Node's event
 * loop. A worker blocked in `wait` cannot be interrupted by `worker.terminate()` until the call returns: to stop
 * it, write an eventfd it watches.
 */
import * as libc from './libc.js';
import { NativeBuffer } from './native-buffer.js';
import { checkFd, Errno, SysError } from './sys-error.js';

// <sys/epoll.h>
export const EPOLLIN = 0x001;
export const EPOLLOUT = 0x004;
export const EPOLLERR = 0x008;
export const EPOLLHUP = 0x010;
export const EPOLLRDHUP = 0x2000;
export const EPOLLET = 0x80000000;
const EPOLL_CLOEXEC = 0o2000000;
const EPOLL_CTL_ADD = 1;
const EPOLL_CTL_DEL = 2;
const EPOLL_CTL_MOD = 3;

/**
 * struct epoll_event, packed on x86-64 (__EPOLL_PACKED): 0 uint32_t events; 4 epoll_data_t data (u64) = 12 bytes.
 * The token is stored in the low 32 bits of data (little-endian: bytes 4..7), the high 32 bits are zero.
 */
const EPOLL_EVENT_EVENTS = 0;
const EPOLL_EVENT_DATA = 4;
const EPOLL_EVENT_SIZE = 12;

/**
 * What {@link Epoll.wait} returns. The object and its arrays belong to the Epoll and are overwritten by the next
 * wait: entries `[0, count)` are valid; copy what must outlive the next call.
 */
export interface EpollWaitResult {
  /** Ready fds; 0 on timeout or when a signal interrupted the wait (EINTR). */
  count: number;
  /** The token given to add/modify for each ready fd. */
  tokens: Int32Array;
  /** The EPOLL* bits that are ready for each. */
  events: Uint32Array;
}

export class Epoll {
  /** The epoll instance's fd (close with {@link close}). */
  readonly fd: number;
  #ctl = new NativeBuffer(EPOLL_EVENT_SIZE);
  #ready: NativeBuffer;
  #result: EpollWaitResult;
  #closed = false;

  /** @param capacity the most events one wait returns before the buffers grow (wait's maxEvents grows them). */
  constructor(capacity = 64) {
    const fd = libc.epoll_create1(EPOLL_CLOEXEC);
    if (fd < 0) throw new SysError('epoll_create1', libc.errno(), EPOLL_CLOEXEC);
    this.fd = fd;
    const cap = Math.max(1, capacity);
    this.#ready = new NativeBuffer(cap * EPOLL_EVENT_SIZE);
    this.#result = { count: 0, tokens: new Int32Array(cap), events: new Uint32Array(cap) };
  }

  /** Watches `fd` for `events` (EPOLL* bits); `wait` reports it with `token` (a 32-bit signed integer). */
  add(fd: number, events: number, token: number): void {
    this.#control(EPOLL_CTL_ADD, 'EPOLL_CTL_ADD', fd, events, token);
  }

  /** Changes the events and token of a watched fd. */
  modify(fd: number, events: number, token: number): void {
    this.#control(EPOLL_CTL_MOD, 'EPOLL_CTL_MOD', fd, events, token);
  }

  /** Stops watching `fd`. (Closing an fd also removes it, once no duplicate of it remains open.) */
  remove(fd: number): void {
    this.#control(EPOLL_CTL_DEL, 'EPOLL_CTL_DEL', fd, 0, 0);
  }

  #control(op: number, opName: string, fd: number, events: number, token: number): void {
    this.#checkOpen();
    checkFd(fd, 'epoll_ctl');
    if (!Number.isInteger(token) || token < -0x80000000 || token > 0x7fffffff) {
      throw new SysError('epoll_ctl', Errno.EINVAL, token, 'the token is a 32-bit signed integer');
    }
    const d = this.#ctl.data;
    d.setUint32(EPOLL_EVENT_EVENTS, events >>> 0, true);
    d.setInt32(EPOLL_EVENT_DATA, token, true);
    d.setUint32(EPOLL_EVENT_DATA + 4, 0, true);
    if (libc.epoll_ctl(this.fd, op, fd, this.#ctl.ptr) < 0) {
      throw new SysError('epoll_ctl', libc.errno(), fd, opName);
    }
  }

  /**
   * epoll_wait: blocks the calling thread until an fd is ready or `timeoutMs` passes (-1: forever, 0: poll).
   * Returns the shared result object (see {@link EpollWaitResult}).
   */
  wait(maxEvents: number, timeoutMs: number): EpollWaitResult {
    this.#checkOpen();
    if (!Number.isInteger(maxEvents) || maxEvents <= 0) {
      throw new SysError('epoll_wait', Errno.EINVAL, maxEvents, 'maxEvents must be a positive integer');
    }
    if (maxEvents > this.#result.tokens.length) this.#grow(maxEvents);
    const result = this.#result;
    const n = libc.epoll_wait(this.fd, this.#ready.ptr, maxEvents, timeoutMs);
    if (n < 0) {
      const err = libc.errno();
      if (err !== Errno.EINTR) throw new SysError('epoll_wait', err, this.fd);
      result.count = 0;
      return result;
    }
    const d = this.#ready.data;
    for (let i = 0; i < n; i++) {
      const at = i * EPOLL_EVENT_SIZE;
      result.events[i] = d.getUint32(at + EPOLL_EVENT_EVENTS, true);
      result.tokens[i] = d.getInt32(at + EPOLL_EVENT_DATA, true);
    }
    result.count = n;
    return result;
  }

  #grow(capacity: number): void {
    this.#ready.free();
    this.#ready = new NativeBuffer(capacity * EPOLL_EVENT_SIZE);
    this.#result = { count: 0, tokens: new Int32Array(capacity), events: new Uint32Array(capacity) };
  }

  #checkOpen(): void {
    if (this.#closed) throw new SysError('epoll_ctl', Errno.EBADF, this.fd, 'this Epoll is closed');
  }

  /** Closes the epoll fd and frees the event buffers. A second call is a no-op. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    libc.close(this.fd);
    this.#ready.free();
    this.#ctl.free();
  }
}
