/**
 * Images made by QEMU (qemu-img create / convert, written by qemu-io) read back through ringvm's Qcow2Image
 * byte for byte: every cluster size from 512 B to 2 MiB, version 2 (compat=0.10) and 3, zero clusters
 * (`write -z`), discarded clusters, compressed clusters (`qemu-img convert -c`), backing chains of depth 3 with
 * relative names, a backing file shorter than its overlay. The reference is `qemu-img convert -O raw`.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import {
  Qcow2Image,
  detectImageFormat,
  openImage,
  type MapExtent,
} from '../../../../src/backends/block/qcow2/index.js';
import { RawFileBackend } from '../../../../src/backends/block/raw-file.js';
import {
  ensureQemuUtils,
  firstDifference,
  prng,
  qemuImg,
  qemuIo,
  randomBytes,
  readAll,
  tempDir,
} from './qemu-tools.js';

const MiB = 1 << 20;
const tmp = tempDir('ringvm-qcow2-read-');

before(async () => {
  await ensureQemuUtils();
});
after(() => {
  tmp.cleanup();
});

/** What QEMU itself reads from `path`: the whole disk converted to raw. */
function qemuView(path: string): Uint8Array {
  const raw = `${path}.ref.raw`;
  qemuImg('convert', '-O', 'raw', path, raw);
  return new Uint8Array(readFileSync(raw));
}

async function assertSameAsQemu(path: string): Promise<Qcow2Image> {
  const image = await Qcow2Image.open(path, { readOnly: true });
  const expected = qemuView(path);
  assert.equal(image.size, expected.length);
  const got = await readAll(image);
  const at = firstDifference(got, expected);
  assert.equal(at, -1, `first difference at byte ${at}`);
  return image;
}

describe('qcow2 images written by qemu-io read back byte for byte', () => {
  for (const clusterSize of [512, 4096, 65536, 2 * MiB]) {
    for (const compat of ['1.1', '0.10']) {
      test(`cluster_size=${clusterSize} compat=${compat}`, async () => {
        const path = tmp.path(`w-${clusterSize}-${compat}.qcow2`);
        const size = 24 * MiB;
        qemuImg(
          'create',
          '-q',
          '-f',
          'qcow2',
          '-o',
          `cluster_size=${clusterSize},compat=${compat}`,
          path,
          String(size),
        );
        const cmds = [
          'write -P 0x11 0 4096',
          'write -P 0x22 1000448 70000', // partial clusters on both sides (sector aligned start)
          `write -P 0x33 ${3 * MiB} ${2 * MiB}`,
          `write -P 0x44 ${size - 4096} 4096`,
          `write -P 0x55 ${8 * MiB + 512} 512`,
          `write -P 0x66 ${12 * MiB} ${4 * MiB}`,
          `discard ${13 * MiB} ${MiB}`,
        ];
        if (compat === '1.1') cmds.push(`write -z ${14 * MiB} ${MiB}`, `write -z ${3 * MiB + 4096} 8192`);
        qemuIo(path, cmds);
        const image = await assertSameAsQemu(path);
        const info = image.info();
        assert.equal(info.clusterSize, clusterSize);
        assert.equal(info.version, compat === '1.1' ? 3 : 2);
        assert.equal(info.refcountBits, 16);
        await image.close();
      });
    }
  }

  test('zero clusters from write -z over data, with and without unmap', async () => {
    const path = tmp.path('zero.qcow2');
    qemuImg('create', '-q', '-f', 'qcow2', path, '8M');
    qemuIo(path, ['write -P 0x77 0 8M', 'write -z 1M 1M', 'write -z -u 3M 1M', 'write -z 5M 1000448']);
    const image = await assertSameAsQemu(path);
    const extents: MapExtent[] = [];
    for await (const e of image.map()) extents.push(e);
    assert.ok(
      extents.some((e) => e.zero && e.present && e.start === MiB),
      JSON.stringify(extents),
    );
    await image.close();
  });
});

describe('compressed clusters from qemu-img convert -c', () => {
  for (const clusterSize of [512, 65536, 2 * MiB]) {
    test(`cluster_size=${clusterSize}`, async () => {
      const raw = tmp.path(`c-${clusterSize}.raw`);
      const size = 6 * MiB;
      const bytes = new Uint8Array(size);
      const rand = prng(clusterSize);
      // Compressible text-like data, some random (incompressible) stretches and zeros.
      for (let i = 0; i < size; i++) bytes[i] = 0x61 + ((i * 7 + (i >> 9)) % 23);
      bytes.set(randomBytes(rand, MiB), 2 * MiB);
      bytes.fill(0, 4 * MiB, 5 * MiB);
      writeFileSync(raw, bytes);
      const path = tmp.path(`c-${clusterSize}.qcow2`);
      qemuImg(
        'convert',
        '-q',
        '-c',
        '-f',
        'raw',
        '-O',
        'qcow2',
        '-o',
        `cluster_size=${clusterSize}`,
        raw,
        path,
      );
      const image = await assertSameAsQemu(path);
      const got = await readAll(image, 777 * 512);
      assert.equal(firstDifference(got, bytes), -1);
      const check = await image.check();
      assert.equal(check.corruptions, 0, check.messages.join('\n'));
      assert.ok(check.compressedClusters > 0, 'the image has compressed clusters');
      await image.close();
    });
  }
});

describe('backing chains', () => {
  test('depth 3 over a raw base, relative names, writes in every layer', async () => {
    const rand = prng(3);
    const base = tmp.path('base.raw');
    writeFileSync(base, randomBytes(rand, 16 * MiB));
    qemuImg('create', '-q', '-f', 'qcow2', '-b', 'base.raw', '-F', 'raw', tmp.path('l1.qcow2'));
    qemuImg(
      'create',
      '-q',
      '-f',
      'qcow2',
      '-o',
      'cluster_size=4096',
      '-b',
      'l1.qcow2',
      '-F',
      'qcow2',
      tmp.path('l2.qcow2'),
    );
    qemuImg('create', '-q', '-f', 'qcow2', '-b', 'l2.qcow2', '-F', 'qcow2', tmp.path('top.qcow2'), '20M');
    qemuIo(tmp.path('l1.qcow2'), ['write -P 0x01 0 1M', 'write -P 0x02 5000192 100000']);
    qemuIo(tmp.path('l2.qcow2'), ['write -P 0x03 512K 1M', 'write -z 8M 1M']);
    qemuIo(tmp.path('top.qcow2'), ['write -P 0x04 1M 4096', 'write -P 0x05 15M 2M', 'write -z 10M 64K']);
    const image = await assertSameAsQemu(tmp.path('top.qcow2'));
    const info = image.info();
    assert.equal(info.backingFile, 'l2.qcow2');
    assert.equal(info.backingFormat, 'qcow2');
    assert.deepEqual(
      info.backingChain.map((e) => [e.path, e.format, e.virtualSize]),
      [
        [tmp.path('l2.qcow2'), 'qcow2', 16 * MiB],
        [tmp.path('l1.qcow2'), 'qcow2', 16 * MiB],
        [tmp.path('base.raw'), 'raw', 16 * MiB],
      ],
    );
    // map agrees with qemu-img map on which layer answers each byte.
    const ours: MapExtent[] = [];
    for await (const e of image.map()) ours.push(e);
    const theirs = JSON.parse(qemuImg('map', '--output=json', tmp.path('top.qcow2'))) as {
      start: number;
      length: number;
      depth: number;
      data: boolean;
      zero: boolean;
    }[];
    for (const t of theirs) {
      if (t.depth === 3) continue; // the raw base: QEMU reports its holes, ringvm reports it as data
      for (const probe of [t.start, t.start + t.length - 1]) {
        const o = ours.find((e) => e.start <= probe && probe < e.start + e.length);
        assert.ok(o !== undefined, `no extent at ${probe}`);
        assert.equal(o.depth, t.depth, `depth at ${probe}: ${JSON.stringify(o)} vs ${JSON.stringify(t)}`);
        assert.equal(o.zero, t.zero, `zero at ${probe}`);
        assert.equal(o.data, t.data, `data at ${probe}`);
      }
    }
    await image.close();
  });

  test('a missing backing file is a BACKING_NOT_FOUND error at open', async () => {
    const base = tmp.path('gone.raw');
    writeFileSync(base, new Uint8Array(MiB));
    qemuImg('create', '-q', '-f', 'qcow2', '-b', base, '-F', 'raw', tmp.path('orphan.qcow2'));
    writeFileSync(base, ''); // keep the name for a moment, then remove it
    (await import('node:fs')).rmSync(base);
    await assert.rejects(Qcow2Image.open(tmp.path('orphan.qcow2'), { readOnly: true }), {
      name: 'Qcow2Error',
      code: 'BACKING_NOT_FOUND',
      value: base,
    });
  });

  test('a backing chain that loops is a BACKING_LOOP error at open', async () => {
    qemuImg('create', '-q', '-f', 'qcow2', tmp.path('loop-a.qcow2'), '1M');
    qemuImg('create', '-q', '-f', 'qcow2', '-b', 'loop-a.qcow2', '-F', 'qcow2', tmp.path('loop-b.qcow2'));
    // Point a back at b (qemu-img rebase -u writes the header without opening the chain).
    qemuImg('rebase', '-u', '-f', 'qcow2', '-b', 'loop-b.qcow2', '-F', 'qcow2', tmp.path('loop-a.qcow2'));
    await assert.rejects(Qcow2Image.open(tmp.path('loop-b.qcow2'), { readOnly: true }), {
      name: 'Qcow2Error',
      code: 'BACKING_LOOP',
    });
    await assert.rejects(Qcow2Image.open(tmp.path('loop-a.qcow2'), { readOnly: false }), {
      code: 'BACKING_LOOP',
    });
  });
});

describe('openImage and detectImageFormat', () => {
  test('qcow2 by magic, anything else raw', async () => {
    qemuImg('create', '-q', '-f', 'qcow2', tmp.path('d.qcow2'), '1M');
    writeFileSync(tmp.path('d.raw'), new Uint8Array(MiB).fill(9));
    assert.equal(await detectImageFormat(tmp.path('d.qcow2')), 'qcow2');
    assert.equal(await detectImageFormat(tmp.path('d.raw')), 'raw');
    const q = await openImage(tmp.path('d.qcow2'), { readOnly: true });
    assert.ok(q instanceof Qcow2Image);
    const r = await openImage(tmp.path('d.raw'), { readOnly: true });
    assert.ok(r instanceof RawFileBackend);
    // Named explicitly: a qcow2 file served as raw shows its header bytes.
    const asRaw = await openImage(tmp.path('d.qcow2'), { readOnly: true, format: 'raw' });
    const head = new Uint8Array(4);
    await asRaw.readv(0, [head]);
    assert.deepEqual([...head], [0x51, 0x46, 0x49, 0xfb]);
    await Promise.all([q.close(), r.close(), asRaw.close()]);
    await assert.rejects(detectImageFormat(tmp.path('none')), { code: 'NOT_FOUND' });
  });
});
