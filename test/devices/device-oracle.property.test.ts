/**
 * The fuzzing oracle of ../shared/notes/hostile-inputs.md applied to the real devices (blk, net, console, rng)
 * over the loopback transport, as test/transport/loopback/ring-oracle.property.test.ts applies it to the echo
 * fixture: random chains with random contents (arbitrary blk headers, virtio_net_hdr fields, control commands)
 * on random queues, kicks, callback toggles and random corruption of the rings. Whatever happens:
 * - nothing escapes but typed VirtioErrors;
 * - on every queue whose requests the device answers by itself (blk requests, transmit and control queues, rng),
 *   every head made available comes back in the used ring, or the device is in DEVICE_NEEDS_RESET — never
 *   neither; queues that wait for host data (net and console receive, console control in) may keep theirs;
 * - after a reset the device serves a well-formed request again.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { MemoryBackend } from '../../src/backends/block/memory-backend.js';
import { BlkDevice } from '../../src/devices/blk/blk-device.js';
import { ConsoleDevice } from '../../src/devices/console/console-device.js';
import { NetDevice } from '../../src/devices/net/net-device.js';
import { RngDevice } from '../../src/devices/rng/rng-device.js';
import { LoopbackTransport } from '../../src/transport/loopback/loopback-transport.js';
import type { VirtioDevice } from '../../src/virtio/device/virtio-device.js';
import { VirtioBus } from '../../src/virtio/driver/virtio-bus.js';
import type { VirtioBusDevice } from '../../src/virtio/driver/virtio-bus-device.js';
import { VIRTIO_DEV_ANY_ID, type VirtioDriver } from '../../src/virtio/driver/virtio-driver.js';
import type { ScatterEntry, Virtqueue } from '../../src/virtio/driver/virtqueue.js';
import { VirtioError } from '../../src/virtio/errors.js';
import { AVAIL_IDX_OFFSET, USED_IDX_OFFSET } from '../../src/virtio/split/layout.js';
import { DeviceStatus } from '../../src/virtio/status.js';
import { corruptRing, ringCorruption, type RingCorruption } from '../fixtures/ring-corruption.js';
import { MemoryChardev } from './console/memory-chardev.js';
import { MemoryNetBackend } from './net/memory-net-backend.js';

const QUEUE_SIZE = 16;
/** Device-specific feature bits are 0..23 (VIRTIO 1.2 §6); the driver accepts every one the device offers. */
const DEVICE_FEATURE_BITS = 24;
/** virtio_net_hdr with VIRTIO_F_VERSION_1 (num_buffers included). */
const NET_HDR_BYTES = 12;
/** virtio_blk_outhdr: le32 type, le32 reserved, le64 sector. */
const BLK_OUTHDR_BYTES = 16;
const BLK_SECTOR_BYTES = 512;

/** A chain the device must serve: readable parts (with their bytes) and writable lengths. */
interface Request {
  readonly queue: number;
  readonly readable: readonly Uint8Array[];
  readonly writable: readonly number[];
}

interface Subject {
  readonly name: string;
  make(eventIdx: boolean, indirect: boolean): VirtioDevice;
  /** Queues on which every chain comes back without host input. */
  returning(queue: number, queueCount: number): boolean;
  /** A well-formed request on a returning queue, for the check after a reset. */
  readonly wellFormed: Request;
}

const SUBJECTS: readonly Subject[] = [
  {
    name: 'rng',
    make: () => new RngDevice({ queueSize: QUEUE_SIZE }),
    returning: () => true,
    wellFormed: { queue: 0, readable: [], writable: [16] },
  },
  {
    name: 'blk',
    make: (eventIdx, indirect) =>
      new BlkDevice({
        backend: new MemoryBackend(64 * 1024),
        queueSize: QUEUE_SIZE,
        eventIdx,
        indirect,
        discard: true,
        writeZeroes: true,
      }),
    returning: () => true,
    // VIRTIO_BLK_T_IN (0) of sector 0.
    wellFormed: { queue: 0, readable: [new Uint8Array(BLK_OUTHDR_BYTES)], writable: [BLK_SECTOR_BYTES, 1] },
  },
  {
    name: 'net',
    make: (eventIdx, indirect) =>
      new NetDevice({
        backends: [new MemoryNetBackend()],
        queueSize: QUEUE_SIZE,
        ctrlQueue: true,
        offloads: true,
        eventIdx,
        indirect,
      }),
    // rx0 = 0 waits for frames; tx0 = 1 and the control queue (the last) answer at once.
    returning: (q, count) => q % 2 === 1 || q === count - 1,
    wellFormed: { queue: 1, readable: [new Uint8Array(NET_HDR_BYTES), ethernetFrame()], writable: [] },
  },
  {
    name: 'console',
    make: () =>
      new ConsoleDevice({
        ports: [{ chardev: new MemoryChardev() }, { chardev: new MemoryChardev(), name: 'org.example.port' }],
        multiport: true,
        maxPorts: 2,
        queueSize: QUEUE_SIZE,
      }),
    // Even queues (port receive queues, control in) wait for the host; odd ones (transmit, control out) do not.
    returning: (q) => q % 2 === 1,
    wellFormed: { queue: 1, readable: [new TextEncoder().encode('x')], writable: [] },
  },
];

function ethernetFrame(): Uint8Array {
  const frame = new Uint8Array(60);
  frame.set([0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01, 0x88, 0xb5]); // dst, src, local experimental type
  return frame;
}

type Op =
  | {
      readonly kind: 'add';
      readonly queue: number;
      readonly outs: number;
      readonly ins: number;
      readonly len: number;
      readonly seed: number;
    }
  | { readonly kind: 'kick'; readonly queue: number }
  | { readonly kind: 'run' }
  | { readonly kind: 'cb'; readonly queue: number; readonly enable: boolean }
  | ({ readonly kind: 'corrupt'; readonly queue: number } & RingCorruption);

const queueIndex = fc.nat({ max: 15 });
const op: fc.Arbitrary<Op> = fc.oneof(
  {
    arbitrary: fc.record({
      kind: fc.constant('add' as const),
      queue: queueIndex,
      outs: fc.integer({ min: 0, max: 3 }),
      ins: fc.integer({ min: 0, max: 3 }),
      len: fc.integer({ min: 1, max: 80 }),
      seed: fc.integer(),
    }),
    weight: 10,
  },
  { arbitrary: fc.record({ kind: fc.constant('kick' as const), queue: queueIndex }), weight: 3 },
  { arbitrary: fc.constant({ kind: 'run' as const }), weight: 3 },
  {
    arbitrary: fc.record({ kind: fc.constant('cb' as const), queue: queueIndex, enable: fc.boolean() }),
    weight: 1,
  },
  {
    arbitrary: fc
      .tuple(queueIndex, ringCorruption)
      .map(([queue, c]) => ({ kind: 'corrupt' as const, queue, ...c })),
    weight: 1,
  },
);

/** Deterministic bytes from a seed (xorshift32), so a shrunk counterexample replays exactly. */
function fillRandom(bytes: Uint8Array, seed: number): void {
  let x = seed | 1;
  for (let i = 0; i < bytes.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    bytes[i] = x & 0xff;
  }
  // Small values are where the interesting header fields are (request types, classes, commands, GSO types).
  if (bytes.length > 0 && (seed & 1) === 0) bytes.fill(0, 1, Math.min(bytes.length, 8));
}

/** Lets pending microtasks, host I/O and driver callbacks run. */
async function settle(rounds = 1): Promise<void> {
  for (let i = 0; i < rounds; i++) await new Promise((resolve) => setImmediate(resolve));
}

type AddressedVq = Virtqueue<number> & {
  readonly addresses: { readonly descTable: number; readonly availRing: number; readonly usedRing: number };
};

interface Harness {
  readonly bus: VirtioBus;
  readonly transport: LoopbackTransport;
  readonly dev: VirtioBusDevice;
  vqs(): readonly AddressedVq[];
  /** Takes every used buffer of queue `index` into `returned` (what its callback does). */
  drain(index: number, q: Virtqueue<number>): void;
  /** Tokens handed back by getBuf, per queue. */
  readonly returned: Map<number, number[]>;
  /** Exceptions that were not VirtioErrors (must stay empty). */
  readonly untyped: unknown[];
}

async function harness(device: VirtioDevice): Promise<Harness> {
  let vqs: AddressedVq[] = [];
  const returned = new Map<number, number[]>();
  const untyped: unknown[] = [];
  const drain = (index: number, q: Virtqueue<number>): void => {
    const list = returned.get(index) ?? [];
    returned.set(index, list);
    try {
      for (let u = q.getBuf(); u !== null; u = q.getBuf()) list.push(u.token);
    } catch (e) {
      if (!(e instanceof VirtioError)) untyped.push(e);
    }
  };
  const featureTable: number[] = [];
  for (let bit = 0; bit < DEVICE_FEATURE_BITS; bit++) {
    if ((device.deviceFeatures >> BigInt(bit)) & 1n) featureTable.push(bit);
  }
  const driver: VirtioDriver = {
    name: 'oracle',
    idTable: [{ device: device.deviceType, vendor: VIRTIO_DEV_ANY_ID }],
    featureTable,
    async probe(dev) {
      const count = device.queueMaxSizes.length;
      const made = await dev.findVqs(
        Array.from({ length: count }, (_, index) => ({
          name: `q${index}`,
          size: QUEUE_SIZE,
          callback: (cbq: Virtqueue) => {
            drain(index, cbq as Virtqueue<number>);
          },
        })),
      );
      vqs = made.map((q) => q as AddressedVq);
    },
    async remove(dev) {
      await dev.reset();
      await dev.delVqs();
    },
  };
  const bus = new VirtioBus({ onError: (_dev, e) => untyped.push(e) });
  await bus.registerDriver(driver);
  const transport = new LoopbackTransport(device, {
    memorySize: 1 << 20,
    onFault: (f) => {
      if (!(f instanceof VirtioError)) untyped.push(f);
    },
  });
  const dev = await bus.addDevice(transport);
  return { bus, transport, dev, vqs: () => vqs, drain, returned, untyped };
}

for (const subject of SUBJECTS) {
  describe(`device oracle: ${subject.name}`, () => {
    test('every head on a self-answering queue comes back, or the device needs reset; a reset heals', async () => {
      await fc.assert(
        fc.asyncProperty(
          fc.array(op, { minLength: 1, maxLength: 100 }),
          fc.boolean(),
          fc.boolean(),
          async (ops, eventIdx, indirect) => {
            const h = await harness(subject.make(eventIdx, indirect));
            assert.equal(h.dev.probeError, undefined, String(h.dev.probeError));
            const vqs = h.vqs();
            const count = vqs.length;
            assert.ok(count > 0);
            const { memory, allocator } = h.transport;
            const made = new Map<number, number[]>();
            const corrupted = new Set<number>();
            let token = 0;

            for (const o of ops) {
              try {
                switch (o.kind) {
                  case 'add': {
                    const vq = vqs[o.queue % count]!;
                    if (o.outs + o.ins === 0 || vq.isBroken()) break;
                    const needed = indirect ? 1 : o.outs + o.ins;
                    if (vq.numFree < needed) break;
                    const sg = (n: number, fill: boolean): ScatterEntry[] =>
                      Array.from({ length: n }, (_, i) => {
                        const addr = allocator.alloc(o.len);
                        const bytes = new Uint8Array(o.len);
                        if (fill) fillRandom(bytes, o.seed + i);
                        memory.write(addr, bytes);
                        return { addr, len: o.len };
                      });
                    vq.addBuf(sg(o.outs, true), sg(o.ins, false), token);
                    const list = made.get(o.queue % count) ?? [];
                    list.push(token++);
                    made.set(o.queue % count, list);
                    break;
                  }
                  case 'kick':
                    vqs[o.queue % count]!.kick();
                    break;
                  case 'run':
                    await settle();
                    break;
                  case 'cb': {
                    const vq = vqs[o.queue % count]!;
                    if (o.enable) vq.enableCb();
                    else vq.disableCb();
                    break;
                  }
                  case 'corrupt': {
                    corruptRing(memory, vqs[o.queue % count]!.addresses, QUEUE_SIZE, o);
                    corrupted.add(o.queue % count);
                    break;
                  }
                }
              } catch (e) {
                if (!(e instanceof VirtioError)) throw e;
              }
            }
            // Drain: an unconditional notification on every queue (as if the device polled), then let it run.
            for (const vq of vqs) {
              if (!vq.isBroken()) {
                vq.kickPrepare();
                vq.notify();
              }
            }
            await settle(6);
            for (const [index, vq] of vqs.entries()) h.drain(index, vq);

            assert.deepEqual(h.untyped, [], 'only typed VirtioErrors');
            const status = h.transport.controller.status;
            const needsReset = (status & DeviceStatus.DEVICE_NEEDS_RESET) !== 0;
            if (!needsReset) {
              for (let index = 0; index < count; index++) {
                if (!subject.returning(index, count) || vqs[index]!.isBroken()) continue;
                if (!corrupted.has(index)) {
                  assert.deepEqual(
                    [...(h.returned.get(index) ?? [])].sort((a, b) => a - b),
                    made.get(index) ?? [],
                    `queue ${index}: every buffer comes back exactly once`,
                  );
                } else {
                  // A corrupted ring that broke nothing: the device consumed and returned all it offered.
                  const q = h.transport.controller.queue(index)!;
                  const vq = vqs[index]!;
                  assert.equal(q.inFlight, 0, `queue ${index}: no chain left in flight`);
                  assert.equal(
                    q.nextAvail,
                    memory.readU16(vq.addresses.availRing + AVAIL_IDX_OFFSET),
                    `queue ${index}: all popped`,
                  );
                  assert.equal(
                    q.nextUsed,
                    memory.readU16(vq.addresses.usedRing + USED_IDX_OFFSET),
                    `queue ${index}: all used`,
                  );
                }
              }
            }

            // Whatever happened, a reset (re-probe) brings the device back, and it serves a request.
            assert.ok(await h.bus.reprobe(h.dev), 'reprobe succeeds');
            const fresh = h.vqs()[subject.wellFormed.queue]!;
            const before = (h.returned.get(subject.wellFormed.queue) ?? []).length;
            const outs = subject.wellFormed.readable.map((bytes) => {
              const addr = allocator.alloc(bytes.length);
              memory.write(addr, bytes);
              return { addr, len: bytes.length };
            });
            const ins = subject.wellFormed.writable.map((len) => ({ addr: allocator.alloc(len), len }));
            fresh.addBuf(outs, ins, 4242);
            fresh.kick();
            await settle(4);
            assert.deepEqual(
              (h.returned.get(subject.wellFormed.queue) ?? []).slice(before),
              [4242],
              'the reset device serves a request',
            );
            assert.equal(h.transport.controller.status & DeviceStatus.DEVICE_NEEDS_RESET, 0);
            assert.deepEqual(h.untyped, [], 'only typed VirtioErrors');
            await h.bus.removeDevice(h.dev);
          },
        ),
        { numRuns: 200 },
      );
    });
  });
}
