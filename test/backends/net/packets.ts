// A minimal IPv4 host for tests that drive a network from frames: Ethernet / IPv4 / UDP / TCP builders with real
// checksums (RFC 791, 768, 793 pseudo-header), and DHCP (RFC 2131) DISCOVER/REQUEST and reply parsing.

export const ETHERTYPE_IPV4 = 0x0800;
export const IPPROTO_TCP = 6;
export const IPPROTO_UDP = 17;
export const TCP_FIN = 0x01;
export const TCP_SYN = 0x02;
export const TCP_RST = 0x04;
export const TCP_PSH = 0x08;
export const TCP_ACK = 0x10;

export function ipToBytes(ip: string): Buffer {
  return Buffer.from(ip.split('.').map(Number));
}

export function bytesToIp(b: Uint8Array): string {
  return [...b.subarray(0, 4)].join('.');
}

/** The Internet checksum of `parts`, concatenated. */
export function inetChecksum(...parts: Uint8Array[]): number {
  const all = Buffer.concat(parts);
  let sum = 0;
  for (let i = 0; i + 1 < all.length; i += 2) sum += (all[i]! << 8) | all[i + 1]!;
  if (all.length % 2 === 1) sum += all[all.length - 1]! << 8;
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return ~sum & 0xffff;
}

export function ethernet(dst: Uint8Array, src: Uint8Array, type: number, payload: Uint8Array): Buffer {
  const h = Buffer.alloc(14);
  h.set(dst, 0);
  h.set(src, 6);
  h.writeUInt16BE(type, 12);
  return Buffer.concat([h, payload]);
}

export function ipv4(src: Buffer, dst: Buffer, proto: number, payload: Uint8Array, id = 0): Buffer {
  const h = Buffer.alloc(20);
  h[0] = 0x45;
  h.writeUInt16BE(20 + payload.length, 2);
  h.writeUInt16BE(id, 4);
  h[6] = 0x40; // don't fragment
  h[8] = 64;
  h[9] = proto;
  h.set(src, 12);
  h.set(dst, 16);
  h.writeUInt16BE(inetChecksum(h), 10);
  return Buffer.concat([h, payload]);
}

function pseudo(src: Buffer, dst: Buffer, proto: number, length: number): Buffer {
  const p = Buffer.alloc(12);
  p.set(src, 0);
  p.set(dst, 4);
  p[9] = proto;
  p.writeUInt16BE(length, 10);
  return p;
}

export function udp(src: Buffer, dst: Buffer, sport: number, dport: number, payload: Uint8Array): Buffer {
  const h = Buffer.alloc(8);
  h.writeUInt16BE(sport, 0);
  h.writeUInt16BE(dport, 2);
  h.writeUInt16BE(8 + payload.length, 4);
  const c = inetChecksum(pseudo(src, dst, IPPROTO_UDP, 8 + payload.length), h, payload);
  h.writeUInt16BE(c === 0 ? 0xffff : c, 6);
  return Buffer.concat([h, payload]);
}

export interface TcpSegment {
  sport: number;
  dport: number;
  seq: number;
  ack: number;
  flags: number;
  window?: number;
  payload?: Uint8Array;
}

export function tcp(src: Buffer, dst: Buffer, s: TcpSegment): Buffer {
  const payload = s.payload ?? new Uint8Array(0);
  const h = Buffer.alloc(20);
  h.writeUInt16BE(s.sport, 0);
  h.writeUInt16BE(s.dport, 2);
  h.writeUInt32BE(s.seq >>> 0, 4);
  h.writeUInt32BE(s.ack >>> 0, 8);
  h[12] = 5 << 4;
  h[13] = s.flags;
  h.writeUInt16BE(s.window ?? 65535, 14);
  h.writeUInt16BE(inetChecksum(pseudo(src, dst, IPPROTO_TCP, 20 + payload.length), h, payload), 16);
  return Buffer.concat([h, payload]);
}

export interface ParsedIpv4 {
  src: string;
  dst: string;
  proto: number;
  payload: Buffer;
}

export function parseIpv4(frame: Buffer): ParsedIpv4 | undefined {
  if (frame.length < 34 || frame.readUInt16BE(12) !== ETHERTYPE_IPV4) return undefined;
  const ip = frame.subarray(14);
  const ihl = (ip[0]! & 0x0f) * 4;
  const total = ip.readUInt16BE(2);
  return {
    src: bytesToIp(ip.subarray(12)),
    dst: bytesToIp(ip.subarray(16)),
    proto: ip[9]!,
    payload: ip.subarray(ihl, total),
  };
}

export function parseTcp(p: Buffer): Required<TcpSegment> {
  const off = (p[12]! >> 4) * 4;
  return {
    sport: p.readUInt16BE(0),
    dport: p.readUInt16BE(2),
    seq: p.readUInt32BE(4),
    ack: p.readUInt32BE(8),
    flags: p[13]!,
    window: p.readUInt16BE(14),
    payload: p.subarray(off),
  };
}

// ---- DHCP ----

export const DHCP_DISCOVER = 1;
export const DHCP_OFFER = 2;
export const DHCP_REQUEST = 3;
export const DHCP_ACK = 5;
const DHCP_MAGIC = 0x63825363;
const OPT_REQUESTED_IP = 50;
const OPT_MESSAGE_TYPE = 53;
const OPT_SERVER_ID = 54;
const OPT_PARAMS = 55;
const OPT_END = 255;

/** A client's BOOTREQUEST (DISCOVER or REQUEST) as an Ethernet broadcast. */
export function dhcpRequest(
  chaddr: Uint8Array,
  xid: number,
  type: number,
  requested?: { ip: string; server: string },
): Buffer {
  const b = Buffer.alloc(240);
  b[0] = 1; // BOOTREQUEST
  b[1] = 1; // Ethernet
  b[2] = 6;
  b.writeUInt32BE(xid, 4);
  b.writeUInt16BE(0x8000, 10); // broadcast replies
  b.set(chaddr, 28);
  b.writeUInt32BE(DHCP_MAGIC, 236);
  const opts = [OPT_MESSAGE_TYPE, 1, type];
  if (requested !== undefined) {
    opts.push(
      OPT_REQUESTED_IP,
      4,
      ...ipToBytes(requested.ip),
      OPT_SERVER_ID,
      4,
      ...ipToBytes(requested.server),
    );
  }
  opts.push(OPT_PARAMS, 3, 1, 3, 6, OPT_END);
  const msg = Buffer.concat([b, Buffer.from(opts)]);
  const zero = ipToBytes('0.0.0.0');
  const bcast = ipToBytes('255.255.255.255');
  return ethernet(
    Buffer.alloc(6, 0xff),
    chaddr,
    ETHERTYPE_IPV4,
    ipv4(zero, bcast, IPPROTO_UDP, udp(zero, bcast, 68, 67, msg)),
  );
}

export interface DhcpReply {
  type: number;
  xid: number;
  yiaddr: string;
  options: Map<number, Buffer>;
  /** The server's Ethernet address. */
  serverMac: Buffer;
}

/** A BOOTREPLY to port 68 in `frame`, or undefined. */
export function parseDhcpReply(frame: Buffer): DhcpReply | undefined {
  const ip = parseIpv4(frame);
  if (ip?.proto !== IPPROTO_UDP || ip.payload.readUInt16BE(2) !== 68) return undefined;
  const m = ip.payload.subarray(8);
  if (m.length < 240 || m[0] !== 2 || m.readUInt32BE(236) !== DHCP_MAGIC) return undefined;
  const options = new Map<number, Buffer>();
  for (let i = 240; i < m.length;) {
    const code = m[i]!;
    if (code === OPT_END) break;
    if (code === 0) {
      i++;
      continue;
    }
    const len = m[i + 1]!;
    options.set(code, m.subarray(i + 2, i + 2 + len));
    i += 2 + len;
  }
  return {
    type: options.get(OPT_MESSAGE_TYPE)?.[0] ?? 0,
    xid: m.readUInt32BE(4),
    yiaddr: bytesToIp(m.subarray(16)),
    options,
    serverMac: Buffer.from(frame.subarray(6, 12)),
  };
}
