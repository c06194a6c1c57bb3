import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { GuestMemory } from '../../../src/virtio/guest-memory.js';
import { GuestAllocator } from '../../../src/virtio/guest-allocator.js';
import { UsageError, DeviceFault } from '../../../src/virtio/errors.js';
import { SplitVirtqueue } from '../../../src/virtio/split/split-virtqueue.js';
import { VirtqueueError } from '../../../src/virtio/split/virtqueue-error.js';
import type { ScatterEntry } from '../../../src/virtio/driver/virtqueue.js';
import { FakeDeviceRing, F_INDIRECT, F_NEXT, F_WRITE, descBytes } from './fake-device-ring.js';

/** Fixed ring addresses (hand-placed, not computed by the code under test), good for sizes up to 256. */
const ADDRS = { descTable: 0x1000, availRing: 0x3000, usedRing: 0x4000 } as const;
const HEAP_BASE = 0x10000;
const HEAP_SIZE = 0x10000;

interface Setup {
  memory: GuestMemory;
  allocator: GuestAllocator;
  vq: SplitVirtqueue<string>;
  dev: FakeDeviceRing;
  notified: () => number;
  callbacks: () => number;
}

function setup(
  options: {
    size?: number;
    eventIdx?: boolean;
    indirect?: boolean;
    callback?: boolean;
    memory?: GuestMemory;
  } = {},
): Setup {
  const size = options.size ?? 8;
  const memory = options.memory ?? GuestMemory.create(0x40000);
  const allocator = new GuestAllocator(memory, { base: HEAP_BASE, size: HEAP_SIZE });
  let notified = 0;
  let callbacks = 0;
  const vq = new SplitVirtqueue<string>({
    index: 0,
    name: 'vq0',
    memory,
    size,
    addresses: ADDRS,
    eventIdx: options.eventIdx ?? false,
    indirect: options.indirect ?? false,
    allocator,
    notify: () => {
      notified++;
    },
    ...(options.callback === false
      ? {}
      : {
          callback: () => {
            callbacks++;
          },
        }),
  });
  const dev = new FakeDeviceRing(memory.regions[0]!.bytes, 0, size, ADDRS);
  return { memory, allocator, vq, dev, notified: () => notified, callbacks: () => callbacks };
}

function errorCode(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    if (e instanceof UsageError || e instanceof VirtqueueError) return e.code;
    throw e;
  }
  return 'no error';
}

const one = (addr: number, len: number): ScatterEntry[] => [{ addr, len }];

/** Adds, kicks, lets the device complete every popped chain with its full writable length, and gets them. */
function roundTrip(s: Setup, count: number): void {
  for (let k = 0; k < count; k++) {
    s.vq.addOutbuf(one(0x8000, 8), `rt${k}`);
    s.vq.kickPrepare();
    const c = s.dev.pop()!;
    s.dev.complete(c.head, 0);
    assert.equal(s.vq.getBuf()?.token, `rt${k}`);
  }
}

describe('SplitVirtqueue layout', () => {
  test('modern layout: desc at base, avail after it, used 4-aligned', () => {
    // size 256: desc 4096 bytes, avail 4 + 512 + 2 = 518 → 0x1206, used at 0x1208, 4 + 2048 + 2 bytes.
    assert.deepEqual(SplitVirtqueue.layout(256, 0x1000), {
      descTable: 0x1000,
      availRing: 0x2000,
      usedRing: 0x2208,
      bytes: 0x1208 + 2054,
    });
    // size 1: avail 0x1010 + 8 = 0x1018 (already 4-aligned)
    assert.deepEqual(SplitVirtqueue.layout(1, 0x1000), {
      descTable: 0x1000,
      availRing: 0x1010,
      usedRing: 0x1018,
      bytes: 0x18 + 14,
    });
    // size 2: avail 0x1020 + 10 = 0x102a → used at 0x102c
    assert.equal(SplitVirtqueue.layout(2, 0x1000).usedRing, 0x102c);
  });

  test('legacy layout matches vring_size(num, 4096)', () => {
    const l = SplitVirtqueue.layout(256, 0x4000, { legacy: true });
    assert.deepEqual(l, { descTable: 0x4000, availRing: 0x5000, usedRing: 0x6000, bytes: 10246 });
    assert.equal(
      errorCode(() => SplitVirtqueue.layout(256, 0x10, { legacy: true })),
      'INVALID_ARGUMENT',
    );
    assert.equal(
      errorCode(() => SplitVirtqueue.layout(3, 0)),
      'INVALID_ARGUMENT',
    );
    assert.equal(
      errorCode(() => SplitVirtqueue.layout(8, 8)),
      'INVALID_ARGUMENT',
    );
  });

  test('allocate places the ring in allocator memory and release gives it back', () => {
    const memory = GuestMemory.create(0x20000);
    const allocator = new GuestAllocator(memory, { base: 0x100 });
    const before = allocator.available;
    const l = SplitVirtqueue.allocate(allocator, 64, true);
    assert.equal(l.descTable % 4096, 0);
    assert.equal(l.usedRing % 4096, 0);
    const vq = new SplitVirtqueue({
      index: 1,
      name: 'a',
      memory,
      size: 64,
      addresses: l,
      eventIdx: true,
      indirect: false,
      notify: () => undefined,
    });
    assert.equal(vq.numFree, 64);
    SplitVirtqueue.release(allocator, l);
    assert.equal(allocator.available, before);
  });

  test('the constructor refuses bad sizes, misaligned, overlapping or unmapped parts', () => {
    const memory = GuestMemory.create(0x8000);
    const make =
      (
        over: {
          size?: number;
          indirect?: boolean;
          addresses?: Partial<Record<keyof typeof ADDRS, number>>;
        } = {},
      ) =>
      () =>
        new SplitVirtqueue({
          index: 0,
          name: 'bad',
          memory,
          size: over.size ?? 8,
          addresses: { ...ADDRS, ...over.addresses },
          eventIdx: false,
          indirect: over.indirect ?? false,
          notify: () => undefined,
        });
    assert.equal(errorCode(make({ size: 6 })), 'INVALID_ARGUMENT');
    assert.equal(errorCode(make({ size: 65536 })), 'INVALID_ARGUMENT');
    assert.equal(errorCode(make({ addresses: { descTable: 0x1008 } })), 'INVALID_ARGUMENT');
    assert.equal(errorCode(make({ addresses: { availRing: 0x3001 } })), 'INVALID_ARGUMENT');
    assert.equal(errorCode(make({ addresses: { usedRing: 0x4002 } })), 'INVALID_ARGUMENT');
    assert.equal(errorCode(make({ addresses: { availRing: 0x1040 } })), 'INVALID_ARGUMENT', 'overlap');
    assert.equal(errorCode(make({ addresses: { usedRing: 0x7ff0 } })), 'INVALID_ARGUMENT', 'past memory');
    assert.equal(errorCode(make({ indirect: true })), 'INVALID_ARGUMENT', 'indirect without allocator');
    assert.equal(errorCode(make()), 'no error');
  });
});

describe('SplitVirtqueue addBuf', () => {
  test('direct chain: exact descriptor bytes, avail entry, avail.idx published by kickPrepare', () => {
    const s = setup();
    s.memory.fill(ADDRS.descTable, 16 * 8, 0xaa); // garbage must be overwritten by the constructor...
    const fresh = setup({ memory: s.memory }); // ...which zeroes the ring
    assert.deepEqual(fresh.dev.descRaw(5), new Uint8Array(16));
    const { vq, dev } = fresh;
    const high = 0x1_2345_6789; // above 2^32: both halves of le64 addr
    vq.addBuf(
      [{ addr: high, len: 100 }],
      [
        { addr: 0x5000, len: 200 },
        { addr: 0x6000, len: 300 },
      ],
      'A',
    );
    assert.equal(vq.numFree, 5);
    assert.deepEqual(dev.descRaw(0), descBytes(high, 100, F_NEXT, 1));
    assert.deepEqual(dev.descRaw(1), descBytes(0x5000, 200, F_NEXT | F_WRITE, 2));
    assert.deepEqual(dev.descRaw(2), descBytes(0x6000, 300, F_WRITE, 0));
    assert.equal(dev.availEntry(0), 0);
    assert.equal(dev.availIdx, 0, 'not visible before kickPrepare');
    vq.addOutbuf(one(0x7000, 4), 'B');
    assert.deepEqual(dev.descRaw(3), descBytes(0x7000, 4, 0, 0));
    assert.equal(dev.availEntry(1), 3);
    assert.equal(vq.kickPrepare(), true);
    assert.equal(dev.availIdx, 2);
    assert.equal(vq.availIdx, 2);
    const c = dev.pop()!;
    assert.equal(c.head, 0);
    assert.equal(c.indirect, false);
    assert.equal(c.writableLen, 500);
    assert.equal(dev.pop()!.head, 3);
  });

  test('indirect table: one ring descriptor, exact table bytes, table freed after getBuf', () => {
    const { vq, dev, allocator } = setup({ indirect: true });
    const free0 = allocator.available;
    vq.addBuf(
      [
        { addr: 0x8000, len: 16 },
        { addr: 0x8100, len: 32 },
      ],
      [{ addr: 0x9000, len: 512 }],
      'T',
    );
    assert.equal(vq.numFree, 7);
    assert.equal(allocator.available, free0 - 48);
    const ring = dev.readDesc(0);
    assert.equal(ring.flags, F_INDIRECT);
    assert.equal(ring.len, 48);
    assert.equal(ring.next, 0);
    assert.ok(ring.addr >= HEAP_BASE && ring.addr < HEAP_BASE + HEAP_SIZE && ring.addr % 16 === 0);
    assert.deepEqual(dev.descRaw(0), descBytes(ring.addr, 48, F_INDIRECT, 0));
    assert.deepEqual(dev.bytesAt(ring.addr, 16), descBytes(0x8000, 16, F_NEXT, 1));
    assert.deepEqual(dev.bytesAt(ring.addr + 16, 16), descBytes(0x8100, 32, F_NEXT, 2));
    assert.deepEqual(dev.bytesAt(ring.addr + 32, 16), descBytes(0x9000, 512, F_WRITE, 0));

    // A single-entry buffer stays direct even with indirect negotiated.
    vq.addInbuf(one(0xa000, 64), 'S');
    assert.deepEqual(dev.descRaw(1), descBytes(0xa000, 64, F_WRITE, 0));
    vq.kick();
    const [c1, c2] = dev.popAll();
    assert.equal(c1!.indirect, true);
    assert.equal(c1!.writableLen, 512);
    assert.equal(c2!.indirect, false);
    dev.complete(c1!.head, 512);
    assert.deepEqual(vq.getBuf(), { token: 'T', len: 512 });
    assert.equal(allocator.available, free0);
    assert.equal(vq.numFree, 7);
  });

  test('indirect falls back to a direct chain when no table can be allocated', () => {
    const { vq, dev, allocator } = setup({ indirect: true });
    const hog = allocator.alloc(allocator.available);
    vq.addBuf(one(0x8000, 1), one(0x9000, 2), 'D');
    assert.equal(vq.numFree, 6);
    assert.deepEqual(dev.descRaw(0), descBytes(0x8000, 1, F_NEXT, 1));
    assert.deepEqual(dev.descRaw(1), descBytes(0x9000, 2, F_WRITE, 0));
    allocator.free(hog);
  });

  test('descriptors are reused LIFO after getBuf, as Linux chains its free list', () => {
    const { vq, dev } = setup({ size: 8 });
    vq.addBuf(one(0x100, 1), one(0x200, 2), 'A'); // descs 0,1
    vq.addOutbuf(one(0x300, 3), 'B'); // desc 2
    vq.kick();
    const [a, b] = dev.popAll();
    dev.complete(b!.head, 0);
    dev.complete(a!.head, 2);
    assert.deepEqual(vq.getBuf(), { token: 'B', len: 0 });
    assert.deepEqual(vq.getBuf(), { token: 'A', len: 2 });
    assert.equal(vq.getBuf(), null);
    assert.equal(vq.numFree, 8);
    // Free list now 0 → 1 → 2 → 3 …: a 4-entry chain takes 0, 1, 2, 3.
    vq.addBuf(one(0x400, 4), [one(0x500, 5)[0]!, one(0x600, 6)[0]!, one(0x700, 7)[0]!], 'C');
    vq.kick();
    const c = dev.pop()!;
    assert.equal(c.head, 0);
    assert.deepEqual(
      [0, 1, 2, 3].map((i) => dev.readDesc(i).next),
      [1, 2, 3, 0],
    );
    assert.deepEqual(
      c.descs.map((d) => d.addr),
      [0x400, 0x500, 0x600, 0x700],
    );
  });

  test('QUEUE_FULL leaves the queue unchanged; invalid buffers are refused', () => {
    const { vq, dev } = setup({ size: 4 });
    vq.addBuf(one(0x100, 1), one(0x200, 2), 'A');
    vq.addOutbuf(one(0x300, 1), 'B');
    assert.equal(vq.numFree, 1);
    assert.equal(
      errorCode(() => {
        vq.addBuf(one(0x100, 1), one(0x200, 2), 'X');
      }),
      'QUEUE_FULL',
    );
    assert.equal(vq.numFree, 1);
    vq.addOutbuf(one(0x400, 1), 'C');
    assert.equal(
      errorCode(() => {
        vq.addOutbuf(one(0x100, 1), 'Y');
      }),
      'QUEUE_FULL',
    );
    vq.kick();
    assert.deepEqual(
      dev.popAll().map((c) => c.head),
      [0, 2, 3],
    );

    const s = setup({ size: 4 });
    assert.equal(
      errorCode(() => {
        s.vq.addBuf([], [], 'E');
      }),
      'INVALID_ARGUMENT',
    );
    assert.equal(
      errorCode(() => {
        s.vq.addOutbuf(one(0, 1), undefined as unknown as string);
      }),
      'INVALID_ARGUMENT',
    );
    const five = Array.from({ length: 5 }, (_, i) => ({ addr: 0x100 * i, len: 1 }));
    assert.equal(
      errorCode(() => {
        s.vq.addOutbuf(five, 'L');
      }),
      'INVALID_ARGUMENT',
    );
    assert.equal(
      errorCode(() => {
        s.vq.addOutbuf(one(-1, 1), 'N');
      }),
      'INVALID_ARGUMENT',
    );
    assert.equal(
      errorCode(() => {
        s.vq.addOutbuf(one(0, 2 ** 32), 'N');
      }),
      'INVALID_ARGUMENT',
    );
    assert.equal(
      errorCode(() => {
        s.vq.addOutbuf(one(0, 1.5), 'N');
      }),
      'INVALID_ARGUMENT',
    );
    assert.equal(
      errorCode(() => {
        s.vq.addBuf(one(0, 0xffff_ffff), one(0, 2), 'N');
      }),
      'INVALID_ARGUMENT',
      'chains over 2^32 bytes',
    );
    assert.equal(s.vq.numFree, 4);
    assert.equal(s.vq.availIdx, 0);
  });
});

describe('SplitVirtqueue notifications', () => {
  test('without EVENT_IDX: kick unless the device set VRING_USED_F_NO_NOTIFY', () => {
    const { vq, dev, notified } = setup();
    vq.addOutbuf(one(0x100, 1), 'A');
    assert.equal(vq.kick(), true);
    assert.equal(notified(), 1);
    dev.usedFlags = 1;
    vq.addOutbuf(one(0x100, 1), 'B');
    assert.equal(vq.kick(), false);
    assert.equal(notified(), 1);
    assert.equal(dev.availIdx, 2, 'published even when no notification is needed');
    dev.usedFlags = 0;
    assert.equal(vq.kickPrepare(), true);
    vq.notify();
    assert.equal(notified(), 2);
  });

  test('with EVENT_IDX: need_event(avail_event, new, old), old being avail.idx at the previous kick', () => {
    const { vq, dev } = setup({ eventIdx: true });
    // avail_event 0: moving 0 → 1 crosses it.
    vq.addOutbuf(one(0x100, 1), 'a');
    assert.equal(vq.kickPrepare(), true);
    // avail_event 5: 1 → 2 does not cross, 2 → 6 does (event 5 is in (2, 6]).
    dev.availEvent = 5;
    vq.addOutbuf(one(0x100, 1), 'b');
    assert.equal(vq.kickPrepare(), false);
    for (const t of ['c', 'd', 'e', 'f']) vq.addOutbuf(one(0x100, 1), t);
    assert.equal(vq.kickPrepare(), true);
    // Nothing added: nothing to kick for.
    assert.equal(vq.kickPrepare(), false);
    // avail_event 7: the device wants a kick once avail.idx passes 7.
    dev.availEvent = 7;
    vq.addOutbuf(one(0x100, 1), 'g');
    assert.equal(vq.kickPrepare(), false, '6 → 7 does not pass event 7');
    vq.addOutbuf(one(0x100, 1), 'h');
    assert.equal(vq.kickPrepare(), true, '7 → 8 passes event 7');
  });

  test('EVENT_IDX decisions across the 16-bit wrap of avail.idx', () => {
    const s = setup({ eventIdx: true, size: 4 });
    const { vq, dev } = s;
    roundTrip(s, 65534);
    assert.equal(vq.availIdx, 65534);
    assert.equal(dev.availIdx, 65534);
    // old 65534, event 65535, new 1 (three adds across the wrap): crossed.
    dev.availEvent = 65535;
    for (const t of ['x', 'y', 'z']) vq.addOutbuf(one(0x100, 1), t);
    assert.equal(vq.availIdx, 1);
    assert.equal(vq.kickPrepare(), true);
    assert.equal(dev.availIdx, 1);
    // The device sees the entries at slots 65534 % 4 = 2, 3, 0.
    assert.deepEqual(
      dev.popAll().map((c) => dev.readDesc(c.head).addr),
      [0x100, 0x100, 0x100],
    );
    dev.complete(0, 0);
    dev.complete(1, 0);
    dev.complete(2, 0);
    while (vq.getBuf() !== null);
    // old 1, event 2: 1 → 2 does not pass it; 2 → 3 does.
    dev.availEvent = 2;
    vq.addOutbuf(one(0x100, 1), 'p');
    assert.equal(vq.kickPrepare(), false);
    vq.addOutbuf(one(0x100, 1), 'q');
    assert.equal(vq.kickPrepare(), true);

    // A second queue: old 65534, event 3, new 1 — the event lies ahead of the wrap: no kick.
    const t = setup({ eventIdx: true, size: 4 });
    roundTrip(t, 65534);
    t.dev.availEvent = 3;
    for (const x of ['1', '2', '3']) t.vq.addOutbuf(one(0x100, 1), x);
    assert.equal(t.vq.kickPrepare(), false);
    // avail_event 65533 was already passed (idx 65534): 65534 → 65535 needs no kick.
    const u = setup({ eventIdx: true, size: 4 });
    roundTrip(u, 65534);
    u.dev.availEvent = 65533;
    u.vq.addOutbuf(one(0x100, 1), 'w');
    assert.equal(u.vq.kickPrepare(), false);
  });

  test('without EVENT_IDX: disableCb / enableCb drive VRING_AVAIL_F_NO_INTERRUPT', () => {
    const { vq, dev } = setup();
    assert.equal(dev.availFlags, 0, 'interrupts on with a callback');
    vq.disableCb();
    assert.equal(dev.availFlags, 1);
    assert.equal(vq.enableCb(), true);
    assert.equal(dev.availFlags, 0);
    vq.addOutbuf(one(0x100, 1), 'A');
    vq.kick();
    vq.disableCb();
    dev.complete(dev.pop()!.head, 0);
    assert.equal(vq.enableCb(), false, 'a used buffer is pending: poll again');
    assert.equal(dev.availFlags, 0);

    const nocb = setup({ callback: false });
    assert.equal(nocb.dev.availFlags, 1, 'no callback: no interrupts (Linux sets NO_INTERRUPT)');
  });

  test('with EVENT_IDX: used_event follows getBuf while enabled, parks at 0 when disabled', () => {
    const { vq, dev } = setup({ eventIdx: true });
    assert.equal(dev.availFlags, 0, 'flags are not used with EVENT_IDX');
    for (const t of ['a', 'b', 'c']) vq.addOutbuf(one(0x100, 1), t);
    vq.kick();
    for (const c of dev.popAll()) dev.complete(c.head, 0);
    vq.getBuf();
    assert.equal(dev.usedEvent, 1, 'used_event = last_used_idx after each getBuf');
    vq.disableCb();
    assert.equal(dev.usedEvent, 0);
    assert.equal(dev.availFlags, 0);
    vq.getBuf();
    assert.equal(dev.usedEvent, 0, 'not moved while callbacks are disabled');
    const opaque = vq.enableCbPrepare();
    assert.equal(opaque, 2);
    assert.equal(dev.usedEvent, 2);
    assert.equal(vq.poll(opaque), true, 'one more used buffer is pending');
    vq.getBuf();
    assert.equal(dev.usedEvent, 3);
    assert.equal(vq.poll(vq.lastUsedIdx), false);
    assert.equal(vq.enableCb(), true);
  });

  test('enableCbDelayed puts used_event 3/4 of the outstanding buffers ahead', () => {
    const { vq, dev } = setup({ eventIdx: true, size: 16 });
    roundTrip({ vq, dev } as Setup, 5); // last_used 5
    vq.disableCb();
    for (let k = 0; k < 8; k++) vq.addOutbuf(one(0x100, 1), `d${k}`);
    vq.kick();
    // outstanding 8 → bufs 6 → used_event 5 + 6 = 11.
    assert.equal(vq.enableCbDelayed(), true);
    assert.equal(dev.usedEvent, 11);
    const chains = dev.popAll();
    for (const c of chains.slice(0, 6)) dev.complete(c.head, 0);
    assert.equal(vq.enableCbDelayed(), true, '6 used: not past the threshold');
    dev.complete(chains[6]!.head, 0);
    assert.equal(vq.enableCbDelayed(), false, '7 used > 6: poll again');
    // Wraps with the indices: outstanding 3 → bufs 2.
    const w = setup({ eventIdx: true, size: 4 });
    roundTrip(w, 65535);
    for (const t of ['a', 'b', 'c']) w.vq.addOutbuf(one(0x100, 1), t);
    assert.equal(w.vq.enableCbDelayed(), true);
    assert.equal(w.dev.usedEvent, 1, '65535 + 2 wraps to 1');
  });

  test('interrupt(): calls the callback only when there is something new', () => {
    const s = setup({ eventIdx: true });
    assert.equal(s.vq.interrupt(), false);
    roundTrip(s, 1); // used_event = 1
    assert.equal(s.dev.usedEvent, 1);
    s.vq.addOutbuf(one(0x100, 1), 'A');
    s.vq.kick();
    s.dev.complete(s.dev.pop()!.head, 0);
    assert.equal(s.vq.interrupt(), true);
    assert.equal(s.callbacks(), 1);
    // After an event-idx interrupt, disableCb leaves used_event alone (the device won't fire again).
    const ev = s.dev.usedEvent;
    s.vq.disableCb();
    assert.equal(s.dev.usedEvent, ev);
    assert.equal(ev, 1);
    assert.equal(s.vq.getBuf()?.token, 'A');
    assert.equal(s.vq.interrupt(), false);
  });
});

describe('SplitVirtqueue teardown', () => {
  test('detachUnusedBuf returns every outstanding token exactly once and frees everything', () => {
    const { vq, dev, allocator } = setup({ indirect: true, size: 8 });
    const free0 = allocator.available;
    vq.addBuf(one(0x100, 1), one(0x200, 2), 'A'); // indirect
    vq.addOutbuf(one(0x300, 3), 'B');
    vq.addBuf(one(0x100, 1), one(0x200, 2), 'C');
    vq.kick();
    vq.addOutbuf(one(0x400, 4), 'D'); // never published
    dev.complete(dev.pop()!.head, 1);
    assert.equal(vq.getBuf()?.token, 'A');
    const got: string[] = [];
    for (let t = vq.detachUnusedBuf(); t !== null; t = vq.detachUnusedBuf()) got.push(t);
    assert.deepEqual(got.sort(), ['B', 'C', 'D']);
    assert.equal(vq.detachUnusedBuf(), null);
    assert.equal(vq.numFree, 8);
    assert.equal(allocator.available, free0);
    assert.equal(vq.availIdx, 1, 'avail.idx stepped back once per detached buffer, as Linux does');
    assert.equal(dev.availIdx, 1);
  });

  test('reset() recycles tokens, zeroes the ring and makes the queue usable again', () => {
    const s = setup({ eventIdx: true });
    s.vq.addOutbuf(one(0x100, 1), 'A');
    s.vq.addOutbuf(one(0x100, 1), 'B');
    s.vq.kick();
    s.dev.complete(99, 0);
    assert.throws(() => s.vq.getBuf(), VirtqueueError);
    const recycled: string[] = [];
    s.vq.reset((t) => recycled.push(t));
    assert.deepEqual(recycled, ['A', 'B']);
    assert.equal(s.vq.isBroken(), false);
    assert.equal(s.vq.numFree, 8);
    assert.equal(s.dev.usedIdx, 0);
    assert.equal(s.dev.availIdx, 0);
    const dev = new FakeDeviceRing(s.memory.regions[0]!.bytes, 0, 8, ADDRS);
    s.vq.addOutbuf(one(0x500, 5), 'C');
    s.vq.kick();
    dev.complete(dev.pop()!.head, 0);
    assert.deepEqual(s.vq.getBuf(), { token: 'C', len: 0 });
  });
});

describe('SplitVirtqueue against a hostile device', () => {
  /** Checks the broken state, that tokens can still be taken back, and that a fresh queue on the same memory works. */
  function assertBroken(s: Setup, code: string, outstanding: string[]): void {
    assert.equal(s.vq.isBroken(), true);
    assert.ok(s.vq.brokenReason instanceof VirtqueueError);
    assert.ok(s.vq.brokenReason instanceof DeviceFault);
    assert.equal(s.vq.brokenReason.code, code);
    assert.equal(
      errorCode(() => {
        s.vq.addOutbuf(one(0x100, 1), 'Z');
      }),
      'QUEUE_BROKEN',
    );
    assert.equal(
      errorCode(() => s.vq.getBuf()),
      'QUEUE_BROKEN',
    );
    const n = s.notified();
    assert.equal(s.vq.kick(), false);
    assert.equal(s.notified(), n);
    assert.equal(s.vq.interrupt(), true);
    assert.equal(s.callbacks(), 0);
    const got: string[] = [];
    for (let t = s.vq.detachUnusedBuf(); t !== null; t = s.vq.detachUnusedBuf()) got.push(t);
    assert.deepEqual(got.sort(), [...outstanding].sort());
    assert.equal(s.vq.numFree, s.vq.size);

    // A fresh queue on the same memory works: exact bytes of a 3-entry chain, round trip.
    const fresh = setup({ memory: s.memory, size: s.vq.size });
    fresh.vq.addBuf(one(0x100, 1), [one(0x200, 2)[0]!, one(0x300, 3)[0]!], 'F');
    fresh.vq.kick();
    const c = fresh.dev.pop()!;
    assert.equal(c.head, 0);
    assert.deepEqual(fresh.dev.descRaw(0), descBytes(0x100, 1, F_NEXT, 1));
    assert.deepEqual(fresh.dev.descRaw(1), descBytes(0x200, 2, F_NEXT | F_WRITE, 2));
    assert.deepEqual(fresh.dev.descRaw(2), descBytes(0x300, 3, F_WRITE, 0));
    fresh.dev.complete(c.head, 5);
    assert.deepEqual(fresh.vq.getBuf(), { token: 'F', len: 5 });
    assert.equal(fresh.vq.numFree, s.vq.size);
  }

  function twoOutstanding(): Setup {
    const s = setup({ eventIdx: true, indirect: true });
    s.vq.addBuf(one(0x100, 1), [{ addr: 0x200, len: 100 }], 'A');
    s.vq.addBuf(
      [],
      [
        { addr: 0x400, len: 10 },
        { addr: 0x500, len: 6 },
      ],
      'B',
    );
    s.vq.kick();
    return s;
  }

  test('used id out of range', () => {
    const s = twoOutstanding();
    s.dev.complete(8, 0);
    assert.throws(
      () => s.vq.getBuf(),
      (e) => e instanceof VirtqueueError && e.code === 'USED_ID_OUT_OF_RANGE' && e.value === 8,
    );
    assertBroken(s, 'USED_ID_OUT_OF_RANGE', ['A', 'B']);
    const t = twoOutstanding();
    t.dev.complete(0xffff_ffff, 0);
    assert.equal(
      errorCode(() => t.vq.getBuf()),
      'USED_ID_OUT_OF_RANGE',
    );
  });

  test('used id that is not a head (inside a direct chain, free, or already returned)', () => {
    const direct = setup();
    direct.vq.addBuf(one(0x100, 1), one(0x200, 2), 'A'); // descs 0, 1
    direct.vq.kick();
    direct.dev.complete(1, 0);
    assert.equal(
      errorCode(() => direct.vq.getBuf()),
      'USED_ID_NOT_HEAD',
    );
    assertBroken(direct, 'USED_ID_NOT_HEAD', ['A']);

    const free = twoOutstanding();
    free.dev.complete(5, 0);
    assert.equal(
      errorCode(() => free.vq.getBuf()),
      'USED_ID_NOT_HEAD',
    );
    assertBroken(free, 'USED_ID_NOT_HEAD', ['A', 'B']);

    const twice = twoOutstanding();
    const [a] = twice.dev.popAll();
    twice.dev.complete(a!.head, 0);
    assert.equal(twice.vq.getBuf()?.token, 'A');
    twice.dev.complete(a!.head, 0);
    assert.equal(
      errorCode(() => twice.vq.getBuf()),
      'USED_ID_NOT_HEAD',
    );
    assertBroken(twice, 'USED_ID_NOT_HEAD', ['B']);
  });

  test('used len larger than the buffer’s writable bytes', () => {
    const s = twoOutstanding();
    const [a, b] = s.dev.popAll();
    s.dev.complete(a!.head, 100); // exactly the writable length: fine
    assert.deepEqual(s.vq.getBuf(), { token: 'A', len: 100 });
    s.dev.complete(b!.head, 17);
    assert.throws(
      () => s.vq.getBuf(),
      (e) => e instanceof VirtqueueError && e.code === 'USED_LEN_TOO_LARGE',
    );
    assertBroken(s, 'USED_LEN_TOO_LARGE', ['B']);

    const out = setup();
    out.vq.addOutbuf(one(0x100, 64), 'O');
    out.vq.kick();
    out.dev.complete(0, 1);
    assert.equal(
      errorCode(() => out.vq.getBuf()),
      'USED_LEN_TOO_LARGE',
    );
    assertBroken(out, 'USED_LEN_TOO_LARGE', ['O']);
  });

  test('used.idx jumping past what was made available', () => {
    const s = twoOutstanding();
    s.dev.usedIdx = 9; // more than the queue size past 0
    assert.throws(
      () => s.vq.getBuf(),
      (e) => e instanceof VirtqueueError && e.code === 'USED_IDX_JUMP' && e.value === 9,
    );
    assertBroken(s, 'USED_IDX_JUMP', ['A', 'B']);

    const t = twoOutstanding();
    t.dev.usedIdx = 3; // within the ring size, but only 2 buffers were made available
    assert.equal(
      errorCode(() => t.vq.getBuf()),
      'USED_IDX_JUMP',
    );
    assertBroken(t, 'USED_IDX_JUMP', ['A', 'B']);

    const u = twoOutstanding();
    u.dev.usedIdx = 0xffff; // "backwards": a jump of 65535
    assert.equal(
      errorCode(() => u.vq.getBuf()),
      'USED_IDX_JUMP',
    );
  });

  test('a broken queue leaves good used elements alone and reports the first fault', () => {
    const s = twoOutstanding();
    const [a] = s.dev.popAll();
    s.dev.addUsed(a!.head, 1);
    s.dev.addUsed(7, 0);
    s.dev.publish();
    assert.equal(s.vq.getBuf()?.token, 'A');
    assert.equal(
      errorCode(() => s.vq.getBuf()),
      'USED_ID_NOT_HEAD',
    );
    assert.equal(
      errorCode(() => s.vq.getBuf()),
      'QUEUE_BROKEN',
    );
    assert.equal((s.vq.brokenReason as VirtqueueError).value, 7);
    assertBroken(s, 'USED_ID_NOT_HEAD', ['B']);
  });

  test('markBroken', () => {
    const s = setup();
    s.vq.addOutbuf(one(0x100, 1), 'A');
    const reason = new Error('device needs reset');
    s.vq.markBroken(reason);
    assert.equal(s.vq.brokenReason, reason);
    assert.equal(
      errorCode(() => s.vq.getBuf()),
      'QUEUE_BROKEN',
    );
    assert.equal(s.vq.detachUnusedBuf(), 'A');
  });
});
