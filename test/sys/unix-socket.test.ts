import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  acceptUnix,
  closeFd,
  connectUnix,
  listenUnix,
  recvWithFds,
  sendWithFds,
  setNonBlocking,
  socketPair,
  STAGING_BYTES,
  WOULD_BLOCK,
} from '../../src/sys/unix-socket.js';
import { eventfd, eventfdRead, eventfdWrite } from '../../src/sys/eventfd.js';
import { isOpen, openFds } from '../fixtures/open-fds.js';
import { ftruncate, mapShared, memfdCreate } from '../../src/sys/mmap.js';
import { isSysError, SysError } from '../../src/sys/sys-error.js';

/** O_CLOEXEC in the kernel's flags for the fd (/proc/self/fdinfo prints them in octal). */
function isCloseOnExec(fd: number): boolean {
  const flags = /flags:\s*([0-7]+)/.exec(readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'))?.[1];
  assert.ok(flags !== undefined);
  return (parseInt(flags, 8) & 0o2000000) !== 0;
}

function withPair(body: (a: number, b: number) => void): void {
  const [a, b] = socketPair();
  try {
    body(a, b);
  } finally {
    if (isOpen(a)) closeFd(a);
    if (isOpen(b)) closeFd(b);
  }
}

const bytes = (...values: number[]) => new Uint8Array(values);

describe('unix sockets with fd passing', () => {
  test('an eventfd and a memfd sent over a socketpair are the same kernel objects on the receiving side', () => {
    withPair((a, b) => {
      const efd = eventfd(0, { nonBlocking: true });
      const mfd = memfdCreate('ringvm-test', {});
      ftruncate(mfd, 8192);
      const senderMap = mapShared(mfd, 8192);
      try {
        assert.equal(sendWithFds(a, bytes(0xaa, 0xbb), [efd, mfd]), 2);

        const into = new Uint8Array(64);
        const got = recvWithFds(b, into);
        assert.equal(got.bytes, 2);
        assert.deepEqual(into.subarray(0, 2), bytes(0xaa, 0xbb));
        assert.equal(got.fds.length, 2);
        const [rEfd, rMfd] = got.fds as [number, number];
        assert.ok(rEfd !== efd && rMfd !== mfd, 'the receiver gets new descriptors');

        // The receiver rings the eventfd; the sender sees the counter on its own fd.
        eventfdWrite(rEfd, 5n);
        eventfdWrite(rEfd, 2);
        assert.equal(eventfdRead(efd), 7n);

        // Both MAP_SHARED mappings are views of the same pages, both ways.
        const receiverMap = mapShared(rMfd, 8192);
        senderMap.bytes.set(bytes(1, 2, 3, 4), 4096);
        assert.deepEqual(receiverMap.bytes.subarray(4096, 4100), bytes(1, 2, 3, 4));
        receiverMap.bytes[8191] = 0x5a;
        assert.equal(senderMap.bytes[8191], 0x5a);
        receiverMap.unmap();
        closeFd(rEfd);
        closeFd(rMfd);
      } finally {
        senderMap.unmap();
        closeFd(efd);
        closeFd(mfd);
      }
    });
  });

  test('received fds are close-on-exec and closeFd really closes them', () => {
    withPair((a, b) => {
      const efd = eventfd();
      sendWithFds(a, bytes(1), [efd]);
      const { fds } = recvWithFds(b, new Uint8Array(8));
      const fd = fds[0]!;
      assert.ok(isOpen(fd));
      for (const checked of [fd, a, b]) assert.ok(isCloseOnExec(checked), `fd ${checked} is close-on-exec`);
      closeFd(fd);
      assert.equal(isOpen(fd), false);
      assert.ok(isOpen(efd), 'the sender keeps its own fd');
      closeFd(efd);
      assert.equal(isOpen(efd), false);
      assert.throws(
        () => {
          closeFd(efd);
        },
        (e: unknown) => isSysError(e, 'EBADF') && e.syscall === 'close',
      );
    });
  });

  test('several messages arrive in one read (a stream), and a short buffer leaves the rest queued', () => {
    withPair((a, b) => {
      sendWithFds(a, bytes(1, 2, 3), []);
      sendWithFds(a, bytes(4, 5), []);
      sendWithFds(a, bytes(6), []);
      const into = new Uint8Array(4);
      const first = recvWithFds(b, into);
      assert.equal(first.bytes, 4);
      assert.deepEqual(into, bytes(1, 2, 3, 4));
      assert.deepEqual(first.fds, []);
      const rest = recvWithFds(b, into);
      assert.equal(rest.bytes, 2);
      assert.deepEqual(into.subarray(0, 2), bytes(5, 6));
    });
  });

  test('fds arrive with the bytes they were sent with', () => {
    withPair((a, b) => {
      const e1 = eventfd(1);
      const e2 = eventfd(2);
      sendWithFds(a, bytes(1, 1), [e1]);
      sendWithFds(a, bytes(2), [e2]);
      const into = new Uint8Array(16);
      const m1 = recvWithFds(b, into);
      assert.equal(m1.fds.length, 1);
      assert.deepEqual(
        into.subarray(0, m1.bytes),
        bytes(1, 1),
        'the kernel does not merge data across fd sets',
      );
      const m2 = recvWithFds(b, into);
      assert.equal(m2.bytes, 1);
      assert.equal(m2.fds.length, 1);
      assert.equal(eventfdRead(m1.fds[0]!), 1n);
      assert.equal(eventfdRead(m2.fds[0]!), 2n);
      for (const fd of [e1, e2, ...m1.fds, ...m2.fds]) closeFd(fd);
    });
  });

  test('end of stream is bytes = 0', () => {
    withPair((a, b) => {
      sendWithFds(a, bytes(9), []);
      closeFd(a);
      const into = new Uint8Array(8);
      assert.equal(recvWithFds(b, into).bytes, 1);
      assert.deepEqual(recvWithFds(b, into), { bytes: 0, fds: [] });
    });
  });

  test('an empty non-blocking socket returns WOULD_BLOCK, then data once it arrives', () => {
    withPair((a, b) => {
      setNonBlocking(b, true);
      assert.deepEqual(recvWithFds(b, new Uint8Array(8)), { bytes: WOULD_BLOCK, fds: [] });
      sendWithFds(a, bytes(7), []);
      assert.equal(recvWithFds(b, new Uint8Array(8)).bytes, 1);
      setNonBlocking(b, false);
    });
  });

  test('a full non-blocking socket: a short send, then WOULD_BLOCK', () => {
    withPair((a, b) => {
      setNonBlocking(a, true);
      const chunk = new Uint8Array(STAGING_BYTES).fill(0x11);
      let total = 0;
      let n: number;
      while ((n = sendWithFds(a, chunk, [])) !== WOULD_BLOCK) {
        assert.ok(n > 0 && n <= chunk.length);
        total += n;
      }
      assert.ok(total > 0);
      // Drain it all back: every byte that was reported sent arrives.
      setNonBlocking(b, true);
      const into = new Uint8Array(STAGING_BYTES);
      let received = 0;
      for (;;) {
        const got = recvWithFds(b, into);
        if (got.bytes === WOULD_BLOCK) break;
        received += got.bytes;
      }
      assert.equal(received, total);
    });
  });

  test('data longer than the staging buffer goes out in several sendmsg calls and arrives intact', async () => {
    const [a, b] = socketPair();
    const data = new Uint8Array(STAGING_BYTES * 4 + 123);
    for (let i = 0; i < data.length; i++) data[i] = (i * 7) & 0xff;
    // Both ends non-blocking and interleaved: the socket buffer is smaller than the data.
    setNonBlocking(a, true);
    const out = new Uint8Array(data.length);
    let sent = 0;
    let received = 0;
    const into = new Uint8Array(4096);
    setNonBlocking(b, true);
    while (received < data.length) {
      if (sent < data.length) {
        const n = sendWithFds(a, data.subarray(sent), []);
        if (n !== WOULD_BLOCK) sent += n;
      }
      const got = recvWithFds(b, into);
      if (got.bytes > 0) {
        out.set(into.subarray(0, got.bytes), received);
        received += got.bytes;
      }
      await Promise.resolve();
    }
    assert.deepEqual(out, data);
    closeFd(a);
    closeFd(b);
  });

  test('more fds than maxFds: MSG_CTRUNC is an EMSGSIZE SysError and the fds that arrived are closed', () => {
    withPair((a, b) => {
      const sent = [eventfd(), eventfd(), eventfd()];
      sendWithFds(a, bytes(1, 2), sent);
      const into = new Uint8Array(8);
      const before = new Set(openFds());
      assert.throws(
        () => recvWithFds(b, into, 1),
        (e: unknown) =>
          e instanceof SysError &&
          e.code === 'EMSGSIZE' &&
          e.syscall === 'recvmsg' &&
          /MSG_CTRUNC/.test(e.message) &&
          (e.value as { bytes: number }).bytes === 2,
      );
      assert.deepEqual(
        openFds().filter((fd) => !before.has(fd)),
        [],
        'no received fd left open',
      );
      assert.deepEqual(into.subarray(0, 2), bytes(1, 2));
      for (const fd of sent) closeFd(fd);
    });
  });

  test('sending to a closed peer is EPIPE, not SIGPIPE', () => {
    withPair((a, b) => {
      closeFd(b);
      assert.throws(
        () => sendWithFds(a, bytes(1), []),
        (e: unknown) => isSysError(e, 'EPIPE'),
      );
    });
  });

  test('recvWithFds / sendWithFds on a bad fd: SysError EBADF', () => {
    const [a, b] = socketPair();
    closeFd(a);
    closeFd(b);
    assert.throws(
      () => recvWithFds(a, new Uint8Array(8)),
      (e: unknown) =>
        e instanceof SysError &&
        e.code === 'EBADF' &&
        e.errno === 9 &&
        e.syscall === 'recvmsg' &&
        e.value === a,
    );
    assert.throws(
      () => sendWithFds(a, bytes(1), []),
      (e: unknown) => isSysError(e, 'EBADF'),
    );
    assert.throws(
      () => recvWithFds(-1, new Uint8Array(8)),
      (e: unknown) => isSysError(e, 'EBADF'),
    );
  });

  test('argument checks: fds need data, at most 253 fds, a non-empty buffer', () => {
    withPair((a, b) => {
      assert.throws(
        () => sendWithFds(a, new Uint8Array(0), [a]),
        (e: unknown) => isSysError(e, 'EINVAL'),
      );
      assert.throws(
        () => sendWithFds(a, bytes(1), new Array<number>(254).fill(a)),
        (e: unknown) => isSysError(e, 'EINVAL'),
      );
      assert.throws(
        () => recvWithFds(b, new Uint8Array(0)),
        (e: unknown) => isSysError(e, 'EINVAL'),
      );
      assert.equal(sendWithFds(a, new Uint8Array(0), []), 0);
    });
  });
});

describe('listenUnix / connectUnix / acceptUnix', () => {
  const dir = mkdtempSync(join(tmpdir(), 'ringvm-sys-'));
  process.on('exit', () => {
    rmSync(dir, { recursive: true, force: true });
  });

  test('a client connects over a path, the server accepts, fds flow both ways', () => {
    const path = join(dir, 'a.sock');
    const server = listenUnix(path, 4);
    const client = connectUnix(path);
    const conn = acceptUnix(server, {});
    const efd = eventfd();
    sendWithFds(client, bytes(1, 2, 3), [efd]);
    const into = new Uint8Array(8);
    const got = recvWithFds(conn, into);
    assert.equal(got.bytes, 3);
    eventfdWrite(got.fds[0]!, 4);
    assert.equal(eventfdRead(efd), 4n);
    sendWithFds(conn, bytes(9), []);
    assert.equal(recvWithFds(client, into).bytes, 1);
    for (const fd of [efd, got.fds[0]!, conn, client, server]) closeFd(fd);
  });

  test('a non-blocking listening socket: accept returns WOULD_BLOCK with nobody waiting', () => {
    const path = join(dir, 'nb.sock');
    const server = listenUnix(path, 4, { nonBlocking: true });
    assert.equal(acceptUnix(server), WOULD_BLOCK);
    const client = connectUnix(path);
    const conn = acceptUnix(server, { nonBlocking: true });
    assert.ok(conn >= 0);
    assert.equal(
      recvWithFds(conn, new Uint8Array(4)).bytes,
      WOULD_BLOCK,
      'the accepted socket is non-blocking',
    );
    for (const fd of [conn, client, server]) closeFd(fd);
  });

  test('a stale socket is unlinked only when asked, a live one never', () => {
    const path = join(dir, 'stale.sock');
    closeFd(listenUnix(path, 1)); // leaves the socket file behind, nobody listening
    assert.ok(existsSync(path));
    assert.throws(
      () => listenUnix(path, 1),
      (e: unknown) => isSysError(e, 'EADDRINUSE'),
    );
    assert.throws(
      () => connectUnix(path),
      (e: unknown) => isSysError(e, 'ECONNREFUSED'),
    );
    const server = listenUnix(path, 1, { unlinkStale: true });
    assert.throws(
      () => listenUnix(path, 1, { unlinkStale: true }),
      (e: unknown) => isSysError(e, 'EADDRINUSE') && /listening/.test(e.message),
    );
    const client = connectUnix(path);
    closeFd(client);
    closeFd(server);

    const file = join(dir, 'regular');
    writeFileSync(file, 'keep me');
    assert.throws(
      () => listenUnix(file, 1, { unlinkStale: true }),
      (e: unknown) => isSysError(e, 'EADDRINUSE'),
    );
    assert.ok(existsSync(file), 'a regular file is never unlinked');
  });

  test('connect to a missing path is ENOENT; an over-long path is ENAMETOOLONG', () => {
    assert.throws(
      () => connectUnix(join(dir, 'missing.sock')),
      (e: unknown) => isSysError(e, 'ENOENT'),
    );
    assert.throws(
      () => listenUnix(join(dir, 'x'.repeat(120)), 1),
      (e: unknown) => isSysError(e, 'ENAMETOOLONG'),
    );
  });
});
