/**
 * The PCI path: QEMU 7.2 (TCG) guests whose vhost-user-blk-pci and vhost-user-rng-pci devices are served by
 * ringvm exports, driven by the Debian kernel's own virtio_pci, virtio_blk and virtio_rng drivers. QEMU is the
 * vhost-user front end here (it sends what UML does not: GET_VRING_BASE on stop, SET_STATUS, several memory
 * regions). Guests are built by the project's own scripts; nothing is skipped.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { VhostUserExport } from '../../../src/transport/vhost-user/vhost-user-export.js';
import { MiB, pattern, run, script } from '../../guest/guest-harness.js';

const BLK_FACTORIES = new URL('../../fixtures/export-devices.js', import.meta.url).href;
const CLI_FACTORIES = new URL('../../../src/cli/device-factories.js', import.meta.url).href;

function runQemu(args: string[], timeoutMs = 240_000) {
  return run(script('run-qemu'), ['--timeout', String(Math.ceil(timeoutMs / 1000) - 10), ...args], timeoutMs);
}

describe('QEMU TCG guest on ringvm vhost-user devices (PCI)', { timeout: 20 * 60_000 }, () => {
  let work = '';
  const logs: string[] = [];

  before(async () => {
    work = mkdtempSync(join(tmpdir(), 'ringvm-qemu-pci-'));
    const build = await run(script('build-qemu'), [], 20 * 60_000);
    assert.equal(build.code, 0, `build-qemu failed:\n${build.stdout}\n${build.stderr}`);
  });

  after(() => {
    if (work) rmSync(work, { recursive: true, force: true });
  });

  it('vhost-user-blk-pci: the guest writes 16 MiB, reads it back, and the image holds it', async () => {
    const image = join(work, 'disk.img');
    const host = pattern(8 * MiB, 7);
    const initial = new Uint8Array(48 * MiB);
    initial.set(host, 32 * MiB);
    writeFileSync(image, initial);
    const exp = await VhostUserExport.start({
      socketPath: join(work, 'blk.sock'),
      device: { module: BLK_FACTORIES, name: 'createRawBlk', args: { path: image } },
      onLog: (line) => logs.push(line),
    });
    try {
      const r = await runQemu([
        '--blk',
        exp.socketPath,
        '--',
        [
          'test "$(cat /sys/block/vda/size)" = 98304 || { echo "size $(cat /sys/block/vda/size)"; exit 3; }',
          'dd if=/dev/urandom of=/tmp/data bs=1M count=16 2>/dev/null',
          'sha256sum /tmp/data',
          'dd if=/tmp/data of=/dev/vda bs=1M oflag=direct conv=fsync 2>/dev/null',
          'echo 3 > /proc/sys/vm/drop_caches',
          'dd if=/dev/vda bs=1M count=16 iflag=direct 2>/dev/null | sha256sum',
          'dd if=/dev/vda bs=1M skip=32 count=8 iflag=direct 2>/dev/null | sha256sum',
        ].join(' && '),
      ]);
      assert.equal(r.code, 0, `guest failed:\n${r.stdout}\n${r.stderr}\n${logs.join('\n')}`);
      const sums = [...r.stdout.matchAll(/^([0-9a-f]{64})\s/gm)].map((m) => m[1]);
      assert.equal(sums.length, 3, r.stdout);
      assert.equal(sums[1], sums[0], 'read back what was written');
      const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');
      assert.equal(sums[2], sha(host), 'the guest reads what the host wrote');
      assert.equal(sha(readFileSync(image).subarray(0, 16 * MiB)), sums[0], 'the image holds the bytes');
    } finally {
      await exp.stop();
    }
    assert.ok(
      logs.some((l) => l.includes('front end disconnected')),
      'QEMU stopped the device and disconnected cleanly',
    );
  });

  it('vhost-user-rng-pci: /dev/hwrng reads random bytes through virtio_rng', async () => {
    const exp = await VhostUserExport.start({
      socketPath: join(work, 'rng.sock'),
      device: { module: CLI_FACTORIES, name: 'createRngDevice', args: {} },
      onLog: (line) => logs.push(line),
    });
    try {
      const r = await runQemu([
        '--rng',
        exp.socketPath,
        '--',
        [
          'cat /sys/class/misc/hw_random/rng_available',
          'echo current=$(cat /sys/class/misc/hw_random/rng_current)',
          'dd if=/dev/hwrng bs=4096 count=16 2>/dev/null > /tmp/r',
          'wc -c < /tmp/r',
          'od -An -tx1 /tmp/r | tr -s " " "\\n" | grep -v "^$" | sort -u | wc -l',
        ].join(' && '),
      ]);
      assert.equal(r.code, 0, `guest failed:\n${r.stdout}\n${r.stderr}\n${logs.join('\n')}`);
      assert.match(r.stdout, /current=virtio_rng/);
      const numbers = r.stdout.trim().split('\n').slice(-2).map(Number);
      assert.equal(numbers[0], 65536, 'all bytes arrived');
      assert.ok((numbers[1] ?? 0) > 250, `random bytes take (almost) every value: ${numbers[1]}`);
    } finally {
      await exp.stop();
    }
  });
});
