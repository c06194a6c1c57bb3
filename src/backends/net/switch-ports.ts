/**
 * The kinds of port a {@link NetSwitch} has, all living in the switch's thread:
 *
 * - {@link BackendSwitchPort}: any {@link NetBackend} (tap, stream socket, passt) plugged in as the switch's
 *   uplink; the switch plays the device's role towards it.
 * - {@link SharedSwitchPort}: the switch's end of a cross-thread port whose other end is a
 *   {@link SwitchPortBackend} inside a vhost-user export's worker.
 * - {@link EndpointSwitchPort}: a port in TypeScript: `send` injects frames, `onFrame` sees what the switch
 *   delivers to it (tests, traffic generators, user-space stacks).
 *
 * A frame the port cannot take at once waits in a per-port backlog of `backlogFrames`; when that is full too the
 * frame is dropped and counted in `txDropped` (a switch never stalls all ports for one slow one).
 */
import { NetBackendError, type NetBackend } from '../../devices/net/net-backend.js';
import { FRAME_RING_DEFAULT_BYTES, SwitchFrameRing, createFrameRingBuffer } from './switch-frame-ring.js';
import { KEEP_ALIVE_MS, type SwitchPortHandle } from './switch-port-backend.js';

/** Per-port counters; rx = into the switch from the port, tx = out of the switch to the port. */
export interface SwitchPortStats {
  rxFrames: number;
  rxBytes: number;
  txFrames: number;
  txBytes: number;
  /** Frames for this port dropped: backlog full, link down, or refused by the port. */
  txDropped: number;
  /** Frames from this port dropped by a filter, as runts, or addressed back to this port. */
  rxDropped: number;
}

/** What a port calls on its switch. */
export interface SwitchIngress {
  /** A frame arrived from `port` (a view valid for the call). */
  ingress(port: SwitchPort, frame: Uint8Array): void;
  /** Frames the switch forwards between two yields to the event loop, per port. */
  readonly burst: number;
}

/** Default frames held for a port that cannot take them at once. */
export const SWITCH_BACKLOG_DEFAULT_FRAMES = 256;

export abstract class SwitchPort {
  readonly name: string;
  readonly stats: SwitchPortStats = {
    rxFrames: 0,
    rxBytes: 0,
    txFrames: 0,
    txBytes: 0,
    txDropped: 0,
    rxDropped: 0,
  };
  protected readonly sw: SwitchIngress;
  readonly #backlogLimit: number;
  #backlog: Uint8Array[] = [];
  protected closed = false;

  protected constructor(sw: SwitchIngress, name: string, backlogFrames: number) {
    this.sw = sw;
    this.name = name;
    this.#backlogLimit = backlogFrames;
  }

  /** Frames waiting for this port. */
  get backlog(): number {
    return this.#backlog.length;
  }

  /** The switch hands over a frame for this port (a view: copied if it must wait). */
  deliver(frame: Uint8Array): void {
    if (this.closed) {
      this.stats.txDropped++;
      return;
    }
    if (this.#backlog.length === 0 && this.tryDeliver(frame)) {
      this.stats.txFrames++;
      this.stats.txBytes += frame.length;
      return;
    }
    if (this.#backlog.length >= this.#backlogLimit) {
      this.stats.txDropped++;
      return;
    }
    this.#backlog.push(frame.slice());
    if (this.#backlog.length === 1) this.waitForRoom(frame.length);
  }

  /** Sends backlogged frames while the port takes them. */
  protected flushBacklog(): void {
    let i = 0;
    const backlog = this.#backlog;
    for (; i < backlog.length; i++) {
      const frame = backlog[i] as Uint8Array;
      if (this.closed || !this.tryDeliver(frame)) break;
      this.stats.txFrames++;
      this.stats.txBytes += frame.length;
    }
    if (i > 0) this.#backlog = backlog.slice(i);
    const next = this.#backlog[0];
    if (next !== undefined && !this.closed) this.waitForRoom(next.length);
  }

  /** Counts a frame the port produced (the switch then forwards it). */
  protected received(frame: Uint8Array): void {
    this.stats.rxFrames++;
    this.stats.rxBytes += frame.length;
    this.sw.ingress(this, frame);
  }

  /** Takes the frame now (true) or not at all (false). Drops count as taken: bump txDropped and return true. */
  protected abstract tryDeliver(frame: Uint8Array): boolean;
  /** Calls `flushBacklog` once the port may take a `length`-byte frame. */
  protected abstract waitForRoom(length: number): void;

  close(): Promise<void> {
    this.closed = true;
    this.#backlog = [];
    return Promise.resolve();
  }
}

/** A port that is a {@link NetBackend}: the switch receives what the back end receives and transmits to it. */
export class BackendSwitchPort extends SwitchPort {
  readonly backend: NetBackend;
  #scratch: Uint8Array;
  #draining = false;

  constructor(sw: SwitchIngress, name: string, backend: NetBackend, backlogFrames: number, maxFrame: number) {
    super(sw, name, backlogFrames);
    if (backend.vnetHdr) {
      throw new NetBackendError(
        'HOST_IO',
        `switch port ${name}: a back end with virtio_net_hdr cannot join a switch of bare frames`,
        name,
      );
    }
    this.backend = backend;
    this.#scratch = new Uint8Array(maxFrame);
    backend.start({
      readable: () => {
        this.#drain();
      },
      writable: () => {
        this.flushBacklog();
      },
    });
  }

  #drain(): void {
    if (this.#draining || this.closed) return;
    this.#draining = true;
    try {
      for (let n = 0; n < this.sw.burst; n++) {
        const pending = this.backend.pendingLength();
        if (pending > this.#scratch.length) this.#scratch = new Uint8Array(pending);
        const length = this.backend.receive([this.#scratch]);
        if (length === 0) return;
        if (length < 0) {
          this.stats.rxDropped++;
          continue;
        }
        this.received(this.#scratch.subarray(0, length));
      }
      // More may be pending: carry on after other ports had their turn.
      setImmediate(() => {
        this.#drain();
      });
    } finally {
      this.#draining = false;
    }
  }

  protected tryDeliver(frame: Uint8Array): boolean {
    if (!this.backend.linkUp) {
      this.stats.txDropped++;
      return true;
    }
    try {
      return this.backend.transmit([frame]);
    } catch (e) {
      if (!(e instanceof NetBackendError)) throw e;
      this.stats.txDropped++;
      return true;
    }
  }

  protected waitForRoom(): void {
    // The back end calls writable() after a transmit returned false.
  }

  override async close(): Promise<void> {
    await super.close();
    await this.backend.close();
  }
}

/** The switch's end of a cross-thread port. */
export class SharedSwitchPort extends SwitchPort {
  readonly handle: SwitchPortHandle;
  /** Frames the device transmits (the switch consumes). */
  readonly #fromDevice: SwitchFrameRing;
  /** Frames for the device (the switch produces). */
  readonly #toDevice: SwitchFrameRing;
  #waiting = false;
  #waitingRoom = false;
  /** Pending Atomics.waitAsync calls do not keep the thread alive; an open port does. */
  readonly #keepAlive = setInterval(() => undefined, KEEP_ALIVE_MS);

  constructor(
    sw: SwitchIngress,
    name: string,
    backlogFrames: number,
    ringBytes: number = FRAME_RING_DEFAULT_BYTES,
  ) {
    super(sw, name, backlogFrames);
    this.handle = {
      name,
      toSwitch: createFrameRingBuffer(ringBytes),
      fromSwitch: createFrameRingBuffer(ringBytes),
    };
    this.#fromDevice = new SwitchFrameRing(this.handle.toSwitch);
    this.#toDevice = new SwitchFrameRing(this.handle.fromSwitch);
    this.#arm();
  }

  /** The device's side of the link as it will see it. */
  get linkUp(): boolean {
    return this.#toDevice.linkUp;
  }

  /** Raises or drops the device's carrier (the device gets linkChange). */
  setLink(up: boolean): void {
    this.#toDevice.setLink(up);
  }

  /** The device's back end was closed. */
  get peerClosed(): boolean {
    return this.#fromDevice.closed;
  }

  #arm(): void {
    if (this.#waiting || this.closed) return;
    const wait = this.#fromDevice.waitReadable();
    this.#waiting = true;
    if (wait === null) {
      setImmediate(() => {
        this.#waiting = false;
        this.#drain();
      });
    } else {
      void wait.then(() => {
        this.#waiting = false;
        this.#drain();
      });
    }
  }

  #drain(): void {
    if (this.closed) return;
    const ring = this.#fromDevice;
    for (let n = 0; n < this.sw.burst; n++) {
      const frame = ring.peek();
      if (frame === null) {
        if (!ring.closed) this.#arm();
        return;
      }
      this.received(frame);
      ring.consume(frame);
    }
    // A long burst: let the other ports and the event loop run, then carry on.
    this.#waiting = true;
    setImmediate(() => {
      this.#waiting = false;
      this.#drain();
    });
  }

  protected tryDeliver(frame: Uint8Array): boolean {
    if (frame.length > this.#toDevice.maxFrame || this.#toDevice.closed) {
      this.stats.txDropped++;
      return true;
    }
    return this.#toDevice.tryWrite([frame], frame.length);
  }

  protected waitForRoom(length: number): void {
    if (this.#waitingRoom) return;
    this.#waitingRoom = true;
    const wait = this.#toDevice.waitWritable(length);
    const done = (): void => {
      this.#waitingRoom = false;
      this.flushBacklog();
    };
    if (wait === null) setImmediate(done);
    else void wait.then(done);
  }

  override async close(): Promise<void> {
    await super.close();
    clearInterval(this.#keepAlive);
    this.#toDevice.setLink(false);
    this.#toDevice.close();
  }
}

/** A port driven from TypeScript. */
export class EndpointSwitchPort extends SwitchPort {
  readonly #listeners = new Set<(frame: Uint8Array) => void>();

  constructor(sw: SwitchIngress, name: string) {
    super(sw, name, 0);
  }

  /** Puts `frame` on the segment as if a host on this port had sent it (synchronously forwarded). */
  send(frame: Uint8Array): void {
    if (this.closed) throw new NetBackendError('LINK_DOWN', `switch port ${this.name} is closed`, this.name);
    this.received(frame);
  }

  /** Calls `listener` with each frame the switch delivers here (a view valid for the call). Returns an unsubscribe. */
  onFrame(listener: (frame: Uint8Array) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  protected tryDeliver(frame: Uint8Array): boolean {
    for (const l of this.#listeners) l(frame);
    return true;
  }

  protected waitForRoom(): void {
    // Always has room.
  }
}
