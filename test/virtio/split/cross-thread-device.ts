/**
 * Worker half of the cross-thread ring test: a device-side SplitQueue over the SharedArrayBuffer the main
 * thread's driver uses. It waits on a kick doorbell, pops every chain, writes each readable byte + 1 into the
 * writable part, completes the batch, and rings the interrupt doorbell when the driver asks.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { GuestMemory } from '../../../src/virtio/guest-memory.js';
import { SplitQueue } from '../../../src/virtio/split/split-queue.js';

export interface CrossThreadSetup {
  readonly memory: SharedArrayBuffer;
  /** Int32 words: [0] kick count, [1] interrupt count, [2] stop flag. */
  readonly doorbells: SharedArrayBuffer;
  readonly size: number;
  readonly descTable: number;
  readonly availRing: number;
  readonly usedRing: number;
  readonly features: bigint;
}

export const KICK = 0;
export const IRQ = 1;
export const STOP = 2;

function serve(setup: CrossThreadSetup): number {
  const memory = new GuestMemory([{ guestAddr: 0, bytes: new Uint8Array(setup.memory) }]);
  const bells = new Int32Array(setup.doorbells);
  const q = new SplitQueue(0, setup.size);
  q.size = setup.size;
  q.descTable = setup.descTable;
  q.availRing = setup.availRing;
  q.usedRing = setup.usedRing;
  q.ready = true;
  q.activate(memory, setup.features);
  let served = 0;
  let seenKicks = 0;
  while (Atomics.load(bells, STOP) === 0) {
    do {
      q.disableNotification();
      for (let chain = q.popChain(); chain !== null; chain = q.popChain()) {
        const src = chain.readable();
        const dst = chain.writable();
        let written = 0;
        for (let s = 0, d = 0, si = 0, di = 0; s < src.length && d < dst.length;) {
          const a = src[s]!;
          const b = dst[d]!;
          b[di] = (a[si]! + 1) & 0xff;
          written++;
          if (++si === a.length) {
            s++;
            si = 0;
          }
          if (++di === b.length) {
            d++;
            di = 0;
          }
        }
        q.addUsed(chain.head, written);
        served++;
      }
      q.publishUsed();
      if (q.needsNotification()) {
        Atomics.add(bells, IRQ, 1);
        Atomics.notify(bells, IRQ);
      }
    } while (q.enableNotification());
    const kicks = Atomics.load(bells, KICK);
    if (kicks === seenKicks) Atomics.wait(bells, KICK, kicks, 50);
    seenKicks = Atomics.load(bells, KICK);
  }
  return served;
}

if (parentPort !== null) {
  const served = serve(workerData as CrossThreadSetup);
  parentPort.postMessage(served);
}
