import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { GuestMemory } from '../../src/virtio/guest-memory.js';
import { GuestAllocator } from '../../src/virtio/guest-allocator.js';
import { UsageError } from '../../src/virtio/errors.js';

function code(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    if (e instanceof UsageError) return e.code;
    throw e;
  }
  return 'no error';
}

describe('GuestAllocator', () => {
  test('first fit with alignment; the alignment gap stays free', () => {
    const a = new GuestAllocator(GuestMemory.create(0x10000), { base: 0x1000, size: 0x1000 });
    assert.equal(a.size, 0x1000);
    assert.equal(a.alloc(10), 0x1000);
    assert.equal(a.alloc(10), 0x1010);
    // First fit: one unaligned byte goes into the 6-byte gap the second allocation left.
    assert.equal(a.alloc(1, 1), 0x100a);
    assert.equal(a.alloc(8, 0x100), 0x1100);
    assert.deepEqual(a.freeBlocks(), [
      { addr: 0x100b, size: 5 },
      { addr: 0x101a, size: 0x1100 - 0x101a },
      { addr: 0x1108, size: 0x2000 - 0x1108 },
    ]);
    assert.equal(a.available, 0x1000 - 10 - 10 - 1 - 8);
    assert.equal(a.allocations, 4);
    // The 5-byte gap is too small; the next block fits once aligned.
    assert.equal(a.alloc(16), 0x1020);
    assert.equal(a.freeBlocks()[1]!.addr, 0x101a);
  });

  test('free coalesces with both neighbours; double free and unknown addresses are refused', () => {
    const a = new GuestAllocator(GuestMemory.create(0x1000));
    const x = a.alloc(0x100);
    const y = a.alloc(0x100);
    const z = a.alloc(0x100);
    a.free(x);
    a.free(z);
    assert.deepEqual(a.freeBlocks(), [
      { addr: 0, size: 0x100 },
      { addr: 0x200, size: 0xe00 },
    ]);
    a.free(y);
    assert.deepEqual(a.freeBlocks(), [{ addr: 0, size: 0x1000 }]);
    assert.equal(a.available, 0x1000);
    assert.equal(
      code(() => {
        a.free(y);
      }),
      'INVALID_ARGUMENT',
    );
    assert.equal(
      code(() => {
        a.free(0x123);
      }),
      'INVALID_ARGUMENT',
    );
  });

  test('OUT_OF_MEMORY when nothing fits (also when fragmented); tryAlloc returns -1', () => {
    const a = new GuestAllocator(GuestMemory.create(0x100));
    const blocks = [a.alloc(0x40), a.alloc(0x40), a.alloc(0x40), a.alloc(0x40)];
    assert.equal(
      code(() => a.alloc(1)),
      'OUT_OF_MEMORY',
    );
    a.free(blocks[0]!);
    a.free(blocks[2]!);
    assert.equal(a.available, 0x80);
    assert.equal(
      code(() => a.alloc(0x80)),
      'OUT_OF_MEMORY',
    );
    assert.equal(a.tryAlloc(0x80), -1);
    assert.equal(a.tryAlloc(0x40), 0);
    assert.equal(
      code(() => a.alloc(0)),
      'INVALID_ARGUMENT',
    );
    assert.equal(
      code(() => a.alloc(8, 3)),
      'INVALID_ARGUMENT',
    );
    assert.equal(
      code(() => a.alloc(1.5)),
      'INVALID_ARGUMENT',
    );
  });

  test('never hands out a range that crosses regions or a hole', () => {
    const memory = new GuestMemory([
      { guestAddr: 0x1000, bytes: new Uint8Array(0x100) },
      { guestAddr: 0x1100, bytes: new Uint8Array(0x100) },
      { guestAddr: 0x4000, bytes: new Uint8Array(0x100) },
    ]);
    const a = new GuestAllocator(memory);
    assert.equal(a.size, 0x300);
    assert.equal(a.alloc(0xc0), 0x1000);
    // 0x80 does not fit in [0x10c0, 0x1100); it must not straddle into the adjacent region.
    assert.equal(a.alloc(0x80), 0x1100);
    assert.equal(a.alloc(0x100), 0x4000);
    assert.equal(
      code(() => a.alloc(0x100)),
      'OUT_OF_MEMORY',
    );
    for (const addr of [0x1000, 0x1100, 0x4000]) a.free(addr);
    assert.deepEqual(a.freeBlocks(), [
      { addr: 0x1000, size: 0x100 },
      { addr: 0x1100, size: 0x100 },
      { addr: 0x4000, size: 0x100 },
    ]);
  });

  test('a managed range must contain guest memory', () => {
    const memory = GuestMemory.create(0x1000);
    assert.equal(
      code(() => new GuestAllocator(memory, { base: 0x2000, size: 0x100 })),
      'INVALID_ARGUMENT',
    );
    assert.equal(
      code(() => new GuestAllocator(memory, { base: 0, size: 0 })),
      'INVALID_ARGUMENT',
    );
    assert.equal(
      code(() => new GuestAllocator(memory, { base: -1 })),
      'INVALID_ARGUMENT',
    );
    assert.equal(new GuestAllocator(memory, { base: 0x800, size: 0x10000 }).size, 0x800);
  });

  test('property: live allocations never overlap, stay aligned and in range; freeing all restores one block', () => {
    const op = fc.oneof(
      fc.record({
        kind: fc.constant('alloc' as const),
        size: fc.integer({ min: 1, max: 300 }),
        alignLog: fc.integer({ min: 0, max: 8 }),
      }),
      fc.record({ kind: fc.constant('free' as const), pick: fc.nat() }),
    );
    fc.assert(
      fc.property(fc.array(op, { maxLength: 120 }), (ops) => {
        const a = new GuestAllocator(GuestMemory.create(0x3000), { base: 0x100, size: 0x2000 });
        const live: { addr: number; size: number }[] = [];
        for (const o of ops) {
          if (o.kind === 'alloc') {
            const align = 1 << o.alignLog;
            const addr = a.tryAlloc(o.size, align);
            if (addr < 0) continue;
            assert.equal(addr % align, 0);
            assert.ok(addr >= 0x100 && addr + o.size <= 0x2100);
            for (const l of live) assert.ok(addr + o.size <= l.addr || l.addr + l.size <= addr, 'overlap');
            live.push({ addr, size: o.size });
          } else if (live.length > 0) {
            const [l] = live.splice(o.pick % live.length, 1);
            a.free(l!.addr);
          }
          const used = live.reduce((n, l) => n + l.size, 0);
          assert.equal(a.available, 0x2000 - used);
          const blocks = a.freeBlocks();
          for (let i = 1; i < blocks.length; i++) {
            // Sorted, and never two adjacent free blocks (they would have been coalesced).
            assert.ok(blocks[i - 1]!.addr + blocks[i - 1]!.size < blocks[i]!.addr);
          }
        }
        for (const l of live) a.free(l.addr);
        assert.deepEqual(a.freeBlocks(), [{ addr: 0x100, size: 0x2000 }]);
      }),
    );
  });
});
