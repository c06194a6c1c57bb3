import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { GuestMemory, GuestMemoryError } from '../../src/virtio/guest-memory.js';
import { UsageError } from '../../src/virtio/errors.js';

/** Two adjacent regions [0x1000, 0x2000) [0x2000, 0x3000), a hole, then [0x10000, 0x11000). */
function threeRegions(): GuestMemory {
  return new GuestMemory([
    { guestAddr: 0x10000, bytes: new Uint8Array(0x1000) },
    { guestAddr: 0x1000, bytes: new Uint8Array(0x1000) },
    { guestAddr: 0x2000, bytes: new Uint8Array(0x1000) },
  ]);
}

function code(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    if (e instanceof GuestMemoryError || e instanceof UsageError) return e.code;
    throw e;
  }
  return 'no error';
}

describe('GuestMemory', () => {
  test('little-endian scalar access round-trips and matches a DataView', () => {
    const m = GuestMemory.create(64);
    m.writeU16(2, 0x1234);
    m.writeU32(4, 0xdeadbeef);
    m.writeU64(8, 0x0102030405060708n);
    m.writeU8(1, 0xff);
    const dv = new DataView(m.regions[0]!.bytes.buffer);
    assert.equal(dv.getUint16(2, true), 0x1234);
    assert.equal(dv.getUint32(4, true), 0xdeadbeef);
    assert.equal(dv.getBigUint64(8, true), 0x0102030405060708n);
    assert.equal(m.readU8(1), 0xff);
    assert.equal(m.readU16(2), 0x1234);
    assert.equal(m.readU32(4), 0xdeadbeef);
    assert.equal(m.readU64(8), 0x0102030405060708n);
    assert.equal(m.regions[0]!.bytes[8], 0x08);
  });

  test('regions are sorted and overlapping regions are refused', () => {
    const m = threeRegions();
    assert.deepEqual(
      m.regions.map((r) => r.guestAddr),
      [0x1000, 0x2000, 0x10000],
    );
    assert.equal(m.size, 0x3000);
    assert.equal(
      code(
        () =>
          new GuestMemory([
            { guestAddr: 0, bytes: new Uint8Array(16) },
            { guestAddr: 8, bytes: new Uint8Array(16) },
          ]),
      ),
      'INVALID_ARGUMENT',
    );
    assert.equal(
      code(() => new GuestMemory([])),
      'INVALID_ARGUMENT',
    );
  });

  test('slice is zero-copy and stays inside one region', () => {
    const m = threeRegions();
    const v = m.slice(0x1ff0, 16);
    v[0] = 7;
    assert.equal(m.readU8(0x1ff0), 7);
    assert.equal(
      code(() => m.slice(0x1ff0, 17)),
      'GUEST_RANGE_SPANS_HOLE',
    );
    assert.equal(
      code(() => m.slice(0x2ff0, 17)),
      'GUEST_ADDRESS_OUT_OF_RANGE',
    );
    assert.equal(
      code(() => m.slice(0x3000, 1)),
      'GUEST_ADDRESS_OUT_OF_RANGE',
    );
    assert.equal(m.slice(0x3000, 0).length, 0, 'a zero-length range at the end of a region is valid');
  });

  test('forEachSpan crosses adjacent regions but not holes', () => {
    const m = threeRegions();
    const spans: [number, number][] = [];
    assert.equal(
      m.forEachSpan(0x1ffe, 4, (s) => spans.push([s.region.guestAddr + s.offset, s.length])),
      2,
    );
    assert.deepEqual(spans, [
      [0x1ffe, 2],
      [0x2000, 2],
    ]);
    const seen: number[] = [];
    assert.equal(
      code(() => m.forEachSpan(0x2ffe, 4, (s) => seen.push(s.length))),
      'GUEST_RANGE_SPANS_HOLE',
    );
    assert.deepEqual(seen, [], 'no span is visited when the range is invalid');
    assert.ok(m.isValidRange(0x1000, 0x2000));
    assert.ok(!m.isValidRange(0x1000, 0x2001));
  });

  test('read and write copy across adjacent regions', () => {
    const m = threeRegions();
    m.write(0x1ffc, Uint8Array.of(1, 2, 3, 4, 5, 6, 7, 8));
    const out = new Uint8Array(8);
    m.read(0x1ffc, out);
    assert.deepEqual([...out], [1, 2, 3, 4, 5, 6, 7, 8]);
    assert.equal(m.readU8(0x2000), 5);
    m.fill(0x1ffe, 4, 0xaa);
    assert.equal(m.readU32(0x1ffc), 0xaaaa0201);
  });

  test('addresses past 2^53, negative, fractional or NaN are typed errors', () => {
    const m = GuestMemory.create(4096);
    for (const addr of [-1, 0.5, NaN, Infinity, 2 ** 53, 2 ** 64]) {
      assert.equal(
        code(() => m.readU8(addr)),
        'GUEST_RANGE_OVERFLOW',
        `addr ${addr}`,
      );
    }
    assert.equal(
      code(() => m.slice(0, -1)),
      'GUEST_RANGE_OVERFLOW',
    );
    assert.equal(
      code(() => m.slice(Number.MAX_SAFE_INTEGER - 1, 4)),
      'GUEST_RANGE_OVERFLOW',
    );
    assert.equal(
      code(() => m.readU32(4094)),
      'GUEST_ADDRESS_OUT_OF_RANGE',
    );
  });

  test('typed views for Atomics alias guest memory and demand alignment', () => {
    const m = GuestMemory.create(4096, { shared: true });
    const u16 = m.u16Array(16, 4);
    Atomics.store(u16, 1, 0xbeef);
    assert.equal(m.readU16(18), 0xbeef);
    const u32 = m.u32Array(32, 2);
    u32[1] = 0x11223344;
    assert.equal(m.readU32(36), 0x11223344);
    const odd = new GuestMemory([{ guestAddr: 0, bytes: new Uint8Array(new ArrayBuffer(64), 1, 32) }]);
    assert.equal(
      code(() => odd.u16Array(0, 2)),
      'INVALID_ARGUMENT',
    );
  });

  test('property: every range is either fully valid or rejected without partial access', () => {
    const m = threeRegions();
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 0x12000 }), fc.integer({ min: 0, max: 0x3000 }), (addr, len) => {
        const inside = (a: number, l: number) =>
          (a >= 0x1000 && a + l <= 0x3000) || (a >= 0x10000 && a + l <= 0x11000);
        assert.equal(
          m.isValidRange(addr, len),
          inside(addr, len) || (len === 0 && (addr === 0x3000 || addr === 0x11000)),
        );
      }),
    );
  });
});
