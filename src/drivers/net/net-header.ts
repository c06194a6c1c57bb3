/**
 * The `virtio_net_hdr` as the driver writes it on transmit (Linux virtio_net_hdr_from_skb, called by xmit_skb)
 * and reads it on receive (virtio_net_hdr_to_skb). Layout: src/devices/net/net-layout.ts.
 */
import {
  NET_HDR_SIZE,
  NetFeature,
  NetGsoType,
  NetHdr,
  VIRTIO_NET_HDR_F_NEEDS_CSUM,
} from '../../devices/net/net-layout.js';
import { NetDriverError } from './net-driver-error.js';

/** What the caller asks the device to do for a frame (Linux: skb->ip_summed == CHECKSUM_PARTIAL, skb_is_gso). */
export interface NetTxOffload {
  /**
   * Checksum from `start` to the end of the frame, stored at `start + offset` (csum_start, csum_offset). As in
   * Linux, the checksum field holds the pseudo-header sum (not complemented) when the frame is handed over.
   */
  readonly checksum?: { readonly start: number; readonly offset: number };
  /** Segmentation: `hdrLen` header bytes (Ethernet + IP + TCP/UDP), `size` payload bytes per segment. */
  readonly gso?: {
    readonly type: 'tcpv4' | 'tcpv6' | 'udp_l4';
    readonly size: number;
    readonly hdrLen: number;
    readonly ecn?: boolean;
  };
}

/**
 * A received frame's header. With GUEST_CSUM `flags` may carry NEEDS_CSUM (the checksum from `csumStart`, to be
 * stored at `csumStart + csumOffset`, is not filled in: the frame came from a local stack that left it to the
 * hardware) or DATA_VALID (the device checked it). With GUEST_TSO4/6/UFO `gsoType` may be other than NONE: the
 * frame is a super-frame of `gsoSize`-byte segments behind `hdrLen` bytes of headers, longer than the MTU.
 */
export interface NetRxInfo {
  readonly flags: number;
  readonly gsoType: number;
  readonly gsoSize: number;
  readonly hdrLen: number;
  readonly csumStart: number;
  readonly csumOffset: number;
  /** Buffers the frame spanned (1 without MRG_RXBUF). */
  readonly numBuffers: number;
  /** The receive queue pair it arrived on. */
  readonly queue: number;
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

/** The received header at the start of `bytes` (at least {@link NET_HDR_SIZE} long). */
export function parseNetHeader(bytes: Uint8Array, mergeable: boolean, queue: number): NetRxInfo {
  const v = new DataView(bytes.buffer, bytes.byteOffset, NET_HDR_SIZE);
  return {
    flags: v.getUint8(NetHdr.FLAGS),
    gsoType: v.getUint8(NetHdr.GSO_TYPE),
    hdrLen: v.getUint16(NetHdr.HDR_LEN, true),
    gsoSize: v.getUint16(NetHdr.GSO_SIZE, true),
    csumStart: v.getUint16(NetHdr.CSUM_START, true),
    csumOffset: v.getUint16(NetHdr.CSUM_OFFSET, true),
    numBuffers: mergeable ? v.getUint16(NetHdr.NUM_BUFFERS, true) : 1,
    queue,
  };
}
