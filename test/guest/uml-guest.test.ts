// The real UML guest (scripts/guest/*) against real peers: boot, command status, a host share, and a
// vhost-user-blk disk served by qemu-storage-daemon. Packages and the guest are installed and built by the
// project's own scripts here; nothing is skipped: a missing tool is a failure.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
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
import {
  MiB,
  commandLine,
  pattern,
  processesWith,
  root,
  run,
  runUml,
  script,
  waitFor,
} from './guest-harness.js';

describe('UML guest (scripts/guest)', { timeout: 30 * 60_000 }, () => {
  let work = '';

  before(async () => {
    work = mkdtempSync(join(tmpdir(), 'ringvm-guest-'));
    // A fresh machine has none of the Debian packages: this may take minutes (apt-get update + install).
    const inst = await run(script('install-packages'), [], 20 * 60_000);
    assert.equal(inst.code, 0, `install-packages failed:\n${inst.stdout}\n${inst.stderr}`);
    const build = await run(script('build-uml'), [], 5 * 60_000);
    assert.equal(build.code, 0, `build-uml failed:\n${build.stdout}\n${build.stderr}`);
    assert.equal(build.stdout.trim(), join(root, '.cache', 'guest', 'uml', 'root'));
  });

  after(() => {
    if (work) rmSync(work, { recursive: true, force: true });
  });

  it('install-packages and build-uml are idempotent and fast when nothing changed', async () => {
    const inst = await run(script('install-packages'), [], 60_000);
    assert.equal(inst.code, 0, inst.stderr);
    assert.equal(inst.stderr, '', 'nothing to install, so nothing printed');
    const build = await run(script('build-uml'), [], 60_000);
    assert.equal(build.code, 0, build.stderr);
    assert.doesNotMatch(build.stderr, /building/);
    assert.ok(build.ms < 5000, `up-to-date build-uml took ${build.ms} ms`);
    for (const f of ['init', 'bin/busybox', 'bin/sh', 'lib/ringvm/hotplug']) {
      assert.ok(existsSync(join(build.stdout.trim(), f)), `guest root lacks ${f}`);
    }
  });

  it('boots, runs a command and returns its output and status 0', async () => {
    const r = await runUml(['--', 'echo hello from $(uname -s) $(uname -m); cat /proc/cmdline >/dev/null']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, 'hello from Linux x86_64\n', 'only the command output, no boot log');
  });

  it('returns a nonzero status and output without a trailing newline', async () => {
    const r = await runUml(['--', 'printf partial; exit 7']);
    assert.equal(r.code, 7, r.stderr);
    assert.equal(r.stdout, 'partial');
  });

  it('loads the virtio modules and mounts the basics', async () => {
    const r = await runUml([
      '--',
      "cut -d' ' -f1 /proc/modules | sort; grep -E '^(proc|sysfs|devtmpfs|tmpfs) ' /proc/mounts | cut -d' ' -f2 | sort",
    ]);
    assert.equal(r.code, 0, r.stderr);
    const lines = r.stdout.trim().split('\n');
    for (const m of [
      'virtio_blk',
      'virtio_net',
      'virtio_console',
      'virtio_balloon',
      'vsock',
      'vmw_vsock_virtio_transport',
      'vmw_vsock_virtio_transport_common',
      'fuse',
      'virtiofs',
    ]) {
      assert.ok(lines.includes(m), `module ${m} not loaded:\n${r.stdout}`);
    }
    for (const mnt of ['/proc', '/sys', '/dev', '/tmp']) assert.ok(lines.includes(mnt), `${mnt} not mounted`);
  });

  it('runs a host script in a shared host directory and sees its writes on the host', async () => {
    const dir = mkdtempSync(join(work, 'share-'));
    writeFileSync(join(dir, 'job.sh'), 'echo "cwd=$(pwd)"\necho written-by-guest > result.txt\nexit 3\n');
    const r = await runUml(['--script', join(dir, 'job.sh')]);
    assert.equal(r.code, 3, r.stderr);
    assert.equal(r.stdout, 'cwd=/host\n');
    assert.equal(readFileSync(join(dir, 'result.txt'), 'utf8'), 'written-by-guest\n');
  });

  it('reports a guest killed by --timeout as 124 and leaves no process behind', async () => {
    const tag = `ringvm.testid=${process.pid}-${Date.now()}`;
    const r = await run(
      script('run-uml'),
      ['--timeout', '4', '--append', tag, '--', 'echo started; sleep 60'],
      60_000,
    );
    assert.equal(r.code, 124, r.stderr);
    assert.equal(r.stdout, 'started\n');
    assert.match(r.stderr, /killed after 4s/);
    assert.deepEqual(processesWith(tag), [], 'linux.uml processes left behind');
  });

  it('run-uml killed outright (SIGKILL): its watchdog takes the guest along', async () => {
    const tag = `ringvm.testid=${process.pid}-${Date.now()}-kill`;
    const child = spawn(script('run-uml'), ['--append', tag, '--', 'echo started; sleep 600'], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    await new Promise<void>((resolve, reject) => {
      child.stdout.on('data', (d: Buffer) => {
        out += d.toString();
        if (out.includes('started')) resolve();
      });
      child.once('close', () => {
        reject(new Error(`run-uml ended before the command ran:\n${out}\n${err}`));
      });
    });
    // linux.uml's command line holds uml_dir (run-uml's own shells hold only the tag).
    const umlDir = processesWith(tag)
      .flatMap(commandLine)
      .find((a) => a.startsWith('uml_dir='))
      ?.slice('uml_dir='.length);
    assert.ok(umlDir !== undefined, 'the guest has a uml_dir');
    child.kill('SIGKILL');
    const deadline = Date.now() + 30_000;
    while ((processesWith(tag).length > 0 || existsSync(umlDir)) && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    const left = processesWith(tag);
    for (const pid of left) process.kill(pid, 'SIGKILL');
    assert.deepEqual(left, [], 'guest processes left behind');
    assert.ok(!existsSync(umlDir), `${umlDir} was removed`);
  });

  it('writes and reads a vhost-user-blk disk served by qemu-storage-daemon', async () => {
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
    let qsdLog = '';
    qsd.stdout.setEncoding('utf8').on('data', (d: string) => (qsdLog += d));
    qsd.stderr.setEncoding('utf8').on('data', (d: string) => (qsdLog += d));
    try {
      await waitFor(sock, 20_000, () => qsdLog);
      const r = await runUml([
        '--dev',
        `${sock}:2`,
        '--share',
        dir,
        '--modules',
        'virtio_blk',
        '--',
        'set -e; cat /sys/block/vda/size; ' +
          'dd if=pattern.bin of=/dev/vda bs=1M count=4 conv=fsync 2>/dev/null; ' +
          'dd if=/dev/vda of=readback.bin bs=1M skip=8 count=4 2>/dev/null; sync; echo ok',
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
