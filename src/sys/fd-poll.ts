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

/** What koffi's uv_poll wrapper passes its callback (koffi 3.3's typings declare only the events). */
type PollCallback = (status: number, events: { readable: boolean; disconnect: boolean }) => void;

/**
 * Calls `onEvent` on this thread's event loop whenever `fd` is readable or hung up, until closed. A poll error
 * (libuv's negative status, e.g. the fd was closed under the watch) is reported as a disconnect.
 */
export function watchReadable(fd: number, onEvent: (events: FdEvents) => void): FdWatch {
  const callback: PollCallback = (status, events) => {
    onEvent({ readable: events.readable, disconnect: events.disconnect || status < 0 });
  };
  const handle = koffi.node.poll(
    fd,
    { readable: true, disconnect: true },
    // koffi calls back with (status, events), not the (events) its typings declare.
    callback as unknown as Parameters<typeof koffi.node.poll>[1],
  );
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
