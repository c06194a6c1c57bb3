/**
 * The fuzzing oracle of ../shared/notes/hostile-inputs.md (as QEMU's virtio fuzzers use it), end to end over
 * the loopback transport: random sequences of driver operations (add, kick, callback toggles), device runs,
 * and random corruption of the rings. Whatever happens, every head the driver made available comes back in the
 * used ring, or the device is in DEVICE_NEEDS_RESET (or, for corruption of the used ring, the driver's queue is
 * broken) — never neither, never an exception that is not a typed VirtioError. After a reset the device works
 * again.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { LoopbackTransport } from '../../../src/transport/loopback/loopback-transport.js';
import { VirtioBus } from '../../../src/virtio/driver/virtio-bus.js';
import type { VirtioBusDevice } from '../../../src/virtio/driver/virtio-bus-device.js';
import { VIRTIO_DEV_ANY_ID, type VirtioDriver } from '../../../src/virtio/driver/virtio-driver.js';
import type { ScatterEntry, Virtqueue } from '../../../src/virtio/driver/virtqueue.js';
import { VirtioError } from '../../../src/virtio/errors.js';
import { VirtioFeature, featureSet } from '../../../src/virtio/features.js';
import { AVAIL_IDX_OFFSET, USED_IDX_OFFSET } from '../../../src/virtio/split/layout.js';
import { DeviceStatus } from '../../../src/virtio/status.js';
import { ECHO_DEVICE_ID, EchoDevice } from '../../fixtures/echo-device.js';
import { corruptRing, ringCorruption, type RingCorruption } from '../../fixtures/ring-corruption.js';

const QUEUE_SIZE = 16;

type Op =
  | { readonly kind: 'add'; readonly outs: number; readonly ins: number; readonly len: number }
  | { readonly kind: 'kick' }
  | { readonly kind: 'run' }
  | { readonly kind: 'cb'; readonly enable: boolean }
  | ({ readonly kind: 'corrupt' } & RingCorruption);

const op: fc.Arbitrary<Op> = fc.oneof(
  {
    arbitrary: fc.record({
      kind: fc.constant('add' as const),
      outs: fc.integer({ min: 0, max: 3 }),
      ins: fc.integer({ min: 0, max: 3 }),
      len: fc.integer({ min: 1, max: 48 }),
    }),
    weight: 10,
  },
  { arbitrary: fc.constant({ kind: 'kick' as const }), weight: 3 },
  { arbitrary: fc.constant({ kind: 'run' as const }), weight: 3 },
  { arbitrary: fc.record({ kind: fc.constant('cb' as const), enable: fc.boolean() }), weight: 1 },
  {
    arbitrary: ringCorruption.map((c) => ({ kind: 'corrupt' as const, ...c })),
    weight: 1,
  },
);

/** Lets every pending microtask (kicks, interrupts) and the driver callbacks run. */
function settle(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

interface Harness {
  readonly bus: VirtioBus;
  readonly transport: LoopbackTransport;
  readonly dev: VirtioBusDevice;
  vq(): Virtqueue<number>;
  /** Tokens handed back by getBuf, in order. */
  readonly returned: number[];
  /** Exceptions that were not VirtioErrors (must stay empty). */
  readonly untyped: unknown[];
}

async function harness(features: bigint): Promise<Harness> {
  let vq: Virtqueue<number> | undefined;
  const returned: number[] = [];
  const untyped: unknown[] = [];
  const drain = (q: Virtqueue<number>): void => {
    try {
      for (let u = q.getBuf(); u !== null; u = q.getBuf()) returned.push(u.token);
    } catch (e) {
      if (!(e instanceof VirtioError)) untyped.push(e);
    }
  };
  const driver: VirtioDriver = {
    name: 'oracle',
    idTable: [{ device: ECHO_DEVICE_ID, vendor: VIRTIO_DEV_ANY_ID }],
    featureTable: [],
    async probe(dev) {
      const [q] = await dev.findVqs([
        {
          name: 'echo',
          size: QUEUE_SIZE,
          callback: (cbq) => {
            drain(cbq as Virtqueue<number>);
          },
        },
      ]);
      vq = (q ?? undefined) as Virtqueue<number> | undefined;
    },
    async remove(dev) {
      await dev.reset();
      await dev.delVqs();
    },
  };
  const bus = new VirtioBus({ onError: (_dev, e) => untyped.push(e) });
  await bus.registerDriver(driver);
  const transport = new LoopbackTransport(new EchoDevice({ features }), {
    memorySize: 1 << 20,
    onFault: (f) => {
      if (!(f instanceof VirtioError)) untyped.push(f);
    },
  });
  const dev = await bus.addDevice(transport);
  return {
    bus,
    transport,
    dev,
    vq: () => {
      if (vq === undefined) throw new Error('no queue');
      return vq;
    },
    returned,
    untyped,
  };
}

describe('ring oracle over the loopback transport', () => {
  test('every available head comes back, or the device needs reset — never neither', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(op, { minLength: 1, maxLength: 120 }),
        fc.boolean(),
        fc.boolean(),
        async (ops, eventIdx, indirect) => {
          const features =
            featureSet(VirtioFeature.VIRTIO_F_VERSION_1) |
            (eventIdx ? featureSet(VirtioFeature.VIRTIO_F_EVENT_IDX) : 0n) |
            (indirect ? featureSet(VirtioFeature.VIRTIO_F_INDIRECT_DESC) : 0n);
          const h = await harness(features);
          assert.equal(h.dev.probeError, undefined);
          const vq = h.vq() as Virtqueue<number> & {
            addresses: { descTable: number; availRing: number; usedRing: number };
          };
          const { memory, allocator } = h.transport;
          const made: number[] = [];
          const corrupted = new Set<string>();
          let token = 0;

          for (const o of ops) {
            try {
              switch (o.kind) {
                case 'add': {
                  if (o.outs + o.ins === 0 || vq.isBroken()) break;
                  const sg = (n: number): ScatterEntry[] =>
                    Array.from({ length: n }, () => ({ addr: allocator.alloc(o.len), len: o.len }));
                  const needed = indirect ? 1 : o.outs + o.ins;
                  if (vq.numFree < needed) break;
                  vq.addBuf(sg(o.outs), sg(o.ins), token);
                  made.push(token++);
                  break;
                }
                case 'kick':
                  vq.kick();
                  break;
                case 'run':
                  await settle();
                  break;
                case 'cb':
                  if (o.enable) vq.enableCb();
                  else vq.disableCb();
                  break;
                case 'corrupt': {
                  corruptRing(memory, vq.addresses, QUEUE_SIZE, o);
                  corrupted.add(o.area);
                  break;
                }
              }
            } catch (e) {
              if (!(e instanceof VirtioError)) throw e;
            }
          }
          // Drain: an unconditional notification (as if the device polled), then let everything run.
          if (!vq.isBroken()) {
            vq.kickPrepare();
            vq.notify();
          }
          for (let i = 0; i < 4; i++) await settle();
          try {
            for (let u = vq.getBuf(); u !== null; u = vq.getBuf()) h.returned.push(u.token);
          } catch (e) {
            if (!(e instanceof VirtioError)) throw e;
          }

          assert.deepEqual(h.untyped, [], 'only typed VirtioErrors');
          const status = h.transport.controller.status;
          const needsReset = (status & DeviceStatus.DEVICE_NEEDS_RESET) !== 0;
          const q = h.transport.controller.queue(0)!;
          if (corrupted.size === 0) {
            assert.ok(!needsReset, 'a well-behaved driver never sees NEEDS_RESET');
            assert.ok(!vq.isBroken());
            assert.deepEqual(
              [...h.returned].sort((a, b) => a - b),
              made,
              'every buffer comes back exactly once',
            );
          } else if (!needsReset && !vq.isBroken()) {
            // Neither reset nor broken: then the device consumed and returned everything the ring offered.
            assert.equal(q.inFlight, 0, 'no chain left in flight');
            assert.equal(
              q.nextAvail,
              memory.readU16(vq.addresses.availRing + AVAIL_IDX_OFFSET),
              'every available head was popped',
            );
            assert.equal(
              q.nextUsed,
              memory.readU16(vq.addresses.usedRing + USED_IDX_OFFSET),
              'and published as used',
            );
          }

          // Whatever happened, a reset brings the device back.
          if (needsReset || vq.isBroken()) {
            assert.ok(await h.bus.reprobe(h.dev), 'reprobe succeeds');
            const fresh = h.vq();
            const buf = allocator.alloc(8);
            memory.write(buf, new TextEncoder().encode('abcdefgh'));
            const out = allocator.alloc(8);
            const before = h.returned.length;
            fresh.addBuf([{ addr: buf, len: 8 }], [{ addr: out, len: 8 }], 4242);
            fresh.kick();
            for (let i = 0; i < 3; i++) await settle();
            assert.deepEqual(h.returned.slice(before), [4242], 'the reset device serves a request');
          }
          await h.bus.removeDevice(h.dev);
        },
      ),
      { numRuns: 500 },
    );
  });
});
