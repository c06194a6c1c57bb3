import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { img, imgOk, qemu, qemuInfo } from './img-harness.js';

const MiB = 1 << 20;
let dir = '';
const at = (name: string) => join(dir, name);

before(() => {
  dir = mkdtempSync(join(tmpdir(), 'ringvm-img-raw-'));
});
after(() => {
  rmSync(dir, { recursive: true, force: true });
});

describe('ringvm img on raw images, against qemu-img', () => {
  test('create: the size qemu-img info sees; an existing file is truncated', () => {
    writeFileSync(at('old.raw'), Buffer.alloc(3 * MiB, 7));
    const out = imgOk(['create', '-f', 'raw', at('old.raw'), '64M']);
    assert.equal(out, `Formatting '${at('old.raw')}', fmt=raw size=${64 * MiB}\n`);
    const info = qemuInfo(at('old.raw'));
    assert.equal(info['virtual-size'], 64 * MiB);
    assert.equal(info.format, 'raw');
    assert.equal(
      readFileSync(at('old.raw'))
        .subarray(0, 3 * MiB)
        .every((b) => b === 0),
      true,
    );
    assert.equal(
      imgOk(['create', '-q', at('plain.raw'), '65536']),
      '',
      '-q: nothing; raw is the default format',
    );
    assert.equal(statSync(at('plain.raw')).size, 65536);
  });

  test('info agrees with qemu-img info (JSON and human)', () => {
    qemu('qemu-img', ['create', '-f', 'raw', at('i.raw'), '10M']);
    qemu('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5a 1M 256k', at('i.raw')]);
    const ours = JSON.parse(imgOk(['info', '--output=json', at('i.raw')])) as Record<string, unknown>;
    assert.deepEqual(ours, qemuInfo(at('i.raw')));
    const human = imgOk(['info', at('i.raw')]);
    const theirs = qemu('qemu-img', ['info', '-f', 'raw', at('i.raw')]);
    assert.equal(human, theirs);
  });

  test('map: the same extents as qemu-img map, JSON and human', () => {
    qemu('qemu-img', ['create', '-f', 'raw', at('m.raw'), '16M']);
    qemu('qemu-io', [
      '-f',
      'raw',
      '-c',
      'write -P 1 1M 1M',
      '-c',
      'write -P 2 5M 64k',
      '-c',
      'write -P 3 16320k 64k',
      at('m.raw'),
    ]);
    assert.equal(
      imgOk(['map', '--output=json', at('m.raw')]),
      qemu('qemu-img', ['map', '-f', 'raw', '--output=json', at('m.raw')]),
    );
    assert.equal(
      imgOk(['map', '-f', 'raw', at('m.raw')]),
      qemu('qemu-img', ['map', '-f', 'raw', at('m.raw')]),
    );
  });

  test('convert raw → raw: byte-identical to the source and to qemu-img convert, holes kept', () => {
    qemu('qemu-img', ['create', '-f', 'raw', at('c.raw'), '32M']);
    qemu('qemu-io', [
      '-f',
      'raw',
      '-c',
      'write -P 0x11 0 3M',
      '-c',
      'write -P 0 8M 4M', // allocated zeros: skipped, the copy stays sparse there
      '-c',
      'write -P 0x22 20M 12k',
      '-c',
      'write -P 0x33 32764k 4k',
      at('c.raw'),
    ]);
    imgOk(['convert', '-O', 'raw', at('c.raw'), at('ours.raw')]);
    qemu('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', at('c.raw'), at('theirs.raw')]);
    assert.ok(readFileSync(at('ours.raw')).equals(readFileSync(at('c.raw'))));
    assert.ok(readFileSync(at('ours.raw')).equals(readFileSync(at('theirs.raw'))));
    assert.equal(
      qemu('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', at('c.raw'), at('ours.raw')]),
      'Images are identical.\n',
    );
    assert.ok(statSync(at('ours.raw')).blocks * 512 <= 3 * MiB + 64 * 1024, 'zeros are not written');
  });

  test('resize: absolute, +SIZE, -SIZE needs --shrink; qemu-img sees the new size', () => {
    qemu('qemu-img', ['create', '-f', 'raw', at('r.raw'), '1M']);
    assert.equal(imgOk(['resize', at('r.raw'), '+1M']), 'Image resized.\n');
    assert.equal(qemuInfo(at('r.raw'))['virtual-size'], 2 * MiB);
    imgOk(['resize', '-f', 'raw', at('r.raw'), '5M']);
    assert.equal(statSync(at('r.raw')).size, 5 * MiB);
    const refused = img(['resize', at('r.raw'), '-1M']);
    assert.equal(refused.status, 1);
    assert.match(refused.stderr, /shrinking from 5242880 to 4194304 bytes loses data: give --shrink/);
    imgOk(['resize', '--shrink', '-q', at('r.raw'), '-1M']);
    assert.equal(statSync(at('r.raw')).size, 4 * MiB);
    assert.match(img(['resize', '--shrink', at('r.raw'), '-5M']).stderr, /smaller than 0 bytes/);
  });

  test('check on raw: no checks for this format, status 63 like qemu-img', () => {
    qemu('qemu-img', ['create', '-f', 'raw', at('k.raw'), '1M']);
    const r = img(['check', at('k.raw')]);
    assert.equal(r.status, 63);
    assert.match(r.stderr, /This image format does not support checks/);
    qemu('qemu-img', ['check', '-f', 'raw', at('k.raw')], 63);
  });

  test('every bad argument or missing file: exit 1 and a message naming it', () => {
    const cases: [string[], RegExp][] = [
      [
        ['info', at('missing.raw')],
        new RegExp(`Could not open '${at('missing.raw')}': No such file or directory`),
      ],
      [['map', dir], /Could not .*Is a directory/],
      [['create', '-f', 'vmdk', at('x'), '1G'], /Unknown file format 'vmdk'/],
      [['create', at('x'), '12Q'], /create: SIZE: invalid size '12Q'/],
      [['create', at('x')], /create: SIZE: missing/],
      [['create'], /create: expecting a FILE name/],
      [['create', '-o', 'cluster_size=4k', at('x'), '1M'], /invalid option 'cluster_size' for format 'raw'/],
      [['create', '-b', at('k.raw'), at('x'), '1M'], /backing files are not supported for file format 'raw'/],
      [['info', '--output=xml', at('k.raw')], /--output: 'xml' is not one of human, json/],
      [['info', '--frob', at('k.raw')], /info: unknown option '--frob'/],
      [['info', at('k.raw'), at('k.raw')], /unexpected argument/],
      [['check', '-r', 'some', at('k.raw')], /-r: 'some' is not one of leaks, all/],
      [['convert', at('k.raw')], /expecting SOURCE and DESTINATION/],
      [['convert', '-c', at('k.raw'), at('y.raw')], /compression is not supported for file format 'raw'/],
      [['convert', at('missing.raw'), at('y.raw')], /Could not open '.*missing.raw'/],
      [['convert', at('k.raw'), at('k.raw')], /is the source image itself/],
      [['resize', at('k.raw')], /expecting FILE and SIZE/],
      [['resize', at('k.raw'), '+x'], /invalid size 'x'/],
      [['frobnicate'], /unknown command 'frobnicate'/],
    ];
    for (const [args, pattern] of cases) {
      const r = img(args);
      assert.equal(r.status, 1, `${args.join(' ')}: ${r.stderr}`);
      assert.match(r.stderr, pattern, args.join(' '));
      assert.match(r.stderr, /^ringvm img: /);
      assert.equal(r.stdout, '');
    }
    assert.equal(statSync(at('k.raw')).size, MiB, 'a refused convert onto the source left it alone');
  });

  test('--help lists every subcommand; no subcommand is an error', () => {
    const help = img(['--help']);
    assert.equal(help.status, 0);
    for (const c of ['create', 'info', 'check', 'convert', 'resize', 'map'])
      assert.match(help.stdout, new RegExp(`^  ${c} `, 'm'));
    assert.equal(img(['convert', '--help']).status, 0);
    assert.equal(img([]).status, 1);
  });
});
