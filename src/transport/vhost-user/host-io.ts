/**
 * The host effects a vhost-user back-end session needs, injected so the session stays pure TypeScript (no FFI,
 * no Node I/O) and testable byte for byte. The real implementation comes from src/sys (mmap, close and eventfd
 * writes through koffi); tests map fake fds to ArrayBuffers.
 */

/** A shared mapping of (part of) a file descriptor. */
export interface MappedRegion {
  /** The mapped bytes (for a real mmap, a `koffi.view` ArrayBuffer): writes are seen by the other process. */
  readonly bytes: Uint8Array;
  /** Removes the mapping; `bytes` must not be touched afterwards. Called exactly once. */
  unmap(): void;
}

export interface VhostHostIo {
  /**
   * Maps `length` bytes of `fd` from file offset `offset`, MAP_SHARED, read/write. Throws if it cannot (the
   * session turns that into a MAP_FAILED error that ends the connection). The fd stays open: the session
   * closes it with {@link closeFd} after mapping, as libvhost-user does (the mapping keeps the memory alive).
   */
  mapShared(fd: number, length: number, offset: number): MappedRegion;
  /** Closes an fd the session received. Must not throw (log instead). */
  closeFd(fd: number): void;
  /**
   * Signals the front-end's call eventfd of vring `ringIndex`: used buffers are there (the real one writes
   * the 8-byte value 1 to `fd`). Must not throw.
   */
  signalCall(ringIndex: number, fd: number): void;
  /** Signals the error eventfd of vring `ringIndex` (SET_VRING_ERR): the ring hit an error. Must not throw. */
  signalErr(ringIndex: number, fd: number): void;
  /**
   * Sends a request to the front end over the back-end channel `fd` (SET_BACKEND_REQ_FD), e.g. a configuration
   * change notification. No reply is asked for. Must not throw.
   */
  sendBackendRequest(fd: number, bytes: Uint8Array): void;
}
