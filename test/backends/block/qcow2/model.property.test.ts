/**
 * Property: any sequence of writes, discards, write-zeroes, compressed writes, flushes, reopens and resizes on a
 * qcow2 image — any cluster size, refcount width, lazy refcounts or not, a backing file or not, a small metadata
 * cache (evictions) — reads back as an in-memory model says; after a final close and reopen it still does,
 * QEMU reads the same bytes (`qemu-img compare`) and `qemu-img check` finds no error and no leak.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import fc from 'fast-check';
import { Qcow2Image } from '../../../../src/backends/block/qcow2/index.js';
import {
  assertQemuCheckClean,
  ensureQemuUtils,
  firstDifference,
  prng,
  qemuImgStatus,
  randomBytes,
  readAll,
  tempDir,
} from './qemu-tools.js';

const tmp = tempDir('ringvm-qcow2-model-');
let run = 0;

before(async () => {
  await ensureQemuUtils();
});
after(() => {
  tmp.cleanup();
});

type Op =
  | { kind: 'write'; sector: number; sectors: number; seed: number; pieces: number }
  | { kind: 'discard' | 'zero'; sector: number; sectors: number; unmap: boolean }
  | { kind: 'compressed'; cluster: number; seed: number }
  | { kind: 'flush' | 'reopen' }
  | { kind: 'grow'; sectors: number };

const SECTOR = 512;

const opArb = (maxSectors: number): fc.Arbitrary<Op> =>
  fc.oneof(
    {
      weight: 6,
      arbitrary: fc.record({
        kind: fc.constant('write' as const),
        sector: fc.nat(maxSectors - 1),
        sectors: fc.integer({ min: 1, max: 300 }),
        seed: fc.nat(),
        pieces: fc.integer({ min: 1, max: 4 }),
      }),
    },
    {
      weight: 2,
      arbitrary: fc.record({
        kind: fc.constantFrom('discard' as const, 'zero' as const),
        sector: fc.nat(maxSectors - 1),
        sectors: fc.integer({ min: 1, max: 600 }),
        unmap: fc.boolean(),
      }),
    },
    {
      weight: 1,
      arbitrary: fc.record({ kind: fc.constant('compressed' as const), cluster: fc.nat(), seed: fc.nat() }),
    },
    { weight: 1, arbitrary: fc.record({ kind: fc.constantFrom('flush' as const, 'reopen' as const) }) },
    {
      weight: 1,
      arbitrary: fc.record({
        kind: fc.constant('grow' as const),
        sectors: fc.integer({ min: 1, max: 2048 }),
      }),
    },
  );

describe('qcow2 against an in-memory model', () => {
  test('random operations, reopen, qemu-img compare and check', async () => {
    const initialSectors = 4096; // 2 MiB
    await fc.assert(
      fc.asyncProperty(
        fc.record({
          clusterSize: fc.constantFrom(512, 4096, 65536),
          refcountBits: fc.constantFrom(1, 4, 16, 64),
          lazyRefcounts: fc.boolean(),
          backing: fc.boolean(),
          cacheBytes: fc.constantFrom(1024, 1 << 20),
        }),
        fc.array(opArb(initialSectors), { minLength: 1, maxLength: 40 }),
        async (cfg, ops) => {
          const id = run++;
          const path = tmp.path(`m${id}.qcow2`);
          let size = initialSectors * SECTOR;
          let model = new Uint8Array(size);
          if (cfg.backing) {
            const base = tmp.path(`m${id}.base.raw`);
            const bytes = randomBytes(prng(id + 1), size / 2); // shorter than the overlay
            writeFileSync(base, bytes);
            model.set(bytes);
            await Qcow2Image.create(path, {
              size,
              clusterSize: cfg.clusterSize,
              refcountBits: cfg.refcountBits,
              lazyRefcounts: cfg.lazyRefcounts,
              backingFile: `m${id}.base.raw`,
              backingFormat: 'raw',
            });
          } else {
            await Qcow2Image.create(path, {
              size,
              clusterSize: cfg.clusterSize,
              refcountBits: cfg.refcountBits,
              lazyRefcounts: cfg.lazyRefcounts,
            });
          }
          const open = (): Promise<Qcow2Image> =>
            Qcow2Image.open(path, { readOnly: false, cacheBytes: cfg.cacheBytes });
          let image = await open();
          try {
            const cs = cfg.clusterSize;
            for (const op of ops) {
              switch (op.kind) {
                case 'write': {
                  const sector = op.sector % (size / SECTOR);
                  const len = Math.min(op.sectors, size / SECTOR - sector) * SECTOR;
                  const data = randomBytes(prng(op.seed + 1), len);
                  const bufs: Uint8Array[] = [];
                  const step = Math.ceil(len / op.pieces);
                  for (let p = 0; p < len; p += step) bufs.push(data.subarray(p, Math.min(len, p + step)));
                  await image.writev(sector * SECTOR, bufs);
                  model.set(data, sector * SECTOR);
                  break;
                }
                case 'discard':
                case 'zero': {
                  const sector = op.sector % (size / SECTOR);
                  const off = sector * SECTOR;
                  const len = Math.min(op.sectors, size / SECTOR - sector) * SECTOR;
                  if (op.kind === 'zero') {
                    await image.writeZeroes(off, len, op.unmap);
                    model.fill(0, off, off + len);
                  } else {
                    await image.discard(off, len);
                    // Whole clusters read zeros afterwards (the zero flag hides a backing file).
                    const first = Math.ceil(off / cs) * cs;
                    const last =
                      off + len === size ? Math.ceil(size / cs) * cs : Math.floor((off + len) / cs) * cs;
                    if (last > first) model.fill(0, first, Math.min(last, size));
                  }
                  break;
                }
                case 'compressed': {
                  const clusters = Math.ceil(size / cs);
                  const c = op.cluster % clusters;
                  const len = Math.min(cs, size - c * cs);
                  const data = new Uint8Array(len);
                  const rand = prng(op.seed + 1);
                  for (let i = 0; i < len; i++) data[i] = (rand() & 3) === 0 ? rand() & 0xff : 0x41 + (i % 5);
                  await image.writeCompressed(c * cs, data);
                  model.set(data, c * cs);
                  break;
                }
                case 'flush':
                  await image.flush();
                  break;
                case 'reopen':
                  await image.close();
                  image = await open();
                  break;
                case 'grow': {
                  const newSize = size + op.sectors * SECTOR;
                  await image.resize(newSize);
                  const grown = new Uint8Array(newSize);
                  grown.set(model);
                  model = grown;
                  size = newSize;
                  break;
                }
              }
            }
            assert.equal(image.size, size);
            assert.equal(firstDifference(await readAll(image, 256 * 1024), model), -1, 'before reopen');
            const check = await image.check();
            assert.equal(check.corruptions + check.leaks, 0, check.messages.join('\n'));
          } finally {
            await image.close();
          }
          const again = await Qcow2Image.open(path, { readOnly: true });
          try {
            assert.equal(firstDifference(await readAll(again), model), -1, 'after reopen');
            assert.equal(again.info().dirty, false);
          } finally {
            await again.close();
          }
          assertQemuCheckClean(path);
          const expected = `${path}.expected.raw`;
          writeFileSync(expected, model);
          const cmp = qemuImgStatus('compare', '-f', 'qcow2', '-F', 'raw', path, expected);
          assert.equal(cmp.status, 0, cmp.stdout + cmp.stderr);
        },
      ),
      { numRuns: 60, seed: 20261203 },
    );
  });
});
