import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { GuestMemory } from '../../../src/virtio/guest-memory.js';
import { SplitQueue } from '../../../src/virtio/split/split-queue.js';
import { ChainIoError } from '../../../src/virtio/split/chain-io.js';
import type { DescriptorChain } from '../../../src/virtio/split/descriptor-chain.js';
import { RingBuilder, type BufferSpec } from './ring-builder.js';

const READ_BUF = 0x4000;
const WRITE_BUF = 0x6000;

/** Pops one chain whose readable and writable parts are cut into descriptors of the given lengths. */
function chainOf(
  readCuts: readonly number[],
  writeCuts: readonly number[],
  memory = GuestMemory.create(0x10000),
) {
  const ring = new RingBuilder(memory, 16, 0x1000, 0x2000, 0x3000);
  const q = new SplitQueue(0, 16);
  ring.configure(q);
  q.activate(memory, 0n);
  const bufs: BufferSpec[] = [];
  // Descriptors are spaced 0x40 apart so a read that ignored the cut would see the wrong bytes.
  let off = 0;
  readCuts.forEach((len) => {
    bufs.push({ addr: READ_BUF + off, len });
    off += 0x40;
  });
  off = 0;
  writeCuts.forEach((len) => {
    bufs.push({ addr: WRITE_BUF + off, len, write: true });
    off += 0x40;
  });
  ring.chain(
    bufs.map((_, i) => i),
    bufs,
  );
  ring.makeAvailable(0);
  const chain = q.popChain();
  assert.ok(chain !== null);
  return { memory, chain, q };
}

/** Writes `data` into the readable descriptors of {@link chainOf} according to the cuts. */
function fillReadable(memory: GuestMemory, cuts: readonly number[], data: Uint8Array): void {
  let done = 0;
  cuts.forEach((len, k) => {
    memory.write(READ_BUF + 0x40 * k, data.subarray(done, done + len));
    done += len;
  });
}

/** Reads back what was written into the writable descriptors. */
function collectWritable(memory: GuestMemory, cuts: readonly number[]): number[] {
  const out: number[] = [];
  cuts.forEach((len, k) => out.push(...memory.slice(WRITE_BUF + 0x40 * k, len)));
  return out;
}

function tooShort(fn: () => unknown): { needed: number; remaining: number } {
  try {
    fn();
  } catch (e) {
    if (e instanceof ChainIoError) {
      assert.equal(e.code, 'CHAIN_TOO_SHORT');
      return e.value as { needed: number; remaining: number };
    }
    throw e;
  }
  assert.fail('expected CHAIN_TOO_SHORT');
}

/** Every way to cut `n` bytes into two or three non-empty pieces. */
function cutsOf(n: number): number[][] {
  const out: number[][] = [[n]];
  for (let a = 1; a < n; a++) {
    out.push([a, n - a]);
    for (let b = 1; a + b < n; b++) out.push([a, b, n - a - b]);
  }
  return out;
}

const HEADER = Uint8Array.from({ length: 16 }, (_, i) => 0x10 + i);
const dv = new DataView(HEADER.buffer);

describe('ChainReader', () => {
  test('scalars read the same whatever the descriptor cuts (split at every position)', () => {
    for (const cuts of cutsOf(16)) {
      const { memory, chain } = chainOf(cuts, []);
      fillReadable(memory, cuts, HEADER);
      const r = chain.reader();
      assert.equal(r.remaining, 16);
      assert.equal(r.readU8(), 0x10, String(cuts));
      assert.equal(r.readU16(), dv.getUint16(1, true), String(cuts));
      assert.equal(r.readU32(), dv.getUint32(3, true), String(cuts));
      assert.equal(r.readU64(), dv.getBigUint64(7, true), String(cuts));
      assert.equal(r.position, 15);
      assert.equal(r.readU8(), 0x1f);
      assert.equal(r.remaining, 0);
      // read() into a buffer gives the same bytes.
      const all = new Uint8Array(16);
      assert.equal(chain.reader().read(all), 16);
      assert.deepEqual(all, HEADER, String(cuts));
    }
  });

  test('high-bit values come back unsigned', () => {
    for (const cuts of [[8], [1, 7], [3, 5]]) {
      const { memory, chain } = chainOf(cuts, []);
      fillReadable(memory, cuts, new Uint8Array(8).fill(0xff));
      const r = chain.reader();
      assert.equal(r.readU32(), 0xffff_ffff);
      assert.equal(r.readU16(), 0xffff);
      assert.equal(r.readU16(), 0xffff);
      assert.equal(chain.reader().readU64(), 0xffff_ffff_ffff_ffffn);
    }
  });

  test('read copies what is left; readExact, skip, scalars and views throw CHAIN_TOO_SHORT without moving', () => {
    const { memory, chain } = chainOf([3, 2], [4]);
    fillReadable(memory, [3, 2], new Uint8Array([1, 2, 3, 4, 5]));
    const r = chain.reader();
    r.skip(2);
    assert.deepEqual(
      tooShort(() => r.readU32()),
      { needed: 4, remaining: 3 },
    );
    assert.deepEqual(
      tooShort(() => r.readU64()),
      { needed: 8, remaining: 3 },
    );
    assert.deepEqual(
      tooShort(() => {
        r.skip(4);
      }),
      { needed: 4, remaining: 3 },
    );
    assert.deepEqual(
      tooShort(() => r.views(4)),
      { needed: 4, remaining: 3 },
    );
    assert.deepEqual(
      tooShort(() => {
        r.readExact(new Uint8Array(4));
      }),
      { needed: 4, remaining: 3 },
    );
    assert.deepEqual(
      tooShort(() => {
        r.skip(-1);
      }),
      { needed: -1, remaining: 3 },
    );
    assert.equal(r.remaining, 3);
    const dst = new Uint8Array(10);
    assert.equal(r.read(dst), 3);
    assert.deepEqual([...dst.subarray(0, 3)], [3, 4, 5]);
    assert.equal(r.read(dst), 0);
    assert.deepEqual(
      tooShort(() => r.readU8()),
      { needed: 1, remaining: 0 },
    );
    assert.deepEqual(
      tooShort(() => r.readU16()),
      { needed: 2, remaining: 0 },
    );
  });

  test('views are zero-copy, one per segment touched', () => {
    const { memory, chain } = chainOf([3, 4], []);
    fillReadable(memory, [3, 4], new Uint8Array([1, 2, 3, 4, 5, 6, 7]));
    const r = chain.reader();
    r.skip(1);
    const v = r.views(4);
    assert.deepEqual(
      v.map((x) => [...x]),
      [
        [2, 3],
        [4, 5],
      ],
    );
    assert.equal(r.remaining, 2);
    memory.writeU8(READ_BUF + 1, 0xee);
    assert.equal(v[0]![0], 0xee, 'aliases guest memory');
    assert.deepEqual(r.views(0), []);
  });

  test('a chain without a readable part has an empty reader', () => {
    const { chain } = chainOf([], [4]);
    const r = chain.reader();
    assert.equal(r.remaining, 0);
    assert.equal(r.read(new Uint8Array(4)), 0);
    assert.deepEqual(
      tooShort(() => r.readU8()),
      { needed: 1, remaining: 0 },
    );
  });

  test('the reader stops at the readable part: it never sees writable bytes', () => {
    const { memory, chain } = chainOf([2], [4]);
    memory.write(WRITE_BUF, new Uint8Array([9, 9, 9, 9]));
    const r = chain.reader();
    r.skip(2);
    assert.deepEqual(
      tooShort(() => r.readU8()),
      { needed: 1, remaining: 0 },
    );
  });
});

describe('ChainWriter', () => {
  test('scalars and bytes land the same whatever the descriptor cuts (split at every position)', () => {
    for (const cuts of cutsOf(16)) {
      const { memory, chain } = chainOf([1], cuts);
      const w = chain.writer();
      assert.equal(w.remaining, 16);
      w.writeU8(0x10);
      w.writeU16(dv.getUint16(1, true));
      w.writeU32(dv.getUint32(3, true));
      w.writeU64(dv.getBigUint64(7, true));
      w.writeU8(0x1f);
      assert.equal(w.written, 16);
      assert.equal(w.remaining, 0);
      assert.deepEqual(collectWritable(memory, cuts), [...HEADER], String(cuts));
      const { memory: m2, chain: c2 } = chainOf([1], cuts);
      assert.equal(c2.writer().write(HEADER), 16);
      assert.deepEqual(collectWritable(m2, cuts), [...HEADER], String(cuts));
    }
  });

  test('write copies what fits; writeAll, fill and scalars throw CHAIN_TOO_SHORT without writing', () => {
    const { memory, chain } = chainOf([1], [2, 1]);
    const w = chain.writer();
    assert.deepEqual(
      tooShort(() => {
        w.writeU32(0xffff_ffff);
      }),
      { needed: 4, remaining: 3 },
    );
    assert.deepEqual(
      tooShort(() => {
        w.writeU64(1n);
      }),
      { needed: 8, remaining: 3 },
    );
    assert.deepEqual(
      tooShort(() => {
        w.writeAll(new Uint8Array(4));
      }),
      { needed: 4, remaining: 3 },
    );
    assert.deepEqual(
      tooShort(() => {
        w.fill(4);
      }),
      { needed: 4, remaining: 3 },
    );
    assert.deepEqual(collectWritable(memory, [2, 1]), [0, 0, 0], 'nothing written');
    assert.equal(w.written, 0);
    w.writeU16(0x0201);
    w.skip(0);
    assert.equal(w.write(new Uint8Array([3, 4, 5])), 1);
    assert.equal(w.written, 3);
    assert.deepEqual(collectWritable(memory, [2, 1]), [1, 2, 3]);
    assert.deepEqual(
      tooShort(() => {
        w.writeU8(0);
      }),
      { needed: 1, remaining: 0 },
    );
  });

  test('skip and fill move the cursor; written counts them', () => {
    const { memory, chain } = chainOf([1], [3, 3]);
    const w = chain.writer();
    w.skip(2);
    w.fill(3, 0xab);
    w.writeU8(0xcd);
    assert.equal(w.written, 6);
    assert.deepEqual(collectWritable(memory, [3, 3]), [0, 0, 0xab, 0xab, 0xab, 0xcd]);
  });

  test('views give writable windows over the next bytes', () => {
    const { memory, chain } = chainOf([1], [2, 2]);
    const w = chain.writer();
    const [a, b] = w.views(3);
    a!.set([1, 2]);
    b!.set([3]);
    assert.equal(w.written, 3);
    assert.deepEqual(collectWritable(memory, [2, 2]), [1, 2, 3, 0]);
  });

  test('the writer starts at the writable part and never touches readable bytes', () => {
    const { memory, chain } = chainOf([4], [2]);
    fillReadable(memory, [4], new Uint8Array([7, 7, 7, 7]));
    chain.writer().write(new Uint8Array([1, 2, 3, 4]));
    assert.deepEqual([...memory.slice(READ_BUF, 4)], [7, 7, 7, 7]);
    assert.deepEqual(collectWritable(memory, [2]), [1, 2]);
  });
});

describe('DescriptorChain', () => {
  test('readable() and writable() views cover the parts in order', () => {
    const { memory, chain } = chainOf([2, 3], [1, 4]);
    fillReadable(memory, [2, 3], new Uint8Array([1, 2, 3, 4, 5]));
    const c: DescriptorChain = chain;
    assert.deepEqual(
      c.readable().map((v) => [...v]),
      [
        [1, 2],
        [3, 4, 5],
      ],
    );
    assert.deepEqual(
      c.writable().map((v) => v.length),
      [1, 4],
    );
    assert.equal(c.readableLength, 5);
    assert.equal(c.writableLength, 5);
    assert.equal(c.writableSegments, 2);
  });
});
