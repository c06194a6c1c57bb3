/**
 * `NetConfig`: the virtio-net configuration space (`struct virtio_net_config`, VIRTIO 1.2 §5.1.4) as the device
 * keeps it: the MAC address, the link status word, `max_virtqueue_pairs` and `mtu`. Every field is read-only for
 * the driver (VERSION_1: the MAC is changed with VIRTIO_NET_CTRL_MAC_ADDR_SET, not by writing the field); the
 * device changes `mac` (ADDR_SET) and `status` (link, announce) and then notifies a configuration change.
 *
 * MAC addresses are written `52:54:00:12:34:56` ({@link parseMac}, {@link formatMac}).
 */
import { UsageError } from '../../virtio/errors.js';
import {
  MAC_ADDRESS_BYTES,
  NET_CONFIG_DUPLEX,
  NET_CONFIG_MAC,
  NET_CONFIG_MAX_VIRTQUEUE_PAIRS,
  NET_CONFIG_MTU,
  NET_CONFIG_SIZE,
  NET_CONFIG_SPEED,
  NET_CONFIG_STATUS,
  VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MAX,
  VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MIN,
  VIRTIO_NET_S_ANNOUNCE,
  VIRTIO_NET_S_LINK_UP,
} from './net-layout.js';

/** `speed` when unknown (§5.1.4: -1 as a le32). */
const SPEED_UNKNOWN = 0xffff_ffff;
/** `duplex` when unknown (§5.1.4: 0xff). */
const DUPLEX_UNKNOWN = 0xff;
/** Smallest MTU (IPv4's minimum datagram, RFC 791; Linux ETH_MIN_MTU). */
export const NET_MTU_MIN = 68;
/** Largest MTU `mtu` can hold (a le16) that still fits a GSO frame. */
export const NET_MTU_MAX = 65535 - 14 - 4;
/** The default MTU (Ethernet). */
export const NET_DEFAULT_MTU = 1500;

const MAC_TEXT = /^[0-9a-f]{2}(?::[0-9a-f]{2}){5}$/i;

/** Parses `aa:bb:cc:dd:ee:ff`; throws UsageError for anything else, or for a multicast address. */
export function parseMac(text: string): Uint8Array {
  if (!MAC_TEXT.test(text)) {
    throw new UsageError('INVALID_ARGUMENT', `'${text}' is not a MAC address like 52:54:00:12:34:56`, text);
  }
  const mac = Uint8Array.from(text.split(':').map((h) => parseInt(h, 16)));
  if (((mac[0] as number) & 1) !== 0) {
    throw new UsageError('INVALID_ARGUMENT', `'${text}' is a multicast address, not a station address`, text);
  }
  return mac;
}

export function formatMac(mac: Uint8Array): string {
  return Array.from(mac.subarray(0, MAC_ADDRESS_BYTES), (b) => b.toString(16).padStart(2, '0')).join(':');
}

export class NetConfig {
  readonly bytes = new Uint8Array(NET_CONFIG_SIZE);
  readonly #view = new DataView(this.bytes.buffer);
  /** The MAC the device was created with: restored at reset (ADDR_SET changes the live one). */
  readonly defaultMac: Uint8Array;

  constructor(mac: Uint8Array, maxPairs: number, mtu: number) {
    if (mac.length !== MAC_ADDRESS_BYTES) {
      throw new UsageError('INVALID_ARGUMENT', `a MAC address has 6 bytes, got ${mac.length}`, mac.length);
    }
    if (
      !Number.isInteger(maxPairs) ||
      maxPairs < VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MIN ||
      maxPairs > VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MAX
    ) {
      throw new UsageError(
        'INVALID_ARGUMENT',
        `queue pairs ${maxPairs} is not from ${VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MIN} to ${VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MAX}`,
        maxPairs,
      );
    }
    if (!Number.isInteger(mtu) || mtu < NET_MTU_MIN || mtu > NET_MTU_MAX) {
      throw new UsageError(
        'INVALID_ARGUMENT',
        `mtu ${mtu} is not from ${NET_MTU_MIN} to ${NET_MTU_MAX}`,
        mtu,
      );
    }
    this.defaultMac = mac.slice();
    this.bytes.set(mac, NET_CONFIG_MAC);
    this.#view.setUint16(NET_CONFIG_MAX_VIRTQUEUE_PAIRS, maxPairs, true);
    this.#view.setUint16(NET_CONFIG_MTU, mtu, true);
    this.#view.setUint32(NET_CONFIG_SPEED, SPEED_UNKNOWN, true);
    this.bytes[NET_CONFIG_DUPLEX] = DUPLEX_UNKNOWN;
  }

  /** The live MAC address (a view: do not modify). */
  get mac(): Uint8Array {
    return this.bytes.subarray(NET_CONFIG_MAC, NET_CONFIG_MAC + MAC_ADDRESS_BYTES);
  }

  set mac(mac: Uint8Array) {
    this.bytes.set(mac.subarray(0, MAC_ADDRESS_BYTES), NET_CONFIG_MAC);
  }

  get maxPairs(): number {
    return this.#view.getUint16(NET_CONFIG_MAX_VIRTQUEUE_PAIRS, true);
  }

  get mtu(): number {
    return this.#view.getUint16(NET_CONFIG_MTU, true);
  }

  get status(): number {
    return this.#view.getUint16(NET_CONFIG_STATUS, true);
  }

  /** Sets or clears bits of `status`; returns whether the word changed. */
  #setStatusBit(bit: number, on: boolean): boolean {
    const old = this.status;
    const next = on ? old | bit : old & ~bit;
    this.#view.setUint16(NET_CONFIG_STATUS, next, true);
    return next !== old;
  }

  setLinkUp(up: boolean): boolean {
    return this.#setStatusBit(VIRTIO_NET_S_LINK_UP, up);
  }

  setAnnounce(on: boolean): boolean {
    return this.#setStatusBit(VIRTIO_NET_S_ANNOUNCE, on);
  }

  /** Back to the creation MAC (device reset); the status word is the device's live state and stays. */
  reset(): void {
    this.mac = this.defaultMac;
    this.setAnnounce(false);
  }
}
