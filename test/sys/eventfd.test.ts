import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { eventfd, eventfdRead, eventfdWrite, EVENTFD_MAX } from '../../src/sys/eventfd.js';
import { closeFd } from '../../src/sys/unix-socket.js';
import { isSysError } from '../../src/sys/sys-error.js';

/** The kernel's own view of an eventfd: the counter and flags from /proc/self/fdinfo. */
function fdinfo(fd: number): { count: bigint; flags: number } {
  const text = readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8');
  const count = /eventfd-count:\s*([0-9a-f]+)/.exec(text)?.[1];
  const flags = /flags:\s*([0-7]+)/.exec(text)?.[1];
  assert.ok(count !== undefined && flags !== undefined, text);
  return { count: BigInt(`0x${count}`), flags: parseInt(flags, 8) };
}

describe('eventfd', () => {
  test('writes add to the counter; a read returns it and resets it', () => {
    const fd = eventfd(3, { nonBlocking: true });
    assert.equal(fdinfo(fd).count, 3n);
    eventfdWrite(fd);
    eventfdWrite(fd, 10);
    eventfdWrite(fd, 0x1_0000_0000n);
    assert.equal(fdinfo(fd).count, 0x1_0000_000en);
    assert.equal(eventfdRead(fd), 0x1_0000_000en);
    assert.equal(fdinfo(fd).count, 0n);
    closeFd(fd);
  });

  test('flags: close-on-exec always, O_NONBLOCK on request', () => {
    const O_NONBLOCK = 0o4000;
    const O_CLOEXEC = 0o2000000;
    const blocking = eventfd();
    const nonBlocking = eventfd(0, { nonBlocking: true });
    assert.equal(fdinfo(blocking).flags & (O_NONBLOCK | O_CLOEXEC), O_CLOEXEC);
    assert.equal(fdinfo(nonBlocking).flags & (O_NONBLOCK | O_CLOEXEC), O_NONBLOCK | O_CLOEXEC);
    closeFd(blocking);
    closeFd(nonBlocking);
  });

  test('a non-blocking read of a zero counter returns 0n (EAGAIN)', () => {
    const fd = eventfd(0, { nonBlocking: true });
    assert.equal(eventfdRead(fd), 0n);
    eventfdWrite(fd, 2);
    assert.equal(eventfdRead(fd), 2n);
    assert.equal(eventfdRead(fd), 0n);
    closeFd(fd);
  });

  test('semaphore mode: each read returns 1', () => {
    const fd = eventfd(2, { nonBlocking: true, semaphore: true });
    assert.equal(eventfdRead(fd), 1n);
    assert.equal(eventfdRead(fd), 1n);
    assert.equal(eventfdRead(fd), 0n);
    closeFd(fd);
  });

  test('a write that would overflow the counter returns false on a non-blocking fd', () => {
    const fd = eventfd(0, { nonBlocking: true });
    assert.equal(eventfdWrite(fd, EVENTFD_MAX), true);
    assert.equal(eventfdWrite(fd, 1), false);
    assert.equal(eventfdRead(fd), EVENTFD_MAX);
    closeFd(fd);
  });

  test('bad values and bad fds are typed errors', () => {
    const fd = eventfd(0, { nonBlocking: true });
    assert.throws(
      () => eventfdWrite(fd, EVENTFD_MAX + 1n),
      (e: unknown) => isSysError(e, 'EINVAL'),
    );
    assert.throws(
      () => eventfdWrite(fd, -1),
      (e: unknown) => isSysError(e, 'EINVAL'),
    );
    assert.throws(
      () => eventfd(-1),
      (e: unknown) => isSysError(e, 'EINVAL'),
    );
    closeFd(fd);
    assert.throws(
      () => eventfdRead(fd),
      (e: unknown) => isSysError(e, 'EBADF') && e.syscall === 'read',
    );
    assert.throws(
      () => eventfdWrite(fd),
      (e: unknown) => isSysError(e, 'EBADF') && e.syscall === 'write',
    );
  });
});
