import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { fstatSync, readFileSync, readSync, writeSync } from 'node:fs';
import { ftruncate, mapShared, memfdCreate, pageSize } from '../../src/sys/mmap.js';
import { closeFd } from '../../src/sys/unix-socket.js';
import { fcntl } from '../../src/sys/libc.js';
import { isSysError, SysError } from '../../src/sys/sys-error.js';

describe('memfd + MAP_SHARED', () => {
  test('ftruncate sizes the memfd; the mapping is a zero-copy view of the file', () => {
    const fd = memfdCreate('ringvm-mmap', {});
    assert.equal(fstatSync(fd).size, 0);
    ftruncate(fd, 3 * 4096);
    assert.equal(fstatSync(fd).size, 3 * 4096);
    const map = mapShared(fd, 3 * 4096);
    assert.equal(map.bytes.length, 3 * 4096);
    assert.ok(map.bytes.every((b) => b === 0));
    map.bytes.set([1, 2, 3], 100);
    // Read through the file, not the mapping: the same pages.
    const viaFile = Buffer.alloc(3);
    readSync(fd, viaFile, 0, 3, 100);
    assert.deepEqual([...viaFile], [1, 2, 3]);
    writeSync(fd, Buffer.from([9, 8]), 0, 2, 4096);
    assert.deepEqual([...map.bytes.subarray(4096, 4098)], [9, 8]);
    map.unmap();
    closeFd(fd);
  });

  test('a mapping at a page-aligned offset sees that part of the file', () => {
    const page = pageSize();
    const fd = memfdCreate('ringvm-offset', {});
    ftruncate(fd, 4n * BigInt(page));
    writeSync(fd, Buffer.from('page two'), 0, 8, 2 * page);
    const map = mapShared(fd, page, 2 * page);
    assert.equal(Buffer.from(map.bytes.subarray(0, 8)).toString(), 'page two');
    map.unmap();
    closeFd(fd);
  });

  test('the mapping outlives the fd, and unmap really removes it from the address space', () => {
    const fd = memfdCreate('ringvm-unmap-check', {});
    ftruncate(fd, 4096);
    const map = mapShared(fd, 4096);
    closeFd(fd);
    map.bytes[0] = 42;
    const start = map.address.toString(16);
    const mapped = () =>
      readFileSync('/proc/self/maps', 'utf8')
        .split('\n')
        .some((l) => l.startsWith(`${start}-`));
    assert.ok(mapped());
    assert.equal(map.isMapped, true);
    map.unmap();
    assert.equal(map.isMapped, false);
    assert.equal(mapped(), false);
  });

  test('a second unmap is refused', () => {
    const fd = memfdCreate('ringvm-twice', {});
    ftruncate(fd, 4096);
    const map = mapShared(fd, 4096);
    map.unmap();
    assert.throws(
      () => {
        map.unmap();
      },
      (e: unknown) => isSysError(e, 'EINVAL') && /already unmapped/.test(e.message),
    );
    closeFd(fd);
  });

  test('an offset that is not page-aligned is a typed EINVAL that says why', () => {
    const fd = memfdCreate('ringvm-align', {});
    ftruncate(fd, 8192);
    assert.throws(
      () => mapShared(fd, 4096, 100),
      (e: unknown) =>
        e instanceof SysError &&
        e.code === 'EINVAL' &&
        e.errno === 22 &&
        e.syscall === 'mmap' &&
        e.value === 100 &&
        /multiple of the page size \(4096\); it is 100 bytes past a page boundary/.test(e.message),
    );
    assert.throws(
      () => mapShared(fd, 0),
      (e: unknown) => isSysError(e, 'EINVAL'),
    );
    assert.throws(
      () => mapShared(fd, 4096, -4096),
      (e: unknown) => isSysError(e, 'EINVAL'),
    );
    closeFd(fd);
  });

  test('mapping a closed fd is EBADF from the kernel', () => {
    const fd = memfdCreate('ringvm-closed', {});
    closeFd(fd);
    assert.throws(
      () => mapShared(fd, 4096),
      (e: unknown) => isSysError(e, 'EBADF') && e.syscall === 'mmap',
    );
  });

  test('allowSealing: without it the memfd is born sealed against new seals (F_GET_SEALS)', () => {
    const F_GET_SEALS = 1034;
    const F_SEAL_SEAL = 0x1;
    const sealable = memfdCreate('ringvm-seal', { allowSealing: true });
    const plain = memfdCreate('ringvm-plain', {});
    assert.equal(fcntl(sealable, F_GET_SEALS), 0);
    assert.equal(fcntl(plain, F_GET_SEALS), F_SEAL_SEAL);
    closeFd(sealable);
    closeFd(plain);
  });
});
