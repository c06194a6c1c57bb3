import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { ControllerDeviceContext, DeviceController } from '../../../src/virtio/device/device-controller.js';
import { DeviceModelError, FeatureError, StatusError } from '../../../src/virtio/device/device-errors.js';
import type { DeviceContext, InterruptSink } from '../../../src/virtio/device/virtio-device.js';
import { UsageError, type VirtioError } from '../../../src/virtio/errors.js';
import { TRANSPORT_FEATURES, VirtioFeature, featureBit, featureSet } from '../../../src/virtio/features.js';
import { GuestMemory } from '../../../src/virtio/guest-memory.js';
import { QueueError } from '../../../src/virtio/split/queue-error.js';
import type { SplitQueue } from '../../../src/virtio/split/split-queue.js';
import { DeviceStatus } from '../../../src/virtio/status.js';
import {
  ECHO_CONFIG_MAGIC,
  ECHO_CONFIG_SERIAL,
  ECHO_CONFIG_SIZE,
  ECHO_DEFAULT_FEATURES,
  ECHO_F_UPPERCASE,
  ECHO_MAGIC,
  EchoDevice,
} from '../../fixtures/echo-device.js';

const { ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK, DEVICE_NEEDS_RESET, FAILED } = DeviceStatus;
const VERSION_1 = featureBit(VirtioFeature.VIRTIO_F_VERSION_1);

class RecordingSink implements InterruptSink {
  readonly used: number[] = [];
  config = 0;
  signalUsed(queueIndex: number): void {
    this.used.push(queueIndex);
  }
  signalConfig(): void {
    this.config++;
  }
}

interface Harness {
  readonly device: EchoDevice;
  readonly controller: DeviceController;
  readonly sink: RecordingSink;
  readonly faults: VirtioError[];
  readonly memory: GuestMemory;
}

function harness(device = new EchoDevice({ queueMaxSizes: [8, 8] })): Harness {
  const sink = new RecordingSink();
  const faults: VirtioError[] = [];
  const controller = new DeviceController(device, sink, { onFault: (f) => faults.push(f) });
  const memory = GuestMemory.create(0x10000);
  controller.setMemory(memory);
  return { device, controller, sink, faults, memory };
}

function codes(faults: readonly VirtioError[]): string[] {
  return faults.map((f) => f.code);
}

/** Where the hand-built rings of queue `q` live: 0x1000 per queue, buffers from 0x8000. */
function ringAt(q: number): { desc: number; avail: number; used: number } {
  const base = 0x1000 + q * 0x1000;
  return { desc: base, avail: base + 0x400, used: base + 0x800 };
}

/** Writes queue `q`'s config (size 8, the ring addresses above) into the controller. */
function configureQueue(controller: DeviceController, q: number, size = 8): void {
  const queue = controller.queue(q);
  assert.ok(queue);
  const r = ringAt(q);
  queue.size = size;
  queue.descTable = r.desc;
  queue.availRing = r.avail;
  queue.usedRing = r.used;
}

/** ACKNOWLEDGE, DRIVER, features, FEATURES_OK, queues configured and enabled, DRIVER_OK. */
function bringUp(h: Harness, features = ECHO_DEFAULT_FEATURES, queues = [0, 1]): void {
  const c = h.controller;
  c.setStatus(ACKNOWLEDGE);
  c.setStatus(ACKNOWLEDGE | DRIVER);
  c.setDriverFeatures(features);
  c.setStatus(ACKNOWLEDGE | DRIVER | FEATURES_OK);
  assert.equal(c.status & FEATURES_OK, FEATURES_OK, 'FEATURES_OK stuck');
  for (const q of queues) {
    configureQueue(c, q);
    assert.equal(c.enableQueue(q), true);
  }
  c.setStatus(c.status | DRIVER_OK);
}

/**
 * A hand-written driver (independent of SplitVirtqueue): descriptor `desc` = one readable buffer holding
 * `text`, chained to a writable buffer of the same length; made available as the next avail entry.
 */
function offer(memory: GuestMemory, q: number, desc: number, text: string): { out: number; len: number } {
  const r = ringAt(q);
  const data = new TextEncoder().encode(text);
  const inAddr = 0x8000 + q * 0x1000 + desc * 0x100;
  const outAddr = inAddr + 0x80;
  memory.write(inAddr, data);
  writeDesc(memory, r.desc, desc, inAddr, data.length, 1 /* NEXT */, desc + 1);
  writeDesc(memory, r.desc, desc + 1, outAddr, data.length, 2 /* WRITE */, 0);
  const idx = memory.readU16(r.avail + 2);
  memory.writeU16(r.avail + 4 + 2 * (idx % 8), desc);
  memory.writeU16(r.avail + 2, (idx + 1) & 0xffff);
  return { out: outAddr, len: data.length };
}

function writeDesc(
  m: GuestMemory,
  table: number,
  i: number,
  addr: number,
  len: number,
  flags: number,
  next: number,
) {
  const d = table + 16 * i;
  m.writeU64(d, BigInt(addr));
  m.writeU32(d + 8, len);
  m.writeU16(d + 12, flags);
  m.writeU16(d + 14, next);
}

function usedIdx(memory: GuestMemory, q: number): number {
  return memory.readU16(ringAt(q).used + 2);
}

function text(memory: GuestMemory, addr: number, len: number): string {
  const b = new Uint8Array(len);
  memory.read(addr, b);
  return new TextDecoder().decode(b);
}

describe('DeviceController: status state machine (§2.1, §3.1)', () => {
  test('the normal sequence activates the enabled queues and the device with the negotiated features', () => {
    const h = harness();
    assert.equal(h.controller.status, 0);
    assert.equal(h.controller.numQueues, 2);
    bringUp(h);
    assert.equal(h.controller.status, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    assert.equal(h.controller.features, ECHO_DEFAULT_FEATURES);
    assert.equal(h.controller.isLive, true);
    assert.equal(h.device.isActive, true);
    assert.equal(h.controller.queue(0)?.isActive, true);
    assert.equal(h.controller.queue(1)?.isActive, true);
    assert.deepEqual(h.faults, []);

    const { out, len } = offer(h.memory, 0, 0, 'hello');
    h.controller.notify(0);
    assert.equal(usedIdx(h.memory, 0), 1);
    assert.equal(text(h.memory, out, len), 'HELLO');
    assert.deepEqual(h.sink.used, [0]);
  });

  test('several bits may be set in one write, in order', () => {
    const h = harness();
    h.controller.setStatus(ACKNOWLEDGE | DRIVER);
    h.controller.setDriverFeatures(VERSION_1);
    h.controller.setStatus(ACKNOWLEDGE | DRIVER | FEATURES_OK);
    assert.equal(h.controller.status, ACKNOWLEDGE | DRIVER | FEATURES_OK);
    assert.deepEqual(h.faults, []);
  });

  test('clearing a status bit is a guest fault: DEVICE_NEEDS_RESET, no config interrupt before DRIVER_OK', () => {
    const h = harness();
    h.controller.setStatus(ACKNOWLEDGE | DRIVER);
    h.controller.setStatus(ACKNOWLEDGE);
    assert.deepEqual(codes(h.faults), ['STATUS_BIT_CLEARED']);
    assert.ok(h.faults[0] instanceof StatusError);
    assert.equal(h.controller.status, ACKNOWLEDGE | DRIVER | DEVICE_NEEDS_RESET);
    assert.equal(h.controller.resetReason, h.faults[0]);
    assert.equal(h.sink.config, 0);
  });

  test('clearing DRIVER_OK after activation: NEEDS_RESET and a configuration-change notification', () => {
    const h = harness();
    bringUp(h);
    h.controller.setStatus(ACKNOWLEDGE | DRIVER | FEATURES_OK);
    assert.equal(h.controller.status & DEVICE_NEEDS_RESET, DEVICE_NEEDS_RESET);
    assert.equal(h.sink.config, 1);
    assert.equal(h.controller.isLive, false);
  });

  test('bits set out of order are refused with DEVICE_NEEDS_RESET', () => {
    for (const [setup, write, expected] of [
      [0, DRIVER, 0],
      [ACKNOWLEDGE, ACKNOWLEDGE | FEATURES_OK, ACKNOWLEDGE],
      [ACKNOWLEDGE | DRIVER, ACKNOWLEDGE | DRIVER | DRIVER_OK, ACKNOWLEDGE | DRIVER],
    ] as const) {
      const h = harness();
      if (setup !== 0) h.controller.setStatus(setup);
      h.controller.setStatus(write);
      assert.deepEqual(codes(h.faults), ['STATUS_OUT_OF_ORDER'], `write ${write} after ${setup}`);
      assert.equal(h.controller.status, expected | DEVICE_NEEDS_RESET);
      assert.equal(h.device.isActive, false);
    }
  });

  test('undefined status bits are reported and ignored; the device-owned NEEDS_RESET bit cannot be set', () => {
    const h = harness();
    h.controller.setStatus(ACKNOWLEDGE | 0x10);
    assert.deepEqual(codes(h.faults), ['STATUS_RESERVED_BIT']);
    assert.equal(h.controller.status, ACKNOWLEDGE);
    h.controller.setStatus(ACKNOWLEDGE | DEVICE_NEEDS_RESET);
    assert.equal(h.controller.status, ACKNOWLEDGE);
    assert.throws(() => {
      h.controller.setStatus(0x100);
    }, UsageError);
  });

  test('DRIVER_OK before the transport set the memory is a transport bug (UsageError), not a guest fault', () => {
    const device = new EchoDevice();
    const c = new DeviceController(device, new RecordingSink());
    c.setStatus(ACKNOWLEDGE | DRIVER);
    c.setDriverFeatures(VERSION_1);
    c.setStatus(ACKNOWLEDGE | DRIVER | FEATURES_OK);
    assert.throws(() => {
      c.setStatus(ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    }, UsageError);
  });

  test('FAILED is accepted at any time and stops kicks', () => {
    const h = harness();
    bringUp(h);
    h.controller.setStatus(h.controller.status | FAILED);
    assert.equal(h.controller.status & FAILED, FAILED);
    offer(h.memory, 0, 0, 'x');
    h.controller.notify(0);
    assert.equal(usedIdx(h.memory, 0), 0);
    assert.equal(h.device.kicks, 0);
  });
});

describe('DeviceController: feature negotiation (§2.2, hostile input 4)', () => {
  test('offers only the reserved bits the core implements', () => {
    const packed = featureBit(VirtioFeature.VIRTIO_F_RING_PACKED);
    const device = new EchoDevice({ features: ECHO_DEFAULT_FEATURES | packed | featureBit(60) });
    const { controller } = harness(device);
    assert.equal(controller.deviceFeatures, ECHO_DEFAULT_FEATURES | featureBit(60));
  });

  test('a feature the device did not offer: FEATURES_OK does not stick, no NEEDS_RESET', () => {
    const h = harness();
    h.controller.setStatus(ACKNOWLEDGE | DRIVER);
    h.controller.setDriverFeatures(VERSION_1 | featureBit(5));
    h.controller.setStatus(ACKNOWLEDGE | DRIVER | FEATURES_OK);
    assert.equal(h.controller.status, ACKNOWLEDGE | DRIVER);
    assert.deepEqual(codes(h.faults), ['FEATURE_NOT_OFFERED']);
    assert.ok(h.faults[0] instanceof FeatureError);
    assert.equal(h.controller.features, 0n);
    // The driver may still correct its features and retry.
    h.controller.setDriverFeatures(VERSION_1);
    h.controller.setStatus(ACKNOWLEDGE | DRIVER | FEATURES_OK);
    assert.equal(h.controller.status, ACKNOWLEDGE | DRIVER | FEATURES_OK);
    assert.equal(h.controller.features, VERSION_1);
  });

  test('VERSION_1 missing: FEATURES_OK does not stick', () => {
    const h = harness();
    h.controller.setStatus(ACKNOWLEDGE | DRIVER);
    h.controller.setDriverFeatures(featureBit(ECHO_F_UPPERCASE));
    h.controller.setStatus(ACKNOWLEDGE | DRIVER | FEATURES_OK);
    assert.equal(h.controller.status, ACKNOWLEDGE | DRIVER);
    assert.deepEqual(codes(h.faults), ['VERSION_1_NOT_ACCEPTED']);
  });

  test('the device model may refuse a combination (returning false or throwing)', () => {
    for (const validateFeatures of [
      () => false,
      () => {
        throw new Error('no');
      },
    ]) {
      const h = harness(new EchoDevice({ validateFeatures }));
      h.controller.setStatus(ACKNOWLEDGE | DRIVER);
      h.controller.setDriverFeatures(VERSION_1);
      h.controller.setStatus(ACKNOWLEDGE | DRIVER | FEATURES_OK);
      assert.equal(h.controller.status, ACKNOWLEDGE | DRIVER);
      assert.deepEqual(codes(h.faults), ['FEATURES_REJECTED']);
    }
  });

  test('a DRIVER_OK in the same write as a refused FEATURES_OK is out of order', () => {
    const h = harness();
    h.controller.setStatus(ACKNOWLEDGE | DRIVER);
    h.controller.setDriverFeatures(featureBit(7) | VERSION_1);
    h.controller.setStatus(ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    assert.deepEqual(codes(h.faults), ['FEATURE_NOT_OFFERED', 'STATUS_OUT_OF_ORDER']);
    assert.equal(h.controller.status, ACKNOWLEDGE | DRIVER | DEVICE_NEEDS_RESET);
    assert.equal(h.device.isActive, false);
  });

  test('driver features are only accepted between DRIVER and FEATURES_OK', () => {
    const h = harness();
    h.controller.setDriverFeatures(VERSION_1);
    assert.equal(h.controller.driverFeatures, 0n);
    h.controller.setStatus(ACKNOWLEDGE | DRIVER);
    h.controller.setDriverFeatures(VERSION_1);
    h.controller.setStatus(ACKNOWLEDGE | DRIVER | FEATURES_OK);
    h.controller.setDriverFeatures(VERSION_1 | featureBit(ECHO_F_UPPERCASE));
    assert.equal(h.controller.driverFeatures, VERSION_1);
    assert.deepEqual(codes(h.faults), ['FEATURES_WRITE_OUT_OF_ORDER', 'FEATURES_WRITE_OUT_OF_ORDER']);
    assert.equal(h.controller.status & DEVICE_NEEDS_RESET, 0);
  });

  test('negotiated features reach the queues and the device (reverse mode without the feature)', () => {
    const h = harness();
    bringUp(h, VERSION_1);
    const { out, len } = offer(h.memory, 0, 0, 'abc');
    h.controller.notify(0);
    assert.equal(text(h.memory, out, len), 'cba');
    assert.equal(h.controller.queue(0)?.eventIdx, false);
    const h2 = harness();
    bringUp(h2, featureSet(VirtioFeature.VIRTIO_F_VERSION_1, VirtioFeature.VIRTIO_F_EVENT_IDX));
    assert.equal(h2.controller.queue(0)?.eventIdx, true);
  });
});

describe('DeviceController: queues (hostile input 1–3)', () => {
  test('a queue enabled before FEATURES_OK is refused with DEVICE_NEEDS_RESET', () => {
    const h = harness();
    h.controller.setStatus(ACKNOWLEDGE | DRIVER);
    configureQueue(h.controller, 0);
    assert.equal(h.controller.enableQueue(0), false);
    assert.equal(h.controller.queue(0)?.ready, false);
    assert.deepEqual(codes(h.faults), ['QUEUE_ENABLE_OUT_OF_ORDER']);
    assert.equal(h.controller.status & DEVICE_NEEDS_RESET, DEVICE_NEEDS_RESET);
    // Nothing more happens until reset: DRIVER_OK is ignored.
    h.controller.setStatus(h.controller.status | FEATURES_OK | DRIVER_OK);
    assert.equal(h.controller.status & DRIVER_OK, 0);
    assert.equal(h.device.isActive, false);
  });

  test('a queue enabled after DRIVER_OK is refused', () => {
    const h = harness();
    bringUp(h, ECHO_DEFAULT_FEATURES, [0]);
    configureQueue(h.controller, 1);
    assert.equal(h.controller.enableQueue(1), false);
    assert.deepEqual(codes(h.faults), ['QUEUE_ENABLE_OUT_OF_ORDER']);
    assert.equal(h.sink.config, 1);
  });

  test('buffers are not consumed before DRIVER_OK: the kick is ignored with a fault', () => {
    const h = harness();
    h.controller.setStatus(ACKNOWLEDGE | DRIVER);
    h.controller.setDriverFeatures(ECHO_DEFAULT_FEATURES);
    h.controller.setStatus(ACKNOWLEDGE | DRIVER | FEATURES_OK);
    configureQueue(h.controller, 0);
    h.controller.enableQueue(0);
    const { out, len } = offer(h.memory, 0, 0, 'early');
    h.controller.notify(0);
    assert.deepEqual(codes(h.faults), ['NOTIFY_NOT_LIVE']);
    assert.equal(h.device.kicks, 0);
    assert.equal(usedIdx(h.memory, 0), 0);
    assert.equal(h.controller.status & DEVICE_NEEDS_RESET, 0);
    // DRIVER_OK: the device serves what was already available.
    h.controller.setStatus(h.controller.status | DRIVER_OK);
    assert.equal(usedIdx(h.memory, 0), 1);
    assert.equal(text(h.memory, out, len), 'EARLY');
  });

  test('a kick for a queue that was never enabled, or that does not exist, is ignored with a fault', () => {
    const h = harness();
    bringUp(h, ECHO_DEFAULT_FEATURES, [0]);
    h.controller.notify(1);
    h.controller.notify(7);
    h.controller.notify(-1);
    assert.equal(h.controller.enableQueue(9), false);
    assert.deepEqual(codes(h.faults), [
      'NOTIFY_NOT_LIVE',
      'QUEUE_INDEX_OUT_OF_RANGE',
      'QUEUE_INDEX_OUT_OF_RANGE',
      'QUEUE_INDEX_OUT_OF_RANGE',
    ]);
    assert.equal(h.controller.queue(7), undefined);
    assert.equal(h.controller.status & DEVICE_NEEDS_RESET, 0);
  });

  const badConfigs: readonly [string, (q: SplitQueue) => void, string][] = [
    ['size not a power of two', (q) => (q.size = 3), 'QUEUE_SIZE_INVALID'],
    ['size above the maximum', (q) => (q.size = 16), 'QUEUE_SIZE_INVALID'],
    ['misaligned used ring', (q) => (q.usedRing += 2), 'QUEUE_MISALIGNED'],
    ['descriptor table outside memory', (q) => (q.descTable = 0x100000), 'QUEUE_OUTSIDE_MEMORY'],
  ];
  for (const [what, change, code] of badConfigs) {
    test(`a bad queue configuration (${what}) at DRIVER_OK: NEEDS_RESET + config interrupt, device not activated`, () => {
      const h = harness();
      const c = h.controller;
      c.setStatus(ACKNOWLEDGE | DRIVER);
      c.setDriverFeatures(ECHO_DEFAULT_FEATURES);
      c.setStatus(ACKNOWLEDGE | DRIVER | FEATURES_OK);
      for (const q of [0, 1]) configureQueue(c, q);
      change(c.queue(1) ?? assert.fail());
      c.enableQueue(0);
      c.enableQueue(1);
      c.setStatus(c.status | DRIVER_OK);
      assert.equal(c.status & DEVICE_NEEDS_RESET, DEVICE_NEEDS_RESET);
      assert.ok(c.resetReason instanceof QueueError);
      assert.equal(c.resetReason.code, code);
      assert.equal(h.sink.config, 1);
      assert.equal(h.device.isActive, false);
      c.notify(0);
      assert.equal(h.device.kicks, 0);
    });
  }
});

describe('DeviceController: DEVICE_NEEDS_RESET on a device fault', () => {
  test('a corrupt descriptor mid-run: NEEDS_RESET, one config interrupt, kicks ignored, other queue intact', () => {
    const h = harness();
    bringUp(h);
    offer(h.memory, 0, 0, 'one');
    h.controller.notify(0);
    assert.equal(usedIdx(h.memory, 0), 1);
    // Queue 1 has a chain in flight-to-be; queue 0 gets a descriptor whose `next` is out of range (item 7).
    offer(h.memory, 1, 0, 'other');
    offer(h.memory, 0, 2, 'two');
    h.memory.writeU16(ringAt(0).desc + 16 * 2 + 14, 200);
    h.controller.notify(0);

    assert.equal(h.controller.status & DEVICE_NEEDS_RESET, DEVICE_NEEDS_RESET);
    assert.equal(h.sink.config, 1);
    assert.ok(h.controller.resetReason instanceof QueueError);
    assert.equal(h.controller.resetReason.code, 'DESC_NEXT_OUT_OF_RANGE');
    assert.equal(h.controller.lastFault, h.controller.resetReason);
    assert.equal(h.controller.isLive, false);
    assert.equal(usedIdx(h.memory, 0), 1);

    // The device stops: further kicks on any queue are ignored without new faults or interrupts.
    const kicks = h.device.kicks;
    h.controller.notify(0);
    h.controller.notify(1);
    assert.equal(h.device.kicks, kicks);
    assert.equal(h.sink.config, 1);
    assert.equal(h.faults.length, 1);
    // The other queue was not touched: still active, not broken, its chain still available.
    const q1 = h.controller.queue(1);
    assert.equal(q1?.isActive, true);
    assert.equal(q1.broken, false);
    assert.equal(q1.nextAvail, 0);
    assert.equal(usedIdx(h.memory, 1), 0);
  });

  test('another device is unaffected by one device needing a reset', () => {
    const a = harness();
    const b = harness();
    bringUp(a);
    bringUp(b);
    offer(a.memory, 0, 0, 'x');
    a.memory.writeU16(ringAt(0).avail + 4, 99); // head out of range (item 6)
    a.controller.notify(0);
    assert.equal(a.controller.status & DEVICE_NEEDS_RESET, DEVICE_NEEDS_RESET);
    const { out, len } = offer(b.memory, 0, 0, 'fine');
    b.controller.notify(0);
    assert.equal(text(b.memory, out, len), 'FINE');
    assert.equal(b.controller.status & DEVICE_NEEDS_RESET, 0);
  });

  test('a device that throws a non-guest error on a kick also ends in NEEDS_RESET (never thrown to the transport)', () => {
    const device = new EchoDevice({ queueMaxSizes: [8, 8] });
    device.queueNotify = () => {
      throw new TypeError('bug');
    };
    const h = harness(device);
    bringUp(h);
    h.controller.notify(0);
    assert.ok(h.controller.resetReason instanceof DeviceModelError);
    assert.equal(h.controller.resetReason.code, 'DEVICE_NOTIFY_FAILED');
    assert.ok(h.controller.resetReason.cause instanceof TypeError);
    assert.equal(h.sink.config, 1);
  });

  test('a device whose activation throws ends in NEEDS_RESET', () => {
    const device = new EchoDevice({ queueMaxSizes: [8, 8] });
    device.activate = () => {
      throw new Error('cannot open backend');
    };
    const h = harness(device);
    bringUp(h);
    assert.equal(h.controller.resetReason?.code, 'DEVICE_ACTIVATE_FAILED');
    assert.equal(h.controller.status & DEVICE_NEEDS_RESET, DEVICE_NEEDS_RESET);
  });

  test('while NEEDS_RESET only FAILED may be added; writing the status back with the bit is tolerated', () => {
    const h = harness();
    bringUp(h);
    h.controller.needsReset(new StatusError('NOTIFY_NOT_LIVE', 'test', 0));
    const s = h.controller.status;
    h.controller.setStatus(s); // a driver writing back what it read
    assert.equal(h.controller.status, s);
    h.controller.setStatus(s | FAILED);
    assert.equal(h.controller.status, s | FAILED);
    assert.equal(h.sink.config, 1);
  });

  test('reset clears the condition and the device works again', () => {
    const h = harness();
    bringUp(h);
    offer(h.memory, 0, 0, 'bad');
    h.memory.writeU16(ringAt(0).avail + 2, 50); // avail.idx jumps past the queue size (item 5)
    h.controller.notify(0);
    assert.equal(h.controller.resetReason?.code, 'AVAIL_IDX_JUMP');
    const generation = h.controller.configGeneration;

    h.controller.setStatus(0);
    assert.equal(h.controller.status, 0);
    assert.equal(h.controller.resetReason, undefined);
    assert.equal(h.controller.driverFeatures, 0n);
    assert.equal(h.device.resets, 1);
    assert.equal(h.device.isActive, false);
    for (const q of h.controller.queues) {
      assert.equal(q.ready, false);
      assert.equal(q.isActive, false);
      assert.equal(q.broken, false);
    }
    assert.equal(h.controller.configGeneration, generation + 1);

    // The guest rebuilds its rings from scratch.
    h.memory.fill(0x1000, 0x3000);
    bringUp(h);
    const { out, len } = offer(h.memory, 0, 0, 'again');
    h.controller.notify(0);
    assert.equal(text(h.memory, out, len), 'AGAIN');
  });

  test('a context from before a reset can no longer fail the device or interrupt the driver', () => {
    const device = new EchoDevice({ queueMaxSizes: [8] });
    let saved: DeviceContext | undefined;
    const activate = device.activate.bind(device);
    device.activate = (ctx) => {
      saved ??= ctx; // the first life's context
      activate(ctx);
    };
    const h = harness(device);
    bringUp(h, ECHO_DEFAULT_FEATURES, [0]);
    assert.ok(saved instanceof ControllerDeviceContext);
    assert.equal(saved.isCurrent, true);
    h.controller.setStatus(0);
    assert.equal(saved.isCurrent, false);
    bringUp(h, ECHO_DEFAULT_FEATURES, [0]);
    saved.fail(new StatusError('NOTIFY_NOT_LIVE', 'stale', 0));
    saved.interrupt.signalUsed(0);
    saved.configChanged();
    assert.equal(h.controller.status & DEVICE_NEEDS_RESET, 0);
    assert.deepEqual(h.sink.used, []);
    assert.equal(h.sink.config, 0);
  });
});

describe('DeviceController: configuration space (§2.5)', () => {
  test('reads and writes inside the space reach the device', () => {
    const h = harness();
    const magic = h.controller.readConfig(ECHO_CONFIG_MAGIC, 4);
    assert.equal(new DataView(magic.buffer).getUint32(0, true), ECHO_MAGIC);
    assert.equal(h.controller.configSize, ECHO_CONFIG_SIZE);
    assert.equal(h.controller.readConfig(0, ECHO_CONFIG_SIZE).length, ECHO_CONFIG_SIZE);
    h.controller.writeConfig(0, new Uint8Array(4));
    assert.deepEqual(h.faults, []);
  });

  test('out-of-range accesses read zeros / are ignored, with a fault, never a throw', () => {
    const h = harness();
    assert.deepEqual(h.controller.readConfig(ECHO_CONFIG_SIZE - 2, 4), new Uint8Array(4));
    assert.deepEqual(h.controller.readConfig(-1, 1), new Uint8Array(1));
    assert.deepEqual(h.controller.readConfig(0, 2 ** 40), new Uint8Array(0));
    assert.deepEqual(h.controller.readConfig(Number.NaN, 1), new Uint8Array(1));
    h.controller.writeConfig(ECHO_CONFIG_SIZE, new Uint8Array(1));
    assert.deepEqual(codes(h.faults), Array(5).fill('CONFIG_OUT_OF_RANGE'));
    assert.equal(h.controller.status & DEVICE_NEEDS_RESET, 0);
  });

  test('a device configuration change bumps the generation and notifies only once DRIVER_OK is set', () => {
    const h = harness();
    const g0 = h.controller.configGeneration;
    h.controller.configChanged();
    assert.equal(h.controller.configGeneration, g0 + 1);
    assert.equal(h.sink.config, 0);
    bringUp(h);
    h.device.setSerial(0x1122334455667788n);
    assert.equal(h.controller.configGeneration, g0 + 2);
    assert.equal(h.sink.config, 1);
    const serial = h.controller.readConfig(ECHO_CONFIG_SERIAL, 8);
    assert.equal(new DataView(serial.buffer).getBigUint64(0, true), 0x1122334455667788n);
  });

  test('a device whose config read throws answers zeros and a fault', () => {
    class BrokenConfigDevice extends EchoDevice {
      override readConfig(): void {
        throw new Error('backend gone');
      }
    }
    const h = harness(new BrokenConfigDevice());
    assert.deepEqual(h.controller.readConfig(0, 4), new Uint8Array(4));
    assert.deepEqual(codes(h.faults), ['DEVICE_CONFIG_FAILED']);
  });
});

test('TRANSPORT_FEATURES are what the echo device offers besides its own bit', () => {
  assert.equal(ECHO_DEFAULT_FEATURES & ~featureBit(ECHO_F_UPPERCASE), TRANSPORT_FEATURES);
});
