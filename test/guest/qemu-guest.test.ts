// The real QEMU guest (scripts/guest/build-qemu, run-qemu: TCG, virtio over PCI) against real peers: boot,
// command status, a 9p host share, QEMU's own virtio devices, and a vhost-user-blk-pci disk served by
// qemu-storage-daemon. Packages, kernel and initramfs are installed and built by the project's own scripts here;
// nothing is skipped: a missing tool is a failure. Every QEMU and qemu-storage-daemon started here is killed at
// the end, even when a test fails: QEMU through its tagged command line, the daemons by their pid.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  closeSync,
  existsSync,
  mkdtempSync,
  openSync,
  readFileSync,
  rmSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MiB, pattern, processesWith, root, run, script, waitFor, type RunResult } from './guest-harness.js';

/** On every guest's kernel command line, so that a leftover QEMU can be found and killed. */
const tag = `ringvm.testid=qemu-${process.pid}-${Date.now()}`;
const daemons: ChildProcess[] = [];

/** Boots the QEMU guest; TCG is slow, so the default limit is generous (a boot measures ~2.5 s). */
function runQemu(args: string[], timeoutMs = 180_000): Promise<RunResult> {
  return run(
    script('run-qemu'),
    ['--timeout', String(Math.ceil(timeoutMs / 1000) - 10), '--append', tag, ...args],
    timeoutMs,
  );
}

function killAll(): void {
  for (const d of daemons) if (d.exitCode === null && d.signalCode === null) d.kill('SIGKILL');
  for (const pid of processesWith(tag)) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // exited meanwhile
    }
  }
}

describe('QEMU guest (scripts/guest, TCG, virtio-pci)', { timeout: 30 * 60_000 }, () => {
  let work = '';
  let out = '';

  before(async () => {
    work = mkdtempSync(join(tmpdir(), 'ringvm-qemu-'));
    // A fresh machine has none of the Debian packages and no kernel: minutes (apt-get update, install, download).
    const inst = await run(script('install-packages'), [], 20 * 60_000);
    assert.equal(inst.code, 0, `install-packages failed:\n${inst.stdout}\n${inst.stderr}`);
    const build = await run(script('build-qemu'), [], 10 * 60_000);
    assert.equal(build.code, 0, `build-qemu failed:\n${build.stdout}\n${build.stderr}`);
    out = build.stdout.trim();
    assert.equal(out, join(root, '.cache', 'guest', 'qemu'));
  });

  after(() => {
    killAll();
    if (work) rmSync(work, { recursive: true, force: true });
  });

  it('build-qemu is idempotent and fast when nothing changed', async () => {
    const build = await run(script('build-qemu'), [], 60_000);
    assert.equal(build.code, 0, build.stderr);
    assert.equal(build.stderr, '', 'nothing to build or download, so nothing printed');
    assert.ok(build.ms < 5000, `up-to-date build-qemu took ${build.ms} ms`);
    for (const f of ['vmlinuz', 'vmlinux', 'initramfs.cpio.gz', 'stamp', 'kernel-version']) {
      assert.ok(existsSync(join(out, f)), `build-qemu output lacks ${f}`);
    }
    assert.equal(readFileSync(join(out, 'vmlinux')).subarray(0, 4).toString('latin1'), '\x7fELF');
  });

  it('boots, runs a command and returns its output and status 0', async () => {
    const r = await runQemu(['--', 'echo hello from $(uname -s) $(uname -m); uname -r']);
    assert.equal(r.code, 0, r.stderr);
    const kver = readFileSync(join(out, 'kernel-version'), 'utf8').trim();
    assert.equal(r.stdout, `hello from Linux x86_64\n${kver}\n`, 'only the command output, no boot log');
  });

  it('returns a nonzero status and output without a trailing newline', async () => {
    const r = await runQemu(['--', 'printf partial; exit 7']);
    assert.equal(r.code, 7, r.stderr);
    assert.equal(r.stdout, 'partial');
  });

  it("loads the virtio-pci modules and drives QEMU's own virtio-rng-pci and virtio-blk-pci", async () => {
    const img = join(mkdtempSync(join(work, 'disk-')), 'ro.img');
    const data = pattern(MiB, 0x5eed);
    writeFileSync(img, data);
    const r = await runQemu([
      '--device',
      'virtio-rng-pci',
      '--disk',
      `${img},ro`,
      '--',
      "cut -d' ' -f1 /proc/modules | sort; grep -E '^(proc|sysfs|devtmpfs|tmpfs) ' /proc/mounts | cut -d' ' -f2 | sort; " +
        'echo rng=$(cat /sys/class/misc/hw_random/rng_current); ' +
        'echo vda=$(cat /sys/block/vda/size) ro=$(cat /sys/block/vda/ro); ' +
        'echo sum=$(dd if=/dev/vda bs=64k 2>/dev/null | md5sum | cut -d" " -f1)',
    ]);
    assert.equal(r.code, 0, r.stderr);
    const lines = r.stdout.trim().split('\n');
    for (const m of [
      'virtio',
      'virtio_ring',
      'virtio_pci',
      'virtio_pci_legacy_dev',
      'virtio_pci_modern_dev',
      'virtio_blk',
      'virtio_net',
      'net_failover',
      'failover',
      'virtio_console',
      'virtio_rng',
      'virtio_balloon',
    ]) {
      assert.ok(lines.includes(m), `module ${m} not loaded:\n${r.stdout}`);
    }
    for (const mnt of ['/proc', '/sys', '/dev', '/tmp']) assert.ok(lines.includes(mnt), `${mnt} not mounted`);
    assert.ok(lines.includes('rng=virtio_rng.0'), r.stdout);
    assert.ok(lines.includes(`vda=${MiB / 512} ro=1`), r.stdout);
    assert.ok(lines.includes(`sum=${createHash('md5').update(data).digest('hex')}`), r.stdout);
  });

  it('runs a host script in a 9p-shared host directory and sees its writes on the host', async () => {
    const dir = mkdtempSync(join(work, 'share-'));
    writeFileSync(join(dir, 'job.sh'), 'echo "cwd=$(pwd)"\necho written-by-guest > result.txt\nexit 3\n');
    const r = await runQemu(['--script', join(dir, 'job.sh')]);
    assert.equal(r.code, 3, r.stderr);
    assert.equal(r.stdout, 'cwd=/host\n');
    assert.equal(readFileSync(join(dir, 'result.txt'), 'utf8'), 'written-by-guest\n');
  });

  it('reports a guest killed by --timeout as 124 and leaves no QEMU behind', async () => {
    const own = `ringvm.testid=qemu-timeout-${process.pid}-${Date.now()}`;
    const r = await run(
      script('run-qemu'),
      ['--timeout', '8', '--append', own, '--', 'echo started; sleep 120'],
      120_000,
    );
    assert.equal(r.code, 124, r.stderr);
    assert.equal(r.stdout, 'started\n');
    assert.match(r.stderr, /killed after 8s/);
    assert.deepEqual(processesWith(own), [], 'qemu-system-x86_64 left behind');
  });

  it('writes and reads a vhost-user-blk-pci disk served by qemu-storage-daemon', async () => {
    const dir = mkdtempSync(join(work, 'blk-'));
    const img = join(dir, 'disk.img');
    const sock = join(dir, 'blk.sock');
    const toGuest = pattern(4 * MiB, 0x1234_5678);
    const fromHost = pattern(4 * MiB, 0x0bad_cafe);
    // 64 MiB raw image; 4 MiB of host data at 8 MiB for the guest to read.
    writeFileSync(img, Buffer.alloc(0));
    const fd = openSync(img, 'r+');
    writeSync(fd, fromHost, 0, fromHost.length, 8 * MiB);
    writeSync(fd, Buffer.alloc(1), 0, 1, 64 * MiB - 1);
    closeSync(fd);
    writeFileSync(join(dir, 'pattern.bin'), toGuest);

    const qsd = spawn(
      'qemu-storage-daemon',
      [
        '--blockdev',
        `driver=file,node-name=f0,filename=${img}`,
        '--export',
        `type=vhost-user-blk,id=e0,node-name=f0,addr.type=unix,addr.path=${sock},writable=on`,
      ],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    daemons.push(qsd);
    let qsdLog = '';
    qsd.stdout.setEncoding('utf8').on('data', (d: string) => (qsdLog += d));
    qsd.stderr.setEncoding('utf8').on('data', (d: string) => (qsdLog += d));
    try {
      await waitFor(sock, 20_000, () => qsdLog);
      const r = await runQemu([
        '--blk',
        sock,
        '--share',
        dir,
        '--modules',
        'virtio_pci,virtio_blk',
        '--',
        'set -e; cat /sys/block/vda/size; ' +
          'dd if=pattern.bin of=/dev/vda bs=1M count=4 oflag=direct 2>/dev/null; ' +
          'dd if=/dev/vda of=readback.bin bs=1M skip=8 count=4 iflag=direct 2>/dev/null; sync; echo ok',
      ]);
      assert.equal(r.code, 0, `guest failed:\n${r.stdout}\n${r.stderr}\nqemu-storage-daemon:\n${qsdLog}`);
      assert.equal(r.stdout, `${(64 * MiB) / 512}\nok\n`);
      assert.ok(
        readFileSync(img)
          .subarray(0, 4 * MiB)
          .equals(toGuest),
        'image does not hold the guest write',
      );
      assert.ok(readFileSync(join(dir, 'readback.bin')).equals(fromHost), 'guest read the wrong bytes');
    } finally {
      qsd.kill('SIGKILL');
    }
  });
});
