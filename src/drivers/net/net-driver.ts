/**
 * # virtio-net driver (VIRTIO 1.2 §5.1, after Linux drivers/net/virtio_net.c)
 *
 * `VirtioNetDriver` registers on a {@link VirtioBus} (id table: device 1, any vendor) and works on any transport
 * that implements the driver model's config ops. The bound device's API is a {@link VirtioNetInterface}
 * (`driver.net(dev)`, src/drivers/net/net-interface.ts).
 *
 * - **Queues** (§5.1.2): receiveq1, transmitq1, …, receiveqN, transmitqN, then the control queue at index
 *   2 × max_virtqueue_pairs (VIRTIO_NET_F_CTRL_VQ). With VIRTIO_NET_F_MQ the driver sets up
 *   min(max_virtqueue_pairs, `queuePairs`) pairs (Linux: min(max, online CPUs)) and, after DRIVER_OK, tells the
 *   device with VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET; every receive queue is stocked and served, transmit picks a
 *   pair by flow hash or by the caller's choice.
 * - **Identity and link**: the MAC from the configuration (VIRTIO_NET_F_MAC; without it a locally administered
 *   random one, as Linux eth_hw_addr_random), link status (VIRTIO_NET_F_STATUS; without it the link is up) and
 *   VIRTIO_NET_S_ANNOUNCE (GUEST_ANNOUNCE: `onAnnounce` handlers run, then ANNOUNCE_ACK), re-read on every
 *   configuration-change interrupt; the MTU (VIRTIO_NET_F_MTU; below 68 the feature is dropped, as Linux does).
 * - **Transmit**: each frame goes out behind a 12-byte `virtio_net_hdr_mrg_rxbuf` filled as Linux xmit_skb →
 *   virtio_net_hdr_from_skb does (net-header.ts): checksum offload (CSUM) and segmentation (HOST_TSO4/6, HOST_USO,
 *   HOST_ECN) only when negotiated. A full ring queues frames in a per-queue backlog; kicks are coalesced per
 *   microtask.
 * - **Receive**: without VIRTIO_NET_F_MRG_RXBUF each buffer holds a whole frame (12 + 1518 bytes, Linux
 *   GOOD_PACKET_LEN; with receive segmentation offloads or an MTU above 1500, a whole super-frame: Linux's "big
 *   packets"); with it, buffers of `rxBufferSize` bytes and a frame may span `num_buffers` of them. Receive
 *   offloads GUEST_CSUM, GUEST_TSO4/6, GUEST_ECN, GUEST_UFO are negotiated unless `receiveOffloads: false`;
 *   `onFrame` gets each frame with its header fields (NEEDS_CSUM / DATA_VALID, gso_type, gso_size...).
 * - **Control queue** (net-control-queue.ts): rx mode (CTRL_RX: promiscuous, all-multicast; CTRL_RX_EXTRA), MAC
 *   address (CTRL_MAC_ADDR) and filter tables (MAC_TABLE_SET), VLAN filter (CTRL_VLAN), announce ack, queue pairs,
 *   guest offloads (CTRL_GUEST_OFFLOADS). The driver sends only VQ_PAIRS_SET (and announce acks) by itself; the
 *   device's filters stay as the device starts them until the caller changes them.
 *
 * Refused devices (probe fails with the reason): features that need the control queue offered without it
 * (Linux VIRTNET_FAIL_ON: CTRL_RX, CTRL_VLAN, GUEST_ANNOUNCE, MQ, CTRL_MAC_ADDR, CTRL_GUEST_OFFLOADS → BAD_FEATURES),
 * max_virtqueue_pairs outside 1..0x8000, missing queues, receive rings too small for one largest frame
 * (BAD_CONFIG). Offload features offered without the ones they depend on (§5.1.3.1) are not negotiated.
 *
 * Errors are {@link NetDriverError}; see net-driver-error.ts for the codes.
 */
import { boundData } from '../driver-error.js';
import type { VirtioBusDevice } from '../../virtio/driver/virtio-bus-device.js';
import { VIRTIO_DEV_ANY_ID, type VirtioDriver } from '../../virtio/driver/virtio-driver.js';
import type { VirtqueueSpec } from '../../virtio/driver/config-ops.js';
import type { Virtqueue } from '../../virtio/driver/virtqueue.js';
import {
  NET_CONFIG_MAC,
  NET_CONFIG_MAX_VIRTQUEUE_PAIRS,
  NET_CONFIG_MTU,
  NET_CONFIG_STATUS,
  NET_GOOD_PACKET_LEN,
  NET_HDR_SIZE,
  NetFeature,
  VIRTIO_ID_NET,
  VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MAX,
  VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MIN,
  VIRTIO_NET_S_ANNOUNCE,
  VIRTIO_NET_S_LINK_UP,
} from '../../devices/net/net-layout.js';
import { NetControlQueue } from './net-control-queue.js';
import { NetDriverError } from './net-driver-error.js';
import { VirtioNetInterface } from './net-interface.js';

export { NetDriverError, type NetDriverErrorCode } from './net-driver-error.js';
export { fillNetHeader, parseNetHeader, type NetRxInfo, type NetTxOffload } from './net-header.js';
export {
  NET_MIN_FRAME,
  VirtioNetInterface,
  formatMac,
  parseMac,
  type NetRxMode,
  type NetRxOffloads,
  type NetSendOptions,
  type NetStats,
} from './net-interface.js';

/** Queue pairs set up when the device offers more and the caller does not say (Linux: online CPUs). */
export const NET_DEFAULT_QUEUE_PAIRS = 8;
/** Linux ETH_MIN_MTU: a smaller VIRTIO_NET_F_MTU is ignored (virtnet_validate). */
export const NET_MIN_MTU = 68;
export const NET_DEFAULT_MTU = 1500;
/** Ethernet header + VLAN tag. */
const ETH_VLAN_HEADER = 18;
/** Largest IPv4/IPv6 packet a GSO super-frame carries (the 16-bit length field). */
const IP_MAX_PACKET = 65535;
/** Largest frame a device may hand over with receive segmentation offloads. */
export const NET_GSO_MAX_FRAME = ETH_VLAN_HEADER + IP_MAX_PACKET;
const DEFAULT_MERGEABLE_BUFFER = 1536;

/** Features that need the control queue (Linux virtnet_validate_features, VIRTNET_FAIL_ON). */
const NEEDS_CTRL_VQ: readonly [number, string][] = [
  [NetFeature.VIRTIO_NET_F_CTRL_RX, 'CTRL_RX'],
  [NetFeature.VIRTIO_NET_F_CTRL_VLAN, 'CTRL_VLAN'],
  [NetFeature.VIRTIO_NET_F_GUEST_ANNOUNCE, 'GUEST_ANNOUNCE'],
  [NetFeature.VIRTIO_NET_F_MQ, 'MQ'],
  [NetFeature.VIRTIO_NET_F_CTRL_MAC_ADDR, 'CTRL_MAC_ADDR'],
  [NetFeature.VIRTIO_NET_F_CTRL_GUEST_OFFLOADS, 'CTRL_GUEST_OFFLOADS'],
  [NetFeature.VIRTIO_NET_F_CTRL_RX_EXTRA, 'CTRL_RX_EXTRA'],
];

/** §5.1.3.1 feature dependencies: `bit` is not negotiated unless one of `needs` is. */
const NEEDS_ONE_OF: readonly [number, readonly number[]][] = [
  [NetFeature.VIRTIO_NET_F_HOST_TSO4, [NetFeature.VIRTIO_NET_F_CSUM]],
  [NetFeature.VIRTIO_NET_F_HOST_TSO6, [NetFeature.VIRTIO_NET_F_CSUM]],
  [NetFeature.VIRTIO_NET_F_HOST_USO, [NetFeature.VIRTIO_NET_F_CSUM]],
  [NetFeature.VIRTIO_NET_F_HOST_ECN, [NetFeature.VIRTIO_NET_F_HOST_TSO4, NetFeature.VIRTIO_NET_F_HOST_TSO6]],
  [NetFeature.VIRTIO_NET_F_GUEST_TSO4, [NetFeature.VIRTIO_NET_F_GUEST_CSUM]],
  [NetFeature.VIRTIO_NET_F_GUEST_TSO6, [NetFeature.VIRTIO_NET_F_GUEST_CSUM]],
  [NetFeature.VIRTIO_NET_F_GUEST_UFO, [NetFeature.VIRTIO_NET_F_GUEST_CSUM]],
  [
    NetFeature.VIRTIO_NET_F_GUEST_ECN,
    [NetFeature.VIRTIO_NET_F_GUEST_TSO4, NetFeature.VIRTIO_NET_F_GUEST_TSO6],
  ],
  [NetFeature.VIRTIO_NET_F_CTRL_RX_EXTRA, [NetFeature.VIRTIO_NET_F_CTRL_RX]],
];

const GUEST_GSO_BITS = [
  NetFeature.VIRTIO_NET_F_GUEST_TSO4,
  NetFeature.VIRTIO_NET_F_GUEST_TSO6,
  NetFeature.VIRTIO_NET_F_GUEST_UFO,
];

export interface VirtioNetDriverOptions {
  /** Receive buffer size with MRG_RXBUF, header included (default 1536; at least 64). */
  readonly rxBufferSize?: number;
  /** Ring size per queue (default: the device's maximum). */
  readonly queueSize?: number;
  /** Offer to negotiate MRG_RXBUF (default true). */
  readonly mergeable?: boolean;
  /** Most queue pairs to set up with VIRTIO_NET_F_MQ (default {@link NET_DEFAULT_QUEUE_PAIRS}). */
  readonly queuePairs?: number;
  /** Negotiate the control queue and the features that need it (default true). */
  readonly controlQueue?: boolean;
  /** Negotiate GUEST_CSUM, GUEST_TSO4/6, GUEST_ECN, GUEST_UFO (default true). */
  readonly receiveOffloads?: boolean;
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
    const pairs = options.queuePairs;
    if (
      pairs !== undefined &&
      (!Number.isSafeInteger(pairs) || pairs < 1 || pairs > VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MAX)
    ) {
      throw new NetDriverError(
        'INVALID_ARGUMENT',
        `queuePairs ${pairs} is not 1..${VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MAX}`,
        pairs,
      );
    }
    const control = options.controlQueue !== false;
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
      ...(options.receiveOffloads === false
        ? []
        : [
            NetFeature.VIRTIO_NET_F_GUEST_CSUM,
            NetFeature.VIRTIO_NET_F_GUEST_TSO4,
            NetFeature.VIRTIO_NET_F_GUEST_TSO6,
            NetFeature.VIRTIO_NET_F_GUEST_ECN,
            NetFeature.VIRTIO_NET_F_GUEST_UFO,
          ]),
      ...(control ? [NetFeature.VIRTIO_NET_F_CTRL_VQ, ...NEEDS_CTRL_VQ.map(([bit]) => bit)] : []),
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

  async validate(dev: VirtioBusDevice): Promise<void> {
    if (!dev.hasFeature(NetFeature.VIRTIO_NET_F_CTRL_VQ)) {
      const bad = NEEDS_CTRL_VQ.filter(([bit]) => dev.hasFeature(bit)).map(([, name]) => name);
      if (bad.length !== 0) {
        throw new NetDriverError(
          'BAD_FEATURES',
          `${dev.name} offers ${bad.join(', ')} without VIRTIO_NET_F_CTRL_VQ`,
          bad,
        );
      }
    }
    // In table order, so a cleared HOST_TSO4/6 also clears HOST_ECN (and GUEST_* likewise).
    for (const [bit, needs] of NEEDS_ONE_OF) {
      if (dev.hasFeature(bit) && !needs.some((n) => dev.hasFeature(n))) dev.clearFeature(bit);
    }
    if (
      dev.hasFeature(NetFeature.VIRTIO_NET_F_MTU) &&
      (await dev.readConfigU16(NET_CONFIG_MTU)) < NET_MIN_MTU
    ) {
      dev.clearFeature(NetFeature.VIRTIO_NET_F_MTU);
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
    const mtu = dev.hasFeature(NetFeature.VIRTIO_NET_F_MTU)
      ? await dev.readConfigU16(NET_CONFIG_MTU)
      : NET_DEFAULT_MTU;
    const maxQueuePairs = dev.hasFeature(NetFeature.VIRTIO_NET_F_MQ)
      ? await dev.readConfigU16(NET_CONFIG_MAX_VIRTQUEUE_PAIRS)
      : 1;
    if (maxQueuePairs < VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MIN || maxQueuePairs > VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MAX) {
      throw new NetDriverError(
        'BAD_CONFIG',
        `${dev.name}: max_virtqueue_pairs ${maxQueuePairs} is not ${VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MIN}..${VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MAX}`,
        maxQueuePairs,
      );
    }
    const pairs = Math.min(maxQueuePairs, this.#options.queuePairs ?? NET_DEFAULT_QUEUE_PAIRS);
    const mergeable = dev.hasFeature(NetFeature.VIRTIO_NET_F_MRG_RXBUF);
    const guestGso = GUEST_GSO_BITS.some((bit) => dev.hasFeature(bit));
    const maxFrame = guestGso ? NET_GSO_MAX_FRAME : Math.max(NET_GOOD_PACKET_LEN, ETH_VLAN_HEADER + mtu);
    const rxBufferSize = mergeable
      ? (this.#options.rxBufferSize ?? DEFAULT_MERGEABLE_BUFFER)
      : NET_HDR_SIZE + maxFrame;
    const net = new VirtioNetInterface(dev, { mac, linkUp, mtu, rxBufferSize, maxQueuePairs });
    let control: NetControlQueue | undefined;
    const size = this.#options.queueSize;
    const sized = size === undefined ? {} : { size };
    const specs: (VirtqueueSpec | null)[] = [];
    for (let i = 0; i < maxQueuePairs; i++) {
      if (i >= pairs) {
        specs.push(null, null);
        continue;
      }
      specs.push(
        {
          name: `rx${i}`,
          callback: () => {
            net._rxDone(i);
          },
          ...sized,
        },
        {
          name: `tx${i}`,
          callback: () => {
            net._txDone(i);
          },
          ...sized,
        },
      );
    }
    const hasControl = dev.hasFeature(NetFeature.VIRTIO_NET_F_CTRL_VQ);
    if (hasControl)
      specs.push({
        name: 'ctrl',
        callback: () => {
          control?._done();
        },
      });
    const vqs = await dev.findVqs(specs);
    const queuePairs: { rxq: Virtqueue; txq: Virtqueue }[] = [];
    for (let i = 0; i < pairs; i++) {
      const rxq = vqs[2 * i];
      const txq = vqs[2 * i + 1];
      if (rxq === null || rxq === undefined || txq === null || txq === undefined) {
        throw new NetDriverError('BAD_CONFIG', `${dev.name}: queue pair ${i} is missing`, i);
      }
      if (mergeable && rxq.size * (rxBufferSize - NET_HDR_SIZE) < maxFrame) {
        throw new NetDriverError(
          'BAD_CONFIG',
          `${dev.name}: ${rxq.size} receive buffers of ${rxBufferSize} bytes cannot hold one ${maxFrame}-byte frame`,
          rxq.size,
        );
      }
      queuePairs.push({ rxq, txq });
    }
    if (hasControl) {
      const cvq = vqs[2 * maxQueuePairs];
      if (cvq === null || cvq === undefined) {
        throw new NetDriverError(
          'BAD_CONFIG',
          `${dev.name}: the control queue is missing`,
          2 * maxQueuePairs,
        );
      }
      control = new NetControlQueue(dev, cvq, (cause) => net._brokenError(cvq, cause));
    }
    net._setQueues(queuePairs, control);
    dev.driverData = net;
    await dev.ready();
    net._fillRx();
    // Linux virtnet_probe → virtnet_set_queues: the device uses one pair until told otherwise.
    if (dev.hasFeature(NetFeature.VIRTIO_NET_F_MQ)) await net.setQueuePairs(pairs);
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
    void dev
      .readConfigU16(NET_CONFIG_STATUS)
      .then(
        async (status) => {
          net._setLink((status & VIRTIO_NET_S_LINK_UP) !== 0);
          if (
            (status & VIRTIO_NET_S_ANNOUNCE) !== 0 &&
            dev.hasFeature(NetFeature.VIRTIO_NET_F_GUEST_ANNOUNCE)
          ) {
            await net._announce();
          }
        },
        () => undefined,
      )
      .catch(() => undefined);
  }
}
