/**
 * Hostile qcow2 images: a valid image made by qemu-img/qemu-io, one field or entry edited per test. Each is
 * refused at open — or opened read-only and refused when the bad entry is used — with the typed error naming
 * the problem and the offset; nothing is silently repaired (the file is byte-identical afterwards). A fast-check
 * property flips random metadata bytes: whatever happens is a typed error, never anything else.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { copyFileSync, readFileSync, writeFileSync } from 'node:fs';
import fc from 'fast-check';
import { BlockBackendError } from '../../../../src/backends/block/block-backend-error.js';
import { Qcow2Error, Qcow2Image } from '../../../../src/backends/block/qcow2/index.js';
import { HostIoError } from '../../../../src/virtio/errors.js';
import {
  assertQemuCheckClean,
  ensureQemuUtils,
  qemuCheck,
  qemuImg,
  qemuIo,
  readAll,
  tempDir,
} from './qemu-tools.js';

const tmp = tempDir('ringvm-qcow2-hostile-');
let valid = '';
let n = 0;

before(async () => {
  await ensureQemuUtils();
  valid = tmp.path('valid.qcow2');
  qemuImg('create', '-q', '-f', 'qcow2', valid, '4M');
  qemuIo(valid, ['write -P 0x11 0 64k', 'write -P 0x22 1M 128k']);
});
after(() => {
  tmp.cleanup();
});

/** The layout of the valid image, read from its header (big endian). */
interface Layout {
  bytes: Uint8Array;
  view: DataView;
  l1: number;
  refTable: number;
  /** Offset of the first L2 table and of the first data cluster it maps. */
  l2: number;
  data0: number;
  /** Offset of the first refcount block. */
  refBlock: number;
}

function layout(bytes: Uint8Array): Layout {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const l1 = Number(view.getBigUint64(40));
  const refTable = Number(view.getBigUint64(48));
  const l2 = Number(view.getBigUint64(l1) & 0x00fffffffffffe00n);
  const data0 = Number(view.getBigUint64(l2) & 0x00fffffffffffe00n);
  const refBlock = Number(view.getBigUint64(refTable));
  return { bytes, view, l1, refTable, l2, data0, refBlock };
}

/** A copy of the valid image with `edit` applied. */
function hostile(edit: (l: Layout) => void): string {
  const bytes = new Uint8Array(readFileSync(valid));
  edit(layout(bytes));
  const path = tmp.path(`h${n++}.qcow2`);
  writeFileSync(path, bytes);
  return path;
}

async function refused(
  path: string,
  code: string,
  value: unknown,
  readOnly: boolean,
  message?: RegExp,
): Promise<void> {
  const before = readFileSync(path);
  await assert.rejects(Qcow2Image.open(path, { readOnly }), (e: unknown) => {
    assert.ok(e instanceof Qcow2Error, `a Qcow2Error, got ${String(e)}`);
    assert.equal(e.code, code, e.message);
    if (value !== undefined) assert.equal(e.value, value, e.message);
    if (message !== undefined) assert.match(e.message, message);
    assert.ok(e.message.startsWith(path), e.message);
    return true;
  });
  assert.ok(readFileSync(path).equals(before), 'the image was not changed');
}

const hex = (n: number): RegExp => new RegExp(`0x${n.toString(16)}\\b`);

describe('hostile headers', () => {
  test('not qcow2, unsupported version, bad cluster_bits / header_length / refcount_order', async () => {
    await refused(
      hostile((l) => {
        l.view.setUint32(0, 0x12345678);
      }),
      'NOT_QCOW2',
      undefined,
      true,
    );
    await refused(
      hostile((l) => {
        l.view.setUint32(4, 4);
      }),
      'UNSUPPORTED_VERSION',
      4,
      true,
    );
    await refused(
      hostile((l) => {
        l.view.setUint32(20, 8);
      }),
      'INVALID_HEADER',
      8,
      true,
    );
    await refused(
      hostile((l) => {
        l.view.setUint32(20, 22);
      }),
      'INVALID_HEADER',
      22,
      true,
    );
    await refused(
      hostile((l) => {
        l.view.setUint32(100, 100);
      }),
      'INVALID_HEADER',
      100,
      true,
    );
    await refused(
      hostile((l) => {
        l.view.setUint32(100, 106);
      }),
      'INVALID_HEADER',
      106,
      true,
    );
    await refused(
      hostile((l) => {
        l.view.setUint32(96, 7);
      }),
      'INVALID_HEADER',
      7,
      true,
    );
    await refused(
      hostile((l) => {
        l.view.setUint32(32, 1);
      }),
      'UNSUPPORTED_FEATURE',
      1,
      true,
      /encrypted/,
    );
    await refused(
      hostile((l) => {
        l.view.setBigUint64(8, 512n); // a backing file name at 512...
        l.view.setUint32(16, 2000); // ...longer than 1023 bytes
      }),
      'INVALID_HEADER',
      2000,
      false,
    );
    // a virtual size the L1 table cannot map
    await refused(
      hostile((l) => {
        l.view.setBigUint64(24, 1n << 40n);
      }),
      'INVALID_HEADER',
      1,
      true,
      /too small/,
    );
  });

  test('unknown incompatible feature bits are refused, named from the feature name table', async () => {
    await refused(
      hostile((l) => {
        l.view.setBigUint64(72, 1n << 5n);
      }),
      'UNSUPPORTED_FEATURE',
      1n << 5n,
      true,
      /bit 5\b/,
    );
    // extended L2 (bit 4) is named by QEMU's own feature name table in the image
    await refused(
      hostile((l) => {
        l.view.setBigUint64(72, 1n << 4n);
      }),
      'UNSUPPORTED_FEATURE',
      1n << 4n,
      true,
      /extended L2/,
    );
    await refused(
      hostile((l) => {
        l.view.setBigUint64(72, 1n << 2n);
      }),
      'UNSUPPORTED_FEATURE',
      1n << 2n,
      true,
      /external data/,
    );
    // unknown compatible and autoclear bits are fine
    const compat = hostile((l) => {
      l.view.setBigUint64(80, 1n << 9n);
    });
    (await Qcow2Image.open(compat, { readOnly: true })).close();
  });

  test('the corrupt bit: read-only opens only', async () => {
    const path = hostile((l) => {
      l.view.setBigUint64(72, 1n << 1n);
    });
    await refused(path, 'CORRUPT_BIT', 2n, false);
    const image = await Qcow2Image.open(path, { readOnly: true });
    assert.equal(image.info().corrupt, true);
    await image.close();
  });
});

describe('hostile tables', () => {
  test('L1 table past the end of the file, misaligned, overlapping the refcount table', async () => {
    await refused(
      hostile((l) => {
        l.view.setBigUint64(40, 1n << 30n);
      }),
      'OUT_OF_BOUNDS',
      1 << 30,
      true,
      hex(1 << 30),
    );
    await refused(
      hostile((l) => {
        l.view.setBigUint64(40, BigInt(l.l1 + 512));
      }),
      'MISALIGNED_OFFSET',
      undefined,
      true,
    );
    await refused(
      hostile((l) => {
        l.view.setBigUint64(40, BigInt(l.refTable));
      }),
      'METADATA_OVERLAP',
      undefined,
      true,
    );
    await refused(
      hostile((l) => {
        l.view.setBigUint64(48, 0n);
      }),
      'METADATA_OVERLAP',
      0,
      true,
      /header/,
    );
    await refused(
      hostile((l) => {
        l.view.setBigUint64(48, 1n << 32n);
      }),
      'OUT_OF_BOUNDS',
      2 ** 32,
      true,
    );
  });

  test('L1 entries: past the end, misaligned, on other metadata', async () => {
    await refused(
      hostile((l) => {
        l.view.setBigUint64(l.l1, (1n << 63n) | (1n << 33n));
      }),
      'OUT_OF_BOUNDS',
      2 ** 33,
      true,
      hex(2 ** 33),
    );
    await refused(
      hostile((l) => {
        l.view.setBigUint64(l.l1, BigInt(l.l2 + 4096));
      }),
      'MISALIGNED_OFFSET',
      undefined,
      true,
    );
    await refused(
      hostile((l) => {
        l.view.setBigUint64(l.l1, BigInt(l.refTable));
      }),
      'METADATA_OVERLAP',
      undefined,
      true,
    );
    await refused(
      hostile((l) => {
        l.view.setBigUint64(l.l1, BigInt(l.l1));
      }),
      'METADATA_OVERLAP',
      undefined,
      true,
    );
  });

  test('refcount table entries: past the end, misaligned', async () => {
    await refused(
      hostile((l) => {
        l.view.setBigUint64(l.refTable, 1n << 34n);
      }),
      'OUT_OF_BOUNDS',
      2 ** 34,
      true,
    );
    await refused(
      hostile((l) => {
        l.view.setBigUint64(l.refTable, BigInt(l.refBlock + 1024));
      }),
      'MISALIGNED_OFFSET',
      undefined,
      true,
    );
  });

  test('refcount 0 on a used data cluster: refused read-write, readable read-only', async () => {
    const path = hostile((l) => {
      const index = l.data0 / 65536;
      l.view.setUint16(l.refBlock + index * 2, 0);
    });
    const data0 = layout(new Uint8Array(readFileSync(path))).data0;
    await refused(path, 'REFCOUNT_MISMATCH', data0, false, new RegExp(`refcount=0 reference=1`));
    const image = await Qcow2Image.open(path, { readOnly: true });
    const first = new Uint8Array(65536);
    await image.readv(0, [first]);
    assert.ok(first.every((b) => b === 0x11));
    const check = await image.check();
    // As qemu-img check counts it: the refcount, and the COPIED flag that no longer matches it.
    assert.equal(check.corruptions, qemuCheck(path).json.corruptions, check.messages.join('\n'));
    assert.equal(check.corruptions, 2, check.messages.join('\n'));
    await assert.rejects(image.writev(0, [first]), { code: 'READ_ONLY' });
    await image.close();
  });

  test('two L2 entries sharing one cluster with refcount 1 (and COPIED set) is refused read-write', async () => {
    const path = hostile((l) => {
      l.view.setBigUint64(l.l2 + 8 * 5, l.view.getBigUint64(l.l2));
    });
    await refused(path, 'REFCOUNT_MISMATCH', undefined, false, /refcount=1 reference=2/);
  });

  test('L2 entries misaligned or past the end: refused read-write; read-only reads fail with the offset', async () => {
    const misaligned = hostile((l) => {
      l.view.setBigUint64(l.l2, (1n << 63n) | BigInt(l.data0 + 4096));
    });
    const off = layout(new Uint8Array(readFileSync(misaligned))).data0; // the edited entry
    await refused(misaligned, 'MISALIGNED_OFFSET', off, false, hex(off));
    const ro = await Qcow2Image.open(misaligned, { readOnly: true });
    await assert.rejects(ro.readv(0, [new Uint8Array(512)]), {
      name: 'Qcow2Error',
      code: 'MISALIGNED_OFFSET',
      value: off,
    });
    const other = new Uint8Array(512);
    await ro.readv(1 << 20, [other]); // the rest of the image still reads
    assert.ok(other.every((b) => b === 0x22));
    await ro.close();

    const past = hostile((l) => {
      l.view.setBigUint64(l.l2, (1n << 63n) | (1n << 40n));
    });
    await refused(past, 'OUT_OF_BOUNDS', 2 ** 40, false, hex(2 ** 40));
    const ro2 = await Qcow2Image.open(past, { readOnly: true });
    await assert.rejects(ro2.readv(0, [new Uint8Array(512)]), { code: 'OUT_OF_BOUNDS', value: 2 ** 40 });
    await ro2.close();
  });

  test('compressed data that does not inflate is BAD_COMPRESSED_DATA', async () => {
    const raw = tmp.path('c.raw');
    writeFileSync(raw, new Uint8Array(1 << 20).fill(0x61));
    const path = tmp.path('c.qcow2');
    qemuImg('convert', '-q', '-c', '-f', 'raw', '-O', 'qcow2', raw, path);
    const bytes = new Uint8Array(readFileSync(path));
    const l = layout(bytes);
    const entry = l.view.getBigUint64(l.l2);
    assert.ok((entry & (1n << 62n)) !== 0n, 'a compressed entry');
    const host = Number(entry & ((1n << 54n) - 1n));
    bytes.fill(0xff, host, host + 16);
    writeFileSync(path, bytes);
    const image = await Qcow2Image.open(path, { readOnly: true });
    await assert.rejects(image.readv(0, [new Uint8Array(512)]), { code: 'BAD_COMPRESSED_DATA', value: host });
    await image.close();
  });
});

describe('dirty images', () => {
  test('lazy refcounts + dirty bit: refcounts rebuilt at the read-write open, not at a read-only one', async () => {
    const path = tmp.path('lazy.qcow2');
    qemuImg('create', '-q', '-f', 'qcow2', '-o', 'lazy_refcounts=on', path, '4M');
    qemuIo(path, ['write -P 0x33 0 256k']);
    const bytes = new Uint8Array(readFileSync(path));
    const l = layout(bytes);
    // As if the writer died: dirty bit set, refcounts of the data never written.
    l.view.setBigUint64(72, l.view.getBigUint64(72) | 1n);
    for (let c = l.data0 / 65536; c < l.data0 / 65536 + 4; c++) l.view.setUint16(l.refBlock + c * 2, 0);
    writeFileSync(path, bytes);
    const ro = await Qcow2Image.open(path, { readOnly: true });
    assert.equal(ro.info().dirty, true);
    assert.equal(ro.info().refcountsRebuilt, false);
    await ro.close();
    assert.ok(readFileSync(path).equals(bytes), 'a read-only open changes nothing');
    const rw = await Qcow2Image.open(path, { readOnly: false });
    assert.equal(rw.info().refcountsRebuilt, true);
    assert.equal(rw.info().dirty, false);
    const data = await readAll(rw);
    assert.ok(data.subarray(0, 256 * 1024).every((b) => b === 0x33));
    await rw.close();
    assertQemuCheckClean(path);
  });
});

describe('random metadata damage', () => {
  test('any flipped bytes in the metadata give a typed error or a working image', async () => {
    const bytes = new Uint8Array(readFileSync(valid));
    const l = layout(bytes);
    const regions = [
      [0, 512],
      [l.l1, 64],
      [l.refTable, 64],
      [l.refBlock, 64],
      [l.l2, 256],
    ] as const;
    const path = tmp.path('fuzz.qcow2');
    await fc.assert(
      fc.asyncProperty(
        fc.array(
          fc.record({
            region: fc.nat(regions.length - 1),
            at: fc.nat(511),
            value: fc.integer({ min: 0, max: 255 }),
          }),
          { minLength: 1, maxLength: 6 },
        ),
        fc.boolean(),
        async (edits, readOnly) => {
          const copy = Uint8Array.from(bytes);
          for (const e of edits) {
            const [start, len] = regions[e.region] as readonly [number, number];
            copy[start + (e.at % len)] = e.value;
          }
          writeFileSync(path, copy);
          const typed = (e: unknown): boolean =>
            e instanceof Qcow2Error || e instanceof HostIoError || e instanceof BlockBackendError;
          let image: Qcow2Image;
          try {
            image = await Qcow2Image.open(path, { readOnly });
          } catch (e) {
            assert.ok(typed(e), `open threw ${String(e)}`);
            return;
          }
          try {
            const buf = new Uint8Array(65536);
            for (const off of [0, 65536, 1 << 20, image.size - 65536]) {
              if (off < 0 || off + buf.length > image.size) continue;
              await image.readv(off, [buf]).catch((e: unknown) => {
                assert.ok(typed(e), `read threw ${String(e)}`);
              });
              if (!readOnly) {
                await image.writev(off, [buf]).catch((e: unknown) => {
                  assert.ok(typed(e), `write threw ${String(e)}`);
                });
              }
            }
            await image.flush().catch((e: unknown) => {
              assert.ok(typed(e), `flush threw ${String(e)}`);
            });
          } finally {
            await image.close().catch((e: unknown) => {
              assert.ok(typed(e), `close threw ${String(e)}`);
            });
          }
        },
      ),
      { numRuns: 300, seed: 42 },
    );
    copyFileSync(valid, path);
  });
});
