/**
 * IPv4/IPv6 + TCP/UDP frames built and checked independently of the driver (RFC 791, 8200, 793, 768; the
 * Internet checksum of RFC 1071), for the tap tests: what ringvm sends with offloads, and what the host kernel
 * must deliver after segmenting and checksumming it.
 */
export const ETHERTYPE_IPV4 = 0x0800;
export const ETHERTYPE_IPV6 = 0x86dd;
export const IPPROTO_TCP = 6;
export const IPPROTO_UDP = 17;
export const ETH_HLEN = 14;
export const IPV4_HLEN = 20;
export const IPV6_HLEN = 40;
export const TCP_HLEN = 20;
export const UDP_HLEN = 8;
/** Offsets of the checksum field inside the TCP and UDP headers (virtio csum_offset). */
export const TCP_CHECK = 16;
export const UDP_CHECK = 6;
export const TcpFlag = { FIN: 0x01, SYN: 0x02, RST: 0x04, PSH: 0x08, ACK: 0x10 } as const;

/** 32-bit running one's-complement sum of big-endian 16-bit words. */
export function sum16(bytes: Uint8Array, start = 0, end = bytes.length, initial = 0): number {
  let s = initial;
  let i = start;
  for (; i + 1 < end; i += 2) s += ((bytes[i] as number) << 8) | (bytes[i + 1] as number);
  if (i < end) s += (bytes[i] as number) << 8;
  return s;
}

export function fold(sum: number): number {
  let s = sum;
  while (s > 0xffff) s = (s & 0xffff) + Math.floor(s / 0x10000);
  return s;
}

export interface IpAddrs {
  readonly v6: boolean;
  readonly src: Uint8Array;
  readonly dst: Uint8Array;
}

export function ipv4(a: string): Uint8Array {
  return Uint8Array.from(a.split('.').map(Number));
}

/** fd00::x style addresses: 16 bytes, the last one `last`. */
export function ipv6(last: number): Uint8Array {
  const b = new Uint8Array(16);
  b[0] = 0xfd;
  b[15] = last;
  return b;
}

/** The pseudo-header sum (not folded) for an L4 segment of `l4Length` bytes. */
export function pseudoSum(ip: IpAddrs, proto: number, l4Length: number): number {
  let s = sum16(ip.src) + sum16(ip.dst) + proto;
  s += ip.v6 ? Math.floor(l4Length / 0x10000) + (l4Length & 0xffff) : l4Length;
  return s;
}

export interface L4Spec {
  readonly dstMac: Uint8Array;
  readonly srcMac: Uint8Array;
  readonly ip: IpAddrs;
  readonly proto: number;
  readonly srcPort: number;
  readonly dstPort: number;
  readonly payload: Uint8Array;
  /** TCP only. */
  readonly seq?: number;
  readonly ack?: number;
  readonly flags?: number;
  readonly window?: number;
  /** TCP options (a multiple of 4 bytes). */
  readonly options?: Uint8Array;
  /**
   * `full`: a complete checksum; `partial`: the pseudo-header sum only, as Linux leaves it for CHECKSUM_PARTIAL
   * (the device finishes it).
   */
  readonly checksum: 'full' | 'partial';
  readonly ipId?: number;
}

/** An Ethernet frame carrying one TCP or UDP segment; `l4Start` is where the TCP/UDP header begins. */
export function buildFrame(spec: L4Spec): { frame: Uint8Array; l4Start: number; hdrLen: number } {
  const ipLen = spec.ip.v6 ? IPV6_HLEN : IPV4_HLEN;
  const l4h = spec.proto === IPPROTO_TCP ? TCP_HLEN + (spec.options?.length ?? 0) : UDP_HLEN;
  const l4Length = l4h + spec.payload.length;
  const l4Start = ETH_HLEN + ipLen;
  const frame = new Uint8Array(l4Start + l4Length);
  const v = new DataView(frame.buffer);
  frame.set(spec.dstMac, 0);
  frame.set(spec.srcMac, 6);
  v.setUint16(12, spec.ip.v6 ? ETHERTYPE_IPV6 : ETHERTYPE_IPV4);
  if (spec.ip.v6) {
    v.setUint32(ETH_HLEN, 0x6000_0000);
    v.setUint16(ETH_HLEN + 4, l4Length);
    frame[ETH_HLEN + 6] = spec.proto;
    frame[ETH_HLEN + 7] = 64;
    frame.set(spec.ip.src, ETH_HLEN + 8);
    frame.set(spec.ip.dst, ETH_HLEN + 24);
  } else {
    frame[ETH_HLEN] = 0x45;
    v.setUint16(ETH_HLEN + 2, IPV4_HLEN + l4Length);
    v.setUint16(ETH_HLEN + 4, spec.ipId ?? 1);
    v.setUint16(ETH_HLEN + 6, 0x4000); // DF
    frame[ETH_HLEN + 8] = 64;
    frame[ETH_HLEN + 9] = spec.proto;
    frame.set(spec.ip.src, ETH_HLEN + 12);
    frame.set(spec.ip.dst, ETH_HLEN + 16);
    v.setUint16(ETH_HLEN + 10, ~fold(sum16(frame, ETH_HLEN, ETH_HLEN + IPV4_HLEN)) & 0xffff);
  }
  v.setUint16(l4Start, spec.srcPort);
  v.setUint16(l4Start + 2, spec.dstPort);
  let checkAt: number;
  if (spec.proto === IPPROTO_TCP) {
    v.setUint32(l4Start + 4, (spec.seq ?? 0) >>> 0);
    v.setUint32(l4Start + 8, (spec.ack ?? 0) >>> 0);
    frame[l4Start + 12] = (l4h / 4) << 4;
    frame[l4Start + 13] = spec.flags ?? TcpFlag.ACK;
    v.setUint16(l4Start + 14, spec.window ?? 65535);
    if (spec.options !== undefined) frame.set(spec.options, l4Start + TCP_HLEN);
    checkAt = l4Start + TCP_CHECK;
  } else {
    v.setUint16(l4Start + 4, l4Length);
    checkAt = l4Start + UDP_CHECK;
  }
  frame.set(spec.payload, l4Start + l4h);
  const pseudo = pseudoSum(spec.ip, spec.proto, l4Length);
  if (spec.checksum === 'partial') {
    v.setUint16(checkAt, fold(pseudo));
  } else {
    let c = ~fold(sum16(frame, l4Start, frame.length, pseudo)) & 0xffff;
    if (c === 0 && spec.proto === IPPROTO_UDP) c = 0xffff;
    v.setUint16(checkAt, c);
  }
  return { frame, l4Start, hdrLen: l4Start + l4h };
}

export interface ParsedSegment {
  readonly v6: boolean;
  readonly proto: number;
  readonly srcPort: number;
  readonly dstPort: number;
  readonly seq: number;
  readonly ack: number;
  readonly flags: number;
  readonly payload: Uint8Array;
  /** The IPv4 header checksum is right (always true for IPv6). */
  readonly ipChecksumOk: boolean;
  /** The IP length fields match the frame. */
  readonly lengthOk: boolean;
  /** The TCP/UDP checksum is right. */
  readonly l4ChecksumOk: boolean;
  readonly ipId: number;
}

/** Parses a TCP or UDP over IPv4/IPv6 frame and checks its checksums; undefined for anything else. */
export function parseSegment(frame: Uint8Array): ParsedSegment | undefined {
  if (frame.length < ETH_HLEN + IPV4_HLEN) return undefined;
  const v = new DataView(frame.buffer, frame.byteOffset, frame.byteLength);
  const type = v.getUint16(12);
  let ip: IpAddrs;
  let proto: number;
  let l4Start: number;
  let l4Length: number;
  let ipChecksumOk = true;
  let lengthOk: boolean;
  let ipId = 0;
  if (type === ETHERTYPE_IPV4) {
    const ihl = ((frame[ETH_HLEN] as number) & 0xf) * 4;
    const total = v.getUint16(ETH_HLEN + 2);
    ipChecksumOk = fold(sum16(frame, ETH_HLEN, ETH_HLEN + ihl)) === 0xffff;
    proto = frame[ETH_HLEN + 9] as number;
    ip = {
      v6: false,
      src: frame.slice(ETH_HLEN + 12, ETH_HLEN + 16),
      dst: frame.slice(ETH_HLEN + 16, ETH_HLEN + 20),
    };
    l4Start = ETH_HLEN + ihl;
    l4Length = total - ihl;
    lengthOk = ETH_HLEN + total <= frame.length && (frame.length === ETH_HLEN + total || frame.length === 60);
    ipId = v.getUint16(ETH_HLEN + 4);
  } else if (type === ETHERTYPE_IPV6 && frame.length >= ETH_HLEN + IPV6_HLEN) {
    proto = frame[ETH_HLEN + 6] as number;
    ip = {
      v6: true,
      src: frame.slice(ETH_HLEN + 8, ETH_HLEN + 24),
      dst: frame.slice(ETH_HLEN + 24, ETH_HLEN + 40),
    };
    l4Start = ETH_HLEN + IPV6_HLEN;
    l4Length = v.getUint16(ETH_HLEN + 4);
    lengthOk = l4Start + l4Length <= frame.length;
  } else {
    return undefined;
  }
  if ((proto !== IPPROTO_TCP && proto !== IPPROTO_UDP) || !lengthOk) {
    return proto === IPPROTO_TCP || proto === IPPROTO_UDP
      ? {
          v6: ip.v6,
          proto,
          srcPort: 0,
          dstPort: 0,
          seq: 0,
          ack: 0,
          flags: 0,
          payload: new Uint8Array(0),
          ipChecksumOk,
          lengthOk,
          l4ChecksumOk: false,
          ipId,
        }
      : undefined;
  }
  const l4End = l4Start + l4Length;
  const l4ChecksumOk = fold(sum16(frame, l4Start, l4End, pseudoSum(ip, proto, l4Length))) === 0xffff;
  const headerLength = proto === IPPROTO_TCP ? ((frame[l4Start + 12] as number) >> 4) * 4 : UDP_HLEN;
  return {
    v6: ip.v6,
    proto,
    srcPort: v.getUint16(l4Start),
    dstPort: v.getUint16(l4Start + 2),
    seq: proto === IPPROTO_TCP ? v.getUint32(l4Start + 4) : 0,
    ack: proto === IPPROTO_TCP ? v.getUint32(l4Start + 8) : 0,
    flags: proto === IPPROTO_TCP ? (frame[l4Start + 13] as number) : 0,
    payload: frame.slice(l4Start + headerLength, l4End),
    ipChecksumOk,
    lengthOk,
    l4ChecksumOk,
    ipId,
  };
}
