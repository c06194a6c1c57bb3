/**
 * A flow hash over an Ethernet frame, for choosing a transmit queue (Linux skb_tx_hash → skb_get_hash): frames of
 * one flow always get the same value, so they stay on one queue and in order. The flow is the IPv4/IPv6 source
 * and destination addresses, the protocol and, for unfragmented TCP/UDP/SCTP, the ports; any other frame is
 * hashed by its MAC addresses and EtherType. FNV-1a, 32 bits.
 */
import { ETH_HEADER_SIZE } from '../../devices/net/net-layout.js';

/** The EtherType: the last two bytes of the Ethernet header. */
const ETHERTYPE_OFFSET = ETH_HEADER_SIZE - 2;
const ETHERTYPE_IPV4 = 0x0800;
const ETHERTYPE_IPV6 = 0x86dd;
/** 802.1Q and 802.1ad tags: 4 bytes (TPID, TCI) before the real EtherType. */
const ETHERTYPE_VLAN = 0x8100;
const ETHERTYPE_QINQ = 0x88a8;
const VLAN_TAG_SIZE = 4;
/** IPv4 header: IHL in the low nibble of byte 0, fragment offset + MF at 6, protocol at 9, addresses at 12..19. */
const IPV4_MIN_HEADER = 20;
const IPV4_FRAG = 6;
const IPV4_FRAG_MASK = 0x3fff;
const IPV4_PROTOCOL = 9;
const IPV4_ADDRS = 12;
const IPV4_ADDRS_SIZE = 8;
/** IPv6 header: next header at 6, addresses at 8..39, 40 bytes. */
const IPV6_HEADER = 40;
const IPV6_NEXT_HEADER = 6;
const IPV6_ADDRS = 8;
const IPV6_ADDRS_SIZE = 32;
const IPPROTO_TCP = 6;
const IPPROTO_UDP = 17;
const IPPROTO_SCTP = 132;
const PORTS_SIZE = 4;
const MAC_PAIR_SIZE = 12;

const FNV_OFFSET = 0x811c9dc5;
const FNV_PRIME = 0x01000193;

function fnv(hash: number, bytes: Uint8Array, start: number, length: number): number {
  let h = hash;
  for (let i = start; i < start + length; i++) h = Math.imul(h ^ (bytes[i] as number), FNV_PRIME);
  return h >>> 0;
}

function hasPorts(protocol: number): boolean {
  return protocol === IPPROTO_TCP || protocol === IPPROTO_UDP || protocol === IPPROTO_SCTP;
}

/** The frame's flow hash (an unsigned 32-bit value). */
export function flowHash(frame: Uint8Array): number {
  let at = ETHERTYPE_OFFSET;
  let type = frame.length >= at + 2 ? ((frame[at] as number) << 8) | (frame[at + 1] as number) : 0;
  while ((type === ETHERTYPE_VLAN || type === ETHERTYPE_QINQ) && frame.length >= at + VLAN_TAG_SIZE + 2) {
    at += VLAN_TAG_SIZE;
    type = ((frame[at] as number) << 8) | (frame[at + 1] as number);
  }
  const l3 = at + 2;
  if (type === ETHERTYPE_IPV4 && frame.length >= l3 + IPV4_MIN_HEADER) {
    const ihl = ((frame[l3] as number) & 0xf) * 4;
    const protocol = frame[l3 + IPV4_PROTOCOL] as number;
    let h = fnv(FNV_OFFSET, frame, l3 + IPV4_ADDRS, IPV4_ADDRS_SIZE);
    h = fnv(h, frame, l3 + IPV4_PROTOCOL, 1);
    const frag =
      (((frame[l3 + IPV4_FRAG] as number) << 8) | (frame[l3 + IPV4_FRAG + 1] as number)) & IPV4_FRAG_MASK;
    const l4 = l3 + ihl;
    if (ihl >= IPV4_MIN_HEADER && frag === 0 && hasPorts(protocol) && frame.length >= l4 + PORTS_SIZE) {
      h = fnv(h, frame, l4, PORTS_SIZE);
    }
    return h;
  }
  if (type === ETHERTYPE_IPV6 && frame.length >= l3 + IPV6_HEADER) {
    const next = frame[l3 + IPV6_NEXT_HEADER] as number;
    let h = fnv(FNV_OFFSET, frame, l3 + IPV6_ADDRS, IPV6_ADDRS_SIZE);
    h = fnv(h, frame, l3 + IPV6_NEXT_HEADER, 1);
    const l4 = l3 + IPV6_HEADER;
    if (hasPorts(next) && frame.length >= l4 + PORTS_SIZE) h = fnv(h, frame, l4, PORTS_SIZE);
    return h;
  }
  const h = fnv(FNV_OFFSET, frame, 0, Math.min(MAC_PAIR_SIZE, frame.length));
  return fnv(h, frame, at, Math.min(2, Math.max(0, frame.length - at)));
}
