/**
 * A bound virtio-net device as its user sees it (Linux's struct virtnet_info + net_device ops): identity, link,
 * transmit and receive over N queue pairs, and the control-queue commands. Made by {@link VirtioNetDriver}'s probe.
 */
import { queueBrokenMessage } from '../driver-error.js';
import type { VirtioBusDevice } from '../../virtio/driver/virtio-bus-device.js';
import type { Virtqueue } from '../../virtio/driver/virtqueue.js';
import {
  ETH_HEADER_SIZE,
  MAC_ADDRESS_BYTES,
  NET_HDR_SIZE,
  NET_MAX_FRAME,
  NetCtrlAnnounce,
  NetCtrlClass,
  NetCtrlGuestOffloads,
  NetCtrlMac,
  NetCtrlMq,
  NetCtrlRx,
  NetCtrlVlan,
  NetFeature,
  VLAN_ID_MAX,
} from '../../devices/net/net-layout.js';
import { UsageError } from '../../virtio/errors.js';
import type { GuestAllocator } from '../../virtio/guest-allocator.js';
import type { GuestMemory } from '../../virtio/guest-memory.js';
import type { NetControlQueue } from './net-control-queue.js';
import { NetDriverError } from './net-driver-error.js';
import { flowHash } from './net-flow-hash.js';
import { fillNetHeader, parseNetHeader, type NetRxInfo, type NetTxOffload } from './net-header.js';

/** Smallest frame `send` accepts (an Ethernet header). */
export const NET_MIN_FRAME = ETH_HEADER_SIZE;
/** Ethernet header + one VLAN tag: what a frame may carry beyond the MTU. */
const ETH_VLAN_OVERHEAD = 18;
/** `le32 entries` in front of each MAC table of VIRTIO_NET_CTRL_MAC_TABLE_SET. */
const MAC_TABLE_ENTRIES_HEADER = 4;

/** The GUEST_* receive offloads VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET may switch (§5.1.6.5.6.1). */
export const GUEST_OFFLOAD_BITS = [
  NetFeature.VIRTIO_NET_F_GUEST_CSUM,
  NetFeature.VIRTIO_NET_F_GUEST_TSO4,
  NetFeature.VIRTIO_NET_F_GUEST_TSO6,
  NetFeature.VIRTIO_NET_F_GUEST_ECN,
  NetFeature.VIRTIO_NET_F_GUEST_UFO,
] as const;

/** Receive-mode switches of VIRTIO_NET_CTRL_RX (ALLUNI and the NO* ones need CTRL_RX_EXTRA). */
export interface NetRxMode {
  readonly promiscuous?: boolean;
  readonly allMulticast?: boolean;
  readonly allUnicast?: boolean;
  readonly noMulticast?: boolean;
  readonly noUnicast?: boolean;
  readonly noBroadcast?: boolean;
}

const RX_MODE_COMMANDS: readonly [keyof NetRxMode, number, boolean][] = [
  ['promiscuous', NetCtrlRx.PROMISC, false],
  ['allMulticast', NetCtrlRx.ALLMULTI, false],
  ['allUnicast', NetCtrlRx.ALLUNI, true],
  ['noMulticast', NetCtrlRx.NOMULTI, true],
  ['noUnicast', NetCtrlRx.NOUNI, true],
  ['noBroadcast', NetCtrlRx.NOBCAST, true],
];

/** Receive offloads by name, for {@link VirtioNetInterface.setReceiveOffloads}. */
export interface NetRxOffloads {
  readonly csum?: boolean;
  readonly tso4?: boolean;
  readonly tso6?: boolean;
  readonly ecn?: boolean;
  readonly ufo?: boolean;
}

export interface NetSendOptions {
  /** The queue pair to transmit on (default: chosen by the frame's flow hash among the active pairs). */
  readonly queue?: number;
}

/** @internal */
export interface TxRequest {
  readonly addr: number;
  readonly len: number;
  readonly resolve: () => void;
  readonly reject: (error: Error) => void;
}

/** @internal A receive buffer on a ring; also its token. */
export interface RxBuffer {
  readonly addr: number;
  readonly len: number;
}

/** One queue pair's state (Linux struct receive_queue + send_queue). */
interface QueuePair {
  readonly index: number;
  readonly rxq: Virtqueue<RxBuffer>;
  readonly txq: Virtqueue<TxRequest>;
  readonly rxBuffers: Set<RxBuffer>;
  readonly txInFlight: Set<TxRequest>;
  readonly txBacklog: TxRequest[];
  txKickPending: boolean;
  /** A frame being reassembled from merged buffers on this receive queue. */
  partial: { parts: Uint8Array[]; left: number; info: NetRxInfo } | undefined;
  rxFrames: number;
  txFrames: number;
}

export interface NetStats {
  txFrames: number;
  rxFrames: number;
  rxErrors: number;
  /** GUEST_ANNOUNCE requests acknowledged. */
  announces: number;
}

export interface NetInterfaceInit {
  readonly mac: Uint8Array;
  readonly linkUp: boolean;
  readonly mtu: number;
  readonly rxBufferSize: number;
  readonly maxQueuePairs: number;
}

/** A bound virtio-net device: its MAC, link, frame I/O and control commands. */
export class VirtioNetInterface {
  readonly dev: VirtioBusDevice;
  readonly memory: GuestMemory;
  readonly allocator: GuestAllocator;
  /** Whether frames may span several receive buffers (VIRTIO_NET_F_MRG_RXBUF). */
  readonly mergeable: boolean;
  /** Bytes per receive buffer (header included). */
  readonly rxBufferSize: number;
  /** The device's MTU (VIRTIO_NET_F_MTU), else 1500. */
  readonly mtu: number;
  /** The device's max_virtqueue_pairs (1 without MQ). */
  readonly maxQueuePairs: number;
  readonly stats: NetStats = { txFrames: 0, rxFrames: 0, rxErrors: 0, announces: 0 };
  #mac: Uint8Array;
  #linkUp: boolean;
  #pairs: QueuePair[] = [];
  #activePairs = 1;
  #control: NetControlQueue | undefined;
  readonly #frameHandlers = new Set<(frame: Uint8Array, info: NetRxInfo) => void>();
  readonly #linkHandlers = new Set<(up: boolean) => void>();
  readonly #announceHandlers = new Set<() => void>();
  #removed: NetDriverError | undefined;
  #lastRxError: Error | undefined;
  #announcing = false;
  #lastControlError: Error | undefined;

  /** @internal made by the driver's probe */
  constructor(dev: VirtioBusDevice, init: NetInterfaceInit) {
    this.dev = dev;
    this.memory = dev.ops.memory;
    this.allocator = dev.ops.allocator;
    this.#mac = init.mac;
    this.#linkUp = init.linkUp;
    this.mtu = init.mtu;
    this.maxQueuePairs = init.maxQueuePairs;
    this.mergeable = dev.hasFeature(NetFeature.VIRTIO_NET_F_MRG_RXBUF);
    this.rxBufferSize = init.rxBufferSize;
  }

  /** The MAC address, as `52:54:00:12:34:56`. */
  get mac(): string {
    return formatMac(this.#mac);
  }

  get macBytes(): Uint8Array {
    return this.#mac.slice();
  }

  get linkUp(): boolean {
    return this.#linkUp;
  }

  /** Whether the control virtqueue is there (VIRTIO_NET_F_CTRL_VQ). */
  get hasControlQueue(): boolean {
    return this.#control !== undefined;
  }

  /** Queue pairs set up by the driver (receive is served on all of them). */
  get queuePairs(): number {
    return this.#pairs.length;
  }

  /** Queue pairs the device uses now (VQ_PAIRS_SET); transmit picks among these. */
  get activeQueuePairs(): number {
    return this.#activePairs;
  }

  /** Frames sent and received per queue pair. */
  get queueStats(): { readonly rx: number[]; readonly tx: number[] } {
    return { rx: this.#pairs.map((p) => p.rxFrames), tx: this.#pairs.map((p) => p.txFrames) };
  }

  /** Control commands acked OK / refused. */
  get controlStats(): { readonly ok: number; readonly failed: number } {
    return { ...(this.#control?.stats ?? { ok: 0, failed: 0 }) };
  }

  /** The last receive failure (BAD_FRAME, or QUEUE_BROKEN for a receive queue), if any. */
  get lastRxError(): Error | undefined {
    return this.#lastRxError;
  }

  /** The last failure of a command the driver sent by itself (ANNOUNCE_ACK), if any. */
  get lastControlError(): Error | undefined {
    return this.#lastControlError;
  }

  /** Frames handed to the device and not yet used, plus those waiting for room, over all queues. */
  get txPending(): number {
    let n = 0;
    for (const p of this.#pairs) n += p.txInFlight.size + p.txBacklog.length;
    return n;
  }

  /** Calls `cb` with every received frame (Ethernet frame without the virtio header). Returns an unsubscribe. */
  onFrame(cb: (frame: Uint8Array, info: NetRxInfo) => void): () => void {
    this.#frameHandlers.add(cb);
    return () => this.#frameHandlers.delete(cb);
  }

  /** Calls `cb` when the link status changes. Returns an unsubscribe. */
  onLinkChange(cb: (up: boolean) => void): () => void {
    this.#linkHandlers.add(cb);
    return () => this.#linkHandlers.delete(cb);
  }

  /**
   * Calls `cb` when the device asks the driver to announce itself (VIRTIO_NET_S_ANNOUNCE, e.g. after a
   * migration; Linux sends gratuitous ARPs through netdev_notify_peers): `cb` sends what it wants, and the
   * driver then acknowledges with VIRTIO_NET_CTRL_ANNOUNCE_ACK. Returns an unsubscribe.
   */
  onAnnounce(cb: () => void): () => void {
    this.#announceHandlers.add(cb);
    return () => this.#announceHandlers.delete(cb);
  }

  /**
   * Transmits one Ethernet frame; resolves when the device has taken it (used the buffer). The queue pair is
   * `options.queue`, or chosen by the frame's flow hash among the active pairs (Linux skb_tx_hash).
   */
  send(frame: Uint8Array, offload?: NetTxOffload, options: NetSendOptions = {}): Promise<void> {
    this.#checkLive();
    const max =
      offload?.gso === undefined ? Math.min(NET_MAX_FRAME, this.mtu + ETH_VLAN_OVERHEAD) : NET_MAX_FRAME;
    if (frame.length < NET_MIN_FRAME || frame.length > max) {
      throw new NetDriverError(
        'INVALID_ARGUMENT',
        `frame of ${frame.length} bytes is not ${NET_MIN_FRAME}..${max}`,
        frame.length,
      );
    }
    const queue = options.queue;
    if (queue !== undefined && (!Number.isInteger(queue) || queue < 0 || queue >= this.#activePairs)) {
      throw new NetDriverError(
        'INVALID_ARGUMENT',
        `transmit queue ${queue} is not one of the ${this.#activePairs} active pairs`,
        queue,
      );
    }
    const pair = this.#pairs[queue ?? (this.#activePairs === 1 ? 0 : flowHash(frame) % this.#activePairs)];
    if (pair === undefined) throw new NetDriverError('NOT_BOUND', `${this.dev.name}: no transmit queue`, 0);
    const len = NET_HDR_SIZE + frame.length;
    const hdr = new Uint8Array(NET_HDR_SIZE);
    fillNetHeader(hdr, frame.length, offload, (bit) => this.dev.hasFeature(bit));
    const addr = this.allocator.alloc(len, 16);
    this.memory.write(addr, hdr);
    this.memory.write(addr + NET_HDR_SIZE, frame);
    return new Promise<void>((resolve, reject) => {
      const req: TxRequest = {
        addr,
        len,
        resolve: () => {
          this.allocator.free(addr);
          this.stats.txFrames++;
          pair.txFrames++;
          resolve();
        },
        reject: (e) => {
          this.allocator.free(addr);
          reject(e);
        },
      };
      if (pair.txBacklog.length !== 0 || !this.#addTx(pair, req)) pair.txBacklog.push(req);
    });
  }

  // ---- control queue commands ----

  /** Switches receive modes (VIRTIO_NET_CTRL_RX), one command per given field, in declaration order. */
  async setRxMode(mode: NetRxMode): Promise<void> {
    const control = this.#needControl(NetFeature.VIRTIO_NET_F_CTRL_RX, 'VIRTIO_NET_F_CTRL_RX');
    for (const [key, command, extra] of RX_MODE_COMMANDS) {
      const on = mode[key];
      if (on === undefined) continue;
      if (extra && !this.dev.hasFeature(NetFeature.VIRTIO_NET_F_CTRL_RX_EXTRA)) {
        throw new NetDriverError('UNSUPPORTED', `rx mode ${key} needs VIRTIO_NET_F_CTRL_RX_EXTRA`, key);
      }
      await control.send(NetCtrlClass.RX, command, Uint8Array.of(on ? 1 : 0));
    }
  }

  /** Promiscuous mode on or off (VIRTIO_NET_CTRL_RX_PROMISC). */
  setPromiscuous(on: boolean): Promise<void> {
    return this.setRxMode({ promiscuous: on });
  }

  /** All-multicast on or off (VIRTIO_NET_CTRL_RX_ALLMULTI). */
  setAllMulticast(on: boolean): Promise<void> {
    return this.setRxMode({ allMulticast: on });
  }

  /** Sets the device's MAC address (VIRTIO_NET_CTRL_MAC_ADDR_SET; Linux virtnet_set_mac_address). */
  async setMacAddress(mac: Uint8Array | string): Promise<void> {
    const control = this.#needControl(NetFeature.VIRTIO_NET_F_CTRL_MAC_ADDR, 'VIRTIO_NET_F_CTRL_MAC_ADDR');
    const bytes = parseMac(mac);
    if (((bytes[0] as number) & 1) !== 0) {
      throw new NetDriverError('INVALID_ARGUMENT', `${formatMac(bytes)} is a multicast address`, mac);
    }
    await control.send(NetCtrlClass.MAC, NetCtrlMac.ADDR_SET, bytes);
    this.#mac = bytes;
  }

  /**
   * Replaces the MAC filter tables (VIRTIO_NET_CTRL_MAC_TABLE_SET, as Linux virtnet_set_rx_mode sends them): the
   * unicast addresses accepted besides the device's own, and the multicast addresses.
   */
  async setMacFilter(
    unicast: readonly (Uint8Array | string)[],
    multicast: readonly (Uint8Array | string)[],
  ): Promise<void> {
    const control = this.#needControl(NetFeature.VIRTIO_NET_F_CTRL_RX, 'VIRTIO_NET_F_CTRL_RX');
    const table = (macs: readonly (Uint8Array | string)[]): Uint8Array => {
      const out = new Uint8Array(MAC_TABLE_ENTRIES_HEADER + MAC_ADDRESS_BYTES * macs.length);
      new DataView(out.buffer).setUint32(0, macs.length, true);
      macs.forEach((m, i) => {
        out.set(parseMac(m), MAC_TABLE_ENTRIES_HEADER + MAC_ADDRESS_BYTES * i);
      });
      return out;
    };
    const uni = table(unicast);
    const multi = table(multicast);
    const data = new Uint8Array(uni.length + multi.length);
    data.set(uni, 0);
    data.set(multi, uni.length);
    await control.send(NetCtrlClass.MAC, NetCtrlMac.TABLE_SET, data);
  }

  /** Accepts frames tagged with VLAN `id` (VIRTIO_NET_CTRL_VLAN_ADD; Linux ndo_vlan_rx_add_vid). */
  addVlan(id: number): Promise<void> {
    return this.#vlan(NetCtrlVlan.ADD, id);
  }

  /** Stops accepting frames tagged with VLAN `id` (VIRTIO_NET_CTRL_VLAN_DEL). */
  removeVlan(id: number): Promise<void> {
    return this.#vlan(NetCtrlVlan.DEL, id);
  }

  /**
   * Switches receive offloads at run time (VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET; Linux virtnet_set_guest_offloads):
   * only negotiated GUEST_* features may be turned on; absent fields are turned off.
   */
  async setReceiveOffloads(offloads: NetRxOffloads): Promise<void> {
    const control = this.#needControl(
      NetFeature.VIRTIO_NET_F_CTRL_GUEST_OFFLOADS,
      'VIRTIO_NET_F_CTRL_GUEST_OFFLOADS',
    );
    const wanted: [boolean | undefined, number][] = [
      [offloads.csum, NetFeature.VIRTIO_NET_F_GUEST_CSUM],
      [offloads.tso4, NetFeature.VIRTIO_NET_F_GUEST_TSO4],
      [offloads.tso6, NetFeature.VIRTIO_NET_F_GUEST_TSO6],
      [offloads.ecn, NetFeature.VIRTIO_NET_F_GUEST_ECN],
      [offloads.ufo, NetFeature.VIRTIO_NET_F_GUEST_UFO],
    ];
    let bits = 0n;
    for (const [on, bit] of wanted) {
      if (on !== true) continue;
      if (!this.dev.hasFeature(bit)) {
        throw new NetDriverError('UNSUPPORTED', `receive offload feature ${bit} was not negotiated`, bit);
      }
      bits |= 1n << BigInt(bit);
    }
    const data = new Uint8Array(8);
    new DataView(data.buffer).setBigUint64(0, bits, true);
    await control.send(NetCtrlClass.GUEST_OFFLOADS, NetCtrlGuestOffloads.SET, data);
  }

  /**
   * Tells the device how many queue pairs to use (VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET; Linux virtnet_set_queues):
   * 1 .. {@link queuePairs}. Transmit spreads over the active pairs once the device has acked.
   */
  async setQueuePairs(pairs: number): Promise<void> {
    if (!Number.isInteger(pairs) || pairs < 1 || pairs > this.#pairs.length) {
      throw new NetDriverError(
        'INVALID_ARGUMENT',
        `queue pairs ${pairs} is not 1..${this.#pairs.length} (the pairs set up)`,
        pairs,
      );
    }
    const control = this.#needControl(NetFeature.VIRTIO_NET_F_MQ, 'VIRTIO_NET_F_MQ');
    const data = new Uint8Array(2);
    new DataView(data.buffer).setUint16(0, pairs, true);
    await control.send(NetCtrlClass.MQ, NetCtrlMq.VQ_PAIRS_SET, data);
    this.#activePairs = pairs;
  }

  // ---- driver internals ----

  /** @internal */
  _setQueues(
    pairs: readonly { rxq: Virtqueue; txq: Virtqueue }[],
    control: NetControlQueue | undefined,
  ): void {
    this.#pairs = pairs.map((p, index) => ({
      index,
      rxq: p.rxq as Virtqueue<RxBuffer>,
      txq: p.txq as Virtqueue<TxRequest>,
      rxBuffers: new Set(),
      txInFlight: new Set(),
      txBacklog: [],
      txKickPending: false,
      partial: undefined,
      rxFrames: 0,
      txFrames: 0,
    }));
    this.#control = control;
  }

  /** @internal Fills every receive ring (Linux try_fill_recv): one buffer per free descriptor. */
  _fillRx(): void {
    for (const pair of this.#pairs) {
      const vq = pair.rxq;
      let added = false;
      while (vq.numFree > 0) {
        const addr = this.allocator.tryAlloc(this.rxBufferSize, 64);
        if (addr < 0) break;
        const buf = { addr, len: this.rxBufferSize };
        pair.rxBuffers.add(buf);
        vq.addInbuf([buf], buf);
        added = true;
      }
      if (added) vq.kick();
    }
  }

  /** @internal Receive interrupt of pair `index`: deliver frames, put the buffers back. */
  _rxDone(index: number): void {
    const pair = this.#pairs[index];
    if (pair === undefined) return;
    const vq = pair.rxq;
    try {
      do {
        vq.disableCb();
        let used;
        while ((used = vq.getBuf()) !== null) {
          this.#receive(pair, used.token, used.len);
          vq.addInbuf([used.token], used.token);
        }
      } while (!vq.enableCb());
      vq.kick();
    } catch (e) {
      this.stats.rxErrors++;
      pair.partial = undefined;
      this.#lastRxError = this.#brokenError(vq, e);
    }
  }

  /** @internal Transmit interrupt of pair `index`: complete used frames, then add waiting ones. */
  _txDone(index: number): void {
    const pair = this.#pairs[index];
    if (pair === undefined) return;
    const vq = pair.txq;
    try {
      do {
        vq.disableCb();
        let used;
        while ((used = vq.getBuf()) !== null) {
          pair.txInFlight.delete(used.token);
          used.token.resolve();
        }
      } while (!vq.enableCb());
    } catch (e) {
      this.#failTx(pair, this.#brokenError(vq, e));
      return;
    }
    while (pair.txBacklog.length !== 0) {
      if (!this.#addTx(pair, pair.txBacklog[0] as TxRequest)) return;
      pair.txBacklog.shift();
    }
  }

  /** @internal New link status. */
  _setLink(up: boolean): void {
    if (up === this.#linkUp) return;
    this.#linkUp = up;
    for (const cb of this.#linkHandlers) cb(up);
  }

  /** @internal The device set VIRTIO_NET_S_ANNOUNCE: tell the handlers, then acknowledge (Linux virtnet_config_changed_work). */
  async _announce(): Promise<void> {
    if (this.#announcing) return;
    this.#announcing = true;
    try {
      await this.#announceOnce();
    } catch (e) {
      this.#lastControlError = e instanceof Error ? e : new Error(String(e));
    } finally {
      this.#announcing = false;
    }
  }

  async #announceOnce(): Promise<void> {
    for (const cb of this.#announceHandlers) {
      try {
        cb();
      } catch {
        // a handler's failure is its own
      }
    }
    const control = this.#needControl(NetFeature.VIRTIO_NET_F_GUEST_ANNOUNCE, 'VIRTIO_NET_F_GUEST_ANNOUNCE');
    await control.send(NetCtrlClass.ANNOUNCE, NetCtrlAnnounce.ACK, new Uint8Array(0));
    this.stats.announces++;
  }

  /** @internal Device removed: pending sends and commands fail. */
  _remove(error: NetDriverError): void {
    this.#removed ??= error;
    for (const pair of this.#pairs) this.#failTx(pair, error);
    this.#control?._fail(error);
  }

  /** @internal After reset: buffers back to the allocator. */
  _releaseAll(): void {
    for (const pair of this.#pairs) {
      while (pair.txq.detachUnusedBuf() !== null) {
        // already failed by _remove
      }
      while (pair.rxq.detachUnusedBuf() !== null) {
        // freed below
      }
      for (const b of pair.rxBuffers) this.allocator.free(b.addr);
      pair.rxBuffers.clear();
    }
    if (this.#control !== undefined) {
      while (this.#control.queue.detachUnusedBuf() !== null) {
        // its request was failed by _remove and freed its buffer
      }
    }
  }

  #receive(pair: QueuePair, buf: RxBuffer, len: number): void {
    if (len > buf.len) {
      this.#dropFrame(pair, `used length ${len} beyond the ${buf.len}-byte buffer`);
      return;
    }
    const bytes = this.memory.slice(buf.addr, len);
    const partial = pair.partial;
    if (partial !== undefined) {
      partial.parts.push(bytes.slice());
      if (--partial.left === 0) {
        pair.partial = undefined;
        this.#deliver(pair, concat(partial.parts), partial.info);
      }
      return;
    }
    if (len < NET_HDR_SIZE) {
      this.#dropFrame(pair, `used length ${len} is shorter than the header`);
      return;
    }
    const info = parseNetHeader(bytes, this.mergeable, pair.index);
    if (info.numBuffers === 0 || (this.mergeable && info.numBuffers > pair.rxq.size)) {
      this.#dropFrame(pair, `num_buffers ${info.numBuffers}`);
      return;
    }
    const first = bytes.slice(NET_HDR_SIZE);
    if (info.numBuffers === 1) this.#deliver(pair, first, info);
    else pair.partial = { parts: [first], left: info.numBuffers - 1, info };
  }

  #deliver(pair: QueuePair, frame: Uint8Array, info: NetRxInfo): void {
    this.stats.rxFrames++;
    pair.rxFrames++;
    for (const cb of this.#frameHandlers) {
      try {
        cb(frame, info);
      } catch {
        // a handler's failure is its own
      }
    }
  }

  #dropFrame(pair: QueuePair, why: string): void {
    this.stats.rxErrors++;
    pair.partial = undefined;
    this.#lastRxError = new NetDriverError(
      'BAD_FRAME',
      `${this.dev.name}: dropped a frame received on queue pair ${pair.index}: ${why}`,
      why,
    );
  }

  #addTx(pair: QueuePair, req: TxRequest): boolean {
    const vq = pair.txq;
    try {
      vq.addOutbuf([{ addr: req.addr, len: req.len }], req);
    } catch (e) {
      if (e instanceof UsageError && e.code === 'QUEUE_FULL') return false;
      req.reject(this.#brokenError(vq, e));
      return true;
    }
    pair.txInFlight.add(req);
    if (!pair.txKickPending) {
      pair.txKickPending = true;
      queueMicrotask(() => {
        pair.txKickPending = false;
        if (!vq.isBroken()) vq.kick();
      });
    }
    return true;
  }

  #failTx(pair: QueuePair, error: NetDriverError): void {
    for (const req of [...pair.txInFlight, ...pair.txBacklog.splice(0)]) {
      pair.txInFlight.delete(req);
      req.reject(error);
    }
  }

  #vlan(command: number, id: number): Promise<void> {
    const control = this.#needControl(NetFeature.VIRTIO_NET_F_CTRL_VLAN, 'VIRTIO_NET_F_CTRL_VLAN');
    if (!Number.isInteger(id) || id < 0 || id > VLAN_ID_MAX) {
      throw new NetDriverError('INVALID_ARGUMENT', `VLAN id ${id} is not 0..${VLAN_ID_MAX}`, id);
    }
    const data = new Uint8Array(2);
    new DataView(data.buffer).setUint16(0, id, true);
    return control.send(NetCtrlClass.VLAN, command, data);
  }

  #needControl(bit: number, name: string): NetControlQueue {
    this.#checkLive();
    const control = this.#control;
    if (control === undefined || !this.dev.hasFeature(bit)) {
      throw new NetDriverError('UNSUPPORTED', `${this.dev.name}: ${name} was not negotiated`, bit);
    }
    return control;
  }

  /** @internal Also used for the control queue. */
  _brokenError(vq: Virtqueue, cause: unknown): NetDriverError {
    return this.#brokenError(vq, cause);
  }

  #brokenError(vq: Virtqueue, cause: unknown = vq.brokenReason): NetDriverError {
    return new NetDriverError('QUEUE_BROKEN', queueBrokenMessage(this.dev, vq.name, cause), vq.index, {
      cause,
    });
  }

  #checkLive(): void {
    if (this.#removed !== undefined) throw this.#removed;
  }
}

function concat(parts: readonly Uint8Array[]): Uint8Array {
  let n = 0;
  for (const p of parts) n += p.length;
  const out = new Uint8Array(n);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** `aa:bb:cc:dd:ee:ff` */
export function formatMac(mac: Uint8Array): string {
  return [...mac].map((b) => b.toString(16).padStart(2, '0')).join(':');
}

/** Six bytes from a MAC given as bytes or as `aa:bb:cc:dd:ee:ff`. */
export function parseMac(mac: Uint8Array | string): Uint8Array {
  if (typeof mac !== 'string') {
    if (mac.length !== MAC_ADDRESS_BYTES) {
      throw new NetDriverError(
        'INVALID_ARGUMENT',
        `a MAC address has 6 bytes, not ${mac.length}`,
        mac.length,
      );
    }
    return mac.slice();
  }
  const parts = mac.split(':');
  if (parts.length !== MAC_ADDRESS_BYTES || parts.some((p) => !/^[0-9a-fA-F]{2}$/.test(p))) {
    throw new NetDriverError('INVALID_ARGUMENT', `${JSON.stringify(mac)} is not a MAC address`, mac);
  }
  return Uint8Array.from(parts.map((p) => parseInt(p, 16)));
}
