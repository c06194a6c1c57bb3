import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { GuestMemory } from '../../../src/virtio/guest-memory.js';
import { UsageError } from '../../../src/virtio/errors.js';
import { featureSet, VirtioFeature } from '../../../src/virtio/features.js';
import { SplitQueue } from '../../../src/virtio/split/split-queue.js';
import type { DescriptorChain } from '../../../src/virtio/split/descriptor-chain.js';
import { F_INDIRECT, F_NEXT, F_WRITE, RingBuilder, guardedMemory } from './ring-builder.js';

const EVENT_IDX = featureSet(VirtioFeature.VIRTIO_F_EVENT_IDX);
const INDIRECT = featureSet(VirtioFeature.VIRTIO_F_INDIRECT_DESC);
const BUF = 0x4000;

/** A 64 KiB single-region guest with one queue: desc 0x1000, avail 0x2000, used 0x3000. */
function setup(size = 8, features = 0n, memory = GuestMemory.create(0x10000)) {
  const ring = new RingBuilder(memory, size, 0x1000, 0x2000, 0x3000);
  const q = new SplitQueue(0, 256);
  ring.configure(q);
  q.activate(memory, features);
  return { memory, ring, q };
}

function pop(q: SplitQueue): DescriptorChain {
  const c = q.popChain();
  assert.ok(c !== null, 'expected a chain');
  return c;
}

function usageCode(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    if (e instanceof UsageError) return e.code;
    throw e;
  }
  return 'no error';
}

describe('SplitQueue configuration', () => {
  test('defaults: size = maxSize, addresses 0, not ready, inactive', () => {
    const q = new SplitQueue(3, 128);
    assert.equal(q.index, 3);
    assert.equal(q.size, 128);
    assert.deepEqual([q.descTable, q.availRing, q.usedRing, q.ready], [0, 0, 0, false]);
    assert.equal(q.isActive, false);
    assert.equal(q.popChain(), null);
    assert.equal(q.broken, false);
  });

  test('the maximum size must be a valid split queue size', () => {
    assert.equal(
      usageCode(() => new SplitQueue(0, 0)),
      'INVALID_ARGUMENT',
    );
    assert.equal(
      usageCode(() => new SplitQueue(0, 100)),
      'INVALID_ARGUMENT',
    );
    assert.equal(
      usageCode(() => new SplitQueue(0, 65536)),
      'INVALID_ARGUMENT',
    );
    assert.equal(new SplitQueue(0, 32768).size, 32768);
  });

  test('an empty ring pops null', () => {
    const { q } = setup();
    assert.equal(q.isActive, true);
    assert.equal(q.popChain(), null);
    assert.equal(q.hasAvailable(), false);
    assert.equal(q.availableCount(), 0);
  });
});

describe('SplitQueue pop', () => {
  test('a 1-descriptor readable chain', () => {
    const { memory, ring, q } = setup();
    memory.write(BUF, new Uint8Array([1, 2, 3, 4]));
    ring.setDesc(5, BUF, 4, 0);
    ring.makeAvailable(5);
    assert.equal(q.hasAvailable(), true);
    const c = pop(q);
    assert.equal(c.head, 5);
    assert.equal(c.readableLength, 4);
    assert.equal(c.writableLength, 0);
    assert.equal(c.descriptorCount, 1);
    assert.deepEqual([...c.segments], [BUF, 4]);
    assert.equal(c.readableSegments, 1);
    assert.equal(c.writableSegments, 0);
    assert.deepEqual(
      c.readable().map((v) => [...v]),
      [[1, 2, 3, 4]],
    );
    assert.deepEqual(c.writable(), []);
    assert.equal(q.inFlight, 1);
    assert.equal(q.nextAvail, 1);
    assert.equal(q.popChain(), null);
  });

  test('a 3-descriptor chain: two readable then one writable, in any descriptor order', () => {
    const { memory, ring, q } = setup();
    const head = ring.chain(
      [2, 7, 0],
      [
        { addr: BUF, len: 16 },
        { addr: BUF + 0x100, len: 512 },
        { addr: BUF + 0x400, len: 1, write: true },
      ],
    );
    ring.makeAvailable(head);
    memory.writeU32(BUF, 0x11223344);
    const c = pop(q);
    assert.equal(c.head, 2);
    assert.equal(c.descriptorCount, 3);
    assert.equal(c.readableLength, 528);
    assert.equal(c.writableLength, 1);
    assert.deepEqual([...c.segments], [BUF, 16, BUF + 0x100, 512, BUF + 0x400, 1]);
    assert.equal(c.segmentCount, 3);
    assert.equal(c.isWritableSegment(1), false);
    assert.equal(c.isWritableSegment(2), true);
    assert.equal(c.segmentAddress(1), BUF + 0x100);
    assert.equal(c.segmentLength(1), 512);
    assert.equal(c.reader().readU32(), 0x11223344);
    const w = c.writer();
    w.writeU8(0x7f);
    assert.equal(w.written, 1);
    assert.equal(memory.readU8(BUF + 0x400), 0x7f);
    // Writable views alias guest memory.
    c.writable()[0]![0] = 0x55;
    assert.equal(memory.readU8(BUF + 0x400), 0x55);
  });

  test('the chain is copied at pop: later descriptor writes do not change it', () => {
    const { ring, q } = setup();
    ring.setDesc(0, BUF, 8, 0);
    ring.makeAvailable(0);
    const c = pop(q);
    ring.setDesc(0, 0xdead0000, 99, F_WRITE);
    assert.deepEqual([...c.segments], [BUF, 8]);
    assert.equal(c.readableLength, 8);
  });

  test('an indirect chain (with INDIRECT_DESC): three entries, the WRITE flag of the pointer ignored', () => {
    const { memory, ring, q } = setup(8, INDIRECT);
    const table = 0x8000;
    const len = ring.indirectTable(table, [
      { addr: BUF, len: 4 },
      { addr: BUF + 0x10, len: 8 },
      { addr: BUF + 0x20, len: 2, write: true },
    ]);
    ring.setDesc(1, table, len, F_INDIRECT | F_WRITE);
    ring.makeAvailable(1);
    memory.write(BUF, new Uint8Array([9, 8, 7, 6]));
    const c = pop(q);
    assert.equal(c.head, 1);
    assert.equal(c.descriptorCount, 3);
    assert.equal(c.readableLength, 12);
    assert.equal(c.writableLength, 2);
    assert.deepEqual([...c.segments], [BUF, 4, BUF + 0x10, 8, BUF + 0x20, 2]);
    assert.equal(c.readableSegments, 2);
    assert.deepEqual([...c.readable()[0]!], [9, 8, 7, 6]);
  });

  test('direct descriptors followed by one indirect descriptor (§2.7.5.3.2)', () => {
    const { ring, q } = setup(8, INDIRECT);
    const table = 0x8000;
    const len = ring.indirectTable(table, [
      { addr: BUF + 0x10, len: 8 },
      { addr: BUF + 0x20, len: 2, write: true },
    ]);
    ring.setDesc(3, BUF, 4, F_NEXT, 4);
    ring.setDesc(4, table, len, F_INDIRECT);
    ring.makeAvailable(3);
    const c = pop(q);
    assert.equal(c.descriptorCount, 3);
    assert.deepEqual([...c.segments], [BUF, 4, BUF + 0x10, 8, BUF + 0x20, 2]);
    assert.equal(c.readableSegments, 2);
  });

  test('a descriptor crossing two adjacent regions becomes two segments and reads correctly', () => {
    // Guest [0, 0x8000) and [0x8000, 0x10000) are adjacent in guest space but not in the host buffer.
    const g = guardedMemory([
      { guestAddr: 0, size: 0x8000 },
      { guestAddr: 0x8000, size: 0x8000 },
    ]);
    const { memory, ring, q } = setup(8, 0n, g.memory);
    const data = Uint8Array.from({ length: 32 }, (_, i) => i + 1);
    memory.write(0x7ff0, data);
    ring.chain(
      [0, 1],
      [
        { addr: 0x7ff0, len: 32 },
        { addr: 0x7ffc, len: 8, write: true },
      ],
    );
    ring.makeAvailable(0);
    const c = pop(q);
    assert.deepEqual([...c.segments], [0x7ff0, 16, 0x8000, 16, 0x7ffc, 4, 0x8000, 4]);
    assert.equal(c.readableSegments, 2);
    assert.equal(c.descriptorCount, 2);
    const got = new Uint8Array(32);
    assert.equal(c.reader().read(got), 32);
    assert.deepEqual(got, data);
    const r = c.reader();
    r.skip(14);
    assert.equal(r.readU32(), 0x1211100f);
    const w = c.writer();
    w.writeU64(0x0807060504030201n);
    assert.deepEqual([...memory.slice(0x7ffc, 4)], [1, 2, 3, 4]);
    assert.deepEqual([...memory.slice(0x8000, 4)], [5, 6, 7, 8]);
    assert.ok(g.guardsIntact());
  });

  test('zero-length descriptors are legal and contribute nothing (item 11)', () => {
    const { memory, ring, q } = setup();
    memory.write(BUF, new Uint8Array([0xaa, 0xbb]));
    ring.chain(
      [0, 1, 2, 3],
      [
        { addr: 0xffff_0000_0000, len: 0 }, // never accessed, so not checked
        { addr: BUF, len: 2 },
        { addr: BUF + 0x10, len: 0, write: true },
        { addr: BUF + 0x20, len: 4, write: true },
      ],
    );
    ring.makeAvailable(0);
    const c = pop(q);
    assert.equal(c.descriptorCount, 4);
    assert.deepEqual([...c.segments], [BUF, 2, BUF + 0x20, 4]);
    assert.equal(c.readableSegments, 1);
    assert.equal(c.reader().readU16(), 0xbbaa);
    q.pushUsed(c.head, 0);
    assert.equal(ring.usedIdx, 1);
    // A chain of only zero-length descriptors pops too.
    ring.setDesc(5, BUF, 0, 0);
    ring.makeAvailable(5);
    const z = pop(q);
    assert.equal(z.readableLength + z.writableLength, 0);
    assert.equal(z.segmentCount, 0);
  });

  test('a chain using every descriptor of the table is allowed (TTL boundary)', () => {
    const { ring, q } = setup(4);
    ring.chain(
      [3, 2, 1, 0],
      [0, 1, 2, 3].map((k) => ({ addr: BUF + 0x10 * k, len: 0x10 })),
    );
    ring.makeAvailable(3);
    assert.equal(pop(q).descriptorCount, 4);
  });
});

describe('SplitQueue used ring', () => {
  test('batched addUsed is invisible until publishUsed, which stores used.idx once', () => {
    const { ring, q } = setup();
    for (let i = 0; i < 3; i++) ring.setDesc(i, BUF + 0x100 * i, 0x100, F_WRITE);
    ring.makeAvailable(0, 1, 2);
    const chains = [pop(q), pop(q), pop(q)];
    assert.equal(q.inFlight, 3);
    // Complete out of order.
    q.addUsed(chains[2]!.head, 30);
    q.addUsed(chains[0]!.head, 10);
    assert.equal(ring.usedIdx, 0, 'not visible before publish');
    assert.equal(q.nextUsed, 2);
    q.addUsed(chains[1]!.head, 20);
    q.publishUsed();
    assert.equal(ring.usedIdx, 3);
    assert.deepEqual(
      [0, 1, 2].map((s) => ring.usedElem(s)),
      [
        { id: 2, len: 30 },
        { id: 0, len: 10 },
        { id: 1, len: 20 },
      ],
    );
    assert.equal(q.inFlight, 0);
  });

  test('addUsed needs a head in flight and a u32 length (programming errors)', () => {
    const { ring, q } = setup();
    ring.setDesc(0, BUF, 1, 0);
    ring.makeAvailable(0);
    const c = pop(q);
    assert.equal(
      usageCode(() => {
        q.addUsed(1, 0);
      }),
      'NOT_IN_FLIGHT',
    );
    assert.equal(
      usageCode(() => {
        q.addUsed(99, 0);
      }),
      'NOT_IN_FLIGHT',
    );
    assert.equal(
      usageCode(() => {
        q.addUsed(c.head, -1);
      }),
      'INVALID_ARGUMENT',
    );
    assert.equal(
      usageCode(() => {
        q.addUsed(c.head, 2 ** 32);
      }),
      'INVALID_ARGUMENT',
    );
    q.pushUsed(c.head, 0xffff_ffff);
    assert.deepEqual(ring.usedElem(0), { id: 0, len: 0xffff_ffff });
    assert.equal(
      usageCode(() => {
        q.addUsed(c.head, 0);
      }),
      'NOT_IN_FLIGHT',
      'already used',
    );
    assert.equal(
      usageCode(() => {
        new SplitQueue(0, 8).addUsed(0, 0);
      }),
      'INVALID_STATE',
    );
  });

  test('a head can be reused by the driver once returned', () => {
    const { ring, q } = setup(2);
    ring.setDesc(0, BUF, 1, 0);
    for (let i = 0; i < 5; i++) {
      ring.makeAvailable(0);
      q.pushUsed(pop(q).head, i);
    }
    assert.equal(ring.usedIdx, 5);
    assert.deepEqual(ring.usedElem(0), { id: 0, len: 4 });
  });

  test('indices wrap at 65535 (ring started mid-way through set nextAvail / nextUsed)', () => {
    const { ring, q } = setup(4);
    q.nextAvail = 65534;
    q.nextUsed = 65534;
    ring.availIdx = 65534;
    ring.usedIdx = 65534;
    for (let i = 0; i < 4; i++) ring.setDesc(i, BUF + 0x10 * i, 0x10, F_WRITE);
    ring.makeAvailable(0, 1, 2, 3);
    assert.equal(ring.availIdx, 2);
    assert.equal(q.availableCount(), 4);
    const heads: number[] = [];
    for (let c = q.popChain(); c !== null; c = q.popChain()) heads.push(c.head);
    assert.deepEqual(heads, [0, 1, 2, 3]);
    assert.equal(q.nextAvail, 2);
    for (const h of heads) q.addUsed(h, h + 100);
    q.publishUsed();
    assert.equal(q.nextUsed, 2);
    assert.equal(ring.usedIdx, 2);
    // 65534 & 3 = 2, 65535 & 3 = 3, 0, 1.
    assert.deepEqual(
      [2, 3, 0, 1].map((s) => ring.usedElem(s)),
      heads.map((h) => ({ id: h, len: h + 100 })),
    );
  });

  test('a ring started mid-way uses slot idx & (size - 1)', () => {
    const { ring, q } = setup(8);
    q.nextAvail = 1003;
    q.nextUsed = 1003;
    ring.availIdx = 1003;
    ring.setDesc(6, BUF, 1, 0);
    ring.makeAvailable(6); // slot 1003 & 7 = 3
    assert.equal(pop(q).head, 6);
    q.pushUsed(6, 1);
    assert.equal(ring.usedIdx, 1004);
    assert.deepEqual(ring.usedElem(3), { id: 6, len: 1 });
  });

  test('nextAvail / nextUsed setters take 16-bit indices only', () => {
    const q = new SplitQueue(0, 8);
    assert.equal(
      usageCode(() => (q.nextAvail = 65536)),
      'INVALID_ARGUMENT',
    );
    assert.equal(
      usageCode(() => (q.nextUsed = -1)),
      'INVALID_ARGUMENT',
    );
    assert.equal(
      usageCode(() => (q.nextUsed = 1.5)),
      'INVALID_ARGUMENT',
    );
    q.nextAvail = 65535;
    assert.equal(q.nextAvail, 65535);
  });
});

describe('SplitQueue notifications without EVENT_IDX', () => {
  test('needsNotification follows VRING_AVAIL_F_NO_INTERRUPT, and is false when nothing was published', () => {
    const { ring, q } = setup();
    assert.equal(q.needsNotification(), false);
    ring.setDesc(0, BUF, 1, 0);
    ring.makeAvailable(0);
    q.pushUsed(pop(q).head, 0);
    assert.equal(q.needsNotification(), true);
    assert.equal(q.needsNotification(), false, 'nothing new published');
    ring.availFlags = 1;
    ring.makeAvailable(0);
    q.pushUsed(pop(q).head, 0);
    assert.equal(q.needsNotification(), false);
    ring.availFlags = 0;
    ring.makeAvailable(0);
    const c = pop(q);
    q.addUsed(c.head, 0);
    assert.equal(q.needsNotification(), false, 'added but not published');
    q.publishUsed();
    assert.equal(q.needsNotification(), true);
    // used_event is ignored without EVENT_IDX.
    ring.usedEvent = 1234;
    ring.makeAvailable(0);
    q.pushUsed(pop(q).head, 0);
    assert.equal(q.needsNotification(), true);
  });

  test('disable sets VRING_USED_F_NO_NOTIFY, enable clears it and re-checks avail.idx', () => {
    const { ring, q } = setup();
    q.disableNotification();
    assert.equal(ring.usedFlags, 1);
    assert.equal(q.enableNotification(), false);
    assert.equal(ring.usedFlags, 0);
    q.disableNotification();
    // The driver adds a buffer while notifications are off: no kick would come.
    ring.setDesc(0, BUF, 1, 0);
    ring.makeAvailable(0);
    assert.equal(q.enableNotification(), true, 'enable then re-check finds the buffer');
    assert.equal(ring.usedFlags, 0);
    assert.equal(pop(q).head, 0);
    assert.equal(q.enableNotification(), false);
    assert.equal(ring.availEvent, 0, 'avail_event untouched without EVENT_IDX');
  });
});

describe('SplitQueue notifications with EVENT_IDX', () => {
  function used(q: SplitQueue, ring: RingBuilder, n: number): void {
    for (let i = 0; i < n; i++) {
      ring.makeAvailable(0);
      q.addUsed(pop(q).head, 0);
    }
    q.publishUsed();
  }

  test('needsNotification uses need_event(used_event, new, old) and ignores the flags', () => {
    const { ring, q } = setup(8, EVENT_IDX);
    assert.equal(q.eventIdx, true);
    ring.setDesc(0, BUF, 1, 0);
    ring.availFlags = 1; // ignored with EVENT_IDX
    ring.usedEvent = 0;
    used(q, ring, 1); // used.idx 0 → 1 crosses used_event 0
    assert.equal(q.needsNotification(), true);
    used(q, ring, 1); // 1 → 2 does not cross 0
    assert.equal(q.needsNotification(), false);
    ring.usedEvent = 4;
    used(q, ring, 2); // 2 → 4: entry 4 not written yet
    assert.equal(q.needsNotification(), false);
    used(q, ring, 1); // 4 → 5 writes entry 4
    assert.equal(q.needsNotification(), true);
    ring.usedEvent = 6;
    used(q, ring, 3); // batch 5 → 8 crosses 6 in the middle
    assert.equal(q.needsNotification(), true);
    assert.equal(q.needsNotification(), false, 'nothing new published');
  });

  test('publishes without a check in between accumulate: old is the index at the last check', () => {
    const { ring, q } = setup(8, EVENT_IDX);
    ring.setDesc(0, BUF, 1, 0);
    ring.usedEvent = 1;
    used(q, ring, 2); // 0 → 2
    used(q, ring, 2); // 2 → 4
    assert.equal(q.needsNotification(), true, 'entry 1 was written since the last check');
  });

  test('need_event across the 16-bit wrap', () => {
    const { ring, q } = setup(8, EVENT_IDX);
    ring.setDesc(0, BUF, 1, 0);
    q.nextAvail = 65533;
    ring.availIdx = 65533;
    q.nextUsed = 65533;
    ring.usedEvent = 65535;
    used(q, ring, 1); // 65533 → 65534
    assert.equal(q.needsNotification(), false);
    used(q, ring, 2); // 65534 → 0 writes entry 65535
    assert.equal(ring.usedIdx, 0);
    assert.equal(q.needsNotification(), true);
    ring.usedEvent = 0;
    used(q, ring, 1); // 0 → 1 writes entry 0
    assert.equal(q.needsNotification(), true);
    ring.usedEvent = 65535; // behind: no notification until the index comes round again
    used(q, ring, 3);
    assert.equal(q.needsNotification(), false);
  });

  test('disable leaves avail_event behind; enable publishes avail_event = nextAvail and re-checks', () => {
    const { ring, q } = setup(8, EVENT_IDX);
    ring.setDesc(0, BUF, 1, 0);
    assert.equal(q.enableNotification(), false);
    assert.equal(ring.availEvent, 0);
    ring.makeAvailable(0);
    q.disableNotification();
    assert.equal(ring.usedFlags, 0, 'flags stay 0 with EVENT_IDX');
    q.pushUsed(pop(q).head, 0);
    assert.equal(ring.availEvent, 0, 'disable does not move avail_event');
    assert.equal(q.enableNotification(), false);
    assert.equal(ring.availEvent, 1);
    ring.makeAvailable(0);
    ring.makeAvailable(0);
    q.disableNotification();
    assert.equal(q.enableNotification(), true, 'buffers already there');
    assert.equal(ring.availEvent, 1, 'avail_event = nextAvail (not yet popped)');
    assert.equal(ring.usedFlags, 0);
  });
});

describe('SplitQueue lifecycle', () => {
  test('reset returns to the unconfigured state; the queue can be set up again', () => {
    const { memory, ring, q } = setup(4, EVENT_IDX | INDIRECT);
    ring.setDesc(0, BUF, 1, 0);
    ring.makeAvailable(0);
    pop(q);
    q.reset();
    assert.equal(q.isActive, false);
    assert.equal(q.size, 256);
    assert.deepEqual([q.descTable, q.availRing, q.usedRing, q.ready], [0, 0, 0, false]);
    assert.deepEqual([q.nextAvail, q.nextUsed, q.inFlight], [0, 0, 0]);
    assert.equal(q.eventIdx, false);
    assert.equal(q.popChain(), null);
    assert.equal(q.needsNotification(), false);
    // Set up again on a fresh ring.
    memory.fill(0x1000, 0x3000, 0);
    const ring2 = new RingBuilder(memory, 4, 0x1000, 0x2000, 0x3000);
    ring2.configure(q);
    q.activate(memory, 0n);
    ring2.setDesc(1, BUF, 1, 0);
    ring2.makeAvailable(1);
    q.pushUsed(pop(q).head, 7);
    assert.deepEqual(ring2.usedElem(0), { id: 1, len: 7 });
  });

  test('activate again (e.g. after a memory table change) keeps indices and chains in flight', () => {
    const { memory, ring, q } = setup(4);
    ring.setDesc(0, BUF, 1, 0);
    ring.setDesc(1, BUF, 1, 0);
    ring.makeAvailable(0);
    const c = pop(q);
    q.activate(memory, 0n);
    assert.equal(q.nextAvail, 1);
    assert.equal(q.inFlight, 1);
    ring.makeAvailable(1);
    q.addUsed(c.head, 0);
    q.pushUsed(pop(q).head, 0);
    assert.equal(ring.usedIdx, 2);
  });

  test('inFlight and availableCount track the ring', () => {
    const { ring, q } = setup(4);
    for (let i = 0; i < 4; i++) ring.setDesc(i, BUF, 1, 0);
    ring.makeAvailable(0, 1, 2);
    assert.equal(q.availableCount(), 3);
    const a = pop(q);
    pop(q);
    assert.equal(q.inFlight, 2);
    assert.equal(q.availableCount(), 1);
    q.pushUsed(a.head, 0);
    assert.equal(q.inFlight, 1);
  });
});

describe('SplitQueue unpop and enableNotificationForNew (device look-ahead, virtio-net receive)', () => {
  test('unpopped chains come back from the next pops, in order, and are no longer in flight', () => {
    const { ring, q } = setup(8, EVENT_IDX);
    for (let i = 0; i < 4; i++) ring.setDesc(i, BUF + 0x100 * i, 0x100, F_WRITE);
    ring.makeAvailable(0, 1, 2, 3);
    const a = pop(q);
    const b = pop(q);
    const c = pop(q);
    assert.equal(q.inFlight, 3);
    q.unpop(c.head);
    q.unpop(b.head);
    assert.equal(q.inFlight, 1);
    assert.equal(q.nextAvail, 1);
    assert.equal(
      usageCode(() => {
        q.unpop(b.head);
      }),
      'NOT_IN_FLIGHT',
    );
    assert.deepEqual([pop(q).head, pop(q).head, pop(q).head], [1, 2, 3]);
    q.pushUsed(a.head, 0);
    assert.equal(q.popChain(), null);
  });

  test('enableNotificationForNew asks only for chains added after those already there', () => {
    const { ring, q } = setup(8, EVENT_IDX);
    for (let i = 0; i < 3; i++) ring.setDesc(i, BUF + 0x100 * i, 0x100, F_WRITE);
    ring.makeAvailable(0, 1);
    const a = pop(q);
    q.unpop(a.head);
    // enableNotification would see the unpopped chain and ask to pop again forever.
    assert.equal(q.enableNotification(), true);
    assert.equal(q.enableNotificationForNew(), false);
    assert.equal(ring.availEvent, 2, 'avail_event = avail.idx: the next added chain notifies');
    ring.makeAvailable(2);
    assert.equal(q.enableNotificationForNew(), false, 'nothing new since this call read avail.idx');
    assert.equal(ring.availEvent, 3);
  });

  test('without EVENT_IDX it clears VRING_USED_F_NO_NOTIFY', () => {
    const { q, ring } = setup();
    q.disableNotification();
    assert.equal(q.enableNotificationForNew(), false);
    assert.equal(ring.usedFlags, 0);
  });
});
