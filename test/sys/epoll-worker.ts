/**
 * Worker for epoll.test.ts: blocks in Epoll.wait(-1) on an eventfd the main thread writes.
 *
 * workerData: { kick: eventfd, shared: Int32Array over a SharedArrayBuffer }. shared[0] is set by the main
 * thread just before it writes the eventfd; the worker reports what it saw there when it woke.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { Epoll, EPOLLIN } from '../../src/sys/epoll.js';
import { eventfdRead } from '../../src/sys/eventfd.js';

interface Data {
  readonly kick: number;
  readonly shared: Int32Array;
}
const { kick, shared } = workerData as Data;
const port = parentPort!;

const epoll = new Epoll(4);
epoll.add(kick, EPOLLIN, 77);
port.postMessage({ type: 'waiting' });
const started = performance.now();
const result = epoll.wait(4, -1); // blocks this worker only
const flagAtWake = Atomics.load(shared, 0);
port.postMessage({
  type: 'woke',
  count: result.count,
  token: result.tokens[0],
  events: result.events[0],
  flagAtWake,
  blockedMs: performance.now() - started,
  value: eventfdRead(kick),
});
epoll.close();
