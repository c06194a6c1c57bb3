/**
 * `ConsoleDevice`: virtio-console (VIRTIO 1.2 §5.3) with MULTIPORT — QEMU's virtio-serial — over any transport.
 * Each port's host side is a {@link Chardev}.
 *
 * **Without MULTIPORT** (the driver did not accept it, or the device does not offer it) there is one port, port
 * 0, on queues 0/1; it is the guest's console and counts as open on the guest side from DRIVER_OK.
 *
 * **With MULTIPORT** the control queues carry the port protocol, as Linux drivers/char/virtio_console.c plays it:
 *
 * ```
 * driver                                   device
 * DEVICE_READY(1)            ──────────▶
 *                            ◀──────────   DEVICE_ADD(port) for every port
 * PORT_READY(port, 1)        ──────────▶
 *                            ◀──────────   PORT_NAME(port) + name   (ports with a name)
 *                            ◀──────────   CONSOLE_PORT(port, 1)    (console ports)
 *                            ◀──────────   PORT_OPEN(port, 1)       (host side connected)
 * PORT_OPEN(port, 0/1)       ──────────▶   chardev.setGuestOpen     (guest opened/closed it)
 *                            ◀──────────   PORT_OPEN(port, 0/1)     (host connects/disconnects later)
 *                            ◀──────────   RESIZE(port) + cols,rows (resize() of a console port)
 * ```
 *
 * **Data** flows without loss (see {@link Chardev}): host bytes wait in the port's backlog until the guest has
 * the port open and has receive buffers, and the chardev is paused meanwhile; guest bytes go to the chardev in
 * pieces of at most {@link CONSOLE_TX_PIECE_BYTES}, and when it pushes back the device stops in the middle of
 * the transmit buffer and resumes on drain. Guest output to a port whose host side is not connected is
 * discarded and counted (QEMU does the same; the guest's hvc driver busy-waits on transmit buffers).
 *
 * **Hostile input**: a control message shorter than its header, an unknown event, an event only the device
 * sends, a port id out of range, a bad value, a duplicate — ignored and counted (`stats.ignored`). A buffer of
 * the wrong direction in a queue (§5.3.6.1), an empty receive buffer, a control receive buffer shorter than the
 * header, and every ring fault are guest faults: `context.fail` (DEVICE_NEEDS_RESET). Bytes the device queues
 * for the guest are bounded: a port's PORT_OPEN and RESIZE messages are coalesced while waiting, and each port
 * is announced and configured once per device life.
 *
 * ```ts
 * const device = new ConsoleDevice({
 *   ports: [
 *     { console: true, chardev: stdio },                        // hvc0
 *     { name: 'org.qemu.guest_agent.0', chardev: agentSocket }, // /dev/virtio-ports/org.qemu.guest_agent.0
 *   ],
 *   size: { cols: 80, rows: 25 },
 * });
 * const transport = new LoopbackTransport(device);
 * ```
 */
import type { DeviceContext, VirtioDevice } from '../../virtio/device/virtio-device.js';
import { GuestFault, UsageError } from '../../virtio/errors.js';
import { TRANSPORT_FEATURES, featureBit, hasFeature } from '../../virtio/features.js';
import type { ChainReader } from '../../virtio/split/chain-io.js';
import type { SplitQueue } from '../../virtio/split/split-queue.js';
import type { ChardevListener } from './chardev.js';
import { CONSOLE_IGNORE_REASONS, ConsoleError, type ConsoleIgnoreReason } from './console-errors.js';
import {
  CONSOLE_CONFIG_COLS,
  CONSOLE_CONFIG_EMERG_WR,
  CONSOLE_CONFIG_MAX_NR_PORTS,
  CONSOLE_CONFIG_ROWS,
  CONSOLE_CONFIG_SIZE,
  CONSOLE_CONTROL_RX_QUEUE,
  CONSOLE_CONTROL_TX_QUEUE,
  CONTROL_HEADER_SIZE,
  ConsoleControlEvent,
  ConsoleFeature,
  VIRTIO_ID_CONSOLE,
  consoleQueueCount,
  consoleQueueRole,
  consoleRxQueue,
  consoleTxQueue,
  decodeControlMessage,
  encodeControlMessage,
  encodeResizePayload,
  type ConsoleControlMessage,
} from './console-layout.js';
import { ConsolePort, type ConsolePortOptions, type ConsolePortStats } from './console-port.js';

const { DEVICE_READY, DEVICE_ADD, DEVICE_REMOVE, PORT_READY, CONSOLE_PORT, RESIZE, PORT_OPEN, PORT_NAME } =
  ConsoleControlEvent;

/** Default size of every queue. */
export const CONSOLE_DEFAULT_QUEUE_SIZE = 128;

/**
 * Most ports a device may have: QEMU's VIRTIO_QUEUE_MAX (1024 queues) holds 511 ports plus the control pair.
 * Bounds the queue array a host configuration can ask for.
 */
export const CONSOLE_MAX_PORTS = 511;

/**
 * Largest piece of guest output handed to the chardev in one write. A transmit chain may be up to 4 GiB (its
 * descriptors can all point at the same guest pages); copying it in bounded pieces, and stopping between pieces
 * when the chardev pushes back, keeps the host's memory use bounded whatever the guest sends.
 */
export const CONSOLE_TX_PIECE_BYTES = 64 * 1024;

/** Longest port name sent (bytes of UTF-8): a host configuration limit, far above what udev accepts. */
export const CONSOLE_MAX_NAME_BYTES = 4096;

export interface ConsoleDeviceOptions {
  /** The ports, port id = position. Without MULTIPORT only port 0 is used. At least one. */
  readonly ports: readonly ConsolePortOptions[];
  /** `max_nr_ports`: ports the driver makes queues for (default `ports.length`; at most {@link CONSOLE_MAX_PORTS}). */
  readonly maxPorts?: number;
  /** Offer VIRTIO_CONSOLE_F_MULTIPORT (default true). */
  readonly multiport?: boolean;
  /** Offer VIRTIO_CONSOLE_F_SIZE with this initial size of port 0. */
  readonly size?: { readonly cols: number; readonly rows: number };
  /** Offer VIRTIO_CONSOLE_F_EMERG_WRITE; emergency bytes go to port 0's chardev (default true). */
  readonly emergencyWrite?: boolean;
  /** Maximum size of every queue (default {@link CONSOLE_DEFAULT_QUEUE_SIZE}). */
  readonly queueSize?: number;
  /** Device-independent features offered (default every one the core implements: `TRANSPORT_FEATURES`). */
  readonly transportFeatures?: bigint;
  /** Called for every control message ignored (for logging). */
  readonly onControlIgnored?: (
    reason: ConsoleIgnoreReason,
    message: ConsoleControlMessage | undefined,
  ) => void;
}

/** Device-wide counters. */
export interface ConsoleStats {
  /** Control messages written into the control receiveq. */
  controlSent: number;
  /** Control messages read from the control transmitq (ignored ones included). */
  controlReceived: number;
  /** Control messages cut short because the driver's buffer was smaller (a long port name). */
  controlTruncated: number;
  /** Bytes written to emerg_wr. */
  emergencyWrites: number;
  /** Ignored control messages, by reason. */
  readonly ignored: Record<ConsoleIgnoreReason, number>;
}

/** A snapshot of one port's state, for the host program and tests. */
export interface ConsolePortInfo {
  readonly id: number;
  readonly name: string | undefined;
  readonly console: boolean;
  /** The guest announced the port ready (PORT_READY 1); always false without MULTIPORT. */
  readonly ready: boolean;
  /** The guest has the port open. */
  readonly guestOpen: boolean;
  /** The host side is connected. */
  readonly hostOpen: boolean;
  /** Host → guest bytes waiting for guest buffers. */
  readonly pendingBytes: number;
  /** Whether the device is waiting for the chardev to drain before taking more guest output. */
  readonly txBlocked: boolean;
  readonly stats: Readonly<ConsolePortStats>;
}

/** A control message waiting for a control receiveq buffer. */
interface Outgoing {
  readonly id: number;
  readonly event: number;
  value: number;
  payload: Uint8Array;
}

export class ConsoleDevice implements VirtioDevice {
  readonly deviceType = VIRTIO_ID_CONSOLE;
  readonly deviceFeatures: bigint;
  readonly queueMaxSizes: readonly number[];
  readonly configSize = CONSOLE_CONFIG_SIZE;
  /** `max_nr_ports`. */
  readonly maxPorts: number;
  readonly stats: ConsoleStats;

  readonly #ports: readonly ConsolePort[];
  readonly #onIgnored: ConsoleDeviceOptions['onControlIgnored'];
  readonly #emergencyWrite: boolean;
  #cols: number;
  #rows: number;
  #context: DeviceContext | undefined;
  /** A guest fault was reported: nothing is served until reset. */
  #failed = false;
  #multiport = false;
  /** The driver sent DEVICE_READY(1). */
  #deviceReady = false;
  readonly #outbox: Outgoing[] = [];

  constructor(options: ConsoleDeviceOptions) {
    const count = options.ports.length;
    const maxPorts = options.maxPorts ?? count;
    if (count === 0) throw new UsageError('INVALID_ARGUMENT', 'a console device needs at least one port', 0);
    if (!Number.isInteger(maxPorts) || maxPorts < count || maxPorts > CONSOLE_MAX_PORTS) {
      throw new UsageError(
        'INVALID_ARGUMENT',
        `maxPorts ${maxPorts} must be an integer from the number of ports (${count}) to ${CONSOLE_MAX_PORTS}`,
        maxPorts,
      );
    }
    const multiport = options.multiport ?? true;
    if (!multiport && count > 1) {
      throw new UsageError(
        'INVALID_ARGUMENT',
        `${count} ports need VIRTIO_CONSOLE_F_MULTIPORT; without it a console has only port 0`,
        count,
      );
    }
    const encoder = new TextEncoder();
    options.ports.forEach((p, i) => {
      if (p.name !== undefined && encoder.encode(p.name).length > CONSOLE_MAX_NAME_BYTES) {
        throw new UsageError(
          'INVALID_ARGUMENT',
          `port ${i}: name longer than ${CONSOLE_MAX_NAME_BYTES} bytes`,
          p.name,
        );
      }
    });
    if (options.size !== undefined) checkSize(options.size.cols, options.size.rows);
    this.maxPorts = maxPorts;
    this.#emergencyWrite = options.emergencyWrite ?? true;
    this.#cols = options.size?.cols ?? 0;
    this.#rows = options.size?.rows ?? 0;
    this.#onIgnored = options.onControlIgnored;
    let features = options.transportFeatures ?? TRANSPORT_FEATURES;
    if (multiport) features |= featureBit(ConsoleFeature.VIRTIO_CONSOLE_F_MULTIPORT);
    if (options.size !== undefined) features |= featureBit(ConsoleFeature.VIRTIO_CONSOLE_F_SIZE);
    if (this.#emergencyWrite) features |= featureBit(ConsoleFeature.VIRTIO_CONSOLE_F_EMERG_WRITE);
    this.deviceFeatures = features;
    const queueSize = options.queueSize ?? CONSOLE_DEFAULT_QUEUE_SIZE;
    this.queueMaxSizes = new Array<number>(consoleQueueCount(maxPorts, multiport)).fill(queueSize);
    const ignored = {} as Record<ConsoleIgnoreReason, number>;
    for (const reason of CONSOLE_IGNORE_REASONS) ignored[reason] = 0;
    this.stats = { controlSent: 0, controlReceived: 0, controlTruncated: 0, emergencyWrites: 0, ignored };
    this.#ports = options.ports.map((p, i) => new ConsolePort(i, p));
    for (const port of this.#ports) port.chardev.attach(this.#listener(port));
  }

  /** Whether MULTIPORT was negotiated (while activated). */
  get multiport(): boolean {
    return this.#multiport;
  }

  /** Whether the driver sent DEVICE_READY(1) in this device life. */
  get deviceReady(): boolean {
    return this.#deviceReady;
  }

  /** Number of configured ports. */
  get portCount(): number {
    return this.#ports.length;
  }

  /** A snapshot of port `id`'s state; undefined for a port that is not configured. */
  portInfo(id: number): ConsolePortInfo | undefined {
    const p = this.#ports[id];
    if (p === undefined) return undefined;
    return {
      id: p.id,
      name: p.name,
      console: p.console,
      ready: p.ready,
      guestOpen: p.guestOpen,
      hostOpen: p.hostOpen,
      pendingBytes: p.backlog.length,
      txBlocked: p.txBlocked,
      stats: { ...p.stats },
    };
  }

  /** Detaches the device from every chardev (the chardevs stay open: the caller owns them). */
  detach(): void {
    for (const port of this.#ports) port.chardev.attach(undefined);
  }

  /**
   * The console size changed: port 0's size goes to the configuration space (a configuration-change
   * notification when VIRTIO_CONSOLE_F_SIZE is negotiated), and a console port with MULTIPORT gets a RESIZE
   * control message.
   */
  resize(cols: number, rows: number, port = 0): void {
    checkSize(cols, rows);
    const p = this.#ports[port];
    if (p === undefined) throw new UsageError('INVALID_ARGUMENT', `no port ${port}`, port);
    const context = this.#context;
    if (port === 0) {
      this.#cols = cols;
      this.#rows = rows;
      if (context !== undefined && hasFeature(context.features, ConsoleFeature.VIRTIO_CONSOLE_F_SIZE)) {
        context.configChanged();
      }
    }
    if (this.#multiport && p.ready && p.console) {
      this.#send(p.id, RESIZE, 0, encodeResizePayload(cols, rows));
      this.#run(() => {
        this.#flushControl();
      });
    }
  }

  // ---- VirtioDevice: configuration ----

  readConfig(offset: number, dst: Uint8Array): void {
    const space = new Uint8Array(CONSOLE_CONFIG_SIZE);
    const view = new DataView(space.buffer);
    view.setUint16(CONSOLE_CONFIG_COLS, this.#cols, true);
    view.setUint16(CONSOLE_CONFIG_ROWS, this.#rows, true);
    view.setUint32(CONSOLE_CONFIG_MAX_NR_PORTS, this.maxPorts, true);
    // emerg_wr is write-only: it reads as 0.
    dst.set(space.subarray(offset, offset + dst.length));
  }

  /**
   * Only emerg_wr is writable (§5.3.5.1: "The device MUST allow a write to emerg_wr, even on an unconfigured
   * device"): the low byte of a write that covers its first byte goes to port 0's chardev. Other writes are
   * ignored.
   */
  writeConfig(offset: number, src: Uint8Array): void {
    if (!this.#emergencyWrite) return;
    const at = CONSOLE_CONFIG_EMERG_WR - offset;
    if (at < 0 || at >= src.length) return;
    this.stats.emergencyWrites++;
    const port = this.#ports[0] as ConsolePort;
    const byte = Uint8Array.of(src[at] as number);
    if (port.hostOpen) {
      port.stats.txBytes++;
      port.chardev.write(byte); // one byte: accepted even over the high-water mark
    } else {
      port.stats.txDiscarded++;
    }
  }

  // ---- VirtioDevice: lifecycle ----

  activate(context: DeviceContext): void {
    this.#context = context;
    this.#failed = false;
    this.#deviceReady = false;
    this.#outbox.length = 0;
    this.#multiport = hasFeature(context.features, ConsoleFeature.VIRTIO_CONSOLE_F_MULTIPORT);
    for (const port of this.#ports) port.resetGuestState();
    if (!this.#multiport) this.#setGuestOpen(this.#ports[0] as ConsolePort, true);
    // Buffers made available before DRIVER_OK (without a kick) are served now.
    this.#run(() => {
      if (this.#multiport) this.#serviceControl();
      const served = this.#multiport ? this.#ports : this.#ports.slice(0, 1);
      for (const port of served) {
        this.#serviceTx(port, consoleTxQueue(port.id));
        this.#flushRx(port);
      }
    });
  }

  queueNotify(queueIndex: number): void {
    this.#run(() => {
      if (!this.#multiport) {
        const port0 = this.#ports[0] as ConsolePort;
        if (queueIndex === consoleRxQueue(0)) this.#flushRx(port0);
        else if (queueIndex === consoleTxQueue(0)) this.#serviceTx(port0, queueIndex);
        return;
      }
      const role = consoleQueueRole(queueIndex);
      if (role === undefined) return;
      switch (role.kind) {
        case 'control-rx':
          this.#flushControl();
          return;
        case 'control-tx':
          this.#serviceControl();
          return;
        case 'rx': {
          const port = this.#ports[role.port];
          if (port !== undefined) this.#flushRx(port);
          return;
        }
        case 'tx':
          this.#serviceTx(this.#ports[role.port], queueIndex);
          return;
      }
    });
  }

  reset(): void {
    this.#context = undefined;
    this.#failed = false;
    this.#multiport = false;
    this.#deviceReady = false;
    this.#outbox.length = 0;
    for (const port of this.#ports) {
      if (port.guestOpen) port.chardev.setGuestOpen?.(false);
      port.resetGuestState();
      this.#updatePause(port);
    }
  }

  // ---- host side ----

  #listener(port: ConsolePort): ChardevListener {
    return {
      onData: (data) => {
        port.backlog.push(data);
        if (this.#live) {
          this.#run(() => {
            this.#flushRx(port);
          });
        }
        this.#updatePause(port);
      },
      onDrain: () => {
        port.txBlocked = false;
        port.txDrains++;
        this.#run(() => {
          this.#serviceTx(port, consoleTxQueue(port.id));
        });
      },
      onOpen: () => {
        this.#hostOpenChanged(port, true);
      },
      onClose: () => {
        // A write waiting for drain need not wait: guest output is discarded from now on.
        port.txBlocked = false;
        this.#hostOpenChanged(port, false);
      },
    };
  }

  #hostOpenChanged(port: ConsolePort, open: boolean): void {
    port.hostOpen = open;
    this.#run(() => {
      if (this.#multiport && port.ready) {
        this.#send(port.id, PORT_OPEN, open ? 1 : 0);
        this.#flushControl();
      }
      if (!open) this.#serviceTx(port, consoleTxQueue(port.id));
    });
  }

  #setGuestOpen(port: ConsolePort, open: boolean): void {
    if (port.guestOpen === open) return;
    port.guestOpen = open;
    port.chardev.setGuestOpen?.(open);
  }

  /** Pauses the chardev while bytes wait for guest buffers, resumes it once none do. */
  #updatePause(port: ConsolePort): void {
    const waiting = port.backlog.length > 0;
    if (waiting && !port.paused) {
      port.paused = true;
      port.chardev.pause();
    } else if (!waiting && port.paused) {
      port.paused = false;
      port.chardev.resume();
    }
  }

  // ---- data path ----

  /** Whether the device serves queues now. */
  get #live(): boolean {
    return this.#context !== undefined && !this.#failed;
  }

  /** Runs queue work; a guest fault stops the device until reset. */
  #run(work: () => void): void {
    const context = this.#context;
    if (context === undefined || this.#failed) return;
    try {
      work();
    } catch (e) {
      if (!(e instanceof GuestFault)) throw e;
      this.#failed = true;
      context.fail(e as GuestFault);
    }
  }

  #activeQueue(index: number): SplitQueue | undefined {
    const q = this.#context?.queues[index];
    return q?.isActive === true ? q : undefined;
  }

  #publish(queue: SplitQueue): void {
    queue.publishUsed();
    if (queue.needsNotification()) this.#context?.interrupt.signalUsed(queue.index);
  }

  /** Host → guest: moves the port's backlog into its receive buffers while the guest has the port open. */
  #flushRx(port: ConsolePort): void {
    const queue = this.#activeQueue(consoleRxQueue(port.id));
    const usable = port.id === 0 || this.#multiport;
    if (queue === undefined || !usable || !port.guestOpen || port.rxBusy) {
      this.#updatePause(port);
      return;
    }
    port.rxBusy = true;
    let used = 0;
    try {
      for (;;) {
        while (port.backlog.length > 0) {
          const chain = queue.popChain();
          if (chain === null) break;
          if (chain.readableLength > 0) {
            throw new ConsoleError(
              'RX_READABLE_BUFFER',
              `queue ${queue.index} (receiveq of port ${port.id}): buffer ${chain.head} has device-readable descriptors`,
              queue.index,
            );
          }
          if (chain.writableLength === 0) {
            throw new ConsoleError(
              'RX_BUFFER_EMPTY',
              `queue ${queue.index} (receiveq of port ${port.id}): buffer ${chain.head} has no writable bytes`,
              queue.index,
            );
          }
          const writer = chain.writer();
          const n = port.backlog.drainInto((bytes) => writer.write(bytes));
          queue.addUsed(chain.head, n);
          port.stats.rxBytes += n;
          used++;
        }
        // Out of buffers with bytes left: ask for a kick, and re-check for buffers added meanwhile.
        if (port.backlog.length === 0 || !queue.enableNotification()) break;
      }
    } finally {
      port.rxBusy = false;
      if (used > 0) this.#publish(queue);
    }
    this.#updatePause(port);
  }

  /**
   * Guest → host: takes transmit buffers from queue `queueIndex` and hands their bytes to the port's chardev
   * (or discards them: no port, host side not connected), stopping when the chardev pushes back.
   */
  #serviceTx(port: ConsolePort | undefined, queueIndex: number): void {
    const queue = this.#activeQueue(queueIndex);
    if (queue === undefined) return;
    if (port === undefined) {
      this.#serviceTxLoop(undefined, queue);
      return;
    }
    // Re-entered from a chardev callback inside write: the running loop sees the new state on its next piece.
    if (port.txBlocked || port.txBusy || (port.id !== 0 && !this.#multiport)) return;
    port.txBusy = true;
    try {
      this.#serviceTxLoop(port, queue);
    } finally {
      port.txBusy = false;
    }
  }

  #serviceTxLoop(port: ConsolePort | undefined, queue: SplitQueue): void {
    const queueIndex = queue.index;
    for (;;) {
      queue.disableNotification();
      let used = 0;
      let blocked = false;
      try {
        for (;;) {
          let partial = port?.txPartial;
          if (partial === undefined) {
            const chain = queue.popChain();
            if (chain === null) break;
            if (chain.writableLength > 0) {
              throw new ConsoleError(
                'TX_WRITABLE_BUFFER',
                `queue ${queueIndex} (transmitq): buffer ${chain.head} has device-writable descriptors`,
                queueIndex,
              );
            }
            partial = { chain, reader: chain.reader() };
          }
          blocked = !this.#transmit(port, partial.reader);
          if (partial.reader.remaining === 0) {
            queue.addUsed(partial.chain.head, 0);
            used++;
            if (port !== undefined) port.txPartial = undefined;
          } else if (port !== undefined) {
            port.txPartial = partial;
          }
          if (blocked) break;
        }
      } finally {
        if (used > 0) this.#publish(queue);
      }
      if (blocked) {
        (port as ConsolePort).txBlocked = true;
        return;
      }
      if (!queue.enableNotification()) return;
    }
  }

  /** Copies the rest of `reader` to the port's chardev in bounded pieces; false when the chardev pushed back. */
  #transmit(port: ConsolePort | undefined, reader: ChainReader): boolean {
    while (reader.remaining > 0) {
      if (port === undefined || !port.hostOpen) {
        const n = reader.remaining;
        reader.skip(n);
        if (port !== undefined) port.stats.txDiscarded += n;
        return true;
      }
      const piece = new Uint8Array(Math.min(reader.remaining, CONSOLE_TX_PIECE_BYTES));
      reader.read(piece);
      port.stats.txBytes += piece.length;
      const drains = port.txDrains;
      // A drain reported from inside write (a synchronous chardev) means there is room after all.
      if (!port.chardev.write(piece) && port.txDrains === drains) return false;
    }
    return true;
  }

  // ---- control path ----

  /** Queues a message for the driver; PORT_OPEN and RESIZE replace one still waiting for the same port. */
  #send(id: number, event: number, value: number, payload: Uint8Array = new Uint8Array(0)): void {
    if (event === PORT_OPEN || event === RESIZE) {
      const waiting = this.#outbox.find((m) => m.id === id && m.event === event);
      if (waiting !== undefined) {
        waiting.value = value;
        waiting.payload = payload;
        return;
      }
    }
    this.#outbox.push({ id, event, value, payload });
  }

  /** Device → driver: writes waiting control messages into control receiveq buffers. */
  #flushControl(): void {
    const queue = this.#multiport ? this.#activeQueue(CONSOLE_CONTROL_RX_QUEUE) : undefined;
    if (queue === undefined) return;
    let used = 0;
    try {
      for (;;) {
        while (this.#outbox.length > 0) {
          const chain = queue.popChain();
          if (chain === null) break;
          if (chain.readableLength > 0) {
            throw new ConsoleError(
              'RX_READABLE_BUFFER',
              `queue ${queue.index} (control receiveq): buffer ${chain.head} has device-readable descriptors`,
              queue.index,
            );
          }
          if (chain.writableLength < CONTROL_HEADER_SIZE) {
            throw new ConsoleError(
              'CONTROL_BUFFER_TOO_SHORT',
              `queue ${queue.index} (control receiveq): buffer ${chain.head} has ${chain.writableLength} writable bytes, less than the ${CONTROL_HEADER_SIZE}-byte control header`,
              chain.writableLength,
            );
          }
          const m = this.#outbox.shift() as Outgoing;
          const bytes = encodeControlMessage(m.id, m.event, m.value, m.payload);
          const n = chain.writer().write(bytes);
          if (n < bytes.length) this.stats.controlTruncated++;
          queue.addUsed(chain.head, n);
          this.stats.controlSent++;
          used++;
        }
        if (this.#outbox.length === 0 || !queue.enableNotification()) break;
      }
    } finally {
      if (used > 0) this.#publish(queue);
    }
  }

  /** Driver → device: reads and handles every control message in the control transmitq. */
  #serviceControl(): void {
    const queue = this.#activeQueue(CONSOLE_CONTROL_TX_QUEUE);
    if (queue !== undefined) {
      for (;;) {
        queue.disableNotification();
        let used = 0;
        try {
          for (let chain = queue.popChain(); chain !== null; chain = queue.popChain()) {
            if (chain.writableLength > 0) {
              throw new ConsoleError(
                'TX_WRITABLE_BUFFER',
                `queue ${queue.index} (control transmitq): buffer ${chain.head} has device-writable descriptors`,
                queue.index,
              );
            }
            // Only the header is read; a payload (no driver event has one) is skipped.
            const header = new Uint8Array(Math.min(chain.readableLength, CONTROL_HEADER_SIZE));
            chain.reader().read(header);
            queue.addUsed(chain.head, 0);
            used++;
            this.stats.controlReceived++;
            const message = decodeControlMessage(header);
            if (message === undefined) this.#ignore('short-message', undefined);
            else this.#handleControl(message);
          }
        } finally {
          if (used > 0) this.#publish(queue);
        }
        if (!queue.enableNotification()) break;
      }
    }
    this.#flushControl();
  }

  #handleControl(m: ConsoleControlMessage): void {
    switch (m.event) {
      case DEVICE_READY:
        this.#onDeviceReady(m);
        return;
      case PORT_READY:
        this.#onPortReady(m);
        return;
      case PORT_OPEN:
        this.#onPortOpen(m);
        return;
      case DEVICE_ADD:
      case DEVICE_REMOVE:
      case CONSOLE_PORT:
      case RESIZE:
      case PORT_NAME:
        this.#ignore('unexpected-event', m);
        return;
      default:
        this.#ignore('unknown-event', m);
    }
  }

  /** DEVICE_READY(1): announce every port (DEVICE_ADD), once per device life. */
  #onDeviceReady(m: ConsoleControlMessage): void {
    if (m.value !== 1) {
      this.#ignore(m.value === 0 ? 'driver-failed' : 'bad-value', m);
      return;
    }
    if (this.#deviceReady) {
      this.#ignore('duplicate', m);
      return;
    }
    this.#deviceReady = true;
    for (const port of this.#ports) {
      port.announced = true;
      this.#send(port.id, DEVICE_ADD, 0);
    }
  }

  /** PORT_READY(1): tell the driver the port's name, whether it is a console, and whether the host is there. */
  #onPortReady(m: ConsoleControlMessage): void {
    const port = this.#announcedPort(m);
    if (port === undefined) return;
    if (m.value !== 1) {
      if (m.value === 0) port.failed = true;
      this.#ignore(m.value === 0 ? 'driver-failed' : 'bad-value', m);
      return;
    }
    if (port.ready) {
      this.#ignore('duplicate', m);
      return;
    }
    port.ready = true;
    if (port.name !== undefined) this.#send(port.id, PORT_NAME, 1, new TextEncoder().encode(port.name));
    if (port.console) this.#send(port.id, CONSOLE_PORT, 1);
    if (port.hostOpen) this.#send(port.id, PORT_OPEN, 1);
  }

  /** PORT_OPEN from the driver: the guest opened or closed its end. */
  #onPortOpen(m: ConsoleControlMessage): void {
    const port = this.#announcedPort(m);
    if (port === undefined) return;
    if (m.value !== 0 && m.value !== 1) {
      this.#ignore('bad-value', m);
      return;
    }
    this.#setGuestOpen(port, m.value === 1);
    if (port.guestOpen) this.#flushRx(port);
  }

  /** The port a driver message names, if the device announced it; otherwise the message is ignored. */
  #announcedPort(m: ConsoleControlMessage): ConsolePort | undefined {
    const port = this.#ports[m.id];
    if (port === undefined || !port.announced) {
      this.#ignore('bad-port-id', m);
      return undefined;
    }
    return port;
  }

  #ignore(reason: ConsoleIgnoreReason, m: ConsoleControlMessage | undefined): void {
    this.stats.ignored[reason]++;
    this.#onIgnored?.(reason, m);
  }
}

function checkSize(cols: number, rows: number): void {
  const ok = (v: number): boolean => Number.isInteger(v) && v >= 0 && v <= 0xffff;
  if (!ok(cols) || !ok(rows)) {
    throw new UsageError('INVALID_ARGUMENT', `console size ${cols}x${rows} is not two u16 values`, {
      cols,
      rows,
    });
  }
}
