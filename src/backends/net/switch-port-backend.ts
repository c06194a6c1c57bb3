/**
 * `SwitchPortBackend`: the device's end of a {@link NetSwitch} port that lives in another thread — the
 * {@link NetBackend} a virtio-net device inside a vhost-user export's worker uses to sit on a switch owned by the
 * main thread (or any other). Frames cross in two {@link SwitchFrameRing}s carried by a {@link SwitchPortHandle},
 * which is plain structured-clone data: put it in a `DeviceFactoryRef`'s arguments and build the back end in the
 * worker with `new SwitchPortBackend(handle)`.
 *
 * Each frame is copied once into the ring on transmit and once out of it into the guest's buffers on receive;
 * a full ring makes `transmit` return false until the switch has drained it (no loss on this side).
 *
 * ```ts
 * // main thread
 * const sw = new NetSwitch();
 * const { handle } = sw.addSharedPort({ name: 'vm0' });
 * // worker: const backend = new SwitchPortBackend(handle); new NetDevice({ backend, ... })
 * ```
 */
import { NetBackendError, type NetBackend, type NetBackendEvents } from '../../devices/net/net-backend.js';
import { SwitchFrameRing } from './switch-frame-ring.js';

/** Period of the timer that keeps the thread's event loop alive while the port is open (it never does work). */
export const KEEP_ALIVE_MS = 1 << 30;

/** The two rings of a cross-thread switch port (structured-clone-able). */
export interface SwitchPortHandle {
  readonly name: string;
  /** Device → switch (the device produces). */
  readonly toSwitch: SharedArrayBuffer;
  /** Switch → device (the device consumes). */
  readonly fromSwitch: SharedArrayBuffer;
}

export class SwitchPortBackend implements NetBackend {
  readonly vnetHdr = false;
  readonly name: string;
  readonly maxFrame: number;
  readonly #tx: SwitchFrameRing;
  readonly #rx: SwitchFrameRing;
  #events: NetBackendEvents | undefined;
  #waitingReadable = false;
  #waitingWritable = false;
  #paused = false;
  #closed = false;
  #lastLink: boolean;
  /** A pending Atomics.waitAsync does not keep a Node thread alive; an open port does (as an open socket does). */
  #keepAlive: NodeJS.Timeout | undefined;

  constructor(handle: SwitchPortHandle) {
    this.name = handle.name;
    this.#tx = new SwitchFrameRing(handle.toSwitch);
    this.#rx = new SwitchFrameRing(handle.fromSwitch);
    this.maxFrame = Math.min(this.#tx.maxFrame, this.#rx.maxFrame);
    this.#lastLink = this.linkUp;
  }

  get linkUp(): boolean {
    return this.#rx.linkUp && !this.#rx.closed;
  }

  start(events: NetBackendEvents): void {
    this.#events = events;
    this.#keepAlive ??= setInterval(() => undefined, KEEP_ALIVE_MS);
    this.#armReadable();
  }

  transmit(bufs: readonly Uint8Array[]): boolean {
    if (this.#closed) throw new NetBackendError('LINK_DOWN', `switch port ${this.name} is closed`, this.name);
    if (!this.linkUp)
      throw new NetBackendError('LINK_DOWN', `switch port ${this.name}: link down`, this.name);
    let length = 0;
    for (const b of bufs) length += b.length;
    if (length > this.maxFrame) {
      throw new NetBackendError(
        'FRAME_TOO_LONG',
        `frame of ${length} bytes exceeds the switch port limit of ${this.maxFrame}`,
        length,
      );
    }
    if (this.#tx.tryWrite(bufs, length)) return true;
    this.#armWritable(length);
    return false;
  }

  receive(bufs: readonly Uint8Array[]): number {
    const frame = this.#rx.peek();
    if (frame === null) {
      this.#armReadable();
      return 0;
    }
    const length = frame.length;
    let room = 0;
    for (const b of bufs) room += b.length;
    if (room >= length) {
      let pos = 0;
      for (const b of bufs) {
        if (pos === length) break;
        const n = Math.min(b.length, length - pos);
        b.set(frame.subarray(pos, pos + n));
        pos += n;
      }
    }
    this.#rx.consume(frame);
    return room >= length ? length : -1;
  }

  pendingLength(): number {
    const frame = this.#rx.peek();
    if (frame !== null) return frame.length;
    // Found empty: wait for the next frame (the device stops at a 0 here without calling receive).
    this.#armReadable();
    return 0;
  }

  pauseReceive(): void {
    this.#paused = true;
  }

  resumeReceive(): void {
    this.#paused = false;
    if (this.#rx.used > 0) {
      queueMicrotask(() => {
        if (!this.#closed && this.#rx.used > 0) this.#events?.readable();
      });
    } else {
      this.#armReadable();
    }
  }

  close(): Promise<void> {
    if (!this.#closed) {
      this.#closed = true;
      clearInterval(this.#keepAlive);
      this.#tx.close();
    }
    return Promise.resolve();
  }

  /** Waits (without blocking the thread) for the switch to write a frame or change the link. */
  #armReadable(): void {
    if (this.#waitingReadable || this.#closed) return;
    const wait = this.#rx.waitReadable();
    if (wait === null) {
      // A frame is there already: announce it on the next microtask (never re-enter the caller).
      this.#waitingReadable = true;
      queueMicrotask(() => {
        this.#waitingReadable = false;
        this.#woken();
      });
      return;
    }
    this.#waitingReadable = true;
    void wait.then(() => {
      this.#waitingReadable = false;
      this.#woken();
    });
  }

  #woken(): void {
    if (this.#closed) return;
    const up = this.linkUp;
    if (up !== this.#lastLink) {
      this.#lastLink = up;
      this.#events?.linkChange?.(up);
    }
    if (this.#rx.used > 0) {
      if (!this.#paused) this.#events?.readable();
    } else if (!this.#rx.closed) {
      this.#armReadable();
    }
  }

  #armWritable(length: number): void {
    if (this.#waitingWritable) return;
    this.#waitingWritable = true;
    const wait = this.#tx.waitWritable(length);
    const done = (): void => {
      this.#waitingWritable = false;
      if (!this.#closed) this.#events?.writable();
    };
    if (wait === null) queueMicrotask(done);
    else void wait.then(done);
  }
}
