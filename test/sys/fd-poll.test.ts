import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  closeFd,
  eventfd,
  eventfdRead,
  eventfdWrite,
  isReadable,
  isSysError,
  sendWithFds,
  socketPair,
  watchReadable,
  type FdEvents,
} from '../../src/sys/index.js';

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

test('watchReadable reports what the fd is: readable with data, a hang-up as disconnect', async () => {
  const [a, b] = socketPair();
  const seen: FdEvents[] = [];
  let wake: () => void = () => {};
  const watch = watchReadable(a, (events) => {
    seen.push(events);
    wake();
  });
  const next = () =>
    new Promise<FdEvents>((resolve) => {
      const have = seen.shift();
      if (have !== undefined) resolve(have);
      else
        wake = () => {
          resolve(seen.shift() as FdEvents);
        };
    });
  try {
    sendWithFds(b, new Uint8Array([1]));
    assert.deepEqual(await next(), { readable: true, disconnect: false });
    closeFd(b);
    const hangUp = await next();
    assert.equal(hangUp.disconnect, true, 'the peer closed');
  } finally {
    watch.close();
    closeFd(a);
  }
});
