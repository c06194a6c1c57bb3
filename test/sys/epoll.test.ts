import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { extname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { once } from 'node:events';
import { setTimeout as sleep } from 'node:timers/promises';
import { Worker } from 'node:worker_threads';
import { Epoll, EPOLLHUP, EPOLLIN, EPOLLOUT, EPOLLRDHUP } from '../../src/sys/epoll.js';
import { eventfd, eventfdWrite } from '../../src/sys/eventfd.js';
import { closeFd, sendWithFds, socketPair } from '../../src/sys/unix-socket.js';
import { isSysError } from '../../src/sys/sys-error.js';

/**
 * Starts test/sys/<name> in a worker: the compiled .js once built; under tsx (.ts) through a bootstrap that
 * registers tsx in the worker first (Node 20 does not carry the main thread's module hooks into workers).
 */
function startWorker(name: string, workerData: unknown): Worker {
  const self = fileURLToPath(import.meta.url);
  const target = new URL(`./${name}${extname(self)}`, import.meta.url).href;
  if (extname(self) !== '.ts') return new Worker(new URL(target), { workerData });
  const tsx = import.meta.resolve('tsx/esm/api');
  const bootstrap = `import(${JSON.stringify(tsx)}).then((t) => { t.register(); return import(${JSON.stringify(target)}); })`;
  return new Worker(bootstrap, { eval: true, workerData });
}

function ready(epoll: Epoll, max = 8): Map<number, number> {
  const r = epoll.wait(max, 0);
  const out = new Map<number, number>();
  for (let i = 0; i < r.count; i++) out.set(r.tokens[i]!, r.events[i]!);
  return out;
}

describe('Epoll', () => {
  test('reports each ready fd with its token and events; nothing ready is count 0', () => {
    const epoll = new Epoll();
    const e1 = eventfd(0, { nonBlocking: true });
    const e2 = eventfd(0, { nonBlocking: true });
    epoll.add(e1, EPOLLIN, 1);
    epoll.add(e2, EPOLLIN, -2);
    assert.equal(epoll.wait(8, 0).count, 0);
    eventfdWrite(e2);
    assert.deepEqual(ready(epoll), new Map([[-2, EPOLLIN]]));
    eventfdWrite(e1);
    assert.deepEqual(
      ready(epoll),
      new Map([
        [1, EPOLLIN],
        [-2, EPOLLIN],
      ]),
    );
    epoll.modify(e1, EPOLLIN, 0x7fffffff);
    epoll.remove(e2);
    assert.deepEqual(ready(epoll), new Map([[0x7fffffff, EPOLLIN]]));
    epoll.close();
    closeFd(e1);
    closeFd(e2);
  });

  test('a timeout returns count 0 after about that long', () => {
    const epoll = new Epoll(1);
    const e = eventfd();
    epoll.add(e, EPOLLIN, 1);
    const t0 = performance.now();
    assert.equal(epoll.wait(1, 30).count, 0);
    assert.ok(performance.now() - t0 >= 25);
    epoll.close();
    closeFd(e);
  });

  test('maxEvents bounds one wait and grows the buffers past the capacity', () => {
    const epoll = new Epoll(1);
    const fds = [0, 1, 2, 3, 4].map(() => eventfd(1));
    fds.forEach((fd, i) => {
      epoll.add(fd, EPOLLIN, 100 + i);
    });
    assert.equal(epoll.wait(2, 0).count, 2);
    const all = epoll.wait(16, 0);
    assert.equal(all.count, 5);
    assert.deepEqual([...all.tokens.subarray(0, 5)].sort(), [100, 101, 102, 103, 104]);
    epoll.close();
    for (const fd of fds) closeFd(fd);
  });

  test('sockets: writable at once, readable with data, RDHUP/HUP when the peer closes', () => {
    const [a, b] = socketPair();
    const epoll = new Epoll();
    epoll.add(b, EPOLLIN | EPOLLOUT | EPOLLRDHUP, 5);
    assert.equal(ready(epoll).get(5), EPOLLOUT);
    sendWithFds(a, new Uint8Array([1]), []);
    assert.equal(ready(epoll).get(5), EPOLLIN | EPOLLOUT);
    closeFd(a);
    const events = ready(epoll).get(5)!;
    assert.equal(events & (EPOLLRDHUP | EPOLLHUP), EPOLLRDHUP | EPOLLHUP);
    epoll.close();
    closeFd(b);
  });

  test('errors: add twice is EEXIST, remove unknown is ENOENT, bad token EINVAL, closed Epoll EBADF', () => {
    const epoll = new Epoll();
    const e = eventfd();
    epoll.add(e, EPOLLIN, 1);
    assert.throws(
      () => {
        epoll.add(e, EPOLLIN, 1);
      },
      (err: unknown) => isSysError(err, 'EEXIST'),
    );
    epoll.remove(e);
    assert.throws(
      () => {
        epoll.remove(e);
      },
      (err: unknown) => isSysError(err, 'ENOENT'),
    );
    assert.throws(
      () => {
        epoll.add(e, EPOLLIN, 2 ** 31);
      },
      (err: unknown) => isSysError(err, 'EINVAL'),
    );
    epoll.close();
    epoll.close();
    assert.throws(
      () => epoll.wait(1, 0),
      (err: unknown) => isSysError(err, 'EBADF'),
    );
    closeFd(e);
  });

  test('a blocking wait in a worker blocks only the worker; an eventfd write from the main thread wakes it', async () => {
    const kick = eventfd(0, { nonBlocking: true });
    const shared = new Int32Array(new SharedArrayBuffer(4));
    const worker = startWorker('epoll-worker', { kick, shared });
    const messages: { type: string; [key: string]: unknown }[] = [];
    worker.on('message', (m: { type: string }) => messages.push(m));
    worker.on('error', (error) => messages.push({ type: 'error', error }));
    try {
      for (let i = 0; messages.length === 0 && i < 1000; i++) await sleep(5);
      assert.equal(messages[0]?.type, 'waiting', String(messages[0]?.error));

      // The worker is (about to be) parked in epoll_wait. The main thread's event loop keeps running.
      let ticks = 0;
      const t0 = performance.now();
      while (performance.now() - t0 < 100) {
        await new Promise<void>((resolve) => setImmediate(resolve));
        ticks++;
      }
      assert.ok(ticks > 10, `the main event loop ran ${ticks} times`);
      assert.equal(messages.length, 1, 'the worker has not woken without a write');

      // Both awaited before the write: a worker that exits right after its last message has that message and its
      // 'exit' emitted in one go (Node drains the port on exit), before a later once(worker, 'exit') could listen.
      const wokeMessage = once(worker, 'message');
      const exited = once(worker, 'exit');
      exited.catch(() => undefined); // awaited below; a worker error fails the test through wokeMessage first
      Atomics.store(shared, 0, 1);
      eventfdWrite(kick, 3);
      const [woke] = (await wokeMessage) as [Record<string, unknown>];
      assert.equal(woke.type, 'woke');
      assert.equal(woke.count, 1);
      assert.equal(woke.token, 77);
      assert.equal(woke.events, EPOLLIN);
      assert.equal(woke.flagAtWake, 1, 'it woke after the write, not before');
      assert.ok((woke.blockedMs as number) >= 90, `blocked ${String(woke.blockedMs)} ms`);
      assert.equal(woke.value, 3n);
      const [code] = (await exited) as [number];
      assert.equal(code, 0);
    } finally {
      eventfdWrite(kick, 1); // never leave a worker blocked in the kernel
      await worker.terminate();
      closeFd(kick);
    }
  });
});
