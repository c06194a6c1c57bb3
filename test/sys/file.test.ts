import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { closeSync, fstatSync, mkdtempSync, openSync, readSync, rmSync, writeSync, fsyncSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  fallocate,
  FALLOC_FL_KEEP_SIZE,
  FALLOC_FL_PUNCH_HOLE,
  FALLOC_FL_ZERO_RANGE,
  seekData,
  seekHole,
} from '../../src/sys/file.js';
import { isSysError } from '../../src/sys/sys-error.js';

const MiB = 1024 * 1024;

describe('fallocate', () => {
  const dir = mkdtempSync(join(tmpdir(), 'ringvm-falloc-'));
  process.on('exit', () => {
    rmSync(dir, { recursive: true, force: true });
  });

  function filledFile(name: string, size: number): number {
    const fd = openSync(join(dir, name), 'w+');
    writeSync(fd, Buffer.alloc(size, 0xab), 0, size, 0);
    fsyncSync(fd);
    return fd;
  }

  function read(fd: number, offset: number, length: number): Buffer {
    const buf = Buffer.alloc(length);
    assert.equal(readSync(fd, buf, 0, length, offset), length);
    return buf;
  }

  test('PUNCH_HOLE frees the blocks, keeps the size, and the range reads back as zeros', () => {
    const fd = filledFile('punch', 2 * MiB);
    const before = fstatSync(fd);
    fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, MiB / 2, MiB);
    const after = fstatSync(fd);
    assert.equal(after.size, 2 * MiB);
    const freed = (before.blocks - after.blocks) * 512;
    assert.ok(freed >= MiB, `expected ≥ 1 MiB freed, blocks ${before.blocks} → ${after.blocks}`);
    assert.ok(read(fd, MiB / 2, MiB).every((b) => b === 0));
    assert.ok(read(fd, 0, MiB / 2).every((b) => b === 0xab));
    assert.ok(read(fd, MiB + MiB / 2, MiB / 2).every((b) => b === 0xab));
    closeSync(fd);
  });

  test('64-bit offsets: punching and allocating beyond 4 GiB', () => {
    const fd = openSync(join(dir, 'far'), 'w+');
    const far = 5 * 1024 * MiB; // 5 GiB: truncated to 32 bits it would be 1 GiB, a hole
    writeSync(fd, Buffer.alloc(MiB, 0xab), 0, MiB, far); // a sparse file with 1 MiB of data at 5 GiB
    fsyncSync(fd);
    const written = fstatSync(fd);
    assert.equal(written.size, far + MiB);
    assert.ok(written.blocks * 512 >= MiB, `blocks ${written.blocks}`);

    fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, BigInt(far), MiB);
    const punched = fstatSync(fd);
    assert.ok(punched.blocks * 512 < MiB / 2, `blocks ${written.blocks} → ${punched.blocks}`);
    assert.ok(read(fd, far, MiB).every((b) => b === 0));

    fallocate(fd, FALLOC_FL_KEEP_SIZE, far + 2 * MiB, MiB); // past the end of the file
    const allocated = fstatSync(fd);
    assert.equal(allocated.size, far + MiB, 'KEEP_SIZE keeps the size');
    assert.ok(
      (allocated.blocks - punched.blocks) * 512 >= MiB,
      `blocks ${punched.blocks} → ${allocated.blocks}`,
    );
    fallocate(fd, 0, far + 4 * MiB, 4096);
    assert.equal(fstatSync(fd).size, far + 4 * MiB + 4096, 'mode 0 extends the file');
    closeSync(fd);
  });

  test('ZERO_RANGE zeroes without changing the size', () => {
    const fd = filledFile('zero', MiB);
    fallocate(fd, FALLOC_FL_ZERO_RANGE, 4096, 8192);
    assert.equal(fstatSync(fd).size, MiB);
    assert.ok(read(fd, 4096, 8192).every((b) => b === 0));
    assert.equal(read(fd, 4095, 1)[0], 0xab);
    assert.equal(read(fd, 4096 + 8192, 1)[0], 0xab);
    closeSync(fd);
  });

  test('errors: PUNCH_HOLE without KEEP_SIZE is ENOTSUP (EOPNOTSUPP), a read-only fd is EBADF, a bad length EINVAL', () => {
    const fd = filledFile('errors', 8192);
    assert.throws(
      () => {
        fallocate(fd, FALLOC_FL_PUNCH_HOLE, 0, 4096);
      },
      (e: unknown) => isSysError(e, 'ENOTSUP'),
    );
    assert.throws(
      () => {
        fallocate(fd, 0, 0, 0);
      },
      (e: unknown) => isSysError(e, 'EINVAL') && e.syscall === 'fallocate',
    );
    assert.throws(
      () => {
        fallocate(fd, 0, -1, 10);
      },
      (e: unknown) => isSysError(e, 'EINVAL'),
    );
    closeSync(fd);
    const ro = openSync(join(dir, 'errors'), 'r');
    assert.throws(
      () => {
        fallocate(ro, 0, 0, 4096);
      },
      (e: unknown) => isSysError(e, 'EBADF'),
    );
    closeSync(ro);
  });
});

describe('seekData / seekHole', () => {
  const dir = mkdtempSync(join(tmpdir(), 'ringvm-seek-'));
  process.on('exit', () => {
    rmSync(dir, { recursive: true, force: true });
  });

  test('find the data and the holes of a sparse file; ENXIO past the data is undefined', () => {
    const fd = openSync(join(dir, 'sparse'), 'w+');
    try {
      writeSync(fd, Buffer.alloc(MiB, 1), 0, MiB, 4 * MiB);
      writeSync(fd, Buffer.alloc(1), 0, 1, 16 * MiB - 1); // size 16 MiB, last block data
      assert.equal(seekData(fd, 0), 4 * MiB);
      assert.equal(seekHole(fd, 4 * MiB), 5 * MiB);
      const lastData = seekData(fd, 5 * MiB);
      assert.ok(lastData !== undefined && lastData >= 5 * MiB && lastData < 16 * MiB);
      assert.equal(seekHole(fd, lastData), 16 * MiB, 'the end of file counts as a hole');
      assert.equal(seekHole(fd, 16 * MiB), undefined, 'at the end: ENXIO');
      assert.equal(seekData(fd, 16 * MiB), undefined);
    } finally {
      closeSync(fd);
    }
  });

  test('bad fd and offset are typed errors', () => {
    assert.throws(
      () => seekData(-1, 0),
      (e: unknown) => isSysError(e, 'EBADF'),
    );
    assert.throws(
      () => seekHole(0, -5),
      (e: unknown) => isSysError(e, 'EINVAL'),
    );
  });
});
