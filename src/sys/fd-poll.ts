/**
 * Readiness of an fd inside the calling thread's libuv event loop (koffi's uv_poll wrapper): the loop keeps
 * running (timers, file I/O completions, sockets) and the callback runs on it when the fd is readable. This is
 * how a worker waits on kick eventfds and vhost-user sockets without blocking its own event loop.
 */
import koffi from 'koffi';
import * as libc from './libc.js';
import { checkFd, Errno, SysError } from './sys-error.js';

// <poll.h>
const POLLIN = 0x001;
/** struct pollfd as two 32-bit words: fd, then events (low half) and revents (high half). */
const POLLFD_FD_WORD = 0;
const POLLFD_EVENTS_WORD = 1;
const POLLFD_REVENTS_SHIFT = 16;
const pollfd = new Int32Array(2);

export interface FdWatch {
  /** Stops watching; the fd is not closed. Idempotent. Call before closing the fd. */
  close(): void;
}

export interface FdEvents {
  readonly readable: boolean;
  /** The peer hung up (EPOLLHUP / EPOLLRDHUP). */
  readonly disconnect: boolean;
}

/** Calls `onEvent` on this thread's event loop whenever `fd` is readable or hung up, until closed. */
export function watchReadable(fd: number, onEvent: (events: FdEvents) => void): FdWatch {
  const handle = koffi.node.poll(fd, { readable: true, disconnect: true }, (ev) => {
    onEvent({ readable: ev.readable, disconnect: ev.disconnect });
  });
  let open = true;
  return {
    close() {
      if (!open) return;
      open = false;
      handle.stop();
      handle.close();
    },
  };
}

/**
 * Whether `fd` is readable right now: poll(2) with a zero timeout, one system call and no allocation — for a
 * data path that busy-polls an fd between waits on the event loop (a tap read that finds nothing throws in
 * Node's fs, which costs far more than this). A hang-up or error counts as readable (the read reports it).
 */
export function isReadable(fd: number): boolean {
  checkFd(fd, 'poll');
  pollfd[POLLFD_FD_WORD] = fd;
  pollfd[POLLFD_EVENTS_WORD] = POLLIN;
  for (;;) {
    const n = libc.poll(pollfd, 1, 0);
    if (n >= 0) return n > 0 && pollfd[POLLFD_EVENTS_WORD] >>> POLLFD_REVENTS_SHIFT !== 0;
    const err = libc.errno();
    if (err !== Errno.EINTR) throw new SysError('poll', err, fd);
  }
}
