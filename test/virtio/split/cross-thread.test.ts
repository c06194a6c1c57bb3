/**
 * The ring's memory ordering under real concurrency: the driver (main thread) and the device (a worker thread)
 * share one SharedArrayBuffer and run at the same time, as a guest and a vhost-user back end do. Every request
 * carries distinct data; every response is checked byte for byte, so a descriptor or ring entry read before the
 * other side published it would show up as wrong data, a lost or duplicated token, or a broken queue.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { Worker } from 'node:worker_threads';
import { GuestAllocator } from '../../../src/virtio/guest-allocator.js';
import { GuestMemory } from '../../../src/virtio/guest-memory.js';
import { SplitVirtqueue } from '../../../src/virtio/split/split-virtqueue.js';
import { VirtioFeature, featureSet } from '../../../src/virtio/features.js';
import { IRQ, KICK, STOP, type CrossThreadSetup } from './cross-thread-device.js';

const QUEUE_SIZE = 64;
const REQUESTS = 100_000;
const PAYLOAD = 24;

async function run(eventIdx: boolean, indirect: boolean): Promise<void> {
  const shared = new SharedArrayBuffer(4 << 20);
  const memory = new GuestMemory([{ guestAddr: 0, bytes: new Uint8Array(shared) }]);
  const allocator = new GuestAllocator(memory);
  const doorbells = new SharedArrayBuffer(16);
  const bells = new Int32Array(doorbells);
  const addresses = SplitVirtqueue.allocate(allocator, QUEUE_SIZE);
  const vq = new SplitVirtqueue<number>({
    index: 0,
    name: 'cross-thread',
    memory,
    size: QUEUE_SIZE,
    addresses,
    eventIdx,
    indirect,
    allocator,
    notify: () => {
      Atomics.add(bells, KICK, 1);
      Atomics.notify(bells, KICK);
    },
  });
  const features =
    featureSet(VirtioFeature.VIRTIO_F_VERSION_1) |
    (eventIdx ? featureSet(VirtioFeature.VIRTIO_F_EVENT_IDX) : 0n) |
    (indirect ? featureSet(VirtioFeature.VIRTIO_F_INDIRECT_DESC) : 0n);
  const setup: CrossThreadSetup = { memory: shared, doorbells, size: QUEUE_SIZE, ...addresses, features };
  const worker = new Worker(new URL('./cross-thread-device.js', import.meta.url), { workerData: setup });
  const served = new Promise<number>((resolve, reject) => {
    worker.once('message', (n: number) => {
      resolve(n);
    });
    worker.once('error', reject);
  });

  // One in-buffer and one out-buffer per slot; two out segments so chains have 3 descriptors.
  const slots = Array.from({ length: QUEUE_SIZE }, () => ({
    out: allocator.alloc(PAYLOAD),
    inn: allocator.alloc(PAYLOAD),
  }));
  const slotOf = new Map<number, (typeof slots)[number]>();
  try {
    await drive();
  } finally {
    // Stop the device even when an assertion failed, so a failure never leaves the worker spinning.
    Atomics.store(bells, STOP, 1);
    Atomics.add(bells, KICK, 1);
    Atomics.notify(bells, KICK);
  }
  assert.equal(await served, REQUESTS);
  await worker.terminate();
  assert.equal(slotOf.size, 0);
  assert.ok(!vq.isBroken());

  async function drive(): Promise<void> {
    const free = [...slots];
    const pattern = (token: number, i: number) => (token * 31 + i * 7) & 0xff;
    let next = 0;
    let done = 0;
    const check = new Uint8Array(PAYLOAD);
    while (done < REQUESTS) {
      while (next < REQUESTS && free.length > 0 && vq.numFree >= (indirect ? 1 : 3)) {
        const slot = free.pop()!;
        const data = memory.slice(slot.out, PAYLOAD);
        for (let i = 0; i < PAYLOAD; i++) data[i] = pattern(next, i);
        memory.fill(slot.inn, PAYLOAD, 0);
        vq.addBuf(
          [
            { addr: slot.out, len: 8 },
            { addr: slot.out + 8, len: PAYLOAD - 8 },
          ],
          [{ addr: slot.inn, len: PAYLOAD }],
          next,
        );
        slotOf.set(next, slot);
        next++;
      }
      vq.kick();
      const irqs = Atomics.load(bells, IRQ);
      let got = false;
      for (let u = vq.getBuf(); u !== null; u = vq.getBuf()) {
        got = true;
        const slot = slotOf.get(u.token);
        assert.ok(slot !== undefined, `token ${u.token} came back once`);
        slotOf.delete(u.token);
        assert.equal(u.len, PAYLOAD);
        memory.read(slot.inn, check);
        for (let i = 0; i < PAYLOAD; i++) {
          if (check[i] !== ((pattern(u.token, i) + 1) & 0xff)) {
            assert.fail(
              `token ${u.token} byte ${i}: ${check[i]} instead of ${(pattern(u.token, i) + 1) & 0xff}`,
            );
          }
        }
        free.push(slot);
        done++;
      }
      if (!got && vq.enableCb()) {
        // Nothing yet and the device will interrupt: wait for it (bounded, then poll again).
        const r = Atomics.waitAsync(bells, IRQ, irqs, 20);
        if (r.async) await r.value;
      }
    }
  }
}

describe('split ring shared between two threads', () => {
  for (const eventIdx of [false, true]) {
    for (const indirect of [false, true]) {
      test(`${REQUESTS} requests, event idx ${eventIdx}, indirect ${indirect}: all data intact`, async () => {
        await run(eventIdx, indirect);
      });
    }
  }
});
