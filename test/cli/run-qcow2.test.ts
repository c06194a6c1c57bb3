/**
 * A UML guest (the kernel's own virtio_blk driver) on a qcow2 overlay over a raw base, through `ringvm run`:
 * the guest's writes land in the overlay, the base's bytes never change, the overlay passes `qemu-img check`,
 * and `ringvm img convert` flattens the chain to exactly the disk the guest saw (and to what qemu-img makes of it).
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pattern } from '../guest/guest-harness.js';
import { imgOk, qemu } from './img/img-harness.js';
import { compiled, ringvm } from './ringvm-process.js';

const MiB = 1 << 20;

let dir = '';
before(() => {
  dir = mkdtempSync(join(tmpdir(), 'ringvm-run-qcow2-'));
});
after(() => {
  rmSync(dir, { recursive: true, force: true });
});

const sha256 = (bytes: Uint8Array) => createHash('sha256').update(bytes).digest('hex');

describe(
  'ringvm run: a UML guest on a qcow2 overlay over a raw base',
  { skip: compiled ? false : 'runs from build/', timeout: 180_000 },
  () => {
    test('writes land in the overlay; the base never changes; convert flattens to what the guest saw', async () => {
      const base = join(dir, 'base.raw');
      writeFileSync(base, pattern(32 * MiB, 77));
      const baseSum = sha256(readFileSync(base));
      const overlay = join(dir, 'overlay.qcow2');
      imgOk(['create', '-q', '-f', 'qcow2', '-b', base, '-F', 'raw', overlay]);

      // The guest: reads the base through the overlay, overwrites 1 MiB at 4 MiB and 4 KiB at 20 MiB + 512,
      // zeroes 64 KiB at 30 MiB, then prints the checksum of its whole disk and of the first MiB.
      const r = await ringvm([
        'run',
        '--blockdev',
        `driver=qcow2,node-name=d0,file.filename=${overlay}`,
        '--export',
        'type=vhost-user-blk,id=e0,node-name=d0,writable=on',
        '--',
        [
          'cat /sys/block/vda/size',
          'dd if=/dev/vda bs=1M count=1 2>/dev/null | sha256sum',
          'dd if=/dev/urandom of=/tmp/r bs=1M count=1 2>/dev/null',
          'dd if=/tmp/r of=/dev/vda bs=1M seek=4 conv=fsync 2>/dev/null',
          'printf overlay-was-here | dd of=/dev/vda bs=512 seek=40961 conv=fsync 2>/dev/null',
          'dd if=/dev/zero of=/dev/vda bs=64k seek=480 count=1 conv=fsync 2>/dev/null',
          'sync',
          'echo 3 > /proc/sys/vm/drop_caches',
          'dd if=/dev/vda bs=1M 2>/dev/null | sha256sum',
        ].join('; '),
      ]);
      assert.equal(r.status, 0, r.err);
      const [sectors, firstMiB, whole] = r.out.trim().split('\n');
      assert.equal(sectors, String((32 * MiB) / 512));
      assert.equal(
        firstMiB!.split(/\s+/)[0],
        sha256(readFileSync(base).subarray(0, MiB)),
        'the base, read through the overlay',
      );

      assert.equal(sha256(readFileSync(base)), baseSum, "the base's bytes never changed");
      const check = qemu('qemu-img', ['check', '-f', 'qcow2', overlay]);
      assert.match(check, /No errors were found on the image/);

      const map = JSON.parse(imgOk(['map', '--output=json', overlay])) as {
        start: number;
        length: number;
        depth: number;
      }[];
      const inOverlay = map.filter((e) => e.depth === 0);
      assert.ok(
        inOverlay.some((e) => e.start <= 4 * MiB && e.start + e.length >= 5 * MiB),
        'the 1 MiB write is in the overlay',
      );
      assert.ok(
        inOverlay.some((e) => e.start <= 20 * MiB && e.start + e.length > 20 * MiB + 512),
        'the small write too',
      );

      const flat = join(dir, 'flat.raw');
      imgOk(['convert', '-O', 'raw', overlay, flat]);
      const flatBytes = readFileSync(flat);
      assert.equal(sha256(flatBytes), whole!.split(/\s+/)[0], 'convert gives exactly the disk the guest saw');
      assert.equal(flatBytes.subarray(20 * MiB + 512, 20 * MiB + 528).toString(), 'overlay-was-here');
      assert.ok(flatBytes.subarray(30 * MiB, 30 * MiB + 64 * 1024).every((b) => b === 0));
      assert.ok(flatBytes.subarray(0, 4 * MiB).equals(readFileSync(base).subarray(0, 4 * MiB)));
      const theirs = join(dir, 'theirs.raw');
      qemu('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', overlay, theirs]);
      assert.ok(readFileSync(theirs).equals(flatBytes), 'qemu-img flattens the chain to the same bytes');
    });

    test('a missing backing file fails before the guest boots, naming the option', async () => {
      const lost = join(dir, 'lost-base.raw');
      writeFileSync(lost, Buffer.alloc(MiB));
      const overlay = join(dir, 'orphan.qcow2');
      qemu('qemu-img', ['create', '-f', 'qcow2', '-b', lost, '-F', 'raw', overlay]);
      rmSync(lost);
      const r = await ringvm([
        'run',
        '--blockdev',
        `driver=file,node-name=f0,filename=${overlay}`,
        '--blockdev',
        'driver=qcow2,node-name=d0,file=f0',
        '--export',
        'type=vhost-user-blk,id=e0,node-name=d0',
        '--',
        'true',
      ]);
      assert.equal(r.status, 2, r.err);
      assert.match(r.err, /--blockdev node-name=d0: .*lost-base\.raw/);
    });
  },
);
