/**
 * `NetDevice`: the virtio network device (VIRTIO 1.2 §5.1) over {@link NetBackend}s. It implements
 * {@link VirtioDevice} and knows nothing of its transport.
 *
 * ```ts
 * const device = new NetDevice({ backends: [tap], mac: '52:54:00:12:34:56', mtu: 1500 });
 * device.setLinkUp(false); // the guest sees carrier off (VIRTIO_NET_S_LINK_UP cleared, config change)
 * ```
 *
 * Queues: receiveq1, transmitq1, ..., receiveqN, transmitqN (queue 2i receives and 2i+1 transmits for pair i),
 * then the control queue. Features offered: VERSION_1, EVENT_IDX, INDIRECT_DESC, MAC, STATUS, MTU, MRG_RXBUF,
 * CTRL_VQ with CTRL_RX, CTRL_VLAN, CTRL_MAC_ADDR and GUEST_ANNOUNCE, MQ (more than one pair); and, only when the
 * back ends carry vnet headers (tap) and `offloads` is not off, CSUM, GUEST_CSUM, HOST_TSO4/6, HOST_ECN,
 * GUEST_TSO4/6, GUEST_ECN — the device never segments or checksums itself: offloads pass through the header
 * to the host kernel, and the guest's accepted receive offloads go to the back end (`setOffloads`, TUNSETOFFLOAD).
 *
 * Back ends: one per queue pair (a multiqueue tap: one fd per pair), or one shared by every pair (then frames
 * are received on pair 0 only). Pairs beyond the driver's VQ_PAIRS_SET are disabled at their back end
 * (`setEnabled(false)`: a tap detaches the queue so the host steers nothing to it).
 *
 * Transmit. A kick pops every chain (notifications disabled while draining, §2.7.10 re-check after), checks the
 * header ({@link checkTxHeader}) and hands the frame to the back end as zero-copy views of guest memory — with
 * its header for a vnet-header back end, without it otherwise. Each pass publishes once (one used.idx store, at
 * most one interrupt). Back-pressure (`transmit` returns false) keeps the chain until `writable()`.
 *
 * Receive. When the back end has frames, the device pops receive buffers and the back end scatters the frame
 * straight into them (readv on a tap fd). Without MRG_RXBUF one chain holds one frame. With it a frame spans
 * `num_buffers` chains; when the back end cannot say how long the next frame is (tap), the device pops enough
 * chains for the largest frame the guest accepts (its MTU, or 64 KiB with GUEST_TSO), uses what the frame
 * filled and keeps the rest reserved for the next frame, across passes; `quiesce` gives back (`unpop`) what is
 * reserved when the transport reads the ring's state, and a stall (too few buffers) gives it back at once.
 * With no room, receive is paused at the back end and the device waits for the driver to add buffers
 * (`enableNotificationForNew`). Frames are filtered in the device ({@link NetRxFilter}: MAC table, promiscuous,
 * all-multicast, VLANs) after they landed in the buffers, which are reused when a frame is refused. Used
 * elements are published every {@link RX_PUBLISH_BATCH} frames and at the end of each pass. A pass takes at most
 * {@link RX_BUDGET} frames; one that stops there with frames left runs again on the next turn of the event loop.
 *
 * Hostile input (item 20): a refused transmit frame is dropped and a refused control command answered
 * VIRTIO_NET_ERR (net-errors.ts), both counted in `stats.errors` by code; a broken ring (a `QueueError`) is a
 * guest fault: DEVICE_NEEDS_RESET, nothing more processed until reset.
 */
import type { DeviceContext, VirtioDevice } from '../../virtio/device/virtio-device.js';
import { GuestFault, UsageError } from '../../virtio/errors.js';
import { VirtioFeature, featureSet, hasFeature } from '../../virtio/features.js';
import type { DescriptorChain } from '../../virtio/split/descriptor-chain.js';
import type { SplitQueue } from '../../virtio/split/split-queue.js';
import { nextTurn } from '../next-turn.js';
import { NetBackendError, type NetBackend, type NetBackendEvents } from './net-backend.js';
import { NET_DEFAULT_MTU, NetConfig, parseMac } from './net-config.js';
import { executeNetCtrl, type NetCtrlFeatures, type NetCtrlTarget } from './net-ctrl.js';
import { NetRequestError, type NetRequestErrorCode } from './net-errors.js';
import {
  ETH_HEADER_SIZE,
  NET_CONFIG_SIZE,
  NET_HDR_SIZE,
  NET_MAX_FRAME,
  NetFeature,
  NetHdr,
  VIRTIO_ID_NET,
  VIRTIO_NET_S_LINK_UP,
} from './net-layout.js';
import { NET_FILTER_HEADER_BYTES, NetRxFilter } from './net-rx-filter.js';
import { VLAN_TAG_BYTES, checkTxHeader, type NetTxHeader, type NetTxLimits } from './net-tx-header.js';

/** Default queue size: UML's virtio_uml always asks for 256 descriptors. */
export const NET_DEFAULT_QUEUE_SIZE = 256;
/** The MAC a device gets when none is given (QEMU's default NIC address). */
export const NET_DEFAULT_MAC = '52:54:00:12:34:56';
/** Frames received in one pass over a receive queue before the device lets the event loop run again. */
export const RX_BUDGET = 256;
/** Frames received before the used ring is published within a pass, so the guest can start on them. */
export const RX_PUBLISH_BATCH = 32;

export interface NetDeviceOptions {
  /** One back end per queue pair, or one shared by every pair. They must agree on `vnetHdr`. */
  readonly backends: readonly NetBackend[];
  /** Queue pairs (default: the number of back ends); MQ is offered when more than 1. */
  readonly queuePairs?: number;
  /** The station address, `52:54:00:12:34:56` or 6 bytes (default {@link NET_DEFAULT_MAC}). */
  readonly mac?: string | Uint8Array;
  /** The `mtu` field (VIRTIO_NET_F_MTU; default 1500); longer frames from the guest are dropped. */
  readonly mtu?: number;
  readonly queueSize?: number;
  /** Offer checksum and TSO offloads when the back ends carry vnet headers (default true). */
  readonly offloads?: boolean;
  /** Offer the control queue and its features (default true). */
  readonly ctrlQueue?: boolean;
  /** Offer VIRTIO_NET_F_MRG_RXBUF (default true). */
  readonly mergeableRxBuffers?: boolean;
  /** Offer VIRTIO_F_EVENT_IDX (default true). */
  readonly eventIdx?: boolean;
  /** Offer VIRTIO_F_INDIRECT_DESC (default true). */
  readonly indirect?: boolean;
  /** The link starts up (default true). */
  readonly linkUp?: boolean;
  /** Every refused frame or command, with its queue: for logging. */
  readonly onRequestError?: (error: NetRequestError, queueIndex: number) => void;
}

/** Counters, for tests, benchmarks and the export's control API; structured-clone-able. */
export interface NetDeviceStats {
  rxFrames: number;
  rxBytes: number;
  txFrames: number;
  txBytes: number;
  /** Frames the receive filter refused. */
  rxFiltered: number;
  /** Frames longer than the receive buffers (the back end consumed and dropped them). */
  rxTooLong: number;
  /** Frames dropped because the link was down (both directions). */
  rxLinkDown: number;
  txLinkDown: number;
  /** Times receive stopped for lack of guest buffers. */
  rxStalls: number;
  /** Transmit frames dropped (refused header, back end error): the sum of the NET_TX_* codes. */
  txDropped: number;
  ctrlCommands: number;
  /** Control commands answered VIRTIO_NET_ERR or dropped. */
  ctrlErrors: number;
  /** Refusals by code (net-errors.ts). */
  errors: Partial<Record<NetRequestErrorCode, number>>;
  /** Frames per receive / transmit queue of each pair. */
  rxFramesPerPair: number[];
  txFramesPerPair: number[];
  publishes: number;
  interrupts: number;
}

const F = NetFeature;
const OFFLOAD_FEATURES = [
  F.VIRTIO_NET_F_CSUM,
  F.VIRTIO_NET_F_GUEST_CSUM,
  F.VIRTIO_NET_F_HOST_TSO4,
  F.VIRTIO_NET_F_HOST_TSO6,
  F.VIRTIO_NET_F_HOST_ECN,
  F.VIRTIO_NET_F_GUEST_TSO4,
  F.VIRTIO_NET_F_GUEST_TSO6,
  F.VIRTIO_NET_F_GUEST_ECN,
];
const CTRL_FEATURES = [
  F.VIRTIO_NET_F_CTRL_VQ,
  F.VIRTIO_NET_F_CTRL_RX,
  F.VIRTIO_NET_F_CTRL_VLAN,
  F.VIRTIO_NET_F_CTRL_MAC_ADDR,
  F.VIRTIO_NET_F_GUEST_ANNOUNCE,
];
/** §5.1.3.1: each feature the driver may only take together with one of the others listed. */
const FEATURE_REQUIRES: readonly (readonly [number, readonly number[]])[] = [
  [F.VIRTIO_NET_F_GUEST_TSO4, [F.VIRTIO_NET_F_GUEST_CSUM]],
  [F.VIRTIO_NET_F_GUEST_TSO6, [F.VIRTIO_NET_F_GUEST_CSUM]],
  [F.VIRTIO_NET_F_GUEST_ECN, [F.VIRTIO_NET_F_GUEST_TSO4, F.VIRTIO_NET_F_GUEST_TSO6]],
  [F.VIRTIO_NET_F_HOST_TSO4, [F.VIRTIO_NET_F_CSUM]],
  [F.VIRTIO_NET_F_HOST_TSO6, [F.VIRTIO_NET_F_CSUM]],
  [F.VIRTIO_NET_F_HOST_ECN, [F.VIRTIO_NET_F_HOST_TSO4, F.VIRTIO_NET_F_HOST_TSO6]],
  [F.VIRTIO_NET_F_CTRL_RX, [F.VIRTIO_NET_F_CTRL_VQ]],
  [F.VIRTIO_NET_F_CTRL_VLAN, [F.VIRTIO_NET_F_CTRL_VQ]],
  [F.VIRTIO_NET_F_CTRL_MAC_ADDR, [F.VIRTIO_NET_F_CTRL_VQ]],
  // Not here: GUEST_ANNOUNCE and MQ without CTRL_VQ. A driver must not ask for them alone (§5.1.3.1), but a
  // vhost-user front end that runs the control queue itself (QEMU's virtio-net: only the data-path bits reach
  // its back end) passes exactly that, and then owns announce and the pair count; see `activate`.
];

/** Receive state of one pair: the chains popped ahead of data during a pass, and their writable views. */
interface RxPair {
  readonly reserved: DescriptorChain[];
  /** Writable bytes of each reserved chain. */
  readonly capacity: number[];
  /** Views of every reserved chain's writable part, in order (what the back end fills). */
  readonly views: Uint8Array[];
  /** How many of `views` each reserved chain contributed. */
  readonly viewCounts: number[];
  /** Receive is paused at the back end until the driver adds buffers. */
  waiting: boolean;
  draining: boolean;
  /** Drain requests made while draining (a back end calling readable() from inside receive): run again. */
  requests: number;
  /** A pass stopped at RX_BUDGET with frames left: another is due on the next turn of the event loop. */
  continuing: boolean;
}

interface TxPair {
  /** A chain the back end could not take yet (back-pressure). */
  held: DescriptorChain | null;
}

/** What the negotiated features mean for the data path. */
interface Negotiated {
  readonly mrg: boolean;
  readonly guestCsum: boolean;
  readonly guestGso: boolean;
  readonly tx: NetTxLimits;
  /** Bytes of buffer (header included) the largest frame the guest accepts needs. */
  readonly rxMaxNeed: number;
  readonly ctrl: NetCtrlFeatures;
  readonly mq: boolean;
  readonly announce: boolean;
}

export class NetDevice implements VirtioDevice {
  readonly deviceType = VIRTIO_ID_NET;
  readonly deviceFeatures: bigint;
  readonly queueMaxSizes: readonly number[];
  readonly configSize = NET_CONFIG_SIZE;
  readonly queuePairs: number;
  /** Index of the control queue, or -1 without one. */
  readonly ctrlQueueIndex: number;
  readonly backends: readonly NetBackend[];
  readonly vnetHdr: boolean;
  readonly filter = new NetRxFilter();
  readonly config: NetConfig;
  readonly stats: NetDeviceStats;

  readonly #onRequestError: ((error: NetRequestError, queueIndex: number) => void) | undefined;
  readonly #rx: RxPair[];
  readonly #tx: TxPair[];
  #context: DeviceContext | undefined;
  #negotiated: Negotiated | undefined;
  #failed = false;
  #started = false;
  #activePairs = 1;
  #userLinkUp: boolean;
  readonly #filterHead = new Uint8Array(NET_FILTER_HEADER_BYTES);

  constructor(options: NetDeviceOptions) {
    const backends = options.backends;
    const pairs = options.queuePairs ?? backends.length;
    if (backends.length === 0 || (backends.length !== 1 && backends.length !== pairs)) {
      throw new UsageError(
        'INVALID_ARGUMENT',
        `${backends.length} back ends for ${pairs} queue pairs: give one per pair, or one for all`,
        backends.length,
      );
    }
    const vnetHdr = (backends[0] as NetBackend).vnetHdr;
    if (backends.some((b) => b.vnetHdr !== vnetHdr)) {
      throw new UsageError('INVALID_ARGUMENT', 'the back ends disagree on vnet headers', vnetHdr);
    }
    const mac =
      typeof options.mac === 'string' ? parseMac(options.mac) : (options.mac ?? parseMac(NET_DEFAULT_MAC));
    this.config = new NetConfig(mac, pairs, options.mtu ?? NET_DEFAULT_MTU);
    this.backends = backends;
    this.vnetHdr = vnetHdr;
    this.queuePairs = pairs;
    const ctrl = options.ctrlQueue !== false;
    this.ctrlQueueIndex = ctrl ? 2 * pairs : -1;
    const queueSize = options.queueSize ?? NET_DEFAULT_QUEUE_SIZE;
    this.queueMaxSizes = new Array<number>(2 * pairs + (ctrl ? 1 : 0)).fill(queueSize);
    this.#onRequestError = options.onRequestError;
    this.#userLinkUp = options.linkUp !== false;
    this.config.setLinkUp(this.#linkWanted());

    const bits: number[] = [
      VirtioFeature.VIRTIO_F_VERSION_1,
      F.VIRTIO_NET_F_MAC,
      F.VIRTIO_NET_F_STATUS,
      F.VIRTIO_NET_F_MTU,
    ];
    if (options.eventIdx !== false) bits.push(VirtioFeature.VIRTIO_F_EVENT_IDX);
    if (options.indirect !== false) bits.push(VirtioFeature.VIRTIO_F_INDIRECT_DESC);
    if (options.mergeableRxBuffers !== false) bits.push(F.VIRTIO_NET_F_MRG_RXBUF);
    if (ctrl) bits.push(...CTRL_FEATURES);
    if (ctrl && pairs > 1) bits.push(F.VIRTIO_NET_F_MQ);
    if (vnetHdr && options.offloads !== false) bits.push(...OFFLOAD_FEATURES);
    this.deviceFeatures = featureSet(...bits);

    this.#rx = Array.from({ length: pairs }, () => ({
      reserved: [],
      capacity: [],
      views: [],
      viewCounts: [],
      waiting: false,
      draining: false,
      requests: 0,
      continuing: false,
    }));
    this.#tx = Array.from({ length: pairs }, () => ({ held: null }));
    this.stats = {
      rxFrames: 0,
      rxBytes: 0,
      txFrames: 0,
      txBytes: 0,
      rxFiltered: 0,
      rxTooLong: 0,
      rxLinkDown: 0,
      txLinkDown: 0,
      rxStalls: 0,
      txDropped: 0,
      ctrlCommands: 0,
      ctrlErrors: 0,
      errors: {},
      rxFramesPerPair: new Array<number>(pairs).fill(0),
      txFramesPerPair: new Array<number>(pairs).fill(0),
      publishes: 0,
      interrupts: 0,
    };
  }

  // ---- configuration space and link ----

  readConfig(offset: number, dst: Uint8Array): void {
    dst.set(this.config.bytes.subarray(offset, offset + dst.length));
  }

  /** Every field is read-only with VERSION_1 (the MAC changes through VIRTIO_NET_CTRL_MAC_ADDR_SET). */
  writeConfig(): void {
    // Ignored.
  }

  /** Whether the guest sees the link up (VIRTIO_NET_S_LINK_UP). */
  get linkUp(): boolean {
    return (this.config.status & VIRTIO_NET_S_LINK_UP) !== 0;
  }

  /** Sets the link as the host sees it; the guest gets a configuration change (carrier on/off). */
  setLinkUp(up: boolean): void {
    this.#userLinkUp = up;
    this.#updateLink();
  }

  /**
   * Asks the guest to announce itself (gratuitous ARP after a migration): sets VIRTIO_NET_S_ANNOUNCE until the
   * driver acknowledges with VIRTIO_NET_CTRL_ANNOUNCE_ACK. Returns false when GUEST_ANNOUNCE was not negotiated.
   */
  announce(): boolean {
    const context = this.#context;
    if (context === undefined || this.#negotiated?.announce !== true) return false;
    if (this.config.setAnnounce(true)) context.configChanged();
    return true;
  }

  /** Queue pairs the driver uses (VQ_PAIRS_SET; 1 until it says otherwise). */
  get activePairs(): number {
    return this.#activePairs;
  }

  #linkWanted(): boolean {
    return this.#userLinkUp && this.backends.every((b) => b.linkUp);
  }

  #updateLink(): void {
    if (this.config.setLinkUp(this.#linkWanted())) this.#context?.configChanged();
  }

  validateFeatures(features: bigint): boolean {
    return FEATURE_REQUIRES.every(
      ([bit, needs]) => !hasFeature(features, bit) || needs.some((n) => hasFeature(features, n)),
    );
  }

  // ---- lifecycle ----

  activate(context: DeviceContext): void {
    this.#context = context;
    this.#failed = false;
    const f = context.features;
    const has = (bit: number) => hasFeature(f, bit);
    const guestGso = has(F.VIRTIO_NET_F_GUEST_TSO4) || has(F.VIRTIO_NET_F_GUEST_TSO6);
    const mtuFrame = this.config.mtu + ETH_HEADER_SIZE + VLAN_TAG_BYTES;
    this.#negotiated = {
      mrg: has(F.VIRTIO_NET_F_MRG_RXBUF),
      guestCsum: has(F.VIRTIO_NET_F_GUEST_CSUM),
      guestGso,
      tx: {
        csum: has(F.VIRTIO_NET_F_CSUM),
        tso4: has(F.VIRTIO_NET_F_HOST_TSO4),
        tso6: has(F.VIRTIO_NET_F_HOST_TSO6),
        ecn: has(F.VIRTIO_NET_F_HOST_ECN),
        maxFrame: has(F.VIRTIO_NET_F_MTU) ? mtuFrame : NET_MAX_FRAME,
      },
      rxMaxNeed: NET_HDR_SIZE + (guestGso ? NET_MAX_FRAME : mtuFrame),
      ctrl: {
        rx: has(F.VIRTIO_NET_F_CTRL_RX),
        vlan: has(F.VIRTIO_NET_F_CTRL_VLAN),
        macAddr: has(F.VIRTIO_NET_F_CTRL_MAC_ADDR),
        announce: has(F.VIRTIO_NET_F_GUEST_ANNOUNCE),
        mq: has(F.VIRTIO_NET_F_MQ),
        maxPairs: this.queuePairs,
      },
      mq: has(F.VIRTIO_NET_F_MQ),
      announce: has(F.VIRTIO_NET_F_GUEST_ANNOUNCE),
    };
    this.filter.reset(has(F.VIRTIO_NET_F_CTRL_VLAN));
    for (const b of this.backends) {
      b.setOffloads?.({
        csum: has(F.VIRTIO_NET_F_GUEST_CSUM),
        tso4: has(F.VIRTIO_NET_F_GUEST_TSO4),
        tso6: has(F.VIRTIO_NET_F_GUEST_TSO6),
        ecn: has(F.VIRTIO_NET_F_GUEST_ECN),
        ufo: false,
      });
    }
    if (!this.#started) {
      this.#started = true;
      this.backends.forEach((b, i) => {
        b.start(this.#eventsFor(i));
      });
    }
    // The host side may have come up or gone down while nobody listened for linkChange (a stream peer that
    // connected before the guest's driver started): the status the driver reads must be the link as it is now.
    this.#updateLink();
    // With the control queue, VQ_PAIRS_SET picks the pairs (1 until it comes). MQ without it: whoever drives the
    // device runs the control queue elsewhere and enables the rings of the pairs in use, so the pairs whose
    // receive queue is enabled are the active ones (the others' back ends stop taking frames for them).
    this.#setActivePairs(
      has(F.VIRTIO_NET_F_MQ) && !has(F.VIRTIO_NET_F_CTRL_VQ) ? enabledPairs(context, this.queuePairs) : 1,
    );
    for (let pair = 0; pair < this.queuePairs; pair++) this.#drainTx(pair);
    this.#drainCtrl();
  }

  queueNotify(queueIndex: number): void {
    if (queueIndex === this.ctrlQueueIndex) {
      this.#drainCtrl();
      return;
    }
    const pair = queueIndex >> 1;
    if ((queueIndex & 1) === 1) {
      this.#drainTx(pair);
      return;
    }
    const rx = this.#rx[pair];
    if (rx === undefined || pair >= this.#activePairs) return;
    if (rx.waiting) {
      rx.waiting = false;
      this.#rxBackend(pair)?.resumeReceive();
    }
    this.#drainRx(pair);
  }

  /**
   * Gives back the receive chains reserved ahead of frames, so every queue's nextAvail is the next chain the
   * driver expects the device to read (vhost-user GET_VRING_BASE, a ring stopped or deactivated).
   */
  quiesce(): void {
    const context = this.#context;
    if (context === undefined) return;
    this.#rx.forEach((rx, pair) => {
      const queue = context.queues[2 * pair];
      if (queue?.isActive === true && rx.reserved.length > 0) this.#giveBack(rx, queue);
    });
  }

  reset(): void {
    this.#context = undefined;
    this.#negotiated = undefined;
    this.#failed = false;
    for (const rx of this.#rx) {
      rx.reserved.length = 0;
      rx.capacity.length = 0;
      rx.views.length = 0;
      rx.viewCounts.length = 0;
      rx.waiting = false;
    }
    for (const tx of this.#tx) tx.held = null;
    if (this.#started) for (const b of this.backends) b.pauseReceive();
    this.filter.reset();
    this.config.reset();
    this.#activePairs = 1;
  }

  /** Closes every back end (the device serves nothing afterwards). */
  async close(): Promise<void> {
    this.reset();
    await Promise.all(this.backends.map((b) => b.close()));
  }

  #eventsFor(index: number): NetBackendEvents {
    return {
      readable: () => {
        // A shared back end receives on pair 0.
        this.#drainRx(index);
      },
      writable: () => {
        if (this.backends.length === 1) for (let p = 0; p < this.queuePairs; p++) this.#drainTx(p);
        else this.#drainTx(index);
      },
      linkChange: () => {
        this.#updateLink();
      },
    };
  }

  /** The back end that receives for `pair` (a shared one only for pair 0). */
  #rxBackend(pair: number): NetBackend | undefined {
    return this.backends.length === 1 ? (pair === 0 ? this.backends[0] : undefined) : this.backends[pair];
  }

  #txBackend(pair: number): NetBackend {
    return (this.backends.length === 1 ? this.backends[0] : this.backends[pair]) as NetBackend;
  }

  /** VQ_PAIRS_SET (and activation): pairs below `pairs` receive, the others' back ends are disabled. */
  #setActivePairs(pairs: number): void {
    this.#activePairs = pairs;
    for (let pair = 0; pair < this.queuePairs; pair++) {
      const backend = this.#rxBackend(pair);
      if (backend === undefined) continue;
      const on = pair < pairs;
      if (this.backends.length > 1) backend.setEnabled?.(on);
      const rx = this.#rx[pair] as RxPair;
      if (on) {
        rx.waiting = false;
        backend.resumeReceive();
      } else {
        backend.pauseReceive();
      }
    }
    for (let pair = 0; pair < pairs; pair++) this.#drainRx(pair);
  }

  #fault(e: unknown): void {
    if (!(e instanceof GuestFault)) throw e;
    this.#failed = true;
    this.#context?.fail(e as GuestFault);
  }

  #refused(error: NetRequestError, queueIndex: number): void {
    const errors = this.stats.errors;
    errors[error.code] = (errors[error.code] ?? 0) + 1;
    this.#onRequestError?.(error, queueIndex);
  }

  #publish(queue: SplitQueue, queueIndex: number): void {
    const context = this.#context;
    if (context === undefined) return;
    queue.publishUsed();
    this.stats.publishes++;
    if (queue.needsNotification()) {
      this.stats.interrupts++;
      context.interrupt.signalUsed(queueIndex);
    }
  }

  // ---- transmit ----

  #drainTx(pair: number): void {
    const context = this.#context;
    const queueIndex = 2 * pair + 1;
    const queue = context?.queues[queueIndex];
    const tx = this.#tx[pair];
    if (context === undefined || queue === undefined || tx === undefined || !queue.isActive) return;
    try {
      if (tx.held !== null) {
        const held = tx.held;
        tx.held = null;
        if (!this.#transmit(pair, queue, held)) {
          tx.held = held;
          return;
        }
      }
      for (;;) {
        if (this.#failed) return;
        queue.disableNotification();
        for (let chain = queue.popChain(); chain !== null; chain = queue.popChain()) {
          if (!this.#transmit(pair, queue, chain)) {
            tx.held = chain;
            break;
          }
        }
        this.#publish(queue, queueIndex);
        if (tx.held !== null || !queue.enableNotification()) return;
      }
    } catch (e) {
      this.#publish(queue, queueIndex);
      this.#fault(e);
    }
  }

  /** Sends one chain's frame; false on back-pressure (nothing taken, the chain not used). */
  #transmit(pair: number, queue: SplitQueue, chain: DescriptorChain): boolean {
    const negotiated = this.#negotiated as Negotiated;
    const queueIndex = queue.index;
    const drop = (code: NetRequestErrorCode, message: string, value: unknown): true => {
      this.stats.txDropped++;
      this.#refused(
        new NetRequestError(code, `transmit queue ${queueIndex} head ${chain.head}: ${message}`, value),
        queueIndex,
      );
      queue.addUsed(chain.head, 0);
      return true;
    };
    if (chain.readableLength < NET_HDR_SIZE) {
      return drop('NET_TX_HEADER_TOO_SHORT', `${chain.readableLength} readable bytes`, chain.readableLength);
    }
    const reader = chain.reader();
    // Read each field once: the guest may change them under us.
    const header: NetTxHeader = {
      flags: reader.readU8(),
      gsoType: reader.readU8(),
      hdrLen: reader.readU16(),
      gsoSize: reader.readU16(),
      csumStart: reader.readU16(),
      csumOffset: reader.readU16(),
    };
    reader.readU16(); // num_buffers: unused on transmit
    const frameLength = chain.readableLength - NET_HDR_SIZE;
    const code = checkTxHeader(header, frameLength, negotiated.tx);
    if (code !== null) return drop(code, `virtio_net_hdr refused for a ${frameLength}-byte frame`, header);
    if (!this.linkUp) {
      this.stats.txLinkDown++;
      queue.addUsed(chain.head, 0);
      return true;
    }
    const backend = this.#txBackend(pair);
    const bufs = this.vnetHdr ? chain.readable() : reader.views(frameLength);
    try {
      if (!backend.transmit(bufs)) return false;
    } catch (e) {
      if (!(e instanceof NetBackendError)) throw e;
      return drop('NET_TX_BACKEND', `${e.code}: ${e.message}`, e.code);
    }
    this.stats.txFrames++;
    this.stats.txBytes += frameLength;
    (this.stats.txFramesPerPair[pair] as number)++;
    queue.addUsed(chain.head, 0);
    return true;
  }

  // ---- receive ----

  #drainRx(pair: number): void {
    const rx = this.#rx[pair];
    if (rx === undefined) return;
    rx.requests++;
    if (rx.draining) return;
    rx.draining = true;
    try {
      let seen;
      do {
        seen = rx.requests;
        this.#receivePass(pair, rx);
      } while (rx.requests !== seen);
    } finally {
      rx.draining = false;
    }
  }

  #receivePass(pair: number, rx: RxPair): void {
    const context = this.#context;
    const negotiated = this.#negotiated;
    const queueIndex = 2 * pair;
    const queue = context?.queues[queueIndex];
    const backend = this.#rxBackend(pair);
    if (
      context === undefined ||
      negotiated === undefined ||
      queue === undefined ||
      backend === undefined ||
      !queue.isActive ||
      this.#failed ||
      rx.waiting ||
      pair >= this.#activePairs
    ) {
      return;
    }
    let sincePublish = 0;
    let budget = RX_BUDGET;
    try {
      queue.disableNotification();
      for (; budget > 0; budget--) {
        const pending = backend.pendingLength();
        if (pending === 0) break;
        const need = pending > 0 ? pending + (this.vnetHdr ? 0 : NET_HDR_SIZE) : negotiated.rxMaxNeed;
        if (!this.#reserve(rx, queue, negotiated.mrg ? need : 1, negotiated.mrg)) {
          this.#giveBack(rx, queue);
          if (queue.enableNotificationForNew()) {
            queue.disableNotification();
            budget++;
            continue;
          }
          rx.waiting = true;
          this.stats.rxStalls++;
          backend.pauseReceive();
          break;
        }
        const got = this.#receiveOne(pair, rx, queue, backend, negotiated);
        if (got === 0) break;
        if (got > 0 && ++sincePublish >= RX_PUBLISH_BATCH) {
          sincePublish = 0;
          this.#publish(queue, queueIndex);
        }
      }
    } catch (e) {
      this.#giveBack(rx, queue);
      this.#publish(queue, queueIndex);
      this.#fault(e);
      return;
    }
    // The chains still reserved stay popped for the next frame: a tap cannot say how long that will be, so each
    // frame needs room for the largest (43 chains of 1536 bytes with GUEST_TSO), and popping and validating them
    // again for every small frame was a third of the worker's time per request/response exchange.
    // `quiesce` gives them back before a ring's state is read.
    this.#publish(queue, queueIndex);
    // Out of budget with frames perhaps still pending. The back end's `readable` is edge-triggered (it fires
    // again only after receive or pendingLength said 0) and the driver does not kick a receive queue whose
    // notifications are off, so nothing else would restart this pass: it continues on the next turn.
    if (budget === 0) this.#continueRx(pair, rx);
  }

  #continueRx(pair: number, rx: RxPair): void {
    if (rx.continuing) return;
    rx.continuing = true;
    nextTurn(() => {
      rx.continuing = false;
      this.#drainRx(pair);
    });
  }

  /**
   * Pops chains until the reserved ones hold `need` bytes (with mergeable buffers) or one chain (without).
   * Returns false when the ring ran out first.
   */
  #reserve(rx: RxPair, queue: SplitQueue, need: number, mrg: boolean): boolean {
    let have = 0;
    for (const c of rx.capacity) have += c;
    while (mrg ? have < need : rx.reserved.length === 0) {
      const chain = queue.popChain();
      if (chain === null) return false;
      rx.reserved.push(chain);
      rx.capacity.push(chain.writableLength);
      const views = chain.writable();
      for (const v of views) rx.views.push(v);
      rx.viewCounts.push(views.length);
      have += chain.writableLength;
    }
    return true;
  }

  /** Returns every reserved chain to the ring, last popped first. */
  #giveBack(rx: RxPair, queue: SplitQueue): void {
    for (let i = rx.reserved.length - 1; i >= 0; i--) queue.unpop((rx.reserved[i] as DescriptorChain).head);
    rx.reserved.length = 0;
    rx.capacity.length = 0;
    rx.views.length = 0;
    rx.viewCounts.length = 0;
  }

  /**
   * Receives one frame into the reserved chains. Returns 1 when a frame was handed to the driver, -1 when one
   * was consumed and dropped (filtered, too long, link down), 0 when none was pending.
   */
  #receiveOne(pair: number, rx: RxPair, queue: SplitQueue, backend: NetBackend, n: Negotiated): number {
    const views = rx.views;
    const got = backend.receive(this.vnetHdr ? views : skipBytes(views, NET_HDR_SIZE));
    if (got === 0) return 0;
    const capacity = sum(rx.capacity);
    const total = this.vnetHdr ? got : got + NET_HDR_SIZE;
    if (got < 0 || total > capacity) {
      this.stats.rxTooLong++;
      return -1;
    }
    if (!this.linkUp) {
      this.stats.rxLinkDown++;
      return -1;
    }
    if (!this.filter.promiscuous) {
      const head = this.#filterHead;
      head.fill(0);
      gather(views, NET_HDR_SIZE, head);
      if (!this.filter.accepts(head, this.config.mac)) {
        this.stats.rxFiltered++;
        return -1;
      }
    }
    // Chains the frame filled.
    let used = 0;
    let left = total;
    while (left > 0) left -= rx.capacity[used++] as number;
    if (!this.vnetHdr) fillBytes(views, 0, NET_HDR_SIZE, 0);
    else {
      // §5.1.6.4.1: without GUEST_CSUM flags are 0; without GUEST_TSO gso_type is NONE (TUNSETOFFLOAD keeps the
      // host from producing either; this makes it exact).
      if (!n.guestCsum) fillBytes(views, NetHdr.FLAGS, 1, 0);
      if (!n.guestGso) fillBytes(views, NetHdr.GSO_TYPE, 1, 0);
    }
    writeU16(views, NetHdr.NUM_BUFFERS, n.mrg ? used : 1);
    left = total;
    for (let i = 0; i < used; i++) {
      const c = rx.capacity[i] as number;
      queue.addUsed((rx.reserved[i] as DescriptorChain).head, Math.min(c, left));
      left -= c;
    }
    let usedViews = 0;
    for (let i = 0; i < used; i++) usedViews += rx.viewCounts[i] as number;
    rx.reserved.splice(0, used);
    rx.capacity.splice(0, used);
    rx.viewCounts.splice(0, used);
    rx.views.splice(0, usedViews);
    const frame = total - NET_HDR_SIZE;
    this.stats.rxFrames++;
    this.stats.rxBytes += frame;
    (this.stats.rxFramesPerPair[pair] as number)++;
    return 1;
  }

  // ---- control queue ----

  #drainCtrl(): void {
    const context = this.#context;
    const negotiated = this.#negotiated;
    const queueIndex = this.ctrlQueueIndex;
    const queue = context?.queues[queueIndex];
    if (context === undefined || negotiated === undefined || queue === undefined || !queue.isActive) return;
    const target: NetCtrlTarget = {
      filter: this.filter,
      setMac: (mac) => {
        this.config.mac = mac;
      },
      setPairs: (pairs) => {
        this.#setActivePairs(pairs);
      },
      ackAnnounce: () => {
        if (this.config.setAnnounce(false)) context.configChanged();
      },
    };
    try {
      for (;;) {
        if (this.#failed) return;
        queue.disableNotification();
        for (let chain = queue.popChain(); chain !== null; chain = queue.popChain()) {
          this.stats.ctrlCommands++;
          const result = executeNetCtrl(chain, negotiated.ctrl, target);
          if (result.error !== undefined) {
            this.stats.ctrlErrors++;
            this.#refused(result.error, queueIndex);
          }
          queue.addUsed(chain.head, result.usedLength);
        }
        this.#publish(queue, queueIndex);
        if (!queue.enableNotification()) return;
      }
    } catch (e) {
      this.#publish(queue, queueIndex);
      this.#fault(e);
    }
  }
}

function sum(values: readonly number[]): number {
  let s = 0;
  for (const v of values) s += v;
  return s;
}

/** The views after their first `n` bytes. */
function skipBytes(views: readonly Uint8Array[], n: number): Uint8Array[] {
  const out: Uint8Array[] = [];
  let skip = n;
  for (const v of views) {
    if (skip >= v.length) {
      skip -= v.length;
      continue;
    }
    out.push(skip > 0 ? v.subarray(skip) : v);
    skip = 0;
  }
  return out;
}

/** Copies bytes from `offset` in the concatenated views into `dst` (as many as there are). */
function gather(views: readonly Uint8Array[], offset: number, dst: Uint8Array): void {
  let pos = 0;
  let done = 0;
  for (const v of views) {
    if (done >= dst.length) return;
    const end = pos + v.length;
    if (end > offset + done) {
      const from = offset + done - pos;
      const k = Math.min(v.length - from, dst.length - done);
      dst.set(v.subarray(from, from + k), done);
      done += k;
    }
    pos = end;
  }
}

/** Writes `len` bytes of `value` at `offset` in the concatenated views. */
function fillBytes(views: readonly Uint8Array[], offset: number, len: number, value: number): void {
  let pos = 0;
  for (const v of views) {
    const end = pos + v.length;
    const from = Math.max(offset, pos);
    const to = Math.min(offset + len, end);
    if (from < to) v.fill(value, from - pos, to - pos);
    if (end >= offset + len) return;
    pos = end;
  }
}

/** Writes a little-endian u16 at `offset` in the concatenated views. */
function writeU16(views: readonly Uint8Array[], offset: number, value: number): void {
  fillBytes(views, offset, 1, value & 0xff);
  fillBytes(views, offset + 1, 1, value >>> 8);
}

/** Leading queue pairs whose receive queue the driver enabled (at least 1). */
function enabledPairs(context: DeviceContext, max: number): number {
  let pairs = 0;
  while (pairs < max && context.queues[2 * pairs]?.isActive === true) pairs++;
  return Math.max(1, pairs);
}
