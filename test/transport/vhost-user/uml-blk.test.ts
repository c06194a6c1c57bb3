/**
 * ringvm's virtio-blk over vhost-user against the real Linux virtio_blk driver: the UML guest (virtio_uml as
 * the vhost-user front end) and a raw image served by a VhostUserExport (device in a worker thread). The
 * guest is installed and built by the project's own scripts; nothing is skipped.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { VhostUserExport } from '../../../src/transport/vhost-user/vhost-user-export.js';
import { MiB, run, runUml, script } from '../../guest/guest-harness.js';

const VIRTIO_ID_BLOCK = 2;
const FACTORIES = new URL('../../fixtures/export-devices.js', import.meta.url).href;

function sha256(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

/** The sha256 lines the guest printed, by file name. */
function guestSums(stdout: string): Map<string, string> {
  const sums = new Map<string, string>();
  for (const m of stdout.matchAll(/^([0-9a-f]{64})\s+(\S+)$/gm)) sums.set(m[2]!, m[1]!);
  return sums;
}

/** Allocated bytes of a file (st_blocks is in 512-byte units). */
function allocated(path: string): number {
  return statSync(path).blocks * 512;
}

describe('UML guest on ringvm vhost-user-blk', { timeout: 20 * 60_000 }, () => {
  let work = '';
  const logs: string[] = [];

  async function serve(image: string, options: { readOnly?: boolean } = {}): Promise<VhostUserExport> {
    return VhostUserExport.start({
      socketPath: join(work, `blk-${Math.random().toString(36).slice(2)}.sock`),
      device: { module: FACTORIES, name: 'createRawBlk', args: { path: image, readOnly: options.readOnly } },
      onLog: (line) => logs.push(line),
    });
  }

  function guest(exp: VhostUserExport, command: string, timeoutMs = 180_000) {
    return runUml(
      ['--dev', `${exp.socketPath}:${VIRTIO_ID_BLOCK}`, '--modules', 'virtio_blk', '--', command],
      timeoutMs,
    );
  }

  before(async () => {
    work = mkdtempSync(join(tmpdir(), 'ringvm-uml-blk-'));
    const build = await run(script('build-uml'), [], 20 * 60_000);
    assert.equal(build.code, 0, `build-uml failed:\n${build.stdout}\n${build.stderr}`);
  });

  after(() => {
    if (work) rmSync(work, { recursive: true, force: true });
  });

  it('64 MiB of random data written by the guest reads back after a cache drop, and the image holds it', async () => {
    const image = join(work, 'disk.img');
    writeFileSync(image, new Uint8Array(0));
    await run('/usr/bin/truncate', ['-s', '96M', image], 10_000);
    const exp = await serve(image);
    try {
      const r = await guest(
        exp,
        [
          'test "$(cat /sys/block/vda/size)" = 196608 || { echo "wrong size $(cat /sys/block/vda/size)"; exit 3; }',
          'dd if=/dev/urandom of=/tmp/data bs=1M count=64 2>/dev/null',
          'sha256sum /tmp/data',
          'dd if=/tmp/data of=/dev/vda bs=1M oflag=direct conv=fsync 2>/dev/null',
          'rm /tmp/data',
          'echo 3 > /proc/sys/vm/drop_caches',
          'dd if=/dev/vda bs=1M count=64 iflag=direct 2>/dev/null > /tmp/back',
          'sha256sum /tmp/back',
        ].join(' && '),
      );
      assert.equal(r.code, 0, `guest failed:\n${r.stdout}\n${r.stderr}\n${logs.join('\n')}`);
      const sums = guestSums(r.stdout);
      assert.ok(sums.has('/tmp/data'), r.stdout);
      assert.equal(sums.get('/tmp/back'), sums.get('/tmp/data'), 'read back what was written');
      const host = readFileSync(image);
      assert.equal(
        sha256(host.subarray(0, 64 * MiB)),
        sums.get('/tmp/data'),
        'the host file holds the bytes',
      );
      assert.ok(
        host.subarray(64 * MiB).every((b) => b === 0),
        'nothing written past 64 MiB',
      );
    } finally {
      await exp.stop();
    }
  });

  it('ext2 made, written, unmounted and remounted reads back; fstrim and blkdiscard free host blocks', async () => {
    const image = join(work, 'fs.img');
    writeFileSync(image, new Uint8Array(0));
    await run('/usr/bin/truncate', ['-s', '64M', image], 10_000);
    const exp = await serve(image);
    try {
      const r = await guest(
        exp,
        [
          'mkdir -p /tmp/mnt',
          'mke2fs -q /dev/vda',
          'mount /dev/vda /tmp/mnt',
          'dd if=/dev/urandom of=/tmp/mnt/file bs=1M count=24 2>/dev/null',
          'sha256sum /tmp/mnt/file',
          'umount /tmp/mnt',
          'echo 3 > /proc/sys/vm/drop_caches',
          'mount /dev/vda /tmp/mnt',
          'sha256sum /tmp/mnt/file > /tmp/again',
          'sed "s|/tmp/mnt/file|remounted|" /tmp/again',
          'umount /tmp/mnt',
        ].join(' && '),
      );
      assert.equal(r.code, 0, `guest failed:\n${r.stdout}\n${r.stderr}\n${logs.join('\n')}`);
      const sums = guestSums(r.stdout);
      assert.ok(sums.get('/tmp/mnt/file') !== undefined, r.stdout);
      assert.equal(sums.get('remounted'), sums.get('/tmp/mnt/file'));
      const full = allocated(image);
      assert.ok(full >= 24 * MiB, `the image holds the file (${full} bytes allocated)`);

      // Delete the file and trim: the filesystem discards its blocks, the device punches holes in the image.
      const trim = await guest(
        exp,
        'mkdir -p /tmp/mnt && mount /dev/vda /tmp/mnt && rm /tmp/mnt/file && sync && fstrim -v /tmp/mnt && umount /tmp/mnt',
      );
      assert.equal(trim.code, 0, `fstrim failed:\n${trim.stdout}\n${trim.stderr}`);
      const trimmed = allocated(image);
      assert.ok(trimmed < full - 16 * MiB, `fstrim freed host blocks: ${full} → ${trimmed}`);

      // blkdiscard of the whole device leaves (almost) nothing allocated.
      const discard = await guest(exp, 'blkdiscard /dev/vda');
      assert.equal(discard.code, 0, `blkdiscard failed:\n${discard.stdout}\n${discard.stderr}`);
      assert.ok(allocated(image) <= 64 * 1024, `blkdiscard freed the image: ${allocated(image)} bytes left`);
    } finally {
      await exp.stop();
    }
  });

  it('a read-only image: guest writes fail and the image is unchanged', async () => {
    const image = join(work, 'ro.img');
    const content = new Uint8Array(16 * MiB);
    for (let i = 0; i < content.length; i += 4096) content[i] = (i / 4096) & 0xff;
    writeFileSync(image, content);
    const before = sha256(readFileSync(image));
    const exp = await serve(image, { readOnly: true });
    try {
      const r = await guest(
        exp,
        [
          'echo ro=$(cat /sys/block/vda/ro)',
          'dd if=/dev/vda bs=4096 count=1 skip=3 iflag=direct 2>/dev/null | head -c 1 | od -An -tu1',
          'if dd if=/dev/zero of=/dev/vda bs=4096 count=1 oflag=direct 2>/dev/null; then echo write-succeeded; else echo write-failed; fi',
        ].join('; '),
      );
      assert.equal(r.code, 0, `guest failed:\n${r.stdout}\n${r.stderr}`);
      assert.match(r.stdout, /ro=1/, 'the guest sees a read-only disk');
      assert.match(r.stdout, /^\s*3\s*$/m, 'reads work');
      assert.match(r.stdout, /write-failed/);
      assert.equal(sha256(readFileSync(image)), before, 'the image is unchanged');
    } finally {
      await exp.stop();
    }
  });

  it('a guest killed in the middle of writes leaves the export serving the next guest', async () => {
    const image = join(work, 'kill.img');
    writeFileSync(image, new Uint8Array(0));
    await run('/usr/bin/truncate', ['-s', '64M', image], 10_000);
    const exp = await serve(image);
    try {
      // run-uml kills the guest when its --timeout expires (exit 124), mid-write.
      const killed = await runUml(
        [
          '--timeout',
          '4',
          '--dev',
          `${exp.socketPath}:${VIRTIO_ID_BLOCK}`,
          '--modules',
          'virtio_blk',
          '--',
          'while true; do dd if=/dev/urandom of=/dev/vda bs=1M count=32 oflag=direct 2>/dev/null; done',
        ],
        60_000,
      );
      assert.equal(killed.code, 124, `the guest was killed by the timeout:\n${killed.stderr}`);
      const next = await guest(
        exp,
        'dd if=/dev/zero of=/dev/vda bs=1M count=4 oflag=direct 2>/dev/null && dd if=/dev/vda bs=1M count=4 iflag=direct 2>/dev/null | sha256sum',
      );
      assert.equal(
        next.code,
        0,
        `the next guest failed:\n${next.stdout}\n${next.stderr}\n${logs.join('\n')}`,
      );
      assert.match(next.stdout, new RegExp(sha256(new Uint8Array(4 * MiB))));
      assert.ok(logs.filter((l) => l.includes('front end connected')).length >= 2);
    } finally {
      await exp.stop();
    }
  });
});
