/**
 * Images created and written by ringvm, judged by QEMU: `qemu-img check` finds no error and no leak,
 * `qemu-img compare` finds them equal to the raw data ringvm was asked to write, and `qemu-img info` agrees with
 * `info()` on virtual size, cluster size, backing file and format, refcount width and lazy refcounts.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { Qcow2Image } from '../../../../src/backends/block/qcow2/index.js';
import {
  assertQemuCheckClean,
  ensureQemuUtils,
  firstDifference,
  prng,
  qemuImg,
  qemuImgStatus,
  qemuIo,
  randomBytes,
  readAll,
  tempDir,
} from './qemu-tools.js';

const MiB = 1 << 20;
const tmp = tempDir('ringvm-qcow2-write-');

before(async () => {
  await ensureQemuUtils();
});
after(() => {
  tmp.cleanup();
});

interface QemuInfo {
  'virtual-size': number;
  'cluster-size': number;
  'backing-filename'?: string;
  'backing-filename-format'?: string;
  'dirty-flag': boolean;
  'format-specific': {
    data: { compat: string; 'lazy-refcounts': boolean; 'refcount-bits': number; corrupt: boolean };
  };
}

function qemuInfo(path: string): QemuInfo {
  return JSON.parse(qemuImg('info', '--output=json', path)) as QemuInfo;
}

/** Asserts QEMU reads `path` as exactly `expected` (qemu-img compare against a raw file). */
function assertQemuCompare(path: string, expected: Uint8Array): void {
  const raw = `${path}.expected.raw`;
  writeFileSync(raw, expected);
  const r = qemuImgStatus('compare', '-f', 'qcow2', '-F', 'raw', path, raw);
  assert.equal(r.status, 0, `qemu-img compare: ${r.stdout}${r.stderr}`);
}

describe('Qcow2Image.create agrees with qemu-img info and check', () => {
  const cases = [
    { clusterSize: 512, refcountBits: 16, size: 64 * MiB },
    { clusterSize: 65536, refcountBits: 16, size: 20 * 1024 * MiB },
    { clusterSize: 2 * MiB, refcountBits: 64, size: 100 * MiB },
    { clusterSize: 4096, refcountBits: 1, size: 8 * MiB },
    { clusterSize: 65536, refcountBits: 8, size: 0 },
  ];
  for (const c of cases) {
    test(`cluster_size=${c.clusterSize} refcount_bits=${c.refcountBits} size=${c.size}`, async () => {
      const path = tmp.path(`create-${c.clusterSize}-${c.refcountBits}-${c.size}.qcow2`);
      await Qcow2Image.create(path, c);
      assertQemuCheckClean(path);
      const q = qemuInfo(path);
      const image = await Qcow2Image.open(path, { readOnly: true });
      const info = image.info();
      assert.equal(info.virtualSize, q['virtual-size']);
      assert.equal(info.clusterSize, q['cluster-size']);
      assert.equal(info.refcountBits, q['format-specific'].data['refcount-bits']);
      assert.equal(q['format-specific'].data.compat, '1.1');
      assert.equal(info.lazyRefcounts, false);
      assert.equal(info.dirty, false);
      await image.close();
    });
  }

  test('with a backing file (relative name, format given and probed) and lazy refcounts', async () => {
    writeFileSync(tmp.path('base.raw'), new Uint8Array(3 * MiB).fill(0xab));
    qemuImg('create', '-q', '-f', 'qcow2', tmp.path('base.qcow2'), '5M');
    await Qcow2Image.create(tmp.path('o1.qcow2'), {
      backingFile: 'base.raw',
      backingFormat: 'raw',
      lazyRefcounts: true,
    });
    await Qcow2Image.create(tmp.path('o2.qcow2'), { backingFile: 'base.qcow2', size: 8 * MiB });
    for (const [name, file, fmt, size] of [
      ['o1.qcow2', 'base.raw', 'raw', 3 * MiB],
      ['o2.qcow2', 'base.qcow2', 'qcow2', 8 * MiB],
    ] as const) {
      const path = tmp.path(name);
      assertQemuCheckClean(path);
      const q = qemuInfo(path);
      const image = await Qcow2Image.open(path, { readOnly: true });
      const info = image.info();
      assert.equal(q['backing-filename'], file);
      assert.equal(q['backing-filename-format'], fmt);
      assert.equal(info.backingFile, file);
      assert.equal(info.backingFormat, fmt);
      assert.equal(info.virtualSize, size);
      assert.equal(q['virtual-size'], size);
      assert.equal(info.lazyRefcounts, q['format-specific'].data['lazy-refcounts']);
      await image.close();
    }
    assert.equal(qemuInfo(tmp.path('o1.qcow2'))['format-specific'].data['lazy-refcounts'], true);
  });

  test('bad options are INVALID_ARGUMENT errors; a missing backing file is BACKING_NOT_FOUND', async () => {
    const p = tmp.path('bad.qcow2');
    await assert.rejects(Qcow2Image.create(p, { size: MiB, clusterSize: 1000 }), {
      code: 'INVALID_ARGUMENT',
      value: 1000,
    });
    await assert.rejects(Qcow2Image.create(p, { size: MiB, clusterSize: 4 * MiB }), {
      code: 'INVALID_ARGUMENT',
    });
    await assert.rejects(Qcow2Image.create(p, { size: 1000 }), { code: 'INVALID_ARGUMENT', value: 1000 });
    await assert.rejects(Qcow2Image.create(p, { size: MiB, refcountBits: 3 }), { code: 'INVALID_ARGUMENT' });
    await assert.rejects(Qcow2Image.create(p, {}), { code: 'INVALID_ARGUMENT' });
    await assert.rejects(Qcow2Image.create(p, { size: MiB, backingFile: 'nope.raw' }), {
      code: 'BACKING_NOT_FOUND',
    });
  });
});

describe('ringvm writes, QEMU reads', () => {
  for (const clusterSize of [512, 65536, 2 * MiB]) {
    test(`random writes, discards and write-zeroes, cluster_size=${clusterSize}`, async () => {
      const path = tmp.path(`rw-${clusterSize}.qcow2`);
      const size = 32 * MiB;
      await Qcow2Image.create(path, { size, clusterSize });
      const model = new Uint8Array(size);
      const rand = prng(clusterSize + 7);
      const image = await Qcow2Image.open(path, { readOnly: false });
      for (let i = 0; i < 120; i++) {
        const sectors = 1 + (rand() % (clusterSize >= MiB ? 4096 : 600));
        const len = Math.min(sectors * 512, size);
        const off = (rand() % ((size - len) / 512 + 1)) * 512;
        const op = rand() % 10;
        if (op < 7) {
          const data = randomBytes(rand, len);
          const cut = Math.floor(len / 3);
          await image.writev(off, [data.subarray(0, cut), data.subarray(cut)]);
          model.set(data, off);
        } else if (op < 9) {
          await image.writeZeroes(off, len, op === 8);
          model.fill(0, off, off + len);
        } else {
          await image.discard(off, len);
          // Discarded whole clusters read as zeros (no backing file); partial ones keep their data.
          const first = Math.ceil(off / clusterSize) * clusterSize;
          const last = Math.floor((off + len) / clusterSize) * clusterSize;
          if (last > first) model.fill(0, first, last);
        }
        if (i % 40 === 39) await image.flush();
      }
      assert.equal(firstDifference(await readAll(image), model), -1, 'ringvm reads back what it wrote');
      await image.close();
      assertQemuCheckClean(path);
      assertQemuCompare(path, model);
    });
  }

  test('copy on write over a backing chain leaves the backing files untouched', async () => {
    const rand = prng(99);
    const baseBytes = randomBytes(rand, 8 * MiB);
    writeFileSync(tmp.path('cow-base.raw'), baseBytes);
    qemuImg('create', '-q', '-f', 'qcow2', '-b', 'cow-base.raw', '-F', 'raw', tmp.path('cow-mid.qcow2'));
    qemuIo(tmp.path('cow-mid.qcow2'), ['write -P 0x5c 1M 1M', 'write -z 4M 64K']);
    const midBefore = readFileSync(tmp.path('cow-mid.qcow2'));
    await Qcow2Image.create(tmp.path('cow-top.qcow2'), {
      backingFile: 'cow-mid.qcow2',
      backingFormat: 'qcow2',
      clusterSize: 4096,
    });
    const image = await Qcow2Image.open(tmp.path('cow-top.qcow2'), { readOnly: false });
    const model = await readAll(image);
    for (let i = 0; i < 200; i++) {
      const len = 512 * (1 + (rand() % 40));
      const off = 512 * (rand() % ((8 * MiB - len) / 512));
      const data = randomBytes(rand, len);
      await image.writev(off, [data]);
      model.set(data, off);
    }
    await image.writeZeroes(2 * MiB, 64 * 1024, false); // masks the backing data
    model.fill(0, 2 * MiB, 2 * MiB + 64 * 1024);
    await image.discard(6 * MiB, 64 * 1024); // with a backing file: zero flag, not the backing data
    model.fill(0, 6 * MiB, 6 * MiB + 64 * 1024);
    assert.equal(firstDifference(await readAll(image), model), -1);
    await image.close();
    assertQemuCheckClean(tmp.path('cow-top.qcow2'));
    assertQemuCompare(tmp.path('cow-top.qcow2'), model);
    assert.ok(readFileSync(tmp.path('cow-mid.qcow2')).equals(midBefore), 'the backing image did not change');
    assert.ok(readFileSync(tmp.path('cow-base.raw')).equals(baseBytes), 'the base did not change');
  });

  test('writes into an image written by qemu-io (version 2 and 3, compressed clusters overwritten)', async () => {
    for (const compat of ['0.10', '1.1']) {
      const raw = tmp.path(`mix-${compat}.raw`);
      const bytes = new Uint8Array(4 * MiB);
      for (let i = 0; i < bytes.length; i++) bytes[i] = (i >> 10) & 0xff;
      writeFileSync(raw, bytes);
      const path = tmp.path(`mix-${compat}.qcow2`);
      qemuImg('convert', '-q', '-c', '-f', 'raw', '-O', 'qcow2', '-o', `compat=${compat}`, raw, path);
      const image = await Qcow2Image.open(path, { readOnly: false });
      const model = Uint8Array.from(bytes);
      const rand = prng(5);
      for (let i = 0; i < 60; i++) {
        const len = 512 * (1 + (rand() % 300));
        const off = 512 * (rand() % ((bytes.length - len) / 512));
        const data = randomBytes(rand, len);
        await image.writev(off, [data]);
        model.set(data, off);
      }
      await image.writeZeroes(MiB, 3 * 65536 + 512, true);
      model.fill(0, MiB, MiB + 3 * 65536 + 512);
      await image.close();
      assertQemuCheckClean(path);
      assertQemuCompare(path, model);
    }
  });

  test('resize grows the disk (L1 table moved) and writeCompressed stores compressed clusters', async () => {
    const path = tmp.path('grow.qcow2');
    await Qcow2Image.create(path, { size: MiB, clusterSize: 512 });
    const image = await Qcow2Image.open(path, { readOnly: false });
    const model = new Uint8Array(64 * MiB);
    const a = new Uint8Array(MiB).fill(0x31);
    await image.writev(0, [a]);
    model.set(a, 0);
    await image.resize(64 * MiB); // 512-byte clusters: the L1 table grows from 32 to 2048 entries
    assert.equal(image.size, 64 * MiB);
    const b = new Uint8Array(3 * MiB).fill(0x32);
    await image.writev(60 * MiB, [b]);
    model.set(b, 60 * MiB);
    for (let c = 0; c < 64; c++) {
      const cluster = new Uint8Array(512);
      for (let i = 0; i < 512; i++) cluster[i] = c % 3 === 0 ? 0x41 + (i % 7) : (c * 31 + i * 17) & 0xff;
      await image.writeCompressed(8 * MiB + c * 512, cluster);
      model.set(cluster, 8 * MiB + c * 512);
    }
    await assert.rejects(image.writeCompressed(100, new Uint8Array(512)), { code: 'INVALID_ARGUMENT' });
    await assert.rejects(image.resize(MiB), { code: 'INVALID_ARGUMENT' });
    const check = await image.check();
    assert.equal(check.corruptions + check.leaks, 0, check.messages.join('\n'));
    assert.ok(check.compressedClusters > 0);
    await image.close();
    assertQemuCheckClean(path);
    assertQemuCompare(path, model);
    assert.equal(qemuInfo(path)['virtual-size'], 64 * MiB);

    const big = tmp.path('grow64k.qcow2');
    await Qcow2Image.create(big, { size: MiB });
    const g = await Qcow2Image.open(big, { readOnly: false });
    await g.resize(10 * 1024 * MiB); // 1 → 20 L1 entries, still one cluster
    const c = new Uint8Array(65536).fill(0x99);
    await g.writeCompressed(9 * 1024 * MiB, c);
    await g.writeCompressed(9 * 1024 * MiB + 65536, c);
    await g.close();
    assertQemuCheckClean(big);
    assert.equal(qemuInfo(big)['virtual-size'], 10 * 1024 * MiB);
    qemuIo(big, [`read -P 0x99 ${9 * 1024 * MiB} 131072`, `read -P 0 ${9 * 1024 * MiB + 131072} 65536`]);
  });

  test('qemu-io reads what ringvm wrote through every cluster kind', async () => {
    const path = tmp.path('kinds.qcow2');
    await Qcow2Image.create(path, { size: 16 * MiB });
    const image = await Qcow2Image.open(path, { readOnly: false });
    await image.writev(0, [new Uint8Array(3 * MiB).fill(0x61)]);
    await image.writeZeroes(MiB, MiB, true);
    await image.writeCompressed(4 * MiB, new Uint8Array(65536).fill(0x62));
    await image.writev(4 * MiB + 4096, [new Uint8Array(4096).fill(0x63)]); // COW out of a compressed cluster
    await image.flush();
    await image.close();
    qemuIo(path, [
      'read -P 0x61 0 1M',
      'read -P 0 1M 1M',
      'read -P 0x61 2M 1M',
      `read -P 0x62 ${4 * MiB} 4096`,
      `read -P 0x63 ${4 * MiB + 4096} 4096`,
      `read -P 0x62 ${4 * MiB + 8192} ${65536 - 8192}`,
    ]);
    assertQemuCheckClean(path);
  });
});
