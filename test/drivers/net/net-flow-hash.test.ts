// The transmit queue choice: one flow always hashes the same (its frames stay in order on one queue), whatever
// the payload, IP id or TCP sequence; other flows spread.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { flowHash } from '../../../src/drivers/net/net-flow-hash.js';
import { IPPROTO_TCP, IPPROTO_UDP, buildFrame, ipv4, ipv6 } from './ip-packets.js';

const MAC1 = Uint8Array.of(0x52, 0x54, 0, 0, 0, 1);
const MAC2 = Uint8Array.of(0x52, 0x54, 0, 0, 0, 2);

function frame(
  v6: boolean,
  proto: number,
  srcPort: number,
  payload: Uint8Array,
  seq = 0,
  ipId = 1,
): Uint8Array {
  return buildFrame({
    dstMac: MAC1,
    srcMac: MAC2,
    ip: v6 ? { v6, src: ipv6(1), dst: ipv6(2) } : { v6, src: ipv4('10.0.0.1'), dst: ipv4('10.0.0.2') },
    proto,
    srcPort,
    dstPort: 80,
    payload,
    seq,
    ipId,
    checksum: 'full',
  }).frame;
}

describe('flowHash', () => {
  it('is the same for every frame of one flow (payload, sequence, IP id do not count)', () => {
    fc.assert(
      fc.property(
        fc.boolean(),
        fc.constantFrom(IPPROTO_TCP, IPPROTO_UDP),
        fc.integer({ min: 1, max: 65535 }),
        fc.uint8Array({ maxLength: 200 }),
        fc.uint8Array({ maxLength: 200 }),
        fc.integer({ min: 0, max: 0xffff_ffff }),
        fc.integer({ min: 0, max: 0xffff }),
        (v6, proto, port, p1, p2, seq, id) => {
          assert.equal(flowHash(frame(v6, proto, port, p1)), flowHash(frame(v6, proto, port, p2, seq, id)));
        },
      ),
    );
  });

  it('spreads 256 flows over 4 queues', () => {
    const counts = [0, 0, 0, 0];
    for (let port = 1000; port < 1256; port++) {
      const q = flowHash(frame(false, IPPROTO_TCP, port, new Uint8Array(10))) % 4;
      counts[q] = (counts[q] as number) + 1;
    }
    for (const n of counts) assert.ok(n > 32, `queues got ${counts.join(', ')}`);
  });

  it('hashes frames that are not IP by their MACs and EtherType, and never throws on short ones', () => {
    const arp = new Uint8Array(60);
    arp.set(MAC1, 0);
    arp.set(MAC2, 6);
    arp[12] = 0x08;
    arp[13] = 0x06;
    assert.equal(flowHash(arp), flowHash(arp.slice()));
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 80 }), (bytes) => {
        const h = flowHash(bytes);
        assert.ok(Number.isInteger(h) && h >= 0 && h <= 0xffff_ffff);
      }),
    );
  });
});
