import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, promises as fs, readdirSync, readFileSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BlockBackendError } from '../../../src/backends/block/block-backend-error.js';
import { MemoryBackend } from '../../../src/backends/block/memory-backend.js';
import { RawFileBackend } from '../../../src/backends/block/raw-file.js';
import { BlkRequestType, BlkStatus, SECTOR_SIZE } from '../../../src/devices/blk/blk-layout.js';
import { HostIoError } from '../../../src/virtio/errors.js';
import { prng, randomBytes, segments, setupBlk } from '../../devices/blk/blk-test-driver.js';

const MiB = 1 << 20;
let dir = '';

before(async () => {
  dir = await fs.mkdtemp(join(tmpdir(), 'ringvm-raw-'));
});

after(async () => {
  await fs.rm(dir, { recursive: true, force: true });
});

async function image(name: string, content: Uint8Array): Promise<string> {
  const path = join(dir, name);
  await fs.writeFile(path, content);
  return path;
}

/** Splits `bytes` into views of uneven lengths (zero copy). */
function views(bytes: Uint8Array, pieces: number): Uint8Array[] {
  const out: Uint8Array[] = [];
  let off = 0;
  for (let i = 0; i < pieces && off < bytes.length; i++) {
    const len = i === pieces - 1 ? bytes.length - off : Math.min(bytes.length - off, 1 + ((i * 37) % 700));
    out.push(bytes.subarray(off, off + len));
    off += len;
  }
  return out;
}

/** The open flags of `fd` in this process, from /proc/self/fdinfo (octal). */
function openFlags(fd: number): number {
  const info = readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8');
  const m = /^flags:\s*([0-7]+)/m.exec(info) ?? assert.fail(info);
  return parseInt(m[1] ?? '0', 8);
}

describe('RawFileBackend', () => {
  test('readv / writev round trip at random offsets, many buffers per call', async () => {
    const rand = prng(11);
    const initial = randomBytes(rand, 4 * MiB);
    const path = await image('rw.raw', initial);
    const model = Uint8Array.from(initial);
    const b = await RawFileBackend.open(path);
    try {
      assert.equal(b.size, 4 * MiB);
      assert.equal(b.readOnly, false);
      assert.equal(openFlags(b.fd) & 3, 2, 'opened O_RDWR');
      for (let i = 0; i < 20; i++) {
        const len = (1 + Math.floor(rand() * 64)) * SECTOR_SIZE;
        const off = Math.floor(rand() * (4 * MiB - len));
        const data = randomBytes(rand, len);
        await b.writev(off, views(data, 1 + (i % 9)));
        model.set(data, off);
        const back = new Uint8Array(len);
        await b.readv(off, views(back, 1 + (i % 7)));
        assert.deepEqual(back, data);
      }
      // More buffers than one preadv takes (IOV_MAX = 1024): the back end continues where the kernel stopped.
      const big = new Uint8Array(3000 * 16);
      const many: Uint8Array[] = [];
      for (let i = 0; i < 3000; i++) many.push(big.subarray(i * 16, i * 16 + 16));
      await b.readv(4096, many);
      assert.deepEqual(big, model.subarray(4096, 4096 + big.length));
      await b.flush();
    } finally {
      await b.close();
    }
    assert.deepEqual(new Uint8Array(await fs.readFile(path)), model);
  });

  test('writes reach the file; flush (fdatasync) succeeds; calls after close fail with HostIoError', async () => {
    const path = await image('flush.raw', new Uint8Array(MiB));
    const b = await RawFileBackend.open(path);
    await b.writev(512, [new Uint8Array(512).fill(0x42)]);
    await b.flush();
    const onDisk = new Uint8Array(await fs.readFile(path));
    assert.ok(onDisk.subarray(512, 1024).every((x) => x === 0x42));
    await b.close();
    await b.close(); // idempotent
    await assert.rejects(b.readv(0, [new Uint8Array(512)]), HostIoError);
    await assert.rejects(b.flush(), HostIoError);
  });

  test('discard punches a hole: stat.blocks drops, the range reads back as zeros, the size stays', async () => {
    const path = await image('discard.raw', randomBytes(prng(2), 4 * MiB));
    const b = await RawFileBackend.open(path);
    try {
      await b.flush();
      const before = await fs.stat(path);
      await b.discard(MiB, 2 * MiB);
      const after = await fs.stat(path);
      assert.ok(after.blocks < before.blocks, `blocks ${before.blocks} → ${after.blocks}`);
      assert.ok(before.blocks - after.blocks >= (2 * MiB) / 512 - 16);
      assert.equal(after.size, 4 * MiB);
      const back = new Uint8Array(2 * MiB);
      await b.readv(MiB, [back]);
      assert.ok(back.every((x) => x === 0));
    } finally {
      await b.close();
    }
  });

  test('writeZeroes with and without unmap reads back zeros; the size stays', async () => {
    const path = await image('wz.raw', new Uint8Array(MiB).fill(0xff));
    const b = await RawFileBackend.open(path);
    try {
      assert.equal(b.writeZeroesMayUnmap, true);
      await b.writeZeroes(4096, 8192, false);
      await b.writeZeroes(65536, 65536, true);
      const all = new Uint8Array(MiB);
      await b.readv(0, [all]);
      const expected = new Uint8Array(MiB).fill(0xff);
      expected.fill(0, 4096, 4096 + 8192);
      expected.fill(0, 65536, 131072);
      assert.deepEqual(all, expected);
      assert.equal((await fs.stat(path)).size, MiB);
    } finally {
      await b.close();
    }
  });

  test('writeZeroes falls back to writing zeros where fallocate(ZERO_RANGE) is unsupported (tmpfs)', async (t) => {
    if (!existsSync('/dev/shm')) {
      t.skip('no /dev/shm');
      return;
    }
    const path = join('/dev/shm', `ringvm-wz-${process.pid}.raw`);
    await fs.writeFile(path, new Uint8Array(3 * MiB).fill(0xaa));
    const b = await RawFileBackend.open(path);
    try {
      await b.writeZeroes(512, 2 * MiB + 512, false); // tmpfs: EOPNOTSUPP → zeros written
      await b.writeZeroes(0, 512, false); // second call goes straight to the fallback
      const all = new Uint8Array(3 * MiB);
      await b.readv(0, [all]);
      assert.ok(all.subarray(0, 2 * MiB + 1024).every((x) => x === 0));
      assert.ok(all.subarray(2 * MiB + 1024).every((x) => x === 0xaa));
    } finally {
      await b.close();
      await fs.rm(path, { force: true });
    }
  });

  test('read-only: opened O_RDONLY, writes refused, the file (contents and mtime) unchanged', async () => {
    const content = randomBytes(prng(4), MiB);
    const path = await image('ro.raw', content);
    const old = new Date('2020-01-02T03:04:05Z');
    await fs.utimes(path, old, old);
    const b = await RawFileBackend.open(path, { readOnly: true });
    try {
      assert.equal(b.readOnly, true);
      assert.equal(openFlags(b.fd) & 3, 0, 'opened O_RDONLY');
      await assert.rejects(b.writev(0, [new Uint8Array(512)]), HostIoError);
      await assert.rejects(b.discard(0, 4096), HostIoError);
      await assert.rejects(b.writeZeroes(0, 4096, true), HostIoError);
      await b.flush();
      const back = new Uint8Array(4096);
      await b.readv(8192, [back]);
      assert.deepEqual(back, content.subarray(8192, 8192 + 4096));
    } finally {
      await b.close();
    }
    const st = await fs.stat(path);
    assert.equal(st.mtime.getTime(), old.getTime());
    assert.deepEqual(new Uint8Array(await fs.readFile(path)), content);
  });

  test('a read past the end of a file that shrank after open reads zeros', async () => {
    const path = await image('shrink.raw', new Uint8Array(8192).fill(9));
    const b = await RawFileBackend.open(path);
    try {
      await fs.truncate(path, 4096);
      const back = new Uint8Array(8192).fill(0xee);
      await b.readv(0, [back.subarray(0, 3000), back.subarray(3000)]);
      assert.ok(back.subarray(0, 4096).every((x) => x === 9));
      assert.ok(back.subarray(4096).every((x) => x === 0));
    } finally {
      await b.close();
    }
  });

  test("io 'sync' offers readvSync / writevSync (round trip, end of file reads zeros, read-only refused)", async () => {
    const threads = await RawFileBackend.open(await image('threads.raw', new Uint8Array(4096)));
    try {
      assert.equal(threads.readvSync, undefined, 'the thread-pool back end has no synchronous methods');
      assert.equal(threads.writevSync, undefined);
    } finally {
      await threads.close();
    }
    const path = await image('sync.raw', new Uint8Array(64 * 1024));
    const b = await RawFileBackend.open(path, { io: 'sync' });
    try {
      const writevSync = b.writevSync ?? assert.fail('writevSync offered');
      const readvSync = b.readvSync ?? assert.fail('readvSync offered');
      const data = randomBytes(prng(21), 12288);
      writevSync(4096, views(data, 7)); // done on return: no promise to wait for
      assert.deepEqual(new Uint8Array(readFileSync(path)).subarray(4096, 4096 + data.length), data);
      const back = new Uint8Array(data.length);
      readvSync(4096, views(back, 4));
      assert.deepEqual(back, data);
      await fs.truncate(path, 8192);
      const tail = new Uint8Array(8192).fill(0xee);
      readvSync(4096, [tail.subarray(0, 1000), tail.subarray(1000)]);
      assert.deepEqual(tail.subarray(0, 4096), data.subarray(0, 4096));
      assert.ok(
        tail.subarray(4096).every((x) => x === 0),
        'past the end of the file: zeros',
      );
    } finally {
      await b.close();
    }
    assert.throws(() => b.readvSync?.(0, [new Uint8Array(512)]), HostIoError, 'after close');
    const ro = await RawFileBackend.open(path, { io: 'sync', readOnly: true });
    try {
      assert.throws(() => ro.writevSync?.(0, [new Uint8Array(512)]), HostIoError);
    } finally {
      await ro.close();
    }
  });

  test('a missing path fails with NOT_FOUND naming the path; nothing is created', async () => {
    const path = join(dir, 'missing', 'disk.raw');
    const e = await RawFileBackend.open(path).catch((x: unknown) => x);
    assert.ok(e instanceof BlockBackendError);
    assert.equal(e.code, 'NOT_FOUND');
    assert.equal(e.path, path);
    assert.ok(e.message.includes(path));
    const e2 = await RawFileBackend.open(join(dir, 'nope.raw')).catch((x: unknown) => x);
    assert.ok(e2 instanceof BlockBackendError && e2.code === 'NOT_FOUND');
    assert.equal(existsSync(join(dir, 'nope.raw')), false);
  });

  test('directories, FIFOs and character devices are not images (and a FIFO does not hang the open)', async () => {
    const cases: [string, string][] = [
      [dir, 'NOT_A_REGULAR_FILE'],
      ['/dev/null', 'NOT_A_REGULAR_FILE'],
    ];
    const fifo = join(dir, 'fifo');
    execFileSync('mkfifo', [fifo]);
    cases.push([fifo, 'NOT_A_REGULAR_FILE']);
    for (const [path, code] of cases) {
      for (const readOnly of [false, true]) {
        const e = await RawFileBackend.open(path, { readOnly }).catch((x: unknown) => x);
        assert.ok(e instanceof BlockBackendError, `${path}: ${String(e)}`);
        assert.equal(e.code, code);
        assert.ok(e.message.includes(path));
      }
    }
  });

  test('a block device is refused with BLOCK_DEVICE_UNSUPPORTED', async (t) => {
    const dev = readdirSync('/dev')
      .map((n) => join('/dev', n))
      .find((p) => {
        try {
          return statSync(p).isBlockDevice();
        } catch {
          return false;
        }
      });
    if (dev === undefined) {
      t.skip('no block device node in /dev');
      return;
    }
    const e = await RawFileBackend.open(dev, { readOnly: true }).catch((x: unknown) => x);
    assert.ok(e instanceof BlockBackendError);
    assert.equal(e.code, 'BLOCK_DEVICE_UNSUPPORTED');
    assert.ok(e.message.includes(dev));
  });

  test('an unreadable (or, for root, immutable) file fails with PERMISSION_DENIED naming the path', async (t) => {
    const path = await image('secret.raw', new Uint8Array(4096));
    if (process.getuid?.() !== 0) {
      await fs.chmod(path, 0o000);
      const e = await RawFileBackend.open(path, { readOnly: true }).catch((x: unknown) => x);
      assert.ok(e instanceof BlockBackendError);
      assert.equal(e.code, 'PERMISSION_DENIED');
      assert.ok(e.message.includes(path));
      return;
    }
    // Root ignores mode bits; an immutable file still refuses a read-write open (EPERM).
    try {
      execFileSync('chattr', ['+i', path], { stdio: 'ignore' });
    } catch {
      t.skip('running as root without chattr +i support: permissions cannot be denied');
      return;
    }
    try {
      const e = await RawFileBackend.open(path).catch((x: unknown) => x);
      assert.ok(e instanceof BlockBackendError);
      assert.equal(e.code, 'PERMISSION_DENIED');
      assert.ok(e.message.includes(path));
      const ro = await RawFileBackend.open(path, { readOnly: true });
      await ro.close();
    } finally {
      execFileSync('chattr', ['-i', path]);
    }
  });
});

describe('BlkDevice over RawFileBackend (loopback)', () => {
  test('write, read back, discard: the image file holds what the guest wrote', async () => {
    const path = await image('blk.raw', new Uint8Array(2 * MiB));
    const backend = await RawFileBackend.open(path);
    try {
      const s = await setupBlk(backend, { device: { serial: 'raw0' } });
      const data = randomBytes(prng(6), 64 * SECTOR_SIZE);
      const w = await s.client.request({
        type: BlkRequestType.VIRTIO_BLK_T_OUT,
        sector: 100,
        out: data,
        segments: 4,
      });
      assert.equal(w.status, BlkStatus.VIRTIO_BLK_S_OK);
      const f = await s.client.request({ type: BlkRequestType.VIRTIO_BLK_T_FLUSH });
      assert.equal(f.status, BlkStatus.VIRTIO_BLK_S_OK);
      const r = await s.client.request({
        type: BlkRequestType.VIRTIO_BLK_T_IN,
        sector: 100,
        inLen: data.length,
        segments: 3,
      });
      assert.deepEqual(r.data, data);
      const onDisk = new Uint8Array(await fs.readFile(path));
      assert.deepEqual(onDisk.subarray(100 * SECTOR_SIZE, 100 * SECTOR_SIZE + data.length), data);
      const d = await s.client.request({
        type: BlkRequestType.VIRTIO_BLK_T_DISCARD,
        out: segments([{ sector: 100, count: 64 }]),
      });
      assert.equal(d.status, BlkStatus.VIRTIO_BLK_S_OK);
      const z = await s.client.request({
        type: BlkRequestType.VIRTIO_BLK_T_IN,
        sector: 100,
        inLen: data.length,
      });
      assert.ok(z.data.every((x) => x === 0));
      assert.deepEqual(s.requestErrors, []);
    } finally {
      await backend.close();
    }
  });

  test("io 'sync': reads and writes complete inside the kick, the image holds what the guest wrote", async () => {
    const path = await image('blk-sync.raw', new Uint8Array(2 * MiB));
    const backend = await RawFileBackend.open(path, { io: 'sync' });
    try {
      const s = await setupBlk(backend);
      const data = randomBytes(prng(16), 16 * SECTOR_SIZE);
      const w = await s.client.request({
        type: BlkRequestType.VIRTIO_BLK_T_OUT,
        sector: 8,
        out: data,
        segments: 3,
      });
      assert.equal(w.status, BlkStatus.VIRTIO_BLK_S_OK);
      const r = await s.client.request({
        type: BlkRequestType.VIRTIO_BLK_T_IN,
        sector: 8,
        inLen: data.length,
        segments: 2,
      });
      assert.deepEqual(r.data, data);
      assert.deepEqual(
        new Uint8Array(await fs.readFile(path)).subarray(8 * SECTOR_SIZE, 8 * SECTOR_SIZE + data.length),
        data,
      );
      assert.equal(s.device.stats.synchronous, 2);
      assert.equal(s.device.inFlight, 0);
      assert.deepEqual(s.requestErrors, []);
    } finally {
      await backend.close();
    }
  });

  test('a MemoryBackend and a RawFileBackend serve the same bytes', async () => {
    const content = randomBytes(prng(12), MiB);
    const path = await image('same.raw', content);
    const raw = await RawFileBackend.open(path, { readOnly: true });
    const mem = new MemoryBackend(Uint8Array.from(content), { readOnly: true });
    try {
      const a = new Uint8Array(8192);
      const c = new Uint8Array(8192);
      await raw.readv(12288, views(a, 5));
      await mem.readv(12288, views(c, 3));
      assert.deepEqual(a, c);
    } finally {
      await raw.close();
    }
  });
});
