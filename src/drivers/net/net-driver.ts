/**
 * # virtio-net driver (VIRTIO 1.2 §5.1, after Linux drivers/net/virtio_net.c)
 *
 * `VirtioNetDriver` registers on a {@link VirtioBus} (id table: device 1, any vendor) and works on any transport
 * that implements the driver model's config ops. One queue pair: receiveq1 (queue 0) and transmitq1 (queue 1);
 * no control queue, no multiqueue.
 *
 * - **Identity and link**: the MAC from the configuration (VIRTIO_NET_F_MAC; without it a locally administered
 *   random one, as Linux eth_hw_addr_random), link status (VIRTIO_NET_F_STATUS; without it the link is up),
 *   re-read on every configuration-change interrupt.
 * - **Transmit** (`send(frame, offload?)`): each frame goes out behind a 12-byte `virtio_net_hdr_mrg_rxbuf`
 *   (VERSION_1 always uses it; num_buffers is 0 on transmit), header and frame in one device-readable buffer
 *   from the allocator, freed when the device has used it. Header fields as Linux xmit_skb →
 *   virtio_net_hdr_from_skb fills them: a checksum left to the device (`offload.checksum`, the skb's
 *   CHECKSUM_PARTIAL) sets NEEDS_CSUM with csum_start/csum_offset, only when VIRTIO_NET_F_CSUM was negotiated; a
 *   GSO frame (`offload.gso`) sets gso_type (TCPV4, TCPV6, UDP_L4, + ECN), gso_size and hdr_len, only with the
 *   matching HOST_TSO4/HOST_TSO6/HOST_USO feature and a checksum offload; otherwise flags 0 and GSO_NONE. A full
 *   ring queues frames in a backlog; kicks are coalesced per microtask.
 * - **Receive**: the ring is kept stocked with device-writable buffers. Without VIRTIO_NET_F_MRG_RXBUF each
 *   buffer holds the header and a whole frame (12 + 1518 bytes, Linux GOOD_PACKET_LEN); with it, buffers of
 *   `rxBufferSize` bytes and a frame may span `num_buffers` of them, reassembled in used order. Every frame is
 *   copied out, its buffers go straight back on the ring, and `onFrame` callbacks get the frame (without header)
 *   and the header's flags.
 *
 * Errors are {@link NetDriverError} with `code`: INVALID_ARGUMENT and UNSUPPORTED (thrown before sending),
 * QUEUE_BROKEN, REMOVED, NOT_BOUND, BAD_CONFIG, BAD_FRAME (the device's used buffers do not make up a frame:
 * counted in `stats.rxErrors`, the frame dropped).
 *
 * Offloads: QEMU offers CSUM/GSO only when the netdev peer takes a vnet header (tap); the stream netdev of the
 * tests does not, so the offload header paths are checked by header contents only (`fillNetHeader`).
 */
import { DriverError, boundData, queueBrokenMessage } from '../driver-error.js';
import type { VirtioBusDevice } from '../../virtio/driver/virtio-bus-device.js';
import { VIRTIO_DEV_ANY_ID, type VirtioDriver } from '../../virtio/driver/virtio-driver.js';
import type { Virtqueue } from '../../virtio/driver/virtqueue.js';
import {
  ETH_HEADER_SIZE,
  NET_CONFIG_MAC,
  NET_CONFIG_STATUS,
  NET_GOOD_PACKET_LEN,
  NET_HDR_SIZE,
  NET_MAX_FRAME,
  NetFeature,
  NetGsoType,
  NetHdr,
  VIRTIO_ID_NET,
  VIRTIO_NET_HDR_F_NEEDS_CSUM,
  VIRTIO_NET_S_LINK_UP,
} from '../../devices/net/net-layout.js';
import { UsageError } from '../../virtio/errors.js';
import type { GuestAllocator } from '../../virtio/guest-allocator.js';
import type { GuestMemory } from '../../virtio/guest-memory.js';

/** Smallest frame `send` accepts (an Ethernet header). */
export const NET_MIN_FRAME = ETH_HEADER_SIZE;

export type NetDriverErrorCode =
  'INVALID_ARGUMENT' | 'UNSUPPORTED' | 'QUEUE_BROKEN' | 'REMOVED' | 'NOT_BOUND' | 'BAD_CONFIG' | 'BAD_FRAME';

export class NetDriverError extends DriverError<NetDriverErrorCode> {}

/** What the caller asks the device to do for a frame (Linux: skb->ip_summed == CHECKSUM_PARTIAL, skb_is_gso). */
export interface NetTxOffload {
  /** Checksum from `start` to the end, stored at `start + offset` (csum_start, csum_offset). */
  readonly checksum?: { readonly start: number; readonly offset: number };
  /** Segmentation: `hdrLen` header bytes, `size` payload bytes per segment. */
  readonly gso?: {
    readonly type: 'tcpv4' | 'tcpv6' | 'udp_l4';
    readonly size: number;
    readonly hdrLen: number;
    readonly ecn?: boolean;
  };
}

/** A received frame's header flags (DATA_VALID / NEEDS_CSUM), with GUEST_CSUM only. */
export interface NetRxInfo {
  readonly flags: number;
  readonly gsoType: number;
  /** Buffers the frame spanned (1 without MRG_RXBUF). */
  readonly numBuffers: number;
}

/**
 * Writes the 12-byte transmit header at `into` (a view of at least {@link NET_HDR_SIZE} bytes) the way Linux
 * virtio_net_hdr_from_skb does, checking the offload against the negotiated features (`has(bit)`).
 */
export function fillNetHeader(
  into: Uint8Array,
  frameLength: number,
  offload: NetTxOffload | undefined,
  has: (bit: number) => boolean,
): void {
  const v = new DataView(into.buffer, into.byteOffset, NET_HDR_SIZE);
  into.fill(0, 0, NET_HDR_SIZE);
  const cs = offload?.checksum;
  if (cs !== undefined) {
    if (!has(NetFeature.VIRTIO_NET_F_CSUM)) {
      throw new NetDriverError('UNSUPPORTED', 'checksum offload without VIRTIO_NET_F_CSUM', cs);
    }
    if (
      !Number.isSafeInteger(cs.start) ||
      !Number.isSafeInteger(cs.offset) ||
      cs.start < 0 ||
      cs.offset < 0 ||
      cs.start + cs.offset + 2 > frameLength ||
      cs.start > 0xffff ||
      cs.offset > 0xffff
    ) {
      throw new NetDriverError(
        'INVALID_ARGUMENT',
        `checksum at ${cs.start}+${cs.offset} is outside the ${frameLength}-byte frame`,
        cs,
      );
    }
    v.setUint8(NetHdr.FLAGS, VIRTIO_NET_HDR_F_NEEDS_CSUM);
    v.setUint16(NetHdr.CSUM_START, cs.start, true);
    v.setUint16(NetHdr.CSUM_OFFSET, cs.offset, true);
  }
  const gso = offload?.gso;
  if (gso === undefined) {
    v.setUint8(NetHdr.GSO_TYPE, NetGsoType.NONE);
    return;
  }
  const [type, bit] =
    gso.type === 'tcpv4'
      ? [NetGsoType.TCPV4, NetFeature.VIRTIO_NET_F_HOST_TSO4]
      : gso.type === 'tcpv6'
        ? [NetGsoType.TCPV6, NetFeature.VIRTIO_NET_F_HOST_TSO6]
        : [NetGsoType.UDP_L4, NetFeature.VIRTIO_NET_F_HOST_USO];
  if (!has(bit)) throw new NetDriverError('UNSUPPORTED', `GSO ${gso.type} without feature ${bit}`, gso);
  if (gso.ecn === true && !has(NetFeature.VIRTIO_NET_F_HOST_ECN)) {
    throw new NetDriverError('UNSUPPORTED', 'GSO with ECN without VIRTIO_NET_F_HOST_ECN', gso);
  }
  if (cs === undefined) {
    throw new NetDriverError('INVALID_ARGUMENT', 'GSO needs a checksum offload (CHECKSUM_PARTIAL)', gso);
  }
  if (
    !Number.isSafeInteger(gso.size) ||
    gso.size <= 0 ||
    gso.size > 0xffff ||
    !Number.isSafeInteger(gso.hdrLen) ||
    gso.hdrLen <= 0 ||
    gso.hdrLen > frameLength
  ) {
    throw new NetDriverError('INVALID_ARGUMENT', `bad GSO size ${gso.size} / hdr_len ${gso.hdrLen}`, gso);
  }
  v.setUint8(NetHdr.GSO_TYPE, type | (gso.ecn === true ? NetGsoType.ECN : 0));
  v.setUint16(NetHdr.HDR_LEN, gso.hdrLen, true);
  v.setUint16(NetHdr.GSO_SIZE, gso.size, true);
}

interface TxRequest {
  readonly addr: number;
  readonly len: number;
  readonly resolve: () => void;
  readonly reject: (error: Error) => void;
}

/** A receive buffer on the ring; also its token. */
interface RxBuffer {
  readonly addr: number;
  readonly len: number;
}

export interface NetStats {
  txFrames: number;
  rxFrames: number;
  rxErrors: number;
}

/** A bound virtio-net device: its MAC, link, and frame I/O. */
export class VirtioNetInterface {
  readonly dev: VirtioBusDevice;
  readonly memory: GuestMemory;
  readonly allocator: GuestAllocator;
  /** The MAC address, as `52:54:00:12:34:56`. */
  readonly mac: string;
  readonly macBytes: Uint8Array;
  /** Whether frames may span several receive buffers (VIRTIO_NET_F_MRG_RXBUF). */
  readonly mergeable: boolean;
  /** Bytes per receive buffer (header included). */
  readonly rxBufferSize: number;
  readonly stats: NetStats = { txFrames: 0, rxFrames: 0, rxErrors: 0 };
  #linkUp: boolean;
  #rxq: Virtqueue<RxBuffer> | undefined;
  #txq: Virtqueue<TxRequest> | undefined;
  readonly #txInFlight = new Set<TxRequest>();
  readonly #txBacklog: TxRequest[] = [];
  #txKickPending = false;
  readonly #rxBuffers: RxBuffer[] = [];
  /** A frame being reassembled from merged buffers. */
  #partial: { parts: Uint8Array[]; left: number; info: NetRxInfo } | undefined;
  readonly #frameHandlers = new Set<(frame: Uint8Array, info: NetRxInfo) => void>();
  readonly #linkHandlers = new Set<(up: boolean) => void>();
  #removed: NetDriverError | undefined;
  #lastRxError: Error | undefined;

  /** @internal made by the driver's probe */
  constructor(dev: VirtioBusDevice, init: { mac: Uint8Array; linkUp: boolean; rxBufferSize: number }) {
    this.dev = dev;
    this.memory = dev.ops.memory;
    this.allocator = dev.ops.allocator;
    this.macBytes = init.mac;
    this.mac = formatMac(init.mac);
    this.#linkUp = init.linkUp;
    this.mergeable = dev.hasFeature(NetFeature.VIRTIO_NET_F_MRG_RXBUF);
    this.rxBufferSize = init.rxBufferSize;
  }

  get linkUp(): boolean {
    return this.#linkUp;
  }

  /** The last receive failure (BAD_FRAME, or QUEUE_BROKEN for the receive queue), if any. */
  get lastRxError(): Error | undefined {
    return this.#lastRxError;
  }

  /** Frames handed to the device and not yet used, plus those waiting for room. */
  get txPending(): number {
    return this.#txInFlight.size + this.#txBacklog.length;
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

  /** Transmits one Ethernet frame; resolves when the device has taken it (used the buffer). */
  send(frame: Uint8Array, offload?: NetTxOffload): Promise<void> {
    this.#checkLive();
    if (frame.length < NET_MIN_FRAME || (frame.length > NET_MAX_FRAME && offload?.gso === undefined)) {
      throw new NetDriverError(
        'INVALID_ARGUMENT',
        `frame of ${frame.length} bytes is not ${NET_MIN_FRAME}..${NET_MAX_FRAME}`,
        frame.length,
      );
    }
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
          resolve();
        },
        reject: (e) => {
          this.allocator.free(addr);
          reject(e);
        },
      };
      if (this.#txBacklog.length !== 0 || !this.#addTx(req)) this.#txBacklog.push(req);
    });
  }

  // ---- driver internals ----

  /** @internal */
  _setQueues(rxq: Virtqueue, txq: Virtqueue): void {
    this.#rxq = rxq as Virtqueue<RxBuffer>;
    this.#txq = txq as Virtqueue<TxRequest>;
  }

  /** @internal Fills the receive ring (Linux try_fill_recv): one buffer per free descriptor. */
  _fillRx(): void {
    const vq = this.#rxq;
    if (vq === undefined) return;
    let added = false;
    while (vq.numFree > 0) {
      const addr = this.allocator.tryAlloc(this.rxBufferSize, 64);
      if (addr < 0) break;
      const buf = { addr, len: this.rxBufferSize };
      this.#rxBuffers.push(buf);
      vq.addInbuf([buf], buf);
      added = true;
    }
    if (added) vq.kick();
  }

  /** @internal Receive interrupt: deliver frames, put the buffers back. */
  _rxDone(vq: Virtqueue<RxBuffer>): void {
    try {
      do {
        vq.disableCb();
        let used;
        while ((used = vq.getBuf()) !== null) {
          this.#receive(used.token, used.len);
          vq.addInbuf([used.token], used.token);
        }
      } while (!vq.enableCb());
      vq.kick();
    } catch (e) {
      this.#rxFailed(e);
    }
  }

  /** @internal Transmit interrupt: complete used frames, then add waiting ones. */
  _txDone(vq: Virtqueue<TxRequest>): void {
    try {
      do {
        vq.disableCb();
        let used;
        while ((used = vq.getBuf()) !== null) {
          this.#txInFlight.delete(used.token);
          used.token.resolve();
        }
      } while (!vq.enableCb());
    } catch (e) {
      this.#failTx(this.#brokenError(vq, e));
      return;
    }
    while (this.#txBacklog.length !== 0) {
      if (!this.#addTx(this.#txBacklog[0] as TxRequest)) return;
      this.#txBacklog.shift();
    }
  }

  /** @internal New link status. */
  _setLink(up: boolean): void {
    if (up === this.#linkUp) return;
    this.#linkUp = up;
    for (const cb of this.#linkHandlers) cb(up);
  }

  /** @internal Device removed: pending sends fail. */
  _remove(error: NetDriverError): void {
    this.#removed ??= error;
    this.#failTx(error);
  }

  /** @internal After reset: receive buffers back to the allocator. */
  _releaseAll(): void {
    while (this.#txq !== undefined && this.#txq.detachUnusedBuf() !== null) {
      // already failed by _remove
    }
    while (this.#rxq !== undefined && this.#rxq.detachUnusedBuf() !== null) {
      // freed below
    }
    for (const b of this.#rxBuffers.splice(0)) this.allocator.free(b.addr);
  }

  #receive(buf: RxBuffer, len: number): void {
    if (len > buf.len) {
      this.#dropFrame(`used length ${len} beyond the ${buf.len}-byte buffer`);
      return;
    }
    const bytes = this.memory.slice(buf.addr, len);
    const partial = this.#partial;
    if (partial !== undefined) {
      partial.parts.push(bytes.slice());
      if (--partial.left === 0) {
        this.#partial = undefined;
        this.#deliver(concat(partial.parts), partial.info);
      }
      return;
    }
    if (len < NET_HDR_SIZE) {
      this.#dropFrame(`used length ${len} is shorter than the header`);
      return;
    }
    const v = new DataView(bytes.buffer, bytes.byteOffset, NET_HDR_SIZE);
    const numBuffers = this.mergeable ? v.getUint16(NetHdr.NUM_BUFFERS, true) : 1;
    const info: NetRxInfo = {
      flags: v.getUint8(NetHdr.FLAGS),
      gsoType: v.getUint8(NetHdr.GSO_TYPE),
      numBuffers,
    };
    if (numBuffers === 0 || (this.mergeable && numBuffers > (this.#rxq?.size ?? 0))) {
      this.#dropFrame(`num_buffers ${numBuffers}`);
      return;
    }
    const first = bytes.slice(NET_HDR_SIZE);
    if (numBuffers === 1) this.#deliver(first, info);
    else this.#partial = { parts: [first], left: numBuffers - 1, info };
  }

  #deliver(frame: Uint8Array, info: NetRxInfo): void {
    this.stats.rxFrames++;
    for (const cb of this.#frameHandlers) {
      try {
        cb(frame, info);
      } catch {
        // a handler's failure is its own
      }
    }
  }

  #dropFrame(why: string): void {
    this.stats.rxErrors++;
    this.#partial = undefined;
    this.#lastRxError = new NetDriverError(
      'BAD_FRAME',
      `${this.dev.name}: dropped a received frame: ${why}`,
      why,
    );
  }

  #rxFailed(e: unknown): void {
    this.stats.rxErrors++;
    this.#partial = undefined;
    const vq = this.#rxq;
    this.#lastRxError = vq === undefined ? toError(e) : this.#brokenError(vq, e);
  }

  #addTx(req: TxRequest): boolean {
    const vq = this.#txq;
    if (vq === undefined) {
      req.reject(new NetDriverError('NOT_BOUND', `${this.dev.name}: no transmit queue`, 0));
      return true;
    }
    try {
      vq.addOutbuf([{ addr: req.addr, len: req.len }], req);
    } catch (e) {
      if (e instanceof UsageError && e.code === 'QUEUE_FULL') return false;
      req.reject(this.#brokenError(vq, e));
      return true;
    }
    this.#txInFlight.add(req);
    if (!this.#txKickPending) {
      this.#txKickPending = true;
      queueMicrotask(() => {
        this.#txKickPending = false;
        if (!vq.isBroken()) vq.kick();
      });
    }
    return true;
  }

  #failTx(error: NetDriverError): void {
    for (const req of [...this.#txInFlight, ...this.#txBacklog.splice(0)]) {
      this.#txInFlight.delete(req);
      req.reject(error);
    }
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

function toError(e: unknown): Error {
  return e instanceof Error ? e : new Error(String(e));
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

function formatMac(mac: Uint8Array): string {
  return [...mac].map((b) => b.toString(16).padStart(2, '0')).join(':');
}

export interface VirtioNetDriverOptions {
  /** Receive buffer size with MRG_RXBUF, header included (default 1536; at least 64). */
  readonly rxBufferSize?: number;
  /** Ring size per queue (default: the device's maximum). */
  readonly queueSize?: number;
  /** Offer to negotiate MRG_RXBUF (default true). */
  readonly mergeable?: boolean;
}

/** The virtio-net driver; one instance serves any number of devices. */
export class VirtioNetDriver implements VirtioDriver {
  readonly name = 'virtio-net';
  readonly idTable = [{ device: VIRTIO_ID_NET, vendor: VIRTIO_DEV_ANY_ID }];
  readonly featureTable: readonly number[];
  readonly #options: VirtioNetDriverOptions;

  constructor(options: VirtioNetDriverOptions = {}) {
    this.#options = options;
    const size = options.rxBufferSize;
    if (size !== undefined && (!Number.isSafeInteger(size) || size < 64 || size > 65536)) {
      throw new NetDriverError('INVALID_ARGUMENT', `rxBufferSize ${size} is not 64..65536`, size);
    }
    this.featureTable = [
      NetFeature.VIRTIO_NET_F_CSUM,
      NetFeature.VIRTIO_NET_F_MTU,
      NetFeature.VIRTIO_NET_F_MAC,
      NetFeature.VIRTIO_NET_F_HOST_TSO4,
      NetFeature.VIRTIO_NET_F_HOST_TSO6,
      NetFeature.VIRTIO_NET_F_HOST_ECN,
      NetFeature.VIRTIO_NET_F_STATUS,
      NetFeature.VIRTIO_NET_F_HOST_USO,
      ...(options.mergeable === false ? [] : [NetFeature.VIRTIO_NET_F_MRG_RXBUF]),
    ];
  }

  /** The interface of a device this driver is bound to. */
  net(dev: VirtioBusDevice): VirtioNetInterface {
    return boundData(
      dev,
      this,
      VirtioNetInterface,
      (message, options) => new NetDriverError('NOT_BOUND', message, dev.index, options),
    );
  }

  validate(dev: VirtioBusDevice): void {
    // Segmentation offloads need the device to checksum (Linux: no TSO without NETIF_F_HW_CSUM).
    if (!dev.hasFeature(NetFeature.VIRTIO_NET_F_CSUM)) {
      for (const bit of [
        NetFeature.VIRTIO_NET_F_HOST_TSO4,
        NetFeature.VIRTIO_NET_F_HOST_TSO6,
        NetFeature.VIRTIO_NET_F_HOST_ECN,
        NetFeature.VIRTIO_NET_F_HOST_USO,
      ]) {
        if (dev.hasFeature(bit)) dev.clearFeature(bit);
      }
    }
  }

  async probe(dev: VirtioBusDevice): Promise<void> {
    let mac: Uint8Array;
    if (dev.hasFeature(NetFeature.VIRTIO_NET_F_MAC)) {
      mac = await dev.readConfigStable(NET_CONFIG_MAC, 6);
    } else {
      mac = new Uint8Array(6);
      crypto.getRandomValues(mac);
      mac[0] = ((mac[0] as number) & 0xfe) | 0x02; // unicast, locally administered
    }
    const linkUp = dev.hasFeature(NetFeature.VIRTIO_NET_F_STATUS)
      ? ((await dev.readConfigU16(NET_CONFIG_STATUS)) & VIRTIO_NET_S_LINK_UP) !== 0
      : true;
    const mergeable = dev.hasFeature(NetFeature.VIRTIO_NET_F_MRG_RXBUF);
    const rxBufferSize = mergeable
      ? (this.#options.rxBufferSize ?? 1536)
      : NET_HDR_SIZE + NET_GOOD_PACKET_LEN;
    const net = new VirtioNetInterface(dev, { mac, linkUp, rxBufferSize });
    const size = this.#options.queueSize;
    const sized = size === undefined ? {} : { size };
    const vqs = await dev.findVqs([
      {
        name: 'rx0',
        callback: (vq) => {
          net._rxDone(vq as Virtqueue<RxBuffer>);
        },
        ...sized,
      },
      {
        name: 'tx0',
        callback: (vq) => {
          net._txDone(vq as Virtqueue<TxRequest>);
        },
        ...sized,
      },
    ]);
    const [rxq, txq] = vqs;
    if (rxq === null || rxq === undefined || txq === null || txq === undefined) {
      throw new NetDriverError('BAD_CONFIG', `${dev.name}: receive/transmit queues missing`, vqs.length);
    }
    if (mergeable && rxq.size * (rxBufferSize - NET_HDR_SIZE) < NET_GOOD_PACKET_LEN) {
      throw new NetDriverError(
        'BAD_CONFIG',
        `${dev.name}: ${rxq.size} receive buffers of ${rxBufferSize} bytes cannot hold one full-size frame`,
        rxq.size,
      );
    }
    net._setQueues(rxq, txq);
    dev.driverData = net;
    await dev.ready();
    net._fillRx();
  }

  async remove(dev: VirtioBusDevice): Promise<void> {
    const net = dev.driverData instanceof VirtioNetInterface ? dev.driverData : undefined;
    await dev.reset();
    net?._remove(new NetDriverError('REMOVED', `${dev.name} was removed`, dev.index));
    net?._releaseAll();
    await dev.delVqs();
  }

  configChanged(dev: VirtioBusDevice): void {
    const net = dev.driverData instanceof VirtioNetInterface ? dev.driverData : undefined;
    if (net === undefined || !dev.hasFeature(NetFeature.VIRTIO_NET_F_STATUS)) return;
    void dev.readConfigU16(NET_CONFIG_STATUS).then(
      (status) => {
        net._setLink((status & VIRTIO_NET_S_LINK_UP) !== 0);
      },
      () => undefined,
    );
  }
}
