/**
 * `ringvm img` on qcow2 images, with qemu-img and qemu-io as the independent peers: images ringvm makes pass
 * qemu-img check and qemu-img info agrees about them; images qemu-img and qemu-io make (zero clusters,
 * compressed clusters, backing chains) work with every subcommand and give what qemu-img gives.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  closeSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readFileSync,
  readSync,
  rmSync,
  truncateSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pattern } from '../../guest/guest-harness.js';
import { img, imgOk, qemu, qemuInfo } from './img-harness.js';

const MiB = 1 << 20;
let dir = '';
const at = (name: string) => join(dir, name);

before(() => {
  dir = mkdtempSync(join(tmpdir(), 'ringvm-img-qcow2-'));
});
after(() => {
  rmSync(dir, { recursive: true, force: true });
});

/** A qcow2 image made by QEMU: data, zero clusters (write -z), a discarded range, over 8 MiB. */
function qemuImage(name: string, options = 'cluster_size=65536'): string {
  const path = at(name);
  qemu('qemu-img', ['create', '-f', 'qcow2', '-o', options, path, '8M']);
  qemu('qemu-io', [
    '-f',
    'qcow2',
    '-c',
    'write -P 0x11 0 192k',
    '-c',
    'write -P 0x22 1M 64k',
    '-c',
    'write -z 2M 128k',
    '-c',
    'write -P 0x33 3M 1M',
    '-c',
    'discard 3M 64k',
    '-c',
    'write -P 0x44 8128k 64k',
    path,
  ]);
  return path;
}

/** Refcount entry of host cluster `index` (16-bit refcounts, first refcount block). */
function setRefcount(path: string, clusterIndex: number, value: number): void {
  const fd = openSync(path, 'r+');
  try {
    const header = Buffer.alloc(104);
    readSync(fd, header, 0, 104, 0);
    assert.equal(header.readUInt32BE(96), 4, 'refcount_order 4 (16 bits)');
    const tableOffset = Number(header.readBigUInt64BE(48));
    const entry = Buffer.alloc(8);
    readSync(fd, entry, 0, 8, tableOffset);
    const block = Number(entry.readBigUInt64BE(0));
    const v = Buffer.alloc(2);
    v.writeUInt16BE(value);
    writeSync(fd, v, 0, 2, block + clusterIndex * 2);
  } finally {
    closeSync(fd);
  }
}

describe('ringvm img create: qcow2 images that qemu-img accepts', () => {
  test('plain, with -o options: qemu-img check is clean, qemu-img info agrees', () => {
    const path = at('made.qcow2');
    const out = imgOk([
      'create',
      '-f',
      'qcow2',
      '-o',
      'cluster_size=4k,lazy_refcounts=on,refcount_bits=8',
      path,
      '20G',
    ]);
    assert.match(
      out,
      /^Formatting '.*made.qcow2', fmt=qcow2 cluster_size=4096 .*size=21474836480 lazy_refcounts=on refcount_bits=8\n$/,
    );
    assert.match(qemu('qemu-img', ['check', path]), /No errors were found on the image/);
    const theirs = qemuInfo(path);
    const ours = JSON.parse(imgOk(['info', '--output=json', path])) as Record<string, unknown>;
    assert.deepEqual(ours, theirs);
    assert.equal(theirs['virtual-size'], 20 * 2 ** 30);
    assert.equal(theirs['cluster-size'], 4096);
    assert.deepEqual(
      (theirs['format-specific'] as { data: Record<string, unknown> }).data['lazy-refcounts'],
      true,
    );
    assert.equal(imgOk(['info', path]), qemu('qemu-img', ['info', path]));
  });

  test('an overlay (-b -F, relative name, size from the backing file): the same backing file in both infos', () => {
    mkdirSync(at('sub'));
    writeFileSync(at('sub/base.raw'), pattern(4 * MiB, 3));
    const overlay = at('sub/over.qcow2');
    imgOk(['create', '-q', '-f', 'qcow2', '-b', 'base.raw', '-F', 'raw', overlay]);
    const theirs = qemuInfo(overlay);
    assert.equal(theirs['virtual-size'], 4 * MiB);
    assert.equal(theirs['backing-filename'], 'base.raw');
    assert.equal(theirs['backing-filename-format'], 'raw');
    assert.deepEqual(JSON.parse(imgOk(['info', '--output=json', overlay])), theirs);
    assert.equal(
      imgOk(['info', '--backing-chain', overlay]),
      qemu('qemu-img', ['info', '--backing-chain', overlay]),
    );
    qemu('qemu-img', ['check', overlay]);
    assert.equal(
      qemu('qemu-img', ['compare', '-f', 'qcow2', '-F', 'raw', overlay, at('sub/base.raw')]),
      'Images are identical.\n',
    );
  });

  test('create errors name the option', () => {
    const cases: [string[], RegExp][] = [
      [
        ['create', '-f', 'qcow2', '-o', 'cluster_size=3000', at('e.qcow2'), '1M'],
        /cluster_size: '3000' is not a power of two from 512 to 2M/,
      ],
      [
        ['create', '-f', 'qcow2', '-o', 'refcount_bits=3', at('e.qcow2'), '1M'],
        /refcount_bits: '3' is not a power of two/,
      ],
      [
        ['create', '-f', 'qcow2', '-o', 'lazy_refcounts=maybe', at('e.qcow2'), '1M'],
        /lazy_refcounts: expected on or off/,
      ],
      [
        ['create', '-f', 'qcow2', '-o', 'compat=0.10', at('e.qcow2'), '1M'],
        /compat: '0.10' is not supported/,
      ],
      [
        ['create', '-f', 'qcow2', '-o', 'preallocation=full', at('e.qcow2'), '1M'],
        /invalid option 'preallocation' for format 'qcow2'/,
      ],
      [['create', '-f', 'qcow2', at('e.qcow2')], /SIZE: missing/],
      [
        ['create', '-f', 'qcow2', '-F', 'raw', at('e.qcow2'), '1M'],
        /-F: a backing format without a backing file/,
      ],
      [['create', '-f', 'qcow2', '-b', at('nope.raw'), '-F', 'raw', at('e.qcow2')], /nope\.raw/],
    ];
    for (const [args, pattern_] of cases) {
      const r = img(args);
      assert.equal(r.status, 1, `${args.join(' ')}: ${r.stderr}`);
      assert.match(r.stderr, pattern_, args.join(' '));
    }
  });
});

describe('ringvm img on images qemu-img and qemu-io made', () => {
  test('info and map give what qemu-img gives (zero clusters, discarded range, two cluster sizes)', () => {
    for (const [name, options] of [
      ['q64.qcow2', 'cluster_size=65536'],
      ['q4k.qcow2', 'cluster_size=4096,lazy_refcounts=on'],
      ['v2.qcow2', 'compat=0.10'],
    ] as const) {
      const path = qemuImage(name, options);
      assert.deepEqual(JSON.parse(imgOk(['info', '--output=json', path])), qemuInfo(path), name);
      assert.equal(imgOk(['info', path]), qemu('qemu-img', ['info', path]), name);
      assert.equal(
        imgOk(['map', '--output=json', path]),
        qemu('qemu-img', ['map', '--output=json', path]),
        name,
      );
      assert.equal(imgOk(['map', path]), qemu('qemu-img', ['map', path]), name);
      assert.equal(img(['check', path]).status, 0, name);
    }
  });

  test('convert qcow2 → raw equals qemu-img convert: zero clusters, compressed clusters, a backing chain', () => {
    const plain = qemuImage('src.qcow2');
    // compressed clusters, from qemu-img convert -c
    writeFileSync(
      at('pattern.raw'),
      Buffer.concat([pattern(2 * MiB, 9), Buffer.alloc(MiB), pattern(MiB, 10)]),
    );
    qemu('qemu-img', [
      'convert',
      '-c',
      '-f',
      'raw',
      '-O',
      'qcow2',
      at('pattern.raw'),
      at('compressed.qcow2'),
    ]);
    // a three-image chain: raw base, qcow2 middle, qcow2 top
    writeFileSync(at('chain-base.raw'), pattern(8 * MiB, 11));
    qemu('qemu-img', ['create', '-f', 'qcow2', '-b', 'chain-base.raw', '-F', 'raw', at('chain-mid.qcow2')]);
    qemu('qemu-io', ['-c', 'write -P 0x66 1M 2M', '-c', 'write -z 5M 64k', at('chain-mid.qcow2')]);
    qemu('qemu-img', [
      'create',
      '-f',
      'qcow2',
      '-b',
      'chain-mid.qcow2',
      '-F',
      'qcow2',
      at('chain-top.qcow2'),
    ]);
    qemu('qemu-io', ['-c', 'write -P 0x77 2M 4k', '-c', 'write -z 1M 4k', at('chain-top.qcow2')]);
    for (const source of [plain, at('compressed.qcow2'), at('chain-top.qcow2')]) {
      imgOk(['convert', '-O', 'raw', source, at('ours.raw')]);
      qemu('qemu-img', ['convert', '-O', 'raw', source, at('theirs.raw')]);
      assert.ok(readFileSync(at('ours.raw')).equals(readFileSync(at('theirs.raw'))), source);
    }
    assert.ok(
      readFileSync(at('ours.raw'))
        .subarray(2 * MiB, 2 * MiB + 4096)
        .every((b) => b === 0x77),
    );
    assert.equal(
      imgOk(['info', '--backing-chain', at('chain-top.qcow2')]),
      qemu('qemu-img', ['info', '--backing-chain', at('chain-top.qcow2')]),
    );
    const chain = JSON.parse(
      imgOk(['info', '--output=json', '--backing-chain', at('chain-top.qcow2')]),
    ) as unknown[];
    assert.deepEqual(
      chain,
      JSON.parse(qemu('qemu-img', ['info', '--output=json', '--backing-chain', at('chain-top.qcow2')])),
    );
  });

  test('convert raw → qcow2 (-c, and -o cluster_size): qemu-img compare says identical, qemu-img check clean', () => {
    writeFileSync(
      at('r.raw'),
      Buffer.concat([pattern(3 * MiB, 21), Buffer.alloc(2 * MiB), pattern(MiB + 4096, 22)]),
    );
    for (const args of [['-c'], ['-o', 'cluster_size=4k'], ['-c', '-o', 'cluster_size=2M'], []]) {
      const out = at('r.qcow2');
      imgOk(['convert', '-f', 'raw', '-O', 'qcow2', ...args, at('r.raw'), out]);
      assert.equal(
        qemu('qemu-img', ['compare', '-f', 'raw', '-F', 'qcow2', at('r.raw'), out]),
        'Images are identical.\n',
        args.join(' '),
      );
      const check = JSON.parse(qemu('qemu-img', ['check', '--output=json', out])) as Record<string, number>;
      assert.equal(check.corruptions ?? 0, 0);
      assert.equal(check.leaks ?? 0, 0);
      if (args.includes('-c')) assert.ok((check['compressed-clusters'] ?? 0) > 0, 'clusters were compressed');
    }
  });

  test('resize a qcow2 image: qemu-img sees the new size, the data stays, check clean', () => {
    const path = qemuImage('grow.qcow2');
    imgOk(['resize', path, '+1G']);
    assert.equal(qemuInfo(path)['virtual-size'], 8 * MiB + 2 ** 30);
    qemu('qemu-img', ['check', path]);
    qemu('qemu-io', ['-c', 'read -P 0x22 1M 64k', '-c', 'read -P 0 8M 1M', path]);
  });

  test('check: leaks (status 3, repaired by -r leaks) and corruptions (status 2), as qemu-img counts them', () => {
    const leaky = qemuImage('leaky.qcow2');
    // A cluster past everything in use (the file grown to hold it) gets refcount 1: nothing references it.
    truncateSync(leaky, 201 * 65536);
    setRefcount(leaky, 200, 1);
    qemu('qemu-img', ['check', leaky], 3);
    const r = img(['check', leaky]);
    assert.equal(r.status, 3, r.stderr);
    assert.match(r.stdout, /1 leaked clusters were found on the image/);
    const json = JSON.parse(imgOk(['check', '--output=json', '-r', 'leaks', leaky])) as Record<
      string,
      number
    >;
    assert.equal(json['leaks-fixed'], 1);
    qemu('qemu-img', ['check', leaky], 0);
    assert.equal(img(['check', '-q', leaky]).status, 0);

    const broken = qemuImage('broken.qcow2');
    // Cluster 1 holds the L1 table (qemu-img's layout at 64 KiB clusters): refcount 0 on a used cluster.
    setRefcount(broken, 1, 0);
    qemu('qemu-img', ['check', broken], 2);
    const c = img(['check', broken]);
    assert.equal(c.status, 2, c.stderr + c.stdout);
    assert.match(c.stdout, /errors were found on the image/);
  });

  test('bad images: a missing backing file and a truncated header name the file', () => {
    writeFileSync(at('gone.raw'), Buffer.alloc(MiB));
    qemu('qemu-img', ['create', '-f', 'qcow2', '-b', 'gone.raw', '-F', 'raw', at('orphan.qcow2')]);
    rmSync(at('gone.raw'));
    const r = img(['info', at('orphan.qcow2')]);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /^ringvm img: .*gone\.raw/);
    writeFileSync(at('short.qcow2'), Buffer.from([0x51, 0x46, 0x49, 0xfb, 0, 0, 0, 3]));
    const s = img(['info', at('short.qcow2')]);
    assert.equal(s.status, 1);
    assert.match(s.stderr, /^ringvm img: .*short\.qcow2/);
    assert.match(img(['info', '-f', 'qcow2', at('pattern.raw')]).stderr, /pattern\.raw/);
  });
});
