/**
 * # virtio-console driver (VIRTIO 1.2 §5.3, after Linux drivers/char/virtio_console.c)
 *
 * `VirtioConsoleDriver` registers on a {@link VirtioBus} (id table: device 3, any vendor; features SIZE and
 * MULTIPORT) and works on any transport that implements the driver model's config ops. The bound device's API is
 * a {@link VirtioConsole} (`driver.console(dev)`): `ports()`, `port(name)`, `waitForPort(name)` and
 * `openPort(name | id)`, which returns a {@link ConsolePortStream} — a Node `Duplex` whose readable side is the
 * bytes the device (the host end of the port) sends, and whose writable side sends bytes to it.
 *
 * **MULTIPORT** (the Linux driver's side of the control protocol, §5.3.6.2): probe stocks the control receiveq,
 * sets DRIVER_OK and sends DEVICE_READY 1. DEVICE_ADD creates a port (its receiveq is stocked) and is answered
 * with PORT_READY 1 (again for a port that exists; ids at or beyond max_nr_ports are ignored, as Linux does).
 * PORT_NAME, CONSOLE_PORT, RESIZE and PORT_OPEN are recorded on the port; DEVICE_REMOVE ends its stream and
 * takes its buffers back. `openPort` sends PORT_OPEN 1 and closing the stream PORT_OPEN 0. Without MULTIPORT there
 * is a single port, id 0, a console, always connected on the host side.
 *
 * **Streams**: received bytes are pushed to the readable side; while it is over its high-water mark the port's
 * receive buffers are held back instead of being given to the device again, so the device (and behind it the
 * host peer) is throttled. A write completes (its callback runs) when the device has used every transmit buffer
 * it took, so `write()`'s return value and `'drain'` carry the device's back-pressure. As in Linux, writes wait
 * while the host side is not connected (QEMU discards what is sent to an unconnected port). When the host side
 * disconnects (PORT_OPEN 0 from the device) the readable side ends (`'end'`) after whatever was already
 * received, and the stream emits `'hostclose'` (`'hostopen'` when it connects); a port that closed on the host
 * side is read again by closing the stream and opening the port anew. `stream.close()` ends the writable side,
 * waits for the writes to complete and closes the port; `destroy()` closes it at once.
 *
 * Errors are {@link ConsoleDriverError} with `code`: BAD_CONFIG (probe refuses: max_nr_ports 0 or too large),
 * NO_SUCH_PORT, PORT_BUSY (the port is open already), PORT_REMOVED, QUEUE_BROKEN, REMOVED, NOT_BOUND, TIMEOUT
 * (waitForPort), INVALID_ARGUMENT. Stream write failures are reported through the write callback (`'error'`).
 *
 * Buffers: receive buffers ({@link VirtioConsoleDriverOptions.rxBufferSize}, a page by default, as Linux) and
 * one buffer per transmit piece (at most {@link VirtioConsoleDriverOptions.txChunkSize}) come from the
 * transport's allocator; control messages likewise. The wire layout comes from src/devices/console/console-layout.ts.
 */
import { DriverError, boundData, queueBrokenMessage } from '../driver-error.js';
import { EventEmitter } from 'node:events';
import { Duplex } from 'node:stream';
import {
  CONSOLE_CONFIG_COLS,
  CONSOLE_CONFIG_MAX_NR_PORTS,
  CONSOLE_CONFIG_ROWS,
  CONSOLE_CONTROL_RX_QUEUE,
  CONSOLE_CONTROL_TX_QUEUE,
  CONTROL_HEADER_SIZE,
  CONTROL_RESIZE_SIZE,
  ConsoleControlEvent,
  ConsoleFeature,
  VIRTIO_CONSOLE_BAD_ID,
  VIRTIO_ID_CONSOLE,
  consoleQueueCount,
  consoleRxQueue,
  consoleTxQueue,
  decodeControlMessage,
  encodeControlMessage,
  type ConsoleControlMessage,
} from '../../devices/console/console-layout.js';
import type { VirtqueueSpec } from '../../virtio/driver/config-ops.js';
import type { VirtioBusDevice } from '../../virtio/driver/virtio-bus-device.js';
import { VIRTIO_DEV_ANY_ID, type VirtioDriver } from '../../virtio/driver/virtio-driver.js';
import type { ScatterEntry, Virtqueue } from '../../virtio/driver/virtqueue.js';
import { UsageError } from '../../virtio/errors.js';
import type { GuestAllocator } from '../../virtio/guest-allocator.js';
import type { GuestMemory } from '../../virtio/guest-memory.js';

/** Default receive buffer size (Linux: PAGE_SIZE). */
export const CONSOLE_DEFAULT_RX_BUFFER = 4096;
/** Default largest transmit buffer. */
export const CONSOLE_DEFAULT_TX_CHUNK = 64 * 1024;
/** Control receive buffers are this large (a PORT_NAME carries the name). */
export const CONSOLE_CONTROL_BUFFER = 4096;
/** Most ports this driver accepts in max_nr_ports (queue indices must stay below 2^15). */
export const CONSOLE_MAX_PORTS = 0x3ffe;

export type ConsoleDriverErrorCode =
  | 'BAD_CONFIG'
  | 'NO_SUCH_PORT'
  | 'PORT_BUSY'
  | 'PORT_REMOVED'
  | 'QUEUE_BROKEN'
  | 'REMOVED'
  | 'NOT_BOUND'
  | 'TIMEOUT'
  | 'INVALID_ARGUMENT';

export class ConsoleDriverError extends DriverError<ConsoleDriverErrorCode> {}

export interface VirtioConsoleDriverOptions {
  /** Bytes per receive buffer (default {@link CONSOLE_DEFAULT_RX_BUFFER}). */
  readonly rxBufferSize?: number;
  /** Largest transmit buffer (default {@link CONSOLE_DEFAULT_TX_CHUNK}); larger writes are split. */
  readonly txChunkSize?: number;
  /** Ring size of every queue (default: the device's maximum). */
  readonly queueSize?: number;
  /** false: do not negotiate MULTIPORT even when offered (single port 0). Default true. */
  readonly multiport?: boolean;
}

/** What the driver knows about a port. */
export interface ConsolePortInfo {
  readonly id: number;
  /** From PORT_NAME; undefined until (unless) the device names the port. */
  readonly name: string | undefined;
  /** CONSOLE_PORT 1 from the device (always for port 0 without MULTIPORT). */
  readonly isConsole: boolean;
  /** The host side is open (PORT_OPEN from the device; always true without MULTIPORT). */
  readonly hostConnected: boolean;
  /** A stream is open on this side. */
  readonly guestConnected: boolean;
  /** Console size (RESIZE, or the config space with VIRTIO_CONSOLE_F_SIZE for port 0). */
  readonly cols: number | undefined;
  readonly rows: number | undefined;
}

/** A guest buffer on a ring; also the ring token. */
interface Buf {
  readonly addr: number;
  readonly len: number;
  /** Transmit pieces: runs once the device used the buffer (or it was taken back: with an error). */
  readonly done?: (error: Error | undefined) => void;
}

/** A ring with a backlog for buffers that do not fit, and kicks coalesced per microtask. */
class Ring {
  readonly vq: Virtqueue<Buf>;
  readonly backlog: { buf: Buf; out: boolean }[] = [];
  kickPending = false;
  constructor(vq: Virtqueue<Buf>) {
    this.vq = vq;
  }

  /** Adds a device-readable (`out`) or device-writable buffer, or queues it when the ring is full. */
  add(buf: Buf, out: boolean): void {
    if (this.backlog.length !== 0 || !this.#tryAdd(buf, out)) this.backlog.push({ buf, out });
  }

  drain(): void {
    while (this.backlog.length !== 0) {
      const next = this.backlog[0] as { buf: Buf; out: boolean };
      if (!this.#tryAdd(next.buf, next.out)) return;
      this.backlog.shift();
    }
  }

  #tryAdd(buf: Buf, out: boolean): boolean {
    const sg: ScatterEntry[] = [{ addr: buf.addr, len: buf.len }];
    try {
      if (out) this.vq.addOutbuf(sg, buf);
      else this.vq.addInbuf(sg, buf);
    } catch (e) {
      if (e instanceof UsageError && e.code === 'QUEUE_FULL') return false;
      throw e;
    }
    if (!this.kickPending) {
      this.kickPending = true;
      queueMicrotask(() => {
        this.kickPending = false;
        if (!this.vq.isBroken()) this.vq.kick();
      });
    }
    return true;
  }
}

/** @internal One port's state (exported for the stream's constructor signature only). */
export class ConsolePortState {
  readonly id: number;
  readonly rx: Ring;
  readonly tx: Ring;
  name: string | undefined;
  isConsole = false;
  hostConnected = false;
  cols: number | undefined;
  rows: number | undefined;
  stream: ConsolePortStream | undefined;
  removed = false;
  /** Receive buffers held back while the stream's readable side is full. */
  readonly parked: Buf[] = [];
  /** Sends waiting for the host side to connect. */
  readonly waiting: (() => void)[] = [];
  constructor(id: number, rx: Ring, tx: Ring) {
    this.id = id;
    this.rx = rx;
    this.tx = tx;
  }

  info(): ConsolePortInfo {
    return {
      id: this.id,
      name: this.name,
      isConsole: this.isConsole,
      hostConnected: this.hostConnected,
      guestConnected: this.stream !== undefined,
      cols: this.cols,
      rows: this.rows,
    };
  }
}

/**
 * One port opened by {@link VirtioConsole.openPort}. Readable: bytes from the host side; writable: bytes to it.
 * Emits `'hostopen'` / `'hostclose'` when the host side connects / disconnects (MULTIPORT).
 */
export class ConsolePortStream extends Duplex {
  readonly id: number;
  readonly name: string | undefined;
  readonly #console: VirtioConsole;
  readonly #port: ConsolePortState;

  /** @internal made by openPort */
  constructor(console: VirtioConsole, port: ConsolePortState) {
    super({ allowHalfOpen: true });
    this.#console = console;
    this.#port = port;
    this.id = port.id;
    this.name = port.name;
  }

  /** Whether the host side of the port is connected. */
  get hostConnected(): boolean {
    return this.#port.hostConnected;
  }

  /** Ends the writable side, waits until every write was used by the device, and closes the port. */
  close(): Promise<void> {
    return new Promise((resolve) => {
      if (this.destroyed) {
        resolve();
        return;
      }
      this.once('close', () => {
        resolve();
      });
      if (this.writableFinished || this.writableEnded) {
        if (this.writableFinished) this.destroy();
        else
          this.once('finish', () => {
            this.destroy();
          });
        return;
      }
      this.end(() => {
        this.destroy();
      });
    });
  }

  override _read(): void {
    this.#console._resumeRx(this.#port);
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    this.#console._send(this.#port, [chunk], callback);
  }

  override _writev(
    chunks: { chunk: Buffer; encoding: BufferEncoding }[],
    callback: (error?: Error | null) => void,
  ): void {
    this.#console._send(
      this.#port,
      chunks.map((c) => c.chunk),
      callback,
    );
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    this.#console._closePort(this.#port, this);
    callback(error);
  }
}

/** A bound virtio-console device: the driver's per-device state and its API. */
export class VirtioConsole extends EventEmitter {
  readonly dev: VirtioBusDevice;
  readonly memory: GuestMemory;
  readonly allocator: GuestAllocator;
  readonly multiport: boolean;
  /** max_nr_ports (1 without MULTIPORT). */
  readonly maxPorts: number;
  readonly #rxBufferSize: number;
  readonly #txChunk: number;
  readonly #ports = new Map<number, ConsolePortState>();
  #rings: (Ring | null)[] = [];
  #removed: ConsoleDriverError | undefined;

  /** @internal made by the driver's probe */
  constructor(dev: VirtioBusDevice, maxPorts: number, options: VirtioConsoleDriverOptions) {
    super();
    this.dev = dev;
    this.memory = dev.ops.memory;
    this.allocator = dev.ops.allocator;
    this.multiport = dev.hasFeature(ConsoleFeature.VIRTIO_CONSOLE_F_MULTIPORT);
    this.maxPorts = maxPorts;
    this.#rxBufferSize = options.rxBufferSize ?? CONSOLE_DEFAULT_RX_BUFFER;
    this.#txChunk = options.txChunkSize ?? CONSOLE_DEFAULT_TX_CHUNK;
  }

  /** Every port the device added, by id. */
  ports(): ConsolePortInfo[] {
    return [...this.#ports.values()].sort((a, b) => a.id - b.id).map((p) => p.info());
  }

  /** The port named `name` (PORT_NAME), if the device added one. */
  port(name: string): ConsolePortInfo | undefined {
    return this.#byName(name)?.info();
  }

  /** Resolves when a port named `name` exists (ports are added by the device after DEVICE_READY). */
  waitForPort(name: string, timeoutMs = 10_000): Promise<ConsolePortInfo> {
    const found = this.port(name);
    if (found !== undefined) return Promise.resolve(found);
    return new Promise((resolve, reject) => {
      const onPort = (info: ConsolePortInfo): void => {
        if (info.name !== name) return;
        clearTimeout(timer);
        this.off('port', onPort);
        resolve(info);
      };
      const timer = setTimeout(() => {
        this.off('port', onPort);
        reject(
          new ConsoleDriverError(
            'TIMEOUT',
            `${this.dev.name}: no port named ${JSON.stringify(name)} within ${timeoutMs} ms`,
            name,
          ),
        );
      }, timeoutMs);
      this.on('port', onPort);
    });
  }

  /**
   * Opens a port by name (or id) and returns its stream; with MULTIPORT sends PORT_OPEN 1. Throws NO_SUCH_PORT,
   * PORT_BUSY (already open), REMOVED.
   */
  openPort(nameOrId: string | number): ConsolePortStream {
    this.#checkLive();
    const port = typeof nameOrId === 'number' ? this.#ports.get(nameOrId) : this.#byName(nameOrId);
    if (port === undefined || port.removed) {
      throw new ConsoleDriverError(
        'NO_SUCH_PORT',
        `${this.dev.name}: no port ${JSON.stringify(nameOrId)}`,
        nameOrId,
      );
    }
    if (port.stream !== undefined) {
      throw new ConsoleDriverError(
        'PORT_BUSY',
        `${this.dev.name}: port ${port.id}${port.name === undefined ? '' : ` (${port.name})`} is open already`,
        port.id,
      );
    }
    const stream = new ConsolePortStream(this, port);
    port.stream = stream;
    if (this.multiport) this.#sendControl(port.id, ConsoleControlEvent.PORT_OPEN, 1);
    this.#resumeParked(port);
    return stream;
  }

  // ---- driver internals ----

  /** @internal The queue specs for findVqs (index = queue number). */
  _specs(queueSize: number | undefined): (VirtqueueSpec | null)[] {
    const n = consoleQueueCount(this.maxPorts, this.multiport);
    return Array.from({ length: n }, (_, index) => ({
      name: queueName(index),
      callback: (vq: Virtqueue) => {
        this.#interrupt(vq as Virtqueue<Buf>);
      },
      ...(queueSize === undefined ? {} : { size: queueSize }),
    }));
  }

  /** @internal */
  _setQueues(vqs: readonly (Virtqueue | null)[]): void {
    this.#rings = vqs.map((vq) => (vq === null ? null : new Ring(vq as Virtqueue<Buf>)));
  }

  /** @internal After DRIVER_OK: start the control protocol (MULTIPORT) or add port 0. */
  _start(size: { cols: number; rows: number } | undefined): void {
    if (this.multiport) {
      const crx = this.#rings[CONSOLE_CONTROL_RX_QUEUE];
      if (crx == null) return;
      this.#stock(crx, CONSOLE_CONTROL_BUFFER);
      this.#sendControl(VIRTIO_CONSOLE_BAD_ID, ConsoleControlEvent.DEVICE_READY, 1);
      return;
    }
    const port = this.#addPort(0);
    if (port === undefined) return;
    port.isConsole = true;
    port.hostConnected = true;
    port.cols = size?.cols;
    port.rows = size?.rows;
    this.emit('port', port.info());
  }

  /** @internal Device removed: fail and free everything (the device is reset already). */
  _teardown(error: ConsoleDriverError): void {
    this.#removed ??= error;
    for (const port of this.#ports.values()) {
      port.removed = true;
      port.waiting.length = 0;
      const stream = port.stream;
      port.stream = undefined;
      stream?.push(null);
      stream?.destroy();
    }
    for (const ring of this.#rings) {
      if (ring === null) continue;
      for (const { buf } of ring.backlog.splice(0)) this.#release(buf, error);
      let buf;
      while ((buf = ring.vq.detachUnusedBuf()) !== null) this.#release(buf, error);
    }
    for (const port of this.#ports.values()) {
      for (const buf of port.parked.splice(0)) this.#release(buf, error);
    }
    this.#rings = [];
  }

  /** @internal The readable side wants more: give held-back receive buffers to the device again. */
  _resumeRx(port: ConsolePortState): void {
    this.#resumeParked(port);
  }

  /** @internal Sends `chunks` on the port; `callback` runs when the device used every piece. */
  _send(
    port: ConsolePortState,
    chunks: readonly Uint8Array[],
    callback: (error?: Error | null) => void,
  ): void {
    if (this.#removed !== undefined) {
      callback(this.#removed);
      return;
    }
    if (port.removed) {
      callback(
        new ConsoleDriverError('PORT_REMOVED', `${this.dev.name}: port ${port.id} was removed`, port.id),
      );
      return;
    }
    if (!port.hostConnected) {
      port.waiting.push(() => {
        this._send(port, chunks, callback);
      });
      return;
    }
    const total = chunks.reduce((n, c) => n + c.length, 0);
    if (total === 0) {
      callback();
      return;
    }
    let pending = 0;
    let failed: Error | undefined;
    let submitted = false;
    const pieceDone = (error: Error | undefined): void => {
      failed ??= error;
      pending--;
      if (pending === 0 && submitted) callback(failed ?? null);
    };
    try {
      for (const chunk of chunks) {
        for (let off = 0; off < chunk.length; off += this.#txChunk) {
          const len = Math.min(this.#txChunk, chunk.length - off);
          const addr = this.allocator.alloc(len, 16);
          this.memory.write(addr, chunk.subarray(off, off + len));
          pending++;
          port.tx.add({ addr, len, done: pieceDone }, true);
        }
      }
    } catch (e) {
      failed ??= this.#ringError(port.tx, e);
    }
    submitted = true;
    if (pending === 0) callback(failed ?? null);
  }

  /** @internal The stream was destroyed: PORT_OPEN 0, and the port can be opened again. */
  _closePort(port: ConsolePortState, stream: ConsolePortStream): void {
    if (port.stream !== stream) return;
    port.stream = undefined;
    port.waiting.length = 0;
    if (this.#removed !== undefined || port.removed) return;
    if (this.multiport) this.#sendControl(port.id, ConsoleControlEvent.PORT_OPEN, 0);
    this.#resumeParked(port);
  }

  // ---- queues ----

  #interrupt(vq: Virtqueue<Buf>): void {
    const index = vq.index;
    if (this.multiport && index === CONSOLE_CONTROL_RX_QUEUE) this.#controlRx(vq);
    else if (index % 2 === 1) this.#txDone(vq);
    else {
      const id = this.multiport ? (index === 0 ? 0 : (index - 2) >> 1) : 0;
      const port = this.#ports.get(id);
      if (port !== undefined) this.#rxDone(port);
    }
  }

  /** Used buffers of a transmit queue (port or control): free them and complete their writes. */
  #txDone(vq: Virtqueue<Buf>): void {
    const ring = this.#rings[vq.index];
    try {
      do {
        vq.disableCb();
        let used;
        while ((used = vq.getBuf()) !== null) this.#release(used.token, undefined);
      } while (!vq.enableCb());
    } catch (e) {
      this.#breakRing(vq, e);
      return;
    }
    ring?.drain();
  }

  /** Used receive buffers of a port: push their bytes to the stream (or drop them when none is open). */
  #rxDone(port: ConsolePortState): void {
    const vq = port.rx.vq;
    try {
      do {
        vq.disableCb();
        let used;
        while ((used = vq.getBuf()) !== null) {
          const buf = used.token;
          const stream = port.stream;
          if (stream === undefined || stream.readableEnded || stream.destroyed || port.removed) {
            if (port.removed) this.allocator.free(buf.addr);
            else port.rx.add(buf, false);
            continue;
          }
          const more = used.len === 0 || stream.push(Buffer.from(this.memory.slice(buf.addr, used.len)));
          if (more) port.rx.add(buf, false);
          else port.parked.push(buf);
        }
      } while (!vq.enableCb());
    } catch (e) {
      this.#breakRing(vq, e);
    }
  }

  #controlRx(vq: Virtqueue<Buf>): void {
    const ring = this.#rings[CONSOLE_CONTROL_RX_QUEUE];
    try {
      do {
        vq.disableCb();
        let used;
        while ((used = vq.getBuf()) !== null) {
          const buf = used.token;
          const msg = decodeControlMessage(this.memory.slice(buf.addr, used.len));
          ring?.add(buf, false);
          if (msg !== undefined) this.#handleControl(msg);
        }
      } while (!vq.enableCb());
    } catch (e) {
      this.#breakRing(vq, e);
    }
  }

  /** Linux handle_control_message. */
  #handleControl(msg: ConsoleControlMessage): void {
    if (this.#removed !== undefined) return;
    const E = ConsoleControlEvent;
    if (msg.event === E.DEVICE_ADD) {
      const existing = this.#ports.get(msg.id);
      if (existing !== undefined && !existing.removed) {
        this.#sendControl(msg.id, E.PORT_READY, 1);
        return;
      }
      if (msg.id >= this.maxPorts) return; // Linux: "Request for adding port with out-of-bound id"
      const port = this.#addPort(msg.id);
      this.#sendControl(msg.id, E.PORT_READY, port === undefined ? 0 : 1);
      if (port !== undefined) this.emit('portadd', port.info());
      return;
    }
    const port = this.#ports.get(msg.id);
    if (port === undefined || port.removed) return; // Linux: "Invalid index in control packet"
    switch (msg.event) {
      case E.DEVICE_REMOVE:
        this.#removePort(port);
        break;
      case E.CONSOLE_PORT:
        if (msg.value !== 0) port.isConsole = true;
        break;
      case E.RESIZE:
        if (msg.payload.length >= CONTROL_RESIZE_SIZE - CONTROL_HEADER_SIZE) {
          const view = new DataView(msg.payload.buffer, msg.payload.byteOffset, msg.payload.byteLength);
          port.cols = view.getUint16(0, true);
          port.rows = view.getUint16(2, true);
          this.emit('resize', port.info());
        }
        break;
      case E.PORT_OPEN:
        this.#hostOpen(port, msg.value !== 0);
        break;
      case E.PORT_NAME: {
        if (port.name !== undefined) break; // Linux keeps the first name
        const end = msg.payload.indexOf(0);
        port.name = new TextDecoder().decode(msg.payload.subarray(0, end < 0 ? msg.payload.length : end));
        this.emit('port', port.info());
        break;
      }
      default:
        break;
    }
  }

  #hostOpen(port: ConsolePortState, open: boolean): void {
    if (port.hostConnected === open) return;
    port.hostConnected = open;
    const stream = port.stream;
    if (open) {
      for (const send of port.waiting.splice(0)) send();
      stream?.emit('hostopen');
    } else if (stream !== undefined) {
      // What the device used before it said so belongs before the end of the stream.
      this.#rxDone(port);
      stream.emit('hostclose');
      if (!stream.readableEnded) stream.push(null);
    }
    this.emit('portopen', port.info());
  }

  #addPort(id: number): ConsolePortState | undefined {
    const rx = this.#rings[consoleRxQueue(id)];
    const tx = this.#rings[consoleTxQueue(id)];
    if (rx == null || tx == null) return undefined;
    const port = new ConsolePortState(id, rx, tx);
    // Without MULTIPORT the port's name is never sent: it stays undefined.
    this.#ports.set(id, port);
    this.#stock(rx, this.#rxBufferSize);
    return port;
  }

  /** DEVICE_REMOVE (Linux unplug_port): end the stream and take the port's buffers back. */
  #removePort(port: ConsolePortState): void {
    port.removed = true;
    this.#ports.delete(port.id);
    const error = new ConsoleDriverError(
      'PORT_REMOVED',
      `${this.dev.name}: port ${port.id} was removed`,
      port.id,
    );
    port.waiting.length = 0;
    const stream = port.stream;
    port.stream = undefined;
    if (stream !== undefined) {
      this.#rxDone(port);
      if (!stream.readableEnded) stream.push(null);
      stream.destroy();
    }
    for (const ring of [port.rx, port.tx]) {
      for (const { buf } of ring.backlog.splice(0)) this.#release(buf, error);
      let buf;
      while ((buf = ring.vq.detachUnusedBuf()) !== null) this.#release(buf, error);
    }
    for (const buf of port.parked.splice(0)) this.allocator.free(buf.addr);
    this.emit('portremove', port.info());
  }

  /** Fills a receive ring with buffers of `size` bytes (Linux fill_queue). */
  #stock(ring: Ring, size: number): void {
    const n = ring.vq.numFree;
    for (let i = 0; i < n; i++) {
      const addr = this.allocator.tryAlloc(size, 16);
      if (addr < 0) break;
      ring.add({ addr, len: size }, false);
    }
  }

  #resumeParked(port: ConsolePortState): void {
    for (const buf of port.parked.splice(0)) port.rx.add(buf, false);
  }

  /** Queues a control message on the control transmitq (fire and forget, as the device answers nothing). */
  #sendControl(id: number, event: number, value: number): void {
    const ring = this.#rings[CONSOLE_CONTROL_TX_QUEUE];
    if (ring == null || ring.vq.isBroken()) return;
    const bytes = encodeControlMessage(id, event, value);
    const addr = this.allocator.alloc(bytes.length, 16);
    this.memory.write(addr, bytes);
    try {
      ring.add({ addr, len: bytes.length }, true);
    } catch (e) {
      this.allocator.free(addr);
      if (this.listenerCount('error') > 0) this.emit('error', this.#ringError(ring, e));
    }
  }

  /** Frees a buffer the device is done with; a transmit piece completes its write. */
  #release(buf: Buf, error: Error | undefined): void {
    this.allocator.free(buf.addr);
    buf.done?.(error);
  }

  #breakRing(vq: Virtqueue<Buf>, cause: unknown): void {
    const ring = this.#rings[vq.index];
    const error = this.#brokenError(vq, cause);
    if (ring != null) for (const { buf } of ring.backlog.splice(0)) this.#release(buf, error);
    // Writes whose pieces are on the broken ring are failed; their memory stays with the device until reset.
    let buf: Buf | null = null;
    do {
      try {
        buf = vq.detachUnusedBuf();
      } catch {
        buf = null;
      }
      buf?.done?.(error);
    } while (buf !== null);
    if (this.listenerCount('error') > 0) this.emit('error', error);
  }

  #ringError(ring: Ring, e: unknown): Error {
    if (e instanceof UsageError && e.code === 'QUEUE_BROKEN')
      return this.#brokenError(ring.vq, ring.vq.brokenReason);
    return e instanceof Error ? e : new Error(String(e));
  }

  #brokenError(vq: Virtqueue, cause: unknown): ConsoleDriverError {
    return new ConsoleDriverError('QUEUE_BROKEN', queueBrokenMessage(this.dev, vq.name, cause), vq.index, {
      cause,
    });
  }

  #byName(name: string): ConsolePortState | undefined {
    for (const p of this.#ports.values()) if (p.name === name && !p.removed) return p;
    return undefined;
  }

  #checkLive(): void {
    if (this.#removed !== undefined) throw this.#removed;
  }
}

function queueName(index: number): string {
  if (index === CONSOLE_CONTROL_RX_QUEUE) return 'control-rx';
  if (index === CONSOLE_CONTROL_TX_QUEUE) return 'control-tx';
  const port = index < 2 ? 0 : (index - 2) >> 1;
  return `${index % 2 === 0 ? 'rx' : 'tx'}.${port}`;
}

/** The virtio-console driver; one instance serves any number of devices. */
export class VirtioConsoleDriver implements VirtioDriver {
  readonly name = 'virtio-console';
  readonly idTable = [{ device: VIRTIO_ID_CONSOLE, vendor: VIRTIO_DEV_ANY_ID }];
  readonly featureTable: readonly number[];
  readonly #options: VirtioConsoleDriverOptions;

  constructor(options: VirtioConsoleDriverOptions = {}) {
    for (const [key, value] of [
      ['rxBufferSize', options.rxBufferSize],
      ['txChunkSize', options.txChunkSize],
    ] as const) {
      if (value !== undefined && (!Number.isSafeInteger(value) || value <= 0 || value > 2 ** 31)) {
        throw new ConsoleDriverError(
          'INVALID_ARGUMENT',
          `${key} ${value} is not a positive byte count`,
          value,
        );
      }
    }
    this.#options = options;
    this.featureTable = [
      ConsoleFeature.VIRTIO_CONSOLE_F_SIZE,
      ...(options.multiport === false ? [] : [ConsoleFeature.VIRTIO_CONSOLE_F_MULTIPORT]),
    ];
  }

  /** The console of a device this driver is bound to. */
  console(dev: VirtioBusDevice): VirtioConsole {
    return boundData(
      dev,
      this,
      VirtioConsole,
      (message, options) => new ConsoleDriverError('NOT_BOUND', message, dev.index, options),
    );
  }

  async probe(dev: VirtioBusDevice): Promise<void> {
    const multiport = dev.hasFeature(ConsoleFeature.VIRTIO_CONSOLE_F_MULTIPORT);
    let maxPorts = 1;
    if (multiport) {
      maxPorts = await dev.readConfigU32(CONSOLE_CONFIG_MAX_NR_PORTS);
      if (maxPorts === 0 || maxPorts > CONSOLE_MAX_PORTS) {
        throw new ConsoleDriverError(
          'BAD_CONFIG',
          `${dev.name}: max_nr_ports ${maxPorts} is not in 1..${CONSOLE_MAX_PORTS}`,
          maxPorts,
        );
      }
    }
    let size: { cols: number; rows: number } | undefined;
    if (dev.hasFeature(ConsoleFeature.VIRTIO_CONSOLE_F_SIZE)) {
      const bytes = await dev.readConfigStable(CONSOLE_CONFIG_COLS, 4);
      const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
      size = {
        cols: view.getUint16(0, true),
        rows: view.getUint16(CONSOLE_CONFIG_ROWS - CONSOLE_CONFIG_COLS, true),
      };
    }
    const console = new VirtioConsole(dev, maxPorts, this.#options);
    const vqs = await dev.findVqs(console._specs(this.#options.queueSize));
    console._setQueues(vqs);
    dev.driverData = console;
    // The device may use the queues (and answer DEVICE_READY) only after DRIVER_OK (Linux probe does the same).
    await dev.ready();
    console._start(size);
  }

  async remove(dev: VirtioBusDevice): Promise<void> {
    const console = dev.driverData instanceof VirtioConsole ? dev.driverData : undefined;
    await dev.reset();
    console?._teardown(new ConsoleDriverError('REMOVED', `${dev.name} was removed`, dev.index));
    await dev.delVqs();
  }
}
