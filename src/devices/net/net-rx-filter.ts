/**
 * `NetRxFilter`: which frames the device hands to the driver (VIRTIO 1.2 §5.1.6.5.1 receive filtering,
 * §5.1.6.5.2 MAC filtering, §5.1.6.5.3 VLAN filtering), the state the control queue sets. Decided on the
 * destination address and the 802.1Q tag of each frame, in the order QEMU's virtio-net applies them:
 *
 * 1. promiscuous: everything;
 * 2. a tagged frame whose VLAN id is not in the table is dropped (only with CTRL_VLAN negotiated: without it
 *    every VLAN passes);
 * 3. broadcast: passes unless NOBCAST; other multicast: NOMULTI drops, ALLMULTI (or a multicast table that
 *    overflowed) passes, else it must be in the multicast table;
 * 4. unicast: NOUNI drops, ALLUNI (or an overflowed unicast table) passes, else it must be the device's MAC or
 *    in the unicast table.
 *
 * After reset the device is promiscuous (§5.1.6.5.1: "the device SHOULD receive all packets" until the driver
 * says otherwise, as QEMU does) and the tables are empty.
 */
import { ETH_HEADER_SIZE, MAC_ADDRESS_BYTES, VLAN_ID_MAX } from './net-layout.js';

/**
 * Entries each MAC table keeps (QEMU's MAC_TABLE_ENTRIES). A driver may send more (the count is a le32): the
 * table then overflows and that kind of address is no longer filtered, which is what a NIC with a small filter
 * does; the bound keeps the per-frame lookup short.
 */
export const NET_MAC_TABLE_ENTRIES = 64;
/** 802.1Q: the TPID at the EtherType position, the VLAN id in the low 12 bits of the TCI after it. */
const ETHERTYPE_OFFSET = 12;
const ETHERTYPE_VLAN = 0x8100;
const VLAN_TCI_OFFSET = 14;
const VLAN_ID_MASK = 0x0fff;
/** Bytes of a frame the filter reads: Ethernet header and the VLAN TCI. */
export const NET_FILTER_HEADER_BYTES = ETH_HEADER_SIZE + 2;

export class NetRxFilter {
  promiscuous = true;
  allMulti = false;
  allUni = false;
  noMulti = false;
  noUni = false;
  noBroadcast = false;
  /** Unicast and multicast tables: `count` addresses of 6 bytes each. */
  readonly unicast = new Uint8Array(NET_MAC_TABLE_ENTRIES * MAC_ADDRESS_BYTES);
  unicastCount = 0;
  unicastOverflow = false;
  readonly multicast = new Uint8Array(NET_MAC_TABLE_ENTRIES * MAC_ADDRESS_BYTES);
  multicastCount = 0;
  multicastOverflow = false;
  /** One bit per VLAN id. */
  readonly #vlans = new Uint32Array((VLAN_ID_MAX + 1) / 32);
  #vlanFiltering = false;

  /** Back to the state after a device reset; `vlanFiltering`: CTRL_VLAN was negotiated. */
  reset(vlanFiltering = false): void {
    this.promiscuous = true;
    this.allMulti = this.allUni = this.noMulti = this.noUni = this.noBroadcast = false;
    this.unicastCount = this.multicastCount = 0;
    this.unicastOverflow = this.multicastOverflow = false;
    this.#vlans.fill(0);
    this.#vlanFiltering = vlanFiltering;
  }

  setVlan(id: number, on: boolean): void {
    const word = id >>> 5;
    const bit = 1 << (id & 31);
    this.#vlans[word] = on ? (this.#vlans[word] as number) | bit : (this.#vlans[word] as number) & ~bit;
  }

  hasVlan(id: number): boolean {
    return ((this.#vlans[id >>> 5] as number) & (1 << (id & 31))) !== 0;
  }

  /** Whether a frame whose first bytes are `head` (at least {@link NET_FILTER_HEADER_BYTES}) is received. */
  accepts(head: Uint8Array, mac: Uint8Array): boolean {
    if (this.promiscuous) return true;
    if (
      this.#vlanFiltering &&
      (((head[ETHERTYPE_OFFSET] as number) << 8) | (head[ETHERTYPE_OFFSET + 1] as number)) === ETHERTYPE_VLAN
    ) {
      const vid =
        (((head[VLAN_TCI_OFFSET] as number) << 8) | (head[VLAN_TCI_OFFSET + 1] as number)) & VLAN_ID_MASK;
      if (!this.hasVlan(vid)) return false;
    }
    if (((head[0] as number) & 1) !== 0) {
      if (isBroadcast(head)) return !this.noBroadcast;
      if (this.noMulti) return false;
      if (this.allMulti || this.multicastOverflow) return true;
      return inTable(head, this.multicast, this.multicastCount);
    }
    if (this.noUni) return false;
    if (this.allUni || this.unicastOverflow) return true;
    return sameMac(head, 0, mac) || inTable(head, this.unicast, this.unicastCount);
  }
}

function isBroadcast(head: Uint8Array): boolean {
  for (let i = 0; i < MAC_ADDRESS_BYTES; i++) if (head[i] !== 0xff) return false;
  return true;
}

function sameMac(head: Uint8Array, offset: number, mac: Uint8Array): boolean {
  for (let i = 0; i < MAC_ADDRESS_BYTES; i++) if (head[i] !== mac[offset + i]) return false;
  return true;
}

function inTable(head: Uint8Array, table: Uint8Array, count: number): boolean {
  for (let e = 0; e < count; e++) {
    let match = true;
    for (let i = 0; i < MAC_ADDRESS_BYTES && match; i++) match = head[i] === table[e * MAC_ADDRESS_BYTES + i];
    if (match) return true;
  }
  return false;
}
