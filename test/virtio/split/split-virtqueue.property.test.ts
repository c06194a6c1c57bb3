/**
 * Property test of the driver-side split queue against a well-behaved fake device that completes buffers in
 * random order: whatever the sequence of add / kick / complete / getBuf, numFree plus the descriptors held by
 * outstanding buffers is the queue size, the device sees exactly the chains that were added, and every token
 * comes back exactly once with the length the device reported.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { GuestMemory } from '../../../src/virtio/guest-memory.js';
import { GuestAllocator } from '../../../src/virtio/guest-allocator.js';
import { UsageError } from '../../../src/virtio/errors.js';
import { SplitVirtqueue } from '../../../src/virtio/split/split-virtqueue.js';
import type { ScatterEntry } from '../../../src/virtio/driver/virtqueue.js';
import { FakeDeviceRing, F_NEXT, F_WRITE, type FakeChain } from './fake-device-ring.js';

const ADDRS = { descTable: 0x1000, availRing: 0x2000, usedRing: 0x3000 } as const;

const entry = fc.record({
  addr: fc.integer({ min: 0, max: 2 ** 40 }),
  len: fc.integer({ min: 0, max: 4096 }),
});
const op = fc.oneof(
  {
    weight: 4,
    arbitrary: fc.record({
      kind: fc.constant('add' as const),
      out: fc.array(entry, { maxLength: 3 }),
      inn: fc.array(entry, { maxLength: 3 }),
    }),
  },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('kick' as const) }) },
  {
    weight: 3,
    arbitrary: fc.record({
      kind: fc.constant('complete' as const),
      pick: fc.nat(),
      fraction: fc.double({ min: 0, max: 1, noNaN: true }),
      publish: fc.boolean(),
    }),
  },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('get' as const), all: fc.boolean() }) },
  {
    weight: 1,
    arbitrary: fc.record({ kind: fc.constant('cb' as const), how: fc.integer({ min: 0, max: 2 }) }),
  },
);

interface Added {
  readonly out: readonly ScatterEntry[];
  readonly inn: readonly ScatterEntry[];
  readonly descs: number;
  readonly writable: number;
}

describe('SplitVirtqueue property', () => {
  test('random add/kick/complete/getBuf: descriptors conserved, every token back exactly once', () => {
    fc.assert(
      fc.property(
        fc.constantFrom(1, 2, 4, 8, 16),
        fc.boolean(),
        fc.boolean(),
        fc.array(op, { maxLength: 150 }),
        (size, eventIdx, indirect, ops) => {
          const memory = GuestMemory.create(0x40000);
          const allocator = new GuestAllocator(memory, { base: 0x10000 });
          const heap0 = allocator.available;
          const vq = new SplitVirtqueue<number>({
            index: 0,
            name: 'prop',
            memory,
            size,
            addresses: ADDRS,
            eventIdx,
            indirect,
            allocator,
            notify: () => undefined,
            callback: () => undefined,
          });
          const dev = new FakeDeviceRing(memory.regions[0]!.bytes, 0, size, ADDRS);

          let nextToken = 1;
          const added = new Map<number, Added>();
          const unpopped: number[] = []; // added and not yet popped by the device, in add order
          const popped: { token: number; chain: FakeChain }[] = [];
          const completedLen = new Map<number, number>();
          const returned = new Set<number>();

          const check = (): void => {
            let held = 0;
            for (const [t, a] of added) if (!returned.has(t)) held += a.descs;
            assert.equal(vq.numFree + held, size);
          };
          const devicePopAll = (): void => {
            for (let c = dev.pop(); c !== null; c = dev.pop()) {
              const token = unpopped.shift();
              assert.ok(token !== undefined, 'device popped a chain nobody added');
              const a = added.get(token)!;
              const want = [
                ...a.out.map((e) => ({ addr: e.addr, len: e.len, w: 0 })),
                ...a.inn.map((e) => ({ addr: e.addr, len: e.len, w: F_WRITE })),
              ];
              assert.equal(c.indirect, a.descs === 1 && want.length > 1);
              assert.deepEqual(
                c.descs.map((d) => ({ addr: d.addr, len: d.len, w: d.flags & F_WRITE })),
                want,
              );
              c.descs.forEach((d, i) => {
                assert.equal((d.flags & F_NEXT) !== 0, i < want.length - 1);
              });
              popped.push({ token, chain: c });
            }
          };
          const getOne = (): boolean => {
            const u = vq.getBuf();
            if (u === null) return false;
            assert.ok(completedLen.has(u.token), `token ${u.token} returned before completion`);
            assert.ok(!returned.has(u.token), `token ${u.token} returned twice`);
            assert.equal(u.len, completedLen.get(u.token));
            returned.add(u.token);
            return true;
          };

          for (const o of ops) {
            switch (o.kind) {
              case 'add': {
                const out = o.out.length + o.inn.length === 0 ? [{ addr: 0x100, len: 1 }] : o.out;
                const total = out.length + o.inn.length;
                const descs = indirect && total > 1 ? 1 : total;
                const token = nextToken++;
                const free = vq.numFree;
                let err: string | undefined;
                try {
                  vq.addBuf(out, o.inn, token);
                } catch (e) {
                  if (!(e instanceof UsageError)) throw e;
                  err = e.code;
                }
                if (total > size) assert.equal(err, 'INVALID_ARGUMENT');
                else if (free < descs) assert.equal(err, 'QUEUE_FULL');
                else {
                  assert.equal(err, undefined);
                  const writable = o.inn.reduce((n, e) => n + e.len, 0);
                  added.set(token, { out, inn: o.inn, descs, writable });
                  unpopped.push(token);
                }
                break;
              }
              case 'kick':
                vq.kickPrepare();
                devicePopAll();
                break;
              case 'complete': {
                if (popped.length === 0) break;
                const [p] = popped.splice(o.pick % popped.length, 1);
                const len = Math.floor(o.fraction * p!.chain.writableLen);
                completedLen.set(p!.token, len);
                dev.addUsed(p!.chain.head, len);
                if (o.publish) dev.publish();
                break;
              }
              case 'get':
                if (o.all) while (getOne());
                else getOne();
                break;
              case 'cb':
                if (o.how === 0) vq.disableCb();
                else if (o.how === 1) vq.enableCb();
                else vq.enableCbDelayed();
                break;
            }
            check();
          }

          // Drain: publish everything, let the device complete it all in order, take it all back.
          vq.kickPrepare();
          devicePopAll();
          for (const p of popped.splice(0)) {
            completedLen.set(p.token, p.chain.writableLen);
            dev.addUsed(p.chain.head, p.chain.writableLen);
          }
          dev.publish();
          while (getOne());
          check();
          assert.equal(vq.isBroken(), false);
          assert.deepEqual(
            [...returned].sort((a, b) => a - b),
            [...added.keys()].sort((a, b) => a - b),
          );
          assert.equal(vq.numFree, size);
          assert.equal(allocator.available, heap0);
          assert.equal(vq.detachUnusedBuf(), null);
        },
      ),
      { numRuns: 300 },
    );
  });
});
