import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { VhostUserProtocolError } from '../../../src/transport/vhost-user/errors.js';
import {
  VhostUserMessageParser,
  type VhostUserMessage,
} from '../../../src/transport/vhost-user/message-parser.js';
import {
  encodeMessage,
  encodeReplyU64,
  encodeReplyVringState,
  encodeRequest,
} from '../../../src/transport/vhost-user/message-writer.js';
import {
  decodeConfig,
  decodeMemTable,
  decodeU64,
  decodeVringAddr,
  encodeConfig,
  encodeMemTable,
  encodeU64,
  encodeVringAddr,
  encodeVringState,
  memTableRegionCount,
} from '../../../src/transport/vhost-user/payloads.js';
import { FrontendRequest as R, MAX_PAYLOAD_SIZE } from '../../../src/transport/vhost-user/protocol.js';

/** Hand-built message bytes: header fields then payload words, each written explicitly. */
function handBuilt(request: number, flags: number, size: number, fill?: (v: DataView) => void): Uint8Array {
  const out = new Uint8Array(12 + size);
  const v = new DataView(out.buffer);
  v.setUint32(0, request, true);
  v.setUint32(4, flags, true);
  v.setUint32(8, size, true);
  fill?.(new DataView(out.buffer, 12));
  return out;
}

function parseAll(p: VhostUserMessageParser): VhostUserMessage[] {
  const out: VhostUserMessage[] = [];
  for (let m = p.next(); m !== null; m = p.next()) out.push(m);
  return out;
}

function protocolError(fn: () => unknown, code: string): VhostUserProtocolError {
  let caught: unknown;
  try {
    fn();
  } catch (e) {
    caught = e;
  }
  assert.ok(
    caught instanceof VhostUserProtocolError,
    `expected a VhostUserProtocolError, got ${String(caught)}`,
  );
  assert.equal(caught.code, code);
  return caught;
}

/**
 * What recvmsg returns on a Linux unix stream socket with a `size`-byte buffer, when each message was sent with
 * its fds in one sendmsg (af_unix.c unix_stream_read_generic): a read glues consecutive sends together, but hands
 * over the fds of a send as soon as it reads that send's first byte, and then stops at the end of that send.
 */
function linuxReads(
  msgs: readonly { bytes: Uint8Array; fds: number[] }[],
  size: number,
): { bytes: Uint8Array; fds: number[] }[] {
  const reads: { bytes: Uint8Array; fds: number[] }[] = [];
  let unit = 0;
  let offset = 0;
  while (unit < msgs.length) {
    const bytes: number[] = [];
    let fds: number[] = [];
    while (unit < msgs.length && bytes.length < size) {
      const m = msgs[unit]!;
      const take = Math.min(size - bytes.length, m.bytes.length - offset);
      const withFds = offset === 0 && m.fds.length > 0;
      bytes.push(...m.bytes.subarray(offset, offset + take));
      offset += take;
      if (withFds) fds = m.fds;
      if (offset === m.bytes.length) {
        unit++;
        offset = 0;
      }
      if (withFds) break;
    }
    reads.push({ bytes: Uint8Array.from(bytes), fds });
  }
  return reads;
}

describe('vhost-user canonical messages (bytes built by hand)', () => {
  test('GET_FEATURES request: 12 bytes, version 1, size 0', () => {
    const expected = Uint8Array.from([1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]);
    assert.deepEqual(encodeRequest(R.GET_FEATURES), expected);
    const p = new VhostUserMessageParser();
    p.push(expected);
    const m = parseAll(p)[0]!;
    assert.equal(m.request, R.GET_FEATURES);
    assert.equal(m.flags, 1);
    assert.equal(m.payload.length, 0);
  });

  test('GET_FEATURES reply: flags REPLY|version = 5, u64 payload', () => {
    const expected = handBuilt(R.GET_FEATURES, 0x5, 8, (v) => {
      v.setUint32(0, 0x4000_0001, true);
      v.setUint32(4, 0x1, true);
    });
    assert.deepEqual(encodeReplyU64(R.GET_FEATURES, (1n << 32n) | (1n << 30n) | 1n), expected);
  });

  test('SET_FEATURES with NEED_REPLY: flags 9', () => {
    const expected = handBuilt(R.SET_FEATURES, 0x9, 8, (v) => {
      v.setUint32(4, 0x1, true);
    });
    assert.deepEqual(encodeRequest(R.SET_FEATURES, encodeU64(1n << 32n), true), expected);
  });

  test('SET_VRING_ADDR: index, flags, then desc, USED, AVAIL, log', () => {
    const expected = handBuilt(R.SET_VRING_ADDR, 1, 40, (v) => {
      v.setUint32(0, 1, true); // index
      v.setUint32(4, 0, true); // flags
      v.setBigUint64(8, 0x1000n, true); // desc
      v.setBigUint64(16, 0x3000n, true); // used
      v.setBigUint64(24, 0x2000n, true); // avail
      v.setBigUint64(32, 0xffff_ffff_ffff_ffffn, true); // log
    });
    const built = encodeRequest(
      R.SET_VRING_ADDR,
      encodeVringAddr({ index: 1, flags: 0, desc: 0x1000n, used: 0x3000n, avail: 0x2000n, log: -1n }),
    );
    assert.deepEqual(built, expected);
    const p = new VhostUserMessageParser();
    p.push(expected);
    const [m] = parseAll(p);
    const a = decodeVringAddr(m!.payload);
    assert.deepEqual(a, {
      index: 1,
      flags: 0,
      desc: 0x1000n,
      used: 0x3000n,
      avail: 0x2000n,
      log: 0xffff_ffff_ffff_ffffn,
    });
  });

  test('SET_MEM_TABLE as UML sends it: 72 bytes for one region', () => {
    const expected = handBuilt(R.SET_MEM_TABLE, 1, 72, (v) => {
      v.setUint32(0, 1, true); // nregions
      v.setUint32(4, 0, true); // padding
      v.setBigUint64(8, 0x10000n, true); // guest_phys_addr
      v.setBigUint64(16, 0xff0000n, true); // memory_size
      v.setBigUint64(24, 0x10000n, true); // userspace_addr
      v.setBigUint64(32, 0x10000n, true); // mmap_offset
    });
    const region = { guestAddr: 0x10000n, size: 0xff0000n, userAddr: 0x10000n, mmapOffset: 0x10000n };
    assert.deepEqual(encodeRequest(R.SET_MEM_TABLE, encodeMemTable([region], 2)), expected);
    const p = new VhostUserMessageParser();
    p.push(expected, [7]);
    const m = parseAll(p)[0]!;
    assert.deepEqual(m.fds, [7]);
    assert.equal(memTableRegionCount(m.payload), 1);
    assert.deepEqual(decodeMemTable(m.payload, 1), [region]);
  });

  test('GET_VRING_BASE reply and a config message', () => {
    assert.deepEqual(
      encodeReplyVringState(R.GET_VRING_BASE, 1, 0x1234),
      handBuilt(R.GET_VRING_BASE, 5, 8, (v) => {
        v.setUint32(0, 1, true);
        v.setUint32(4, 0x1234, true);
      }),
    );
    const cfg = encodeConfig(4, 0, Uint8Array.from([1, 2, 3]));
    assert.deepEqual(cfg, Uint8Array.from([4, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3]));
    assert.deepEqual(decodeConfig(cfg).data, Uint8Array.from([1, 2, 3]));
  });
});

/** A realistic stream: each message as sent (one sendmsg, its fds with it). */
function stream(): { msgs: { bytes: Uint8Array; fds: number[] }[]; all: Uint8Array } {
  const msgs = [
    { bytes: encodeRequest(R.SET_OWNER), fds: [] },
    { bytes: encodeRequest(R.GET_FEATURES), fds: [] },
    {
      bytes: encodeRequest(
        R.SET_MEM_TABLE,
        encodeMemTable([{ guestAddr: 0n, size: 0x1000n, userAddr: 0x7f00n << 32n, mmapOffset: 0n }]),
      ),
      fds: [40],
    },
    { bytes: encodeRequest(R.SET_VRING_NUM, encodeVringState({ index: 0, num: 256 })), fds: [] },
    { bytes: encodeRequest(R.SET_VRING_CALL, encodeU64(0n)), fds: [41] },
    { bytes: encodeRequest(R.SET_VRING_KICK, encodeU64(0n)), fds: [42] },
  ];
  const all = new Uint8Array(msgs.reduce((n, m) => n + m.bytes.length, 0));
  let at = 0;
  for (const m of msgs) {
    all.set(m.bytes, at);
    at += m.bytes.length;
  }
  return { msgs, all };
}

function checkStream(got: VhostUserMessage[], msgs: ReturnType<typeof stream>['msgs']): void {
  assert.equal(got.length, msgs.length);
  got.forEach((m, i) => {
    const want = msgs[i]!;
    assert.deepEqual(encodeMessage(m.request, m.flags, m.payload), want.bytes);
    assert.deepEqual(m.fds, want.fds);
  });
}

describe('VhostUserMessageParser: stream handling', () => {
  test('several messages in one chunk', () => {
    const { msgs } = stream();
    const p = new VhostUserMessageParser();
    // No fds here: one chunk holding the first two and the NUM message.
    const chunk = new Uint8Array([...msgs[0]!.bytes, ...msgs[1]!.bytes, ...msgs[3]!.bytes]);
    p.push(chunk);
    const got = parseAll(p);
    assert.deepEqual(
      got.map((m) => m.request),
      [R.SET_OWNER, R.GET_FEATURES, R.SET_VRING_NUM],
    );
    assert.equal(p.buffered, 0);
  });

  test('read with every receive buffer size, as a Linux unix stream socket delivers it', () => {
    const { msgs, all } = stream();
    for (let size = 1; size <= all.length; size++) {
      const p = new VhostUserMessageParser();
      const got: VhostUserMessage[] = [];
      for (const chunk of linuxReads(msgs, size)) {
        p.push(chunk.bytes, chunk.fds);
        got.push(...parseAll(p));
      }
      checkStream(got, msgs);
      assert.equal(p.buffered, 0);
      assert.deepEqual(p.drainFds(), []);
    }
  });

  test('one byte at a time', () => {
    const { msgs, all } = stream();
    const starts = new Map<number, number[]>();
    let at = 0;
    for (const m of msgs) {
      starts.set(at, m.fds);
      at += m.bytes.length;
    }
    const p = new VhostUserMessageParser();
    const got: VhostUserMessage[] = [];
    for (let i = 0; i < all.length; i++) {
      p.push(all.subarray(i, i + 1), starts.get(i) ?? []);
      got.push(...parseAll(p));
    }
    checkStream(got, msgs);
  });

  test('the payload is a copy: reusing the receive buffer does not change a message', () => {
    const buf = encodeRequest(R.SET_FEATURES, encodeU64(0x1234n));
    const p = new VhostUserMessageParser();
    p.push(buf);
    const [m] = parseAll(p);
    buf.fill(0xff);
    assert.equal(decodeU64(m!.payload), 0x1234n);
  });

  test('fds go to the message that ends the chunk: fd-less messages glued in front keep none', () => {
    const owner = encodeRequest(R.SET_OWNER);
    const features = encodeRequest(R.SET_FEATURES, encodeU64(1n << 32n));
    const call = encodeRequest(R.SET_VRING_CALL, encodeU64(0n));
    const p = new VhostUserMessageParser();
    // What a front end sending three messages back to back is read as: one chunk, the last one's fd.
    p.push(Uint8Array.from([...owner, ...features, ...call]), [9]);
    const [mo, mf, mc] = parseAll(p);
    assert.deepEqual(mo?.fds, []);
    assert.deepEqual(mf?.fds, []);
    assert.deepEqual(mc?.fds, [9]);
  });

  test('fds that come with a chunk continuing a message and holding the next go to the next', () => {
    const a = encodeRequest(R.SET_VRING_NUM, encodeVringState({ index: 0, num: 8 }));
    const b = encodeRequest(R.SET_VRING_CALL, encodeU64(0n));
    const p = new VhostUserMessageParser();
    p.push(a.subarray(0, 5));
    p.push(Uint8Array.from([...a.subarray(5), ...b.subarray(0, 3)]), [9]);
    p.push(b.subarray(3));
    const [ma, mb] = parseAll(p);
    assert.deepEqual(ma?.fds, []);
    assert.deepEqual(mb?.fds, [9]);
  });

  test('a large chunk grows the buffer; the buffer is reused after', () => {
    const p = new VhostUserMessageParser();
    const many: number[] = [];
    for (let i = 0; i < 200; i++)
      many.push(...encodeRequest(R.SET_VRING_NUM, encodeVringState({ index: 0, num: i })));
    p.push(Uint8Array.from(many));
    assert.equal(parseAll(p).length, 200);
  });
});

describe('VhostUserMessageParser: protocol errors', () => {
  const cases: [string, Uint8Array, number[], string][] = [
    ['version 0', encodeMessage(R.GET_FEATURES, 0), [], 'BAD_VERSION'],
    ['version 2', encodeMessage(R.GET_FEATURES, 2), [], 'BAD_VERSION'],
    ['REPLY on a request', encodeMessage(R.GET_FEATURES, 5), [], 'BAD_FLAGS'],
    ['undefined flag bit 4', encodeMessage(R.GET_FEATURES, 0x11), [], 'BAD_FLAGS'],
    ['unknown request 0', encodeRequest(0), [], 'UNKNOWN_REQUEST'],
    ['unknown request 99 with NEED_REPLY', encodeRequest(99, new Uint8Array(0), true), [], 'UNKNOWN_REQUEST'],
    ['SET_FEATURES with 4 bytes', encodeRequest(R.SET_FEATURES, new Uint8Array(4)), [], 'BAD_PAYLOAD_SIZE'],
    ['GET_FEATURES with 8 bytes', encodeRequest(R.GET_FEATURES, new Uint8Array(8)), [], 'BAD_PAYLOAD_SIZE'],
    [
      'SET_VRING_ADDR with 32 bytes',
      encodeRequest(R.SET_VRING_ADDR, new Uint8Array(32)),
      [],
      'BAD_PAYLOAD_SIZE',
    ],
    [
      'SET_MEM_TABLE of 50 bytes',
      encodeRequest(R.SET_MEM_TABLE, new Uint8Array(50)),
      [1],
      'BAD_PAYLOAD_SIZE',
    ],
    [
      'SET_MEM_TABLE of 9 regions',
      encodeRequest(R.SET_MEM_TABLE, new Uint8Array(8 + 9 * 32)),
      [1],
      'BAD_PAYLOAD_SIZE',
    ],
    ['SET_OWNER with an fd', encodeRequest(R.SET_OWNER), [5], 'WRONG_FD_COUNT'],
    ['ADD_MEM_REG without its fd', encodeRequest(R.ADD_MEM_REG, new Uint8Array(40)), [], 'WRONG_FD_COUNT'],
    [
      'SET_VRING_KICK with 2 fds',
      encodeRequest(R.SET_VRING_KICK, new Uint8Array(8)),
      [5, 6],
      'WRONG_FD_COUNT',
    ],
  ];
  for (const [name, bytes, fds, code] of cases) {
    test(`${name} → ${code}; fds handed back; the parser stays failed`, () => {
      const p = new VhostUserMessageParser();
      p.push(encodeRequest(R.SET_OWNER)); // a good message first
      p.push(bytes, fds);
      assert.equal(p.next()?.request, R.SET_OWNER);
      const e = protocolError(() => p.next(), code);
      protocolError(() => p.next(), code);
      assert.equal(p.error, e);
      p.push(encodeRequest(R.SET_VRING_CALL, new Uint8Array(8)), [77]);
      assert.deepEqual(p.drainFds().sort(), [...fds, 77].sort());
      assert.deepEqual(p.drainFds(), []);
    });
  }

  test('an oversized payload is refused from the header alone', () => {
    const p = new VhostUserMessageParser();
    p.push(handBuilt(R.SET_FEATURES, 1, 0).subarray(0, 8));
    const header = new Uint8Array(12);
    new DataView(header.buffer).setUint32(0, R.SET_CONFIG, true);
    new DataView(header.buffer).setUint32(4, 1, true);
    new DataView(header.buffer).setUint32(8, MAX_PAYLOAD_SIZE + 1, true);
    const q = new VhostUserMessageParser();
    q.push(header);
    protocolError(() => q.next(), 'PAYLOAD_TOO_LARGE');
    assert.equal(p.next(), null);
  });

  test('reset: a new connection starts clean and returns the held fds', () => {
    const p = new VhostUserMessageParser();
    p.push(encodeRequest(R.SET_OWNER), [3]);
    protocolError(() => p.next(), 'WRONG_FD_COUNT');
    assert.deepEqual(p.reset(), [3]);
    p.push(encodeRequest(R.GET_FEATURES));
    assert.equal(p.next()?.request, R.GET_FEATURES);
  });

  test('replies mode: a reply must have REPLY and not NEED_REPLY', () => {
    const p = new VhostUserMessageParser({ mode: 'replies' });
    p.push(encodeReplyU64(R.GET_FEATURES, 1n));
    assert.equal(decodeU64(p.next()!.payload), 1n);
    p.push(encodeRequest(R.GET_FEATURES));
    protocolError(() => p.next(), 'BAD_FLAGS');
  });
});
