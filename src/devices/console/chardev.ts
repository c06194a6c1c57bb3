/**
 * `Chardev`: the host side of one console port, as the console device sees it — a byte stream that can be
 * connected or not (a socket client, a terminal, a file), with flow control both ways. Implementations live in
 * src/backends/chardev (unix sockets, stdio, files); tests use in-memory ones.
 *
 * The contract is built so that no byte is lost in either direction:
 *
 * - **Guest → host** ({@link Chardev.write}): the chardev takes the bytes (the array becomes its own; the caller
 *   never reuses it) and returns false when it is over its high-water mark. The device then stops taking
 *   transmit buffers from the guest until {@link ChardevListener.onDrain}. While the host side is not
 *   connected ({@link Chardev.isOpen} false), the device discards guest output itself, as QEMU does (a console
 *   nobody watches must not stall the guest kernel, whose hvc driver busy-waits on its transmit buffers).
 * - **Host → guest** ({@link ChardevListener.onData}): the device keeps every byte it is handed until the guest
 *   has receive buffers for it, and calls {@link Chardev.pause} as soon as it holds bytes it could not place, then
 *   {@link Chardev.resume} once they are all in guest buffers. A chardev should stop delivering while paused;
 *   bytes that still arrive (a read already in flight) are kept too, never dropped.
 *
 * ```ts
 * const chardev: Chardev = new UnixSocketChardev({ path: '/tmp/port0.sock', mode: 'server' });
 * await chardev.start();
 * const console = new ConsoleDevice({ ports: [{ name: 'org.example.port0', console: true, chardev }] });
 * ```
 */

/** What a chardev tells its one listener (the console device). */
export interface ChardevListener {
  /**
   * Host → guest bytes. The listener takes ownership of `data`: the chardev must not modify it afterwards. May
   * come while paused (the listener keeps the bytes).
   */
  onData(data: Uint8Array): void;
  /** A {@link Chardev.write} returned false earlier, and the chardev can take more now. */
  onDrain(): void;
  /** The host side connected (a client on the socket, the terminal or file opened). */
  onOpen(): void;
  /** The host side disconnected. A write still waiting for onDrain need not wait any more. */
  onClose(): void;
}

export interface Chardev {
  /** Whether the host side is connected now. */
  readonly isOpen: boolean;
  /**
   * Sets the listener (one at a time; a later call replaces it, `undefined` detaches). A chardev that is already
   * open does not replay onOpen: the listener reads {@link isOpen}.
   */
  attach(listener: ChardevListener | undefined): void;
  /**
   * Guest → host bytes. The chardev owns `data` from now on. Returns false when its buffer is full: the caller
   * waits for {@link ChardevListener.onDrain} before writing again. Bytes written while not open are discarded.
   * Never throws for I/O errors: a broken connection shows up as onClose.
   */
  write(data: Uint8Array): boolean;
  /** Host → guest back-pressure: stop delivering onData until {@link resume}. */
  pause(): void;
  resume(): void;
  /** Optional: the guest opened (`true`) or closed its end of the port (VIRTIO_CONSOLE_PORT_OPEN from the guest). */
  setGuestOpen?(open: boolean): void;
  /** Releases the host resource (socket, file). Idempotent. */
  close(): Promise<void>;
}
