/**
 * Hostile driver input against the device-side split queue, one test (or more) per item of the project's
 * hostile-input note that concerns the ring (items 3 and 4 belong to the DeviceController). Every fault must:
 * carry the expected QueueError code, break the queue (popChain returns null from then on, without re-reading
 * the bad entry), touch nothing outside the guest (guard bytes around every region), leave a second queue on
 * the same memory working, and be cleared by a reset.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { GuestFault } from '../../../src/virtio/errors.js';
import { featureSet, VirtioFeature } from '../../../src/virtio/features.js';
import { SplitQueue } from '../../../src/virtio/split/split-queue.js';
import { QueueError, type QueueErrorCode } from '../../../src/virtio/split/queue-error.js';
import { ChainIoError } from '../../../src/virtio/split/chain-io.js';
import { F_INDIRECT, F_NEXT, F_WRITE, RingBuilder, guardedMemory } from './ring-builder.js';

const INDIRECT = featureSet(VirtioFeature.VIRTIO_F_INDIRECT_DESC);
const EVENT_IDX = featureSet(VirtioFeature.VIRTIO_F_EVENT_IDX);

// Guest layout: A [0, 0x10000) and B [0x10000, 0x20000) adjacent, a hole, C [0x40000, 0x140000), then nothing.
const B_END = 0x20000;
const HOLE = 0x30000;
const C = 0x40000;
const C_END = 0x140000;
const SIZE = 8;
const BUF = 0x4000;

function world(features = INDIRECT) {
  const g = guardedMemory([
    { guestAddr: 0, size: 0x10000 },
    { guestAddr: 0x10000, size: 0x10000 },
    { guestAddr: C, size: C_END - C },
  ]);
  const memory = g.memory;
  const ring = new RingBuilder(memory, SIZE, 0x1000, 0x1100, 0x1200);
  const q = new SplitQueue(0, 256);
  ring.configure(q);
  q.activate(memory, features);
  // An independent second queue on the same memory.
  const ring1 = new RingBuilder(memory, SIZE, 0x2000, 0x2100, 0x2200);
  const q1 = new SplitQueue(1, 256);
  ring1.configure(q1);
  q1.activate(memory, features | EVENT_IDX);
  return { g, memory, ring, q, ring1, q1, features };
}

type World = ReturnType<typeof world>;

function queueError(fn: () => unknown): QueueError {
  try {
    fn();
  } catch (e) {
    if (e instanceof QueueError) return e;
    throw e;
  }
  assert.fail('expected a QueueError');
}

/** The second queue still pops and returns a buffer. */
function otherQueueWorks(w: World): void {
  const before = w.ring1.usedIdx;
  w.ring1.setDesc(3, BUF + 0x800, 16, F_WRITE);
  w.ring1.makeAvailable(3);
  const c = w.q1.popChain();
  assert.ok(c !== null, 'second queue pops');
  c.writer().writeU32(0xcafe);
  w.q1.pushUsed(c.head, 4);
  assert.equal(w.ring1.usedIdx, (before + 1) & 0xffff);
  assert.deepEqual(w.ring1.usedElem(before % SIZE), { id: 3, len: 4 });
}

/** After reset and a fresh configuration, queue 0 works again. */
function resetClears(w: World): void {
  w.q.reset();
  assert.equal(w.q.broken, false);
  assert.equal(w.q.brokenReason, null);
  w.memory.fill(0x1000, 0x300, 0);
  const ring = new RingBuilder(w.memory, SIZE, 0x1000, 0x1100, 0x1200);
  ring.configure(w.q);
  w.q.activate(w.memory, w.features);
  ring.setDesc(0, BUF, 8, 0);
  ring.makeAvailable(0);
  const c = w.q.popChain();
  assert.ok(c !== null);
  w.q.pushUsed(c.head, 0);
  assert.equal(ring.usedIdx, 1);
}

/** Pops queue 0 expecting fault `code`; checks the queue is broken and everything else is intact. */
function expectPopFault(w: World, code: QueueErrorCode, value?: unknown): QueueError {
  const inFlight = w.q.inFlight;
  const nextAvail = w.q.nextAvail;
  const usedBefore = w.ring.usedIdx;
  const e = queueError(() => w.q.popChain());
  assert.equal(e.code, code, e.message);
  assert.ok(e instanceof GuestFault);
  assert.match(e.message, /^queue 0: /);
  if (value !== undefined) assert.deepEqual(e.value, value);
  assert.equal(w.q.broken, true);
  assert.equal(w.q.brokenReason, e);
  // Broken: no re-reading of the bad entry, no exception loop.
  assert.equal(w.q.popChain(), null);
  assert.equal(w.q.popChain(), null);
  assert.equal(w.q.hasAvailable(), false);
  assert.equal(w.q.enableNotification(), false);
  assert.equal(w.q.inFlight, inFlight, 'the bad chain is not in flight');
  assert.equal(w.q.nextAvail, nextAvail);
  assert.equal(w.ring.usedIdx, usedBefore, 'nothing published');
  assert.ok(w.g.guardsIntact(), 'no byte outside the guest was written');
  otherQueueWorks(w);
  resetClears(w);
  assert.ok(w.g.guardsIntact());
  return e;
}

/** Activates queue 0 after `configure` expecting fault `code`. */
function expectActivateFault(
  code: QueueErrorCode,
  configure: (q: SplitQueue) => void,
  value?: unknown,
): void {
  const w = world();
  w.q.reset();
  new RingBuilder(w.memory, SIZE, 0x1000, 0x1100, 0x1200).configure(w.q);
  configure(w.q);
  const e = queueError(() => {
    w.q.activate(w.memory, INDIRECT);
  });
  assert.equal(e.code, code, e.message);
  if (value !== undefined) assert.deepEqual(e.value, value);
  assert.equal(w.q.isActive, false);
  assert.equal(w.q.popChain(), null);
  assert.ok(w.g.guardsIntact());
  otherQueueWorks(w);
  resetClears(w);
}

describe('hostile: queue setup', () => {
  test('item 1: size 0, not a power of two, or above the maximum', () => {
    for (const size of [0, 3, 6, 12, 512, 65536, -8, 1.5]) {
      expectActivateFault('QUEUE_SIZE_INVALID', (q) => (q.size = size), size);
    }
  });

  test('item 2: a misaligned descriptor table, avail ring or used ring', () => {
    expectActivateFault('QUEUE_MISALIGNED', (q) => (q.descTable = 0x1008), 0x1008);
    expectActivateFault('QUEUE_MISALIGNED', (q) => (q.availRing = 0x1101), 0x1101);
    expectActivateFault('QUEUE_MISALIGNED', (q) => (q.usedRing = 0x1202), 0x1202);
  });

  test('item 2: ring parts outside guest memory, across a hole, or split over two regions', () => {
    expectActivateFault('QUEUE_OUTSIDE_MEMORY', (q) => (q.descTable = HOLE), HOLE);
    expectActivateFault('QUEUE_OUTSIDE_MEMORY', (q) => (q.availRing = C_END), C_END);
    expectActivateFault('QUEUE_OUTSIDE_MEMORY', (q) => (q.usedRing = B_END - 0x20), B_END - 0x20);
    expectActivateFault('QUEUE_OUTSIDE_MEMORY', (q) => (q.descTable = 0x10000 - 0x40), 0x10000 - 0x40);
    expectActivateFault('QUEUE_OUTSIDE_MEMORY', (q) => (q.descTable = 2 ** 60), 2 ** 60);
  });

  test('item 2: the event fields must be inside guest memory too', () => {
    // The avail ring entries fit, used_event (its last 2 bytes) does not.
    const avail = C_END - (4 + 2 * SIZE);
    expectActivateFault('QUEUE_OUTSIDE_MEMORY', (q) => (q.availRing = avail), avail);
    // The used elements fit, avail_event does not.
    const used = C_END - (4 + 8 * SIZE);
    expectActivateFault('QUEUE_OUTSIDE_MEMORY', (q) => (q.usedRing = used), used);
  });

  test('a queue activated before it was enabled', () => {
    expectActivateFault('QUEUE_NOT_READY', (q) => (q.ready = false), 0);
  });
});

describe('hostile: avail ring and chains', () => {
  test('item 5: avail.idx more than the queue size past the last seen index', () => {
    const w = world();
    w.ring.availIdx = SIZE + 1;
    const e = expectPopFault(w, 'AVAIL_IDX_JUMP', SIZE + 1);
    assert.match(e.message, /9 entries past/);
  });

  test('item 5: avail.idx moving backwards is a jump too', () => {
    const w = world();
    w.ring.setDesc(0, BUF, 4, 0);
    w.ring.makeAvailable(0);
    w.q.pushUsed(w.q.popChain()!.head, 0);
    w.ring.availIdx = 0;
    expectPopFault(w, 'AVAIL_IDX_JUMP', 0);
  });

  test('item 6: a head index ≥ queue size', () => {
    for (const head of [SIZE, 0xffff]) {
      const w = world();
      w.ring.makeAvailable(head);
      expectPopFault(w, 'HEAD_OUT_OF_RANGE', head);
    }
  });

  test('item 7: next ≥ queue size', () => {
    const w = world();
    w.ring.setDesc(0, BUF, 4, F_NEXT, SIZE);
    w.ring.makeAvailable(0);
    expectPopFault(w, 'DESC_NEXT_OUT_OF_RANGE', SIZE);
  });

  test('item 7: next ≥ the indirect table length', () => {
    const w = world();
    const table = C;
    w.ring.setIndirectEntry(table, 0, BUF, 4, F_NEXT, 1);
    w.ring.setIndirectEntry(table, 1, BUF, 4, F_NEXT, 2);
    w.ring.setIndirectEntry(table, 2, BUF, 4, 0); // outside the table's 2 entries
    w.ring.setDesc(0, table, 32, F_INDIRECT);
    w.ring.makeAvailable(0);
    expectPopFault(w, 'DESC_NEXT_OUT_OF_RANGE', 2);
  });

  test('item 8: a descriptor loop', () => {
    const w = world();
    w.ring.setDesc(0, BUF, 4, F_NEXT, 1);
    w.ring.setDesc(1, BUF, 4, F_NEXT, 0);
    w.ring.makeAvailable(0);
    expectPopFault(w, 'CHAIN_TOO_LONG', 0);
  });

  test('item 8: a descriptor pointing at itself', () => {
    const w = world();
    w.ring.setDesc(5, BUF, 0, F_NEXT, 5);
    w.ring.makeAvailable(5);
    expectPopFault(w, 'CHAIN_TOO_LONG', 5);
  });

  test('item 8: a loop inside an indirect table', () => {
    const w = world();
    const table = C;
    w.ring.setIndirectEntry(table, 0, BUF, 4, F_NEXT, 1);
    w.ring.setIndirectEntry(table, 1, BUF, 4, F_NEXT, 0);
    w.ring.setDesc(2, table, 32, F_INDIRECT);
    w.ring.makeAvailable(2);
    expectPopFault(w, 'CHAIN_TOO_LONG', 2);
  });

  for (const write of [false, true]) {
    test(`item 9: a chain whose ${write ? 'writable' : 'readable'} length overflows 2^32`, () => {
      const w = world();
      // 32769 indirect entries of 128 KiB, all on the same buffer: 2^32 + 2^17 bytes.
      const entries = 32769;
      const table = C;
      const buf = C + 0x90000;
      const dv = new DataView(new ArrayBuffer(16 * entries));
      for (let k = 0; k < entries; k++) {
        dv.setBigUint64(16 * k, BigInt(buf), true);
        dv.setUint32(16 * k + 8, 0x20000, true);
        dv.setUint16(16 * k + 12, (write ? F_WRITE : 0) | (k < entries - 1 ? F_NEXT : 0), true);
        dv.setUint16(16 * k + 14, k + 1, true);
      }
      w.memory.write(table, new Uint8Array(dv.buffer));
      w.ring.setDesc(0, table, 16 * entries, F_INDIRECT);
      w.ring.makeAvailable(0);
      const e = expectPopFault(w, 'CHAIN_LENGTH_OVERFLOW', 2 ** 32);
      assert.match(e.message, /entry 32767 of the indirect table/);
    });
  }

  test('item 9: readable + writable together longer than 2^32 bytes', () => {
    const w = world();
    const entries = 32769;
    const table = C;
    const buf = C + 0x90000;
    const dv = new DataView(new ArrayBuffer(16 * entries));
    for (let k = 0; k < entries; k++) {
      dv.setBigUint64(16 * k, BigInt(buf), true);
      dv.setUint32(16 * k + 8, 0x20000, true);
      dv.setUint16(16 * k + 12, (k >= 16384 ? F_WRITE : 0) | (k < entries - 1 ? F_NEXT : 0), true);
      dv.setUint16(16 * k + 14, k + 1, true);
    }
    w.memory.write(table, new Uint8Array(dv.buffer));
    w.ring.setDesc(0, table, 16 * entries, F_INDIRECT);
    w.ring.makeAvailable(0);
    expectPopFault(w, 'CHAIN_LENGTH_OVERFLOW', 2 ** 32 + 0x20000);
  });

  test('item 9: addr + len wrapping past 2^64', () => {
    const w = world();
    const addr = 0xffff_ffff_ffff_f000n;
    w.ring.setDesc(0, addr, 0x2000, 0);
    w.ring.makeAvailable(0);
    const e = expectPopFault(w, 'DESC_ADDRESS_INVALID', addr);
    assert.match(e.message, /0xfffffffffffff000\+8192 wraps past 2\^64/);
  });

  const badBuffers: [string, number | bigint, number][] = [
    ['in a hole', HOLE, 4],
    ['running from a region into a hole', B_END - 0x10, 0x20],
    ['running past the end of memory', C_END - 4, 8],
    ['starting past the end of memory', C_END, 1],
    ['at 2^53 (beyond any region)', 2n ** 53n, 1],
    ['at 2^63', 2n ** 63n, 16],
  ];
  for (const [what, addr, len] of badBuffers) {
    test(`item 10: a buffer ${what}`, () => {
      const w = world();
      w.ring.setDesc(0, BUF, 4, F_NEXT, 1);
      w.ring.setDesc(1, addr, len, F_WRITE);
      w.ring.makeAvailable(0);
      const e = expectPopFault(w, 'DESC_ADDRESS_INVALID', BigInt(addr));
      assert.match(e.message, /descriptor 1: buffer 0x/);
    });
  }

  test('item 10: a buffer outside memory inside an indirect table', () => {
    const w = world();
    w.ring.indirectTable(C, [
      { addr: BUF, len: 4 },
      { addr: HOLE + 8, len: 4, write: true },
    ]);
    w.ring.setDesc(0, C, 32, F_INDIRECT);
    w.ring.makeAvailable(0);
    const e = expectPopFault(w, 'DESC_ADDRESS_INVALID', BigInt(HOLE + 8));
    assert.match(e.message, /entry 1 of the indirect table of descriptor 0/);
  });

  test('item 11: zero-length descriptors are handled (legal at ring level; a device sees too few bytes)', () => {
    const w = world();
    w.ring.chain(
      [0, 1, 2],
      [
        { addr: HOLE, len: 0 },
        { addr: 2n ** 63n, len: 0 },
        { addr: BUF, len: 0, write: true },
      ],
    );
    w.ring.makeAvailable(0);
    const c = w.q.popChain();
    assert.ok(c !== null);
    assert.equal(c.descriptorCount, 3);
    assert.equal(c.segmentCount, 0);
    assert.equal(w.q.broken, false);
    // A device needing a header gets a typed error, not a crash; the queue is fine.
    const r = c.reader();
    assert.throws(
      () => r.readU32(),
      (e: unknown) => e instanceof ChainIoError,
    );
    w.q.pushUsed(c.head, 0);
    assert.equal(w.ring.usedIdx, 1);
    assert.ok(w.g.guardsIntact());
    otherQueueWorks(w);
  });

  test('item 12: a writable descriptor followed by a readable one', () => {
    const w = world();
    w.ring.chain(
      [0, 1, 2],
      [
        { addr: BUF, len: 4 },
        { addr: BUF + 0x10, len: 4, write: true },
        { addr: BUF + 0x20, len: 4 },
      ],
    );
    w.ring.makeAvailable(0);
    expectPopFault(w, 'READABLE_AFTER_WRITABLE', 2);
  });

  test('item 12: a writable direct descriptor followed by an indirect table with readable entries', () => {
    const w = world();
    w.ring.indirectTable(C, [{ addr: BUF, len: 4 }]);
    w.ring.setDesc(0, BUF + 0x10, 4, F_WRITE | F_NEXT, 1);
    w.ring.setDesc(1, C, 16, F_INDIRECT);
    w.ring.makeAvailable(0);
    expectPopFault(w, 'READABLE_AFTER_WRITABLE', 0);
  });

  test('item 12: inside an indirect table', () => {
    const w = world();
    w.ring.indirectTable(C, [
      { addr: BUF, len: 4, write: true },
      { addr: BUF + 0x10, len: 4 },
    ]);
    w.ring.setDesc(0, C, 32, F_INDIRECT);
    w.ring.makeAvailable(0);
    expectPopFault(w, 'READABLE_AFTER_WRITABLE', 1);
  });

  for (const [what, len] of [
    ['0', 0],
    ['not a multiple of 16', 24],
    ['more than 65535 entries', 16 * 65536],
  ] as const) {
    test(`item 13: indirect table length ${what}`, () => {
      const w = world();
      // 65536 entries at C end exactly at C_END: the length alone must be refused.
      w.ring.setDesc(0, C, len, F_INDIRECT);
      w.ring.makeAvailable(0);
      expectPopFault(w, 'INDIRECT_TABLE_INVALID', len);
    });
  }

  const badTables: [string, number | bigint][] = [
    ['in a hole', HOLE],
    ['running into a hole', B_END - 16],
    ['split over two adjacent regions', 0x10000 - 16],
    ['past 2^53', 2n ** 60n],
  ];
  for (const [what, addr] of badTables) {
    test(`item 13: an indirect table ${what}`, () => {
      const w = world();
      w.ring.setDesc(0, addr, 32, F_INDIRECT);
      w.ring.makeAvailable(0);
      expectPopFault(w, 'INDIRECT_TABLE_INVALID', BigInt(addr));
    });
  }

  test('item 14: an indirect descriptor inside an indirect table', () => {
    const w = world();
    w.ring.setIndirectEntry(C, 0, BUF, 4, F_NEXT, 1);
    w.ring.setIndirectEntry(C, 1, C + 0x100, 16, F_INDIRECT);
    w.ring.setDesc(0, C, 32, F_INDIRECT);
    w.ring.makeAvailable(0);
    expectPopFault(w, 'INDIRECT_NESTED', 1);
  });

  test('item 14: INDIRECT combined with NEXT', () => {
    const w = world();
    w.ring.indirectTable(C, [{ addr: BUF, len: 4 }]);
    w.ring.setDesc(0, C, 16, F_INDIRECT | F_NEXT, 1);
    w.ring.setDesc(1, BUF, 4, 0);
    w.ring.makeAvailable(0);
    expectPopFault(w, 'INDIRECT_WITH_NEXT', 0);
  });

  test('item 15: INDIRECT without VIRTIO_F_INDIRECT_DESC', () => {
    const w = world(0n);
    w.ring.indirectTable(C, [{ addr: BUF, len: 4 }]);
    w.ring.setDesc(0, BUF, 4, F_NEXT, 1);
    w.ring.setDesc(1, C, 16, F_INDIRECT);
    w.ring.makeAvailable(0);
    expectPopFault(w, 'INDIRECT_NOT_NEGOTIATED', 1);
  });

  test('item 16: a head made available again while in flight', () => {
    const w = world();
    w.ring.setDesc(0, BUF, 4, 0);
    w.ring.makeAvailable(0);
    assert.ok(w.q.popChain() !== null);
    w.ring.makeAvailable(0);
    expectPopFault(w, 'HEAD_IN_FLIGHT', 0);
  });

  test('item 16: more chains outstanding than the queue size', () => {
    const w = world();
    for (let i = 0; i < SIZE; i++) w.ring.setDesc(i, BUF, 4, 0);
    w.ring.makeAvailable(0, 1, 2, 3, 4);
    for (let i = 0; i < 5; i++) assert.ok(w.q.popChain() !== null);
    // 5 in flight; the driver claims 4 more.
    w.ring.makeAvailable(5, 6, 7, 0);
    expectPopFault(w, 'TOO_MANY_IN_FLIGHT', 9);
  });

  test('item 16: used but unpublished chains still count as outstanding', () => {
    const w = world();
    for (let i = 0; i < SIZE; i++) w.ring.setDesc(i, BUF, 4, 0);
    w.ring.makeAvailable(0, 1, 2, 3, 4);
    for (let i = 0; i < 5; i++) assert.ok(w.q.popChain() !== null);
    w.q.addUsed(0, 0);
    w.q.addUsed(1, 0); // not published: the driver cannot have these back
    // 3 in flight + 2 unpublished + 4 new; heads 0 and 1 are not in the in-flight map any more.
    w.ring.makeAvailable(5, 6, 0, 1);
    expectPopFault(w, 'TOO_MANY_IN_FLIGHT', 9);
  });

  test('the oracle: every head made available comes back, or the queue is broken', () => {
    // A fuzz-style mix: random rings; after each pop the invariant holds.
    let seed = 12345;
    const rand = (n: number): number => {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      return seed % n;
    };
    for (let round = 0; round < 200; round++) {
      const w = world();
      for (let i = 0; i < SIZE; i++) {
        const flags = rand(8);
        const addr = [BUF, HOLE, C, B_END - 8, 0x10000 - 8][rand(5)]!;
        w.ring.setDesc(i, addr, rand(3) * 8, flags, rand(SIZE + 2));
      }
      w.memory.write(
        C,
        Uint8Array.from({ length: 64 }, () => rand(256)),
      );
      const n = 1 + rand(SIZE);
      for (let k = 0; k < n; k++) w.ring.makeAvailable(rand(SIZE + 1));
      let returned = 0;
      for (;;) {
        let c;
        try {
          c = w.q.popChain();
        } catch (e) {
          assert.ok(e instanceof QueueError);
          break;
        }
        if (c === null) break;
        w.q.pushUsed(c.head, 0);
        returned++;
      }
      assert.ok(w.q.broken || returned === n, `round ${round}: ${returned} of ${n} returned, not broken`);
      assert.ok(w.g.guardsIntact());
    }
  });
});
