import { test } from 'node:test';
import assert from 'node:assert/strict';
import { closeFd, eventfd, eventfdRead, eventfdWrite, isReadable, isSysError } from '../../src/sys/index.js';

test('isReadable: an eventfd is readable exactly while its counter is non-zero; a bad fd is EBADF', () => {
  const fd = eventfd(0, { nonBlocking: true });
  try {
    assert.equal(isReadable(fd), false);
    eventfdWrite(fd, 3);
    assert.equal(isReadable(fd), true);
    assert.equal(isReadable(fd), true, 'polling consumes nothing');
    assert.equal(eventfdRead(fd), 3n);
    assert.equal(isReadable(fd), false);
  } finally {
    closeFd(fd);
  }
  assert.throws(
    () => isReadable(-1),
    (e) => isSysError(e, 'EBADF'),
  );
});
