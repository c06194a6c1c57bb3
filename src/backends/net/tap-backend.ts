/**
 * `TapBackend`: a Linux TUN/TAP interface as the host side of a virtio-net device — the kernel's own data path,
 * so a tap on a bridge (docs/cli.md has the `ip` commands) puts the guest on the host's network.
 *
 * ```ts
 * const tap = TapBackend.open({ ifname: 'tap0', queues: 2, vnetHdr: true }); // attaches to tap0 or creates it
 * const device = new NetDevice({ backends: tap.queues });                    // one NetBackend per queue pair
 * ```
 *
 * - IFF_TAP | IFF_NO_PI, and IFF_VNET_HDR (default on) with TUNSETVNETHDRSZ 12: every frame carries a
 *   virtio_net_hdr v1, so the guest's checksum and TSO offloads go to the host kernel untouched and the guest
 *   receives GSO frames (TUNSETOFFLOAD follows what the guest accepted, `setOffloads`).
 * - More than one queue: IFF_MULTI_QUEUE, one fd per queue pair; the kernel spreads flows over the attached
 *   queues, and a pair the driver does not use is detached (TUNSETQUEUE) so nothing is steered to it.
 * - Each fd is non-blocking and watched on the calling thread's event loop (`watchReadable`: the export
 *   worker's); frames are read with readv straight into the guest's receive buffers and written with writev
 *   straight from its transmit buffers.
 *
 * Opening fails with a {@link TapBackendError} naming the interface: no /dev/net/tun, no permission
 * (CAP_NET_ADMIN, or a tap owned by another user), or an existing interface whose flags differ (a tap made
 * without `multi_queue` opened with several queues, or the reverse).
 */
import {
  NetBackendError,
  type NetBackend,
  type NetBackendEvents,
  type NetOffloads,
} from '../../devices/net/net-backend.js';
import {
  closeFd,
  openTap,
  readFrame,
  setOffload,
  setQueueAttached,
  setVnetHdrSize,
  watchReadable,
  writeFrame,
  isReadable,
  isSysError,
  WOULD_BLOCK,
  TUN_F_CSUM,
  TUN_F_TSO4,
  TUN_F_TSO6,
  TUN_F_TSO_ECN,
  TUN_F_UFO,
  type FdWatch,
} from '../../sys/index.js';
import { VirtioError } from '../../virtio/errors.js';
import { NET_HDR_SIZE } from '../../devices/net/net-layout.js';

/** Most queues a tap interface has (Linux MAX_TAP_QUEUES). */
export const TAP_MAX_QUEUES = 256;

export type TapBackendErrorCode = 'TAP_OPEN_FAILED' | 'TAP_INVALID_OPTION';

/** A tap could not be opened or configured; `value` is the interface name asked for. */
export class TapBackendError extends VirtioError<TapBackendErrorCode> {}

export interface TapBackendOptions {
  /** Interface to attach to or create (default: the kernel picks `tapN`, created for this process). */
  readonly ifname?: string;
  /** Queues (one per virtio-net queue pair); more than one opens the interface IFF_MULTI_QUEUE. Default 1. */
  readonly queues?: number;
  /** IFF_VNET_HDR (default true): offloads pass through; off: bare frames, no offloads offered. */
  readonly vnetHdr?: boolean;
}

/** One queue (fd) of a tap interface: a {@link NetBackend}. */
export class TapQueueBackend implements NetBackend {
  readonly vnetHdr: boolean;
  readonly linkUp = true;
  readonly fd: number;
  readonly #multiQueue: boolean;
  #events: NetBackendEvents | undefined;
  #watch: FdWatch | null = null;
  #paused = false;
  #closed = false;
  #retryScheduled = false;
  /** Attached to the interface (a new queue is); the kernel refuses to detach a detached queue (EINVAL). */
  #attached = true;

  constructor(fd: number, vnetHdr: boolean, multiQueue: boolean) {
    this.fd = fd;
    this.vnetHdr = vnetHdr;
    this.#multiQueue = multiQueue;
  }

  start(events: NetBackendEvents): void {
    this.#events = events;
    this.#updateWatch();
  }

  #updateWatch(): void {
    const want = this.#events !== undefined && !this.#paused && !this.#closed;
    if (want && this.#watch === null) {
      this.#watch = watchReadable(this.fd, () => {
        this.#events?.readable();
      });
    } else if (!want && this.#watch !== null) {
      this.#watch.close();
      this.#watch = null;
    }
  }

  transmit(bufs: readonly Uint8Array[]): boolean {
    let n: number;
    try {
      n = writeFrame(this.fd, bufs);
    } catch (e) {
      if (!isSysError(e)) throw e;
      // EIO: the interface is down (tun_get_user); EINVAL: the kernel refused the header or the frame.
      throw new NetBackendError(
        e.code === 'EIO' ? 'LINK_DOWN' : 'HOST_IO',
        `tap write: ${e.message}`,
        e.code,
      );
    }
    if (n === WOULD_BLOCK) {
      // A tap never applies back-pressure to writers today; if it does, try again on the next loop turn.
      if (!this.#retryScheduled) {
        this.#retryScheduled = true;
        setImmediate(() => {
          this.#retryScheduled = false;
          this.#events?.writable();
        });
      }
      return false;
    }
    return true;
  }

  receive(bufs: readonly Uint8Array[]): number {
    // A read that finds nothing throws EAGAIN inside Node's fs (an Error with its stack: ~10 µs here, as much
    // as the read of a frame), and every drain ends with one; poll(2) says so for a fraction of that.
    if (!isReadable(this.fd)) return 0;
    let n: number;
    try {
      n = readFrame(this.fd, bufs);
    } catch (e) {
      if (!isSysError(e)) throw e;
      throw new NetBackendError('HOST_IO', `tap read: ${e.message}`, e.code);
    }
    if (n === WOULD_BLOCK) return 0;
    let room = 0;
    for (const b of bufs) room += b.length;
    // tun returns the frame's whole length even when the buffers were too short for it (and it was cut).
    return n > room ? -1 : n;
  }

  /** A tap cannot tell the next frame's length without reading it. */
  pendingLength(): number {
    return -1;
  }

  pauseReceive(): void {
    this.#paused = true;
    this.#updateWatch();
  }

  resumeReceive(): void {
    this.#paused = false;
    this.#updateWatch();
  }

  setOffloads(offloads: NetOffloads): void {
    if (!this.vnetHdr) return;
    const flags =
      (offloads.csum ? TUN_F_CSUM : 0) |
      (offloads.tso4 ? TUN_F_TSO4 : 0) |
      (offloads.tso6 ? TUN_F_TSO6 : 0) |
      (offloads.ecn ? TUN_F_TSO_ECN : 0) |
      (offloads.ufo ? TUN_F_UFO : 0);
    setOffload(this.fd, flags);
  }

  setEnabled(enabled: boolean): void {
    if (!this.#multiQueue || enabled === this.#attached) return;
    setQueueAttached(this.fd, enabled);
    this.#attached = enabled;
  }

  close(): Promise<void> {
    if (!this.#closed) {
      this.#closed = true;
      this.#updateWatch();
      closeFd(this.fd);
    }
    return Promise.resolve();
  }
}

/** The queues of one tap interface. */
export class TapBackend {
  readonly ifname: string;
  readonly queues: readonly TapQueueBackend[];

  private constructor(ifname: string, queues: readonly TapQueueBackend[]) {
    this.ifname = ifname;
    this.queues = queues;
  }

  static open(options: TapBackendOptions = {}): TapBackend {
    const count = options.queues ?? 1;
    const vnetHdr = options.vnetHdr ?? true;
    const name = options.ifname;
    if (!Number.isInteger(count) || count < 1 || count > TAP_MAX_QUEUES) {
      throw new TapBackendError(
        'TAP_INVALID_OPTION',
        `queues ${count} is not from 1 to ${TAP_MAX_QUEUES}`,
        name,
      );
    }
    const multiQueue = count > 1;
    const queues: TapQueueBackend[] = [];
    let ifname = name ?? '';
    try {
      for (let i = 0; i < count; i++) {
        const q = openTap({ ifname, vnetHdr, multiQueue });
        ifname = q.ifname;
        queues.push(new TapQueueBackend(q.fd, vnetHdr, multiQueue));
        if (vnetHdr) setVnetHdrSize(q.fd, NET_HDR_SIZE);
        // No offloads until the guest says which it takes (the device calls setOffloads at activation).
        if (vnetHdr) setOffload(q.fd, 0);
      }
    } catch (e) {
      for (const q of queues) void q.close();
      const what = name === undefined || name === '' ? 'a new tap interface' : `tap interface '${name}'`;
      const hint = isSysError(e, 'EPERM')
        ? ' (needs CAP_NET_ADMIN, or a tap owned by this user)'
        : isSysError(e, 'EINVAL')
          ? ` (an existing interface whose flags differ: ${multiQueue ? 'not' : ''} multi_queue, or not a tap)`
          : isSysError(e, 'EBUSY')
            ? ' (another process has it open)'
            : '';
      throw new TapBackendError(
        'TAP_OPEN_FAILED',
        `cannot open ${what} with ${count} queue${count > 1 ? 's' : ''}: ${e instanceof Error ? e.message : String(e)}${hint}`,
        name,
        { cause: e },
      );
    }
    return new TapBackend(ifname, queues);
  }

  async close(): Promise<void> {
    await Promise.all(this.queues.map((q) => q.close()));
  }
}
