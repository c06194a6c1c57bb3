/**
 * Readiness of an fd inside the calling thread's libuv event loop (koffi's uv_poll wrapper): the loop keeps
 * running (timers, file I/O completions, sockets) and the callback runs on it when the fd is readable. This is
 * how a worker waits on kick eventfds and vhost-user sockets without blocking its own event loop.
 */
import koffi from 'koffi';

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
