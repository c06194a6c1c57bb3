/**
 * Checking the `virtio_net_hdr` of a transmitted frame (VIRTIO 1.2 §5.1.6.2) against what was negotiated,
 * before the frame reaches the host. A tap back end would refuse most of these itself (Linux
 * virtio_net_hdr_to_skb), but a header the device lets through is one the host trusts, and a back end without
 * vnet headers never sees the header at all: so every rule is checked here, once, in the order of the table.
 *
 * | input                                                              | code                          |
 * | ------------------------------------------------------------------ | ----------------------------- |
 * | readable part < 12 bytes                                           | NET_TX_HEADER_TOO_SHORT       |
 * | frame < 14 bytes (an Ethernet header)                              | NET_TX_FRAME_TOO_SHORT        |
 * | flags other than NEEDS_CSUM                                        | NET_TX_BAD_FLAGS              |
 * | NEEDS_CSUM without CSUM                                            | NET_TX_CSUM_NOT_NEGOTIATED    |
 * | NEEDS_CSUM, csum_start + csum_offset + 2 > frame length            | NET_TX_CSUM_OUT_OF_RANGE      |
 * | gso_type not NONE / TCPV4 / TCPV6 (+ ECN)                          | NET_TX_GSO_BAD_TYPE           |
 * | TCPV4 without HOST_TSO4, TCPV6 without HOST_TSO6, ECN w/o HOST_ECN | NET_TX_GSO_NOT_NEGOTIATED     |
 * | GSO without NEEDS_CSUM                                             | NET_TX_GSO_WITHOUT_CSUM       |
 * | GSO with gso_size 0 or hdr_len > frame length                      | NET_TX_GSO_BAD_SIZE           |
 * | frame > MTU + 14 + 4 (no GSO; MTU negotiated) or > 65535 bytes     | NET_TX_FRAME_TOO_LONG         |
 *
 * `num_buffers` is ignored on transmit (§5.1.6.2: the driver sets it to 0), as is `hdr_len` without GSO.
 */
import { NetGsoType, ETH_HEADER_SIZE, NET_MAX_FRAME, VIRTIO_NET_HDR_F_NEEDS_CSUM } from './net-layout.js';
import type { NetRequestErrorCode } from './net-errors.js';

/** A checksum field is a u16: csum_offset points at its first byte. */
const CSUM_FIELD_BYTES = 2;
/** An 802.1Q tag: frames may carry one on top of MTU + Ethernet header. */
export const VLAN_TAG_BYTES = 4;

/** The header fields, read once from guest memory. */
export interface NetTxHeader {
  flags: number;
  gsoType: number;
  hdrLen: number;
  gsoSize: number;
  csumStart: number;
  csumOffset: number;
}

/** What the negotiated features allow on transmit. */
export interface NetTxLimits {
  readonly csum: boolean;
  readonly tso4: boolean;
  readonly tso6: boolean;
  readonly ecn: boolean;
  /** Largest non-GSO frame (without the virtio header): MTU + 14 + 4 when MTU was negotiated, else 65535. */
  readonly maxFrame: number;
}

/** Checks a header and the frame length after it; null when the frame may go out. */
export function checkTxHeader(
  h: NetTxHeader,
  frameLength: number,
  limits: NetTxLimits,
): NetRequestErrorCode | null {
  if (frameLength < ETH_HEADER_SIZE) return 'NET_TX_FRAME_TOO_SHORT';
  if ((h.flags & ~VIRTIO_NET_HDR_F_NEEDS_CSUM) !== 0) return 'NET_TX_BAD_FLAGS';
  const needsCsum = h.flags !== 0;
  if (needsCsum) {
    if (!limits.csum) return 'NET_TX_CSUM_NOT_NEGOTIATED';
    if (h.csumStart + h.csumOffset + CSUM_FIELD_BYTES > frameLength) return 'NET_TX_CSUM_OUT_OF_RANGE';
  }
  const ecn = (h.gsoType & NetGsoType.ECN) !== 0;
  const type = h.gsoType & ~NetGsoType.ECN;
  if (type === NetGsoType.NONE) {
    if (ecn) return 'NET_TX_GSO_BAD_TYPE';
    return frameLength > limits.maxFrame ? 'NET_TX_FRAME_TOO_LONG' : null;
  }
  if (type !== NetGsoType.TCPV4 && type !== NetGsoType.TCPV6) return 'NET_TX_GSO_BAD_TYPE';
  if ((type === NetGsoType.TCPV4 ? !limits.tso4 : !limits.tso6) || (ecn && !limits.ecn)) {
    return 'NET_TX_GSO_NOT_NEGOTIATED';
  }
  if (!needsCsum) return 'NET_TX_GSO_WITHOUT_CSUM';
  if (h.gsoSize === 0 || h.hdrLen > frameLength) return 'NET_TX_GSO_BAD_SIZE';
  return frameLength > NET_MAX_FRAME ? 'NET_TX_FRAME_TOO_LONG' : null;
}
