/**
 * One port of a console device: its host side (a {@link Chardev}), what each side has said about it (announced,
 * ready, open on the guest and on the host), the host → guest bytes not yet placed in guest buffers, and the
 * transmit buffer the device is part-way through when the chardev pushed back.
 */
import type { ChainReader } from '../../virtio/split/chain-io.js';
import type { DescriptorChain } from '../../virtio/split/descriptor-chain.js';
import type { Chardev } from './chardev.js';

/** What a port is, as configured by the host. */
export interface ConsolePortOptions {
  /** Name sent with VIRTIO_CONSOLE_PORT_NAME (Linux: /dev/virtio-ports/<name>), e.g. `org.qemu.guest_agent.0`. */
  readonly name?: string;
  /** Announce the port as a console (VIRTIO_CONSOLE_CONSOLE_PORT): the guest attaches an hvc to it. */
  readonly console?: boolean;
  /** The host side. */
  readonly chardev: Chardev;
}

/** Host → guest bytes received from the chardev and not yet written into guest buffers, in order. */
export class HostBacklog {
  readonly #chunks: Uint8Array[] = [];
  /** Bytes of `#chunks[0]` already delivered. */
  #offset = 0;
  #bytes = 0;

  /** Bytes waiting. */
  get length(): number {
    return this.#bytes;
  }

  push(chunk: Uint8Array): void {
    if (chunk.length === 0) return;
    this.#chunks.push(chunk);
    this.#bytes += chunk.length;
  }

  /** Writes as many waiting bytes as `write` takes (it returns how many it took); returns the total taken. */
  drainInto(write: (bytes: Uint8Array) => number): number {
    let total = 0;
    while (this.#chunks.length > 0) {
      const head = this.#chunks[0] as Uint8Array;
      const n = write(head.subarray(this.#offset));
      total += n;
      this.#offset += n;
      this.#bytes -= n;
      if (this.#offset < head.length) break;
      this.#chunks.shift();
      this.#offset = 0;
    }
    return total;
  }
}

/** A transmit chain the device has started on but not finished: the chardev pushed back in the middle. */
export interface PartialTransmit {
  readonly chain: DescriptorChain;
  readonly reader: ChainReader;
}

/** Counters of one port. */
export interface ConsolePortStats {
  /** Host → guest bytes written into guest receive buffers. */
  rxBytes: number;
  /** Guest → host bytes handed to the chardev. */
  txBytes: number;
  /** Guest → host bytes discarded because the host side was not connected (or the port has no chardev). */
  txDiscarded: number;
}

export class ConsolePort {
  readonly id: number;
  readonly name: string | undefined;
  readonly console: boolean;
  readonly chardev: Chardev;
  readonly stats: ConsolePortStats = { rxBytes: 0, txBytes: 0, txDiscarded: 0 };

  // Host side.
  /** The chardev reported open (kept from its events, since the device also acts on the change). */
  hostOpen: boolean;
  readonly backlog = new HostBacklog();
  /** Whether the device paused the chardev. */
  paused = false;

  // Guest side (reset with the device).
  /** DEVICE_ADD was queued for this port. */
  announced = false;
  /** The guest sent PORT_READY(1). */
  ready = false;
  /** The guest sent PORT_READY(0). */
  failed = false;
  /** The guest has the port open (always true for port 0 without MULTIPORT). */
  guestOpen = false;
  /** Waiting for the chardev's onDrain before taking more transmit data. */
  txBlocked = false;
  /** The transmit chain the device is part-way through, if the chardev pushed back in the middle of it. */
  txPartial: PartialTransmit | undefined;
  /** Re-entrancy guards of the receive and transmit paths. */
  rxBusy = false;
  txBusy = false;
  /** onDrain calls seen (a drain during a write shows up as a change across it). */
  txDrains = 0;

  constructor(id: number, options: ConsolePortOptions) {
    this.id = id;
    this.name = options.name;
    this.console = options.console ?? false;
    this.chardev = options.chardev;
    this.hostOpen = options.chardev.isOpen;
  }

  /** Back to the guest-side state of a freshly reset device; host state and waiting bytes are kept. */
  resetGuestState(): void {
    this.announced = false;
    this.ready = false;
    this.failed = false;
    this.guestOpen = false;
    this.txBlocked = false;
    this.txPartial = undefined;
    this.rxBusy = false;
    this.txBusy = false;
  }
}
