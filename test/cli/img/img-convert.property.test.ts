import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { writeNonZeroRuns } from '../../../src/cli/img/img-convert.js';

/** The guest-aligned blocks of `data` (at guest offset `start`) that hold a nonzero byte, one by one. */
function nonZeroBlocks(data: Uint8Array, start: number, granularity: number): boolean[] {
  const blocks: boolean[] = [];
  let pos = 0;
  while (pos < data.length) {
    const end = Math.min(data.length, pos + granularity - ((start + pos) % granularity));
    blocks.push(data.subarray(pos, end).some((b) => b !== 0));
    pos = end;
  }
  return blocks;
}

describe('img convert: writeNonZeroRuns', () => {
  test('writes exactly the nonzero blocks, each run once, as maximal runs in order', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom(1, 8, 512, 4096),
        fc.nat(10_000),
        // Blocks as zero or not, with a nonzero byte somewhere inside (not always the first).
        fc.array(fc.tuple(fc.boolean(), fc.nat()), { maxLength: 24 }),
        async (granularity, start, pattern) => {
          const head = granularity - (start % granularity);
          const length = pattern.length === 0 ? 0 : head + (pattern.length - 1) * granularity;
          const data = Buffer.alloc(length);
          pattern.forEach(([set, where], i) => {
            const from = i === 0 ? 0 : head + (i - 1) * granularity;
            const size = i === 0 ? head : granularity;
            if (set) data[from + (where % size)] = 0xa5;
          });
          const writes: { offset: number; bytes: Buffer }[] = [];
          await writeNonZeroRuns(data, start, granularity, Buffer.alloc(granularity), (offset, bytes) => {
            writes.push({ offset, bytes: Buffer.from(bytes) });
            return Promise.resolve();
          });
          // Rebuild what a zero-filled destination holds afterwards: equal to the source.
          const out = Buffer.alloc(length);
          for (const w of writes) w.bytes.copy(out, w.offset - start);
          assert.deepEqual(out, data);
          // No all-zero block is written, and runs are maximal (never adjacent) and ascending.
          const blocks = nonZeroBlocks(data, start, granularity);
          const written = writes.reduce((n, w) => n + w.bytes.length, 0);
          const expected = blocks.reduce((n, nz, i) => n + (nz ? (i === 0 ? head : granularity) : 0), 0);
          assert.equal(written, Math.min(expected, length));
          for (let i = 1; i < writes.length; i++) {
            const prev = writes[i - 1]!;
            assert.ok(prev.offset + prev.bytes.length < writes[i]!.offset, 'runs are separated by zeros');
          }
        },
      ),
      { numRuns: 300 },
    );
  });
});
