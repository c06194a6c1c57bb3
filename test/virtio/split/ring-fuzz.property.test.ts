/**
 * Property tests of the device-side split queue against arbitrary guest-written ring contents: whatever bytes
 * a hostile driver puts in the descriptor table, the available ring and an indirect table, popChain either
 * returns a chain that lies entirely inside guest memory, or returns null, or throws a QueueError and breaks
 * the queue — never another exception, never a hang, never an access outside guest memory.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { GuestMemory } from '../../../src/virtio/guest-memory.js';
import { GuestFault } from '../../../src/virtio/errors.js';
import { SplitQueue } from '../../../src/virtio/split/split-queue.js';
import { featureSet, VirtioFeature } from '../../../src/virtio/features.js';

const QUEUE_SIZE = 8;
const DESC_TABLE = 0x1000;
const AVAIL_RING = 0x2000;
const USED_RING = 0x3000;
const INDIRECT_TABLE = 0x4000;
/** Low region [0, 0x8000), a hole, then [0x10000, 0x12000) directly followed by [0x12000, 0x13000). */
const REGIONS = [
  { guestAddr: 0, size: 0x8000 },
  { guestAddr: 0x10000, size: 0x2000 },
  { guestAddr: 0x12000, size: 0x1000 },
];

function makeMemory(): { memory: GuestMemory; backing: Uint8Array[] } {
  const backing = REGIONS.map((r) => new Uint8Array(r.size));
  const memory = new GuestMemory(REGIONS.map((r, i) => ({ guestAddr: r.guestAddr, bytes: backing[i]! })));
  return { memory, backing };
}

/** Buffer addresses a hostile driver might use: valid, at region edges, in the hole, far out, near 2^64. */
const hostileAddress = fc.oneof(
  { arbitrary: fc.integer({ min: 0x5000, max: 0x7f00 }), weight: 6 },
  { arbitrary: fc.integer({ min: 0x10000, max: 0x12f00 }), weight: 3 },
  { arbitrary: fc.constantFrom(0x7ff0, 0x8000, 0xfff0, 0x11ff8, 0x12ff0, 0x13000), weight: 2 },
  { arbitrary: fc.integer({ min: 0x8000, max: 0xffff }), weight: 1 },
  { arbitrary: fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }), weight: 1 },
);
const hostileLength = fc.oneof(
  { arbitrary: fc.integer({ min: 0, max: 0x100 }), weight: 8 },
  { arbitrary: fc.constantFrom(0, 16, 0x1000, 0x8000, 0xffff_fff0, 0xffff_ffff), weight: 1 },
);
/** NEXT and WRITE are common; INDIRECT (4) rarer, as in real rings. */
const descFlags = fc.oneof(
  { arbitrary: fc.integer({ min: 0, max: 3 }), weight: 6 },
  { arbitrary: fc.integer({ min: 4, max: 7 }), weight: 1 },
);
const inRangeMostly = (size: number) =>
  fc.oneof(
    { arbitrary: fc.integer({ min: 0, max: size - 1 }), weight: 9 },
    { arbitrary: fc.integer({ min: size, max: 0xffff }), weight: 1 },
  );
const descriptor = fc.record({
  addr: hostileAddress,
  len: hostileLength,
  flags: descFlags,
  next: inRangeMostly(QUEUE_SIZE),
});

function writeDescriptor(
  memory: GuestMemory,
  at: number,
  d: { addr: number | bigint; len: number; flags: number; next: number },
): void {
  memory.writeU64(at, BigInt(d.addr));
  memory.writeU32(at + 8, d.len >>> 0);
  memory.writeU16(at + 12, d.flags);
  memory.writeU16(at + 14, d.next);
}

describe('SplitQueue against arbitrary ring contents', () => {
  test('pop yields in-memory chains or a QueueError, never anything else', () => {
    fc.assert(
      fc.property(
        fc.array(descriptor, { minLength: QUEUE_SIZE, maxLength: QUEUE_SIZE }),
        fc.array(descriptor, { minLength: 0, maxLength: 12 }),
        fc.array(inRangeMostly(QUEUE_SIZE), { minLength: QUEUE_SIZE, maxLength: QUEUE_SIZE }),
        fc.oneof(
          { arbitrary: fc.integer({ min: 0, max: QUEUE_SIZE }), weight: 9 },
          { arbitrary: fc.integer({ min: 0, max: 0xffff }), weight: 1 },
        ),
        fc.integer({ min: 0, max: 0xffff }),
        fc.boolean(),
        fc.boolean(),
        (table, indirect, ring, ahead, startIdx, eventIdx, indirectOk) => {
          const availIdx = (startIdx + ahead) & 0xffff;
          const { memory } = makeMemory();
          table.forEach((d, i) => {
            // Point INDIRECT descriptors at the indirect table most of the time.
            const target = (d.flags & 4) !== 0 && i % 2 === 0 ? { ...d, addr: INDIRECT_TABLE } : d;
            writeDescriptor(memory, DESC_TABLE + 16 * i, target);
          });
          indirect.forEach((d, i) => {
            writeDescriptor(memory, INDIRECT_TABLE + 16 * i, d);
          });
          ring.forEach((head, i) => {
            memory.writeU16(AVAIL_RING + 4 + 2 * ((startIdx + i) % QUEUE_SIZE), head);
          });
          memory.writeU16(AVAIL_RING + 2, availIdx);

          const features =
            featureSet(VirtioFeature.VIRTIO_F_VERSION_1) |
            (eventIdx ? featureSet(VirtioFeature.VIRTIO_F_EVENT_IDX) : 0n) |
            (indirectOk ? featureSet(VirtioFeature.VIRTIO_F_INDIRECT_DESC) : 0n);
          const q = new SplitQueue(0, QUEUE_SIZE);
          q.descTable = DESC_TABLE;
          q.availRing = AVAIL_RING;
          q.usedRing = USED_RING;
          q.ready = true;
          q.activate(memory, features);
          q.nextAvail = startIdx;

          let popped = 0;
          let faulted = false;
          for (let i = 0; i < 2 * QUEUE_SIZE + 4; i++) {
            let chain;
            try {
              chain = q.popChain();
            } catch (e) {
              assert.ok(e instanceof GuestFault, `only guest faults may escape popChain, got ${String(e)}`);
              faulted = true;
              assert.equal(q.popChain(), null, 'a broken queue pops nothing until reset');
              break;
            }
            if (chain === null) break;
            popped++;
            assert.ok(chain.head < QUEUE_SIZE);
            let readable = 0;
            for (const v of chain.readable()) readable += v.length;
            let writable = 0;
            for (const v of chain.writable()) writable += v.length;
            assert.equal(readable, chain.readableLength);
            assert.equal(writable, chain.writableLength);
            assert.ok(chain.readableLength + chain.writableLength <= 2 * 0xffff_ffff);
            q.pushUsed(chain.head, 0);
          }
          const available = (availIdx - startIdx) & 0xffff;
          assert.ok(popped <= Math.min(available, QUEUE_SIZE), 'never pops more than was made available');
          if (available > QUEUE_SIZE) {
            assert.ok(faulted, 'avail.idx more than a ring ahead must be a fault');
          } else if (!faulted) {
            assert.equal(popped, available, 'every available head was popped');
            assert.equal(memory.readU16(USED_RING + 2), popped, 'and came back in the used ring');
          }
          q.reset();
          assert.equal(q.inFlight, 0);
        },
      ),
      { numRuns: 2000 },
    );
  });
});
