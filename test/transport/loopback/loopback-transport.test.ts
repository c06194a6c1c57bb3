import type { VirtioConfigOps } from '../../../src/virtio/driver/config-ops.js';
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  LOOPBACK_DEFAULT_MEMORY_SIZE,
  LoopbackTransport,
  type LoopbackTransportOptions,
} from '../../../src/transport/loopback/loopback-transport.js';
import { VirtioBus } from '../../../src/virtio/driver/virtio-bus.js';
import type { VirtioBusDevice } from '../../../src/virtio/driver/virtio-bus-device.js';
import {
  ProbeError,
  VIRTIO_DEV_ANY_ID,
  type VirtioDriver,
} from '../../../src/virtio/driver/virtio-driver.js';
import type { ScatterEntry, Virtqueue } from '../../../src/virtio/driver/virtqueue.js';
import { UsageError, type VirtioError } from '../../../src/virtio/errors.js';
import { VirtioFeature, featureBit, featureSet } from '../../../src/virtio/features.js';
import { DeviceStatus } from '../../../src/virtio/status.js';
import {
  ECHO_CONFIG_SERIAL,
  ECHO_DEVICE_ID,
  ECHO_F_UPPERCASE,
  EchoDevice,
  expectedEcho,
  type EchoDeviceOptions,
} from '../../fixtures/echo-device.js';

const { ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK, DEVICE_NEEDS_RESET, FAILED } = DeviceStatus;

async function settle(): Promise<void> {
  await new Promise((resolve) => setImmediate(resolve));
}

interface Request {
  /** Allocations to free on completion. */
  readonly bufs: number[];
  /** The device-writable entries, where the result is read from. */
  readonly inn: readonly ScatterEntry[];
  readonly resolve: (data: Uint8Array) => void;
  readonly reject: (e: Error) => void;
}

/**
 * The driver half of the echo device: requests are a readable buffer with the input and a writable buffer of
 * the same size, each split into `segments` scatter entries; completions come through the queue callback.
 */
/** The driver's side of the echo device: uses only what VirtioConfigOps gives any driver. */
class EchoClient {
  readonly transport: VirtioConfigOps;
  vq: Virtqueue | undefined;
  completed = 0;

  constructor(transport: VirtioConfigOps) {
    this.transport = transport;
  }

  /** Adds a request without kicking; resolves with what the device wrote. */
  submit(input: Uint8Array, segments = 1): Promise<Uint8Array> {
    const vq = this.vq ?? assert.fail('no queue');
    const { allocator, memory } = this.transport;
    return new Promise((resolve, reject) => {
      const out: ScatterEntry[] = [];
      const inn: ScatterEntry[] = [];
      const bufs: number[] = [];
      const chunk = Math.ceil(input.length / segments);
      for (let off = 0; off < input.length; off += chunk) {
        const len = Math.min(chunk, input.length - off);
        const a = allocator.alloc(len, 1);
        const b = allocator.alloc(len, 1);
        bufs.push(a, b);
        memory.write(a, input.subarray(off, off + len));
        memory.fill(b, len, 0);
        out.push({ addr: a, len });
        inn.push({ addr: b, len });
      }
      vq.addBuf(out, inn, { bufs, inn, resolve, reject } satisfies Request);
    });
  }

  /** A request on caller-owned guest ranges; kicks. Resolves with what the device wrote into `inn`. */
  submitEntries(out: readonly ScatterEntry[], inn: readonly ScatterEntry[]): Promise<Uint8Array> {
    const vq = this.vq ?? assert.fail('no queue');
    const done = new Promise<Uint8Array>((resolve, reject) => {
      vq.addBuf(out, inn, { bufs: [], inn, resolve, reject } satisfies Request);
    });
    vq.kick();
    return done;
  }

  async request(input: Uint8Array, segments = 1): Promise<Uint8Array> {
    const done = this.submit(input, segments);
    this.vq?.kick();
    return done;
  }

  /** The queue callback: drain used buffers, re-enable callbacks, re-check (Linux's pattern). */
  onUsed(vq: Virtqueue): void {
    do {
      vq.disableCb();
      for (let used = vq.getBuf(); used !== null; used = vq.getBuf()) {
        const req = used.token as Request;
        const data = new Uint8Array(used.len);
        let off = 0;
        for (const e of req.inn) {
          if (off >= used.len) break;
          const n = Math.min(e.len, used.len - off);
          this.transport.memory.read(e.addr, data.subarray(off, off + n));
          off += n;
        }
        this.#free(req);
        this.completed++;
        req.resolve(data);
      }
    } while (!vq.enableCb());
  }

  /** After a reset: takes back every buffer the device never used. */
  abort(): void {
    const vq = this.vq;
    if (vq === undefined) return;
    for (let token = vq.detachUnusedBuf(); token !== null; token = vq.detachUnusedBuf()) {
      const req = token as Request;
      this.#free(req);
      req.reject(new Error('device reset'));
    }
  }

  #free(req: Request): void {
    for (const b of req.bufs) this.transport.allocator.free(b);
  }
}

interface EchoDriver extends VirtioDriver {
  readonly clients: Map<VirtioBusDevice, EchoClient>;
  configChanges: number;
  onConfigChanged: ((dev: VirtioBusDevice) => void) | undefined;
}

function echoDriver(featureTable: readonly number[] = [ECHO_F_UPPERCASE]): EchoDriver {
  const driver: EchoDriver = {
    name: 'echo',
    idTable: [{ device: ECHO_DEVICE_ID, vendor: VIRTIO_DEV_ANY_ID }],
    featureTable,
    clients: new Map(),
    configChanges: 0,
    onConfigChanged: undefined,
    async probe(dev) {
      const client = new EchoClient(dev.ops);
      const [vq] = await dev.findVqs([
        {
          name: 'echo',
          callback: (q) => {
            client.onUsed(q);
          },
        },
      ]);
      client.vq = vq ?? undefined;
      dev.driverData = client;
      driver.clients.set(dev, client);
    },
    async remove(dev) {
      await dev.reset();
      driver.clients.get(dev)?.abort();
      driver.clients.delete(dev);
      await dev.delVqs();
    },
    configChanged(dev) {
      driver.configChanges++;
      driver.onConfigChanged?.(dev);
    },
  };
  return driver;
}

interface Setup {
  readonly bus: VirtioBus;
  readonly driver: EchoDriver;
  readonly device: EchoDevice;
  readonly transport: LoopbackTransport;
  readonly dev: VirtioBusDevice;
  readonly faults: VirtioError[];
  client(): EchoClient;
}

async function setup(
  options: {
    device?: EchoDeviceOptions;
    transport?: LoopbackTransportOptions;
    featureTable?: readonly number[];
  } = {},
): Promise<Setup> {
  const errors: Error[] = [];
  const bus = new VirtioBus({ onError: (_dev, e) => errors.push(e) });
  const driver = echoDriver(options.featureTable);
  await bus.registerDriver(driver);
  const device = new EchoDevice(options.device);
  const faults: VirtioError[] = [];
  const transport = new LoopbackTransport(device, { ...options.transport, onFault: (f) => faults.push(f) });
  const dev = await bus.addDevice(transport);
  return {
    bus,
    driver,
    device,
    transport,
    dev,
    faults,
    client: () =>
      driver.clients.get(dev) ?? assert.fail(`not bound: ${errors.map((e) => e.message).join('; ')}`),
  };
}

const encode = (s: string): Uint8Array => new TextEncoder().encode(s);
const decode = (b: Uint8Array): string => new TextDecoder().decode(b);

describe('LoopbackTransport: end to end through the bus', () => {
  test('probes the echo device and round-trips a request (uppercase negotiated)', async () => {
    const s = await setup();
    assert.equal(s.dev.driver, s.driver);
    assert.equal(s.transport.controller.status, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    assert.equal(s.dev.hasFeature(ECHO_F_UPPERCASE), true);
    assert.equal(decode(await s.client().request(encode('hello, virtio'))), 'HELLO, VIRTIO');
    assert.equal(s.device.served, 1);
    assert.deepEqual(s.faults, []);
    assert.equal(s.transport.memory.size, LOOPBACK_DEFAULT_MEMORY_SIZE);
    assert.match(s.transport.location, /^loopback:\d+$/);
  });

  test('reverses when the driver does not know the uppercase feature', async () => {
    const s = await setup({ featureTable: [] });
    assert.equal(s.dev.hasFeature(ECHO_F_UPPERCASE), false);
    assert.equal(decode(await s.client().request(encode('abc'))), 'cba');
  });

  test('many requests, several queue-fulls, in batches: every result correct, kicks and interrupts coalesced', async () => {
    const s = await setup({ device: { queueMaxSizes: [16] } });
    const client = s.client();
    const vq = client.vq ?? assert.fail();
    assert.equal(vq.size, 16);
    const inputs = Array.from({ length: 200 }, (_, i) => encode(`request number ${i} with some text`));
    const results: Promise<Uint8Array>[] = [];
    for (let i = 0; i < inputs.length;) {
      // Fill what the ring has room for (indirect: one descriptor per request), kick once per batch.
      while (i < inputs.length && vq.numFree > 0) results.push(client.submit(inputs[i++] as Uint8Array, 2));
      vq.kick();
      await settle();
    }
    const outputs = await Promise.all(results);
    outputs.forEach((out, i) => {
      assert.deepEqual(out, expectedEcho(inputs[i] as Uint8Array, true));
    });
    assert.equal(s.device.served, 200);
    assert.ok(s.device.batches < 200, `batched: ${s.device.batches} used.idx stores for 200 chains`);
    assert.ok(s.transport.stats.interrupts <= s.transport.stats.interruptsSignalled);
    assert.ok(s.transport.stats.notifications <= s.transport.stats.kicks);
    assert.equal(s.transport.allocator.allocations, 1, 'only the ring block is left allocated');
  });

  test('kicks in one tick are delivered once; interrupts likewise', async () => {
    const s = await setup();
    const client = s.client();
    const vq = client.vq ?? assert.fail();
    const done = [client.submit(encode('a')), client.submit(encode('b'))];
    assert.equal(vq.kickPrepare(), true);
    const before = { ...s.transport.stats };
    vq.notify();
    vq.notify();
    vq.notify();
    assert.equal(s.device.kicks, 0, 'the device never runs inside the driver');
    await Promise.all(done);
    assert.equal(s.transport.stats.kicks - before.kicks, 3);
    assert.equal(s.transport.stats.notifications - before.notifications, 1);
    assert.equal(s.device.kicks, 1);
    assert.equal(s.transport.stats.interrupts - before.interrupts, 1);
  });

  for (const [what, features] of [
    ['no EVENT_IDX, no INDIRECT_DESC', featureSet(VirtioFeature.VIRTIO_F_VERSION_1, ECHO_F_UPPERCASE)],
    [
      'EVENT_IDX without INDIRECT_DESC',
      featureSet(VirtioFeature.VIRTIO_F_VERSION_1, VirtioFeature.VIRTIO_F_EVENT_IDX, ECHO_F_UPPERCASE),
    ],
    [
      'INDIRECT_DESC without EVENT_IDX',
      featureSet(VirtioFeature.VIRTIO_F_VERSION_1, VirtioFeature.VIRTIO_F_INDIRECT_DESC, ECHO_F_UPPERCASE),
    ],
  ] as const) {
    test(`scatter-gather requests with ${what}`, async () => {
      const s = await setup({ device: { features, queueMaxSizes: [32] } });
      assert.equal(s.dev.features, features);
      const client = s.client();
      for (let round = 0; round < 3; round++) {
        const batch = Array.from({ length: 5 }, (_, i) =>
          encode(`round ${round} item ${i}: mixed Case text`),
        );
        const done = batch.map((b, i) => client.submit(b, 1 + (i % 4)));
        client.vq?.kick();
        const out = await Promise.all(done);
        out.forEach((o, i) => {
          assert.deepEqual(o, expectedEcho(batch[i] as Uint8Array, true));
        });
      }
      assert.equal(s.device.served, 15);
      assert.deepEqual(s.faults, []);
    });
  }

  test('several memory regions: buffers that cross from one region into the adjacent one', async () => {
    const s = await setup({
      transport: {
        regions: [
          { guestAddr: 0, size: 0x10000 },
          { guestAddr: 0x10000, size: 0x10000 },
          { guestAddr: 0x100000, size: 0x100000 },
        ],
      },
    });
    const { memory, allocator } = s.transport;
    assert.equal(memory.regions.length, 3);
    // The driver owns [0xff00, 0x10100): take it from the allocator so nothing else lands there.
    const reserved: number[] = [];
    while (reserved.at(-1) === undefined || (reserved.at(-1) as number) < 0xff00)
      reserved.push(allocator.alloc(0x100));
    const input = encode('across the boundary');
    const inAddr = 0x10000 - 7;
    const outAddr = 0x10000 - 3 + 0x40;
    memory.write(inAddr, input);
    const out = await s
      .client()
      .submitEntries([{ addr: inAddr, len: input.length }], [{ addr: outAddr, len: input.length }]);
    assert.equal(decode(out), 'ACROSS THE BOUNDARY');
    // A buffer in the region beyond the hole works too; one spanning the hole is refused by the device.
    const far = 0x100000 + 0x800;
    memory.write(far, encode('far'));
    assert.equal(
      decode(await s.client().submitEntries([{ addr: far, len: 3 }], [{ addr: far + 8, len: 3 }])),
      'FAR',
    );
    for (const r of reserved) allocator.free(r);
  });

  test('shared memory works the same', async () => {
    const s = await setup({ transport: { memorySize: 1 << 20, shared: true } });
    assert.ok(s.transport.memory.regions[0]?.bytes.buffer instanceof SharedArrayBuffer);
    assert.equal(decode(await s.client().request(encode('shared'))), 'SHARED');
  });

  test('a configuration change reaches the driver; the u64 field reads consistently', async () => {
    const s = await setup();
    const changed = new Promise<VirtioBusDevice>((resolve) => {
      s.driver.onConfigChanged = resolve;
    });
    s.device.setSerial(0xdead_beef_cafe_f00dn);
    assert.equal(await changed, s.dev);
    assert.equal(await s.dev.readConfigU64(ECHO_CONFIG_SERIAL), 0xdead_beef_cafe_f00dn);
    assert.equal(s.driver.configChanges, 1);
  });
});

describe('LoopbackTransport: failures', () => {
  test('a device fault mid-run: NEEDS_RESET, configChanged, and a bus reprobe brings the device back', async () => {
    const s = await setup({ device: { queueMaxSizes: [8] } });
    const client = s.client();
    assert.equal(decode(await client.request(encode('before'))), 'BEFORE');

    const needsReset = new Promise<VirtioBusDevice>((resolve) => {
      s.driver.onConfigChanged = resolve;
    });
    const vq = client.vq ?? assert.fail();
    const doomed = client.submit(encode('doomed request'), 2);
    doomed.catch(() => undefined);
    vq.kickPrepare(); // publishes avail.idx: the head is now in the avail ring
    // Corrupt the head descriptor in guest memory, as a buggy guest could: point it outside guest memory.
    const q = s.transport.controller.queue(0) ?? assert.fail();
    const { memory } = s.transport;
    const availIdx = memory.readU16(q.availRing + 2);
    const head = memory.readU16(q.availRing + 4 + 2 * ((availIdx - 1) & 7));
    memory.writeU64(q.descTable + 16 * head, 0x7fff_0000_0000n);
    vq.notify();

    const dev = await needsReset;
    assert.equal(dev, s.dev);
    assert.equal(await dev.needsReset(), true);
    assert.equal(s.transport.controller.status & DEVICE_NEEDS_RESET, DEVICE_NEEDS_RESET);
    assert.ok(['DESC_ADDRESS_INVALID', 'INDIRECT_TABLE_INVALID'].includes(s.device.faults[0]?.code ?? ''));
    assert.equal(s.transport.controller.resetReason, s.device.faults[0]);

    // Kicks are ignored now.
    const kicks = s.device.kicks;
    vq.notify();
    await settle();
    assert.equal(s.device.kicks, kicks);

    // Recovery: the bus unbinds (driver remove: reset, take buffers back, delVqs), resets and probes again.
    assert.equal(await s.bus.reprobe(dev), true);
    await assert.rejects(doomed, /device reset/);
    assert.equal(s.transport.controller.status, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    assert.equal(decode(await s.client().request(encode('after'))), 'AFTER');
    assert.notEqual(s.client(), client);
  });

  test('a driver whose id table does not match never binds', async () => {
    const bus = new VirtioBus();
    const blkOnly = { ...echoDriver(), idTable: [{ device: 2, vendor: VIRTIO_DEV_ANY_ID }] };
    await bus.registerDriver(blkOnly);
    const transport = new LoopbackTransport(new EchoDevice(), { memorySize: 1 << 20 });
    const dev = await bus.addDevice(transport);
    assert.equal(dev.driver, undefined);
    assert.equal(blkOnly.clients.size, 0);
    assert.equal(transport.controller.status, ACKNOWLEDGE);
  });

  test('FEATURES_OK not sticking fails the probe with FAILED set', async () => {
    const s = await setup({ device: { validateFeatures: (f) => (f & featureBit(ECHO_F_UPPERCASE)) === 0n } });
    assert.equal(s.dev.driver, undefined);
    assert.ok(s.dev.probeError instanceof ProbeError);
    assert.equal(s.dev.probeError.code, 'FEATURES_NOT_ACCEPTED');
    assert.equal(s.transport.controller.status, ACKNOWLEDGE | DRIVER | FAILED);
    assert.equal(s.driver.clients.size, 0);
    assert.deepEqual(
      s.faults.map((f) => f.code),
      ['FEATURES_REJECTED'],
    );
  });

  test('a reset drops kicks still pending from before it', async () => {
    const s = await setup();
    const client = s.client();
    const pending = client.submit(encode('never'));
    pending.catch(() => undefined);
    client.vq?.kick();
    await s.transport.reset();
    await settle();
    assert.equal(s.device.kicks, 0);
    assert.deepEqual(s.faults, [], 'no stray kick reached the reset device');
  });

  test('findVqs refuses a queue the device does not have or a bad size, and frees what it allocated', async () => {
    const transport = new LoopbackTransport(new EchoDevice({ queueMaxSizes: [8, 8] }), {
      memorySize: 1 << 20,
    });
    const c = transport.controller;
    const features = featureSet(VirtioFeature.VIRTIO_F_VERSION_1);
    await transport.reset();
    await transport.setStatus(ACKNOWLEDGE | DRIVER);
    await transport.finalizeFeatures(features);
    await transport.setStatus(ACKNOWLEDGE | DRIVER | FEATURES_OK);
    await assert.rejects(
      transport.findVqs([{ name: 'a' }, { name: 'b' }, { name: 'c' }], features),
      UsageError,
    );
    await assert.rejects(transport.findVqs([{ name: 'a' }, { name: 'b', size: 16 }], features), UsageError);
    await assert.rejects(transport.findVqs([{ name: 'a', size: 6 }], features), UsageError);
    assert.equal(transport.allocator.allocations, 0);
    assert.equal(c.status & DEVICE_NEEDS_RESET, 0);

    const vqs = await transport.findVqs([null, { name: 'b', size: 4 }], features);
    assert.equal(vqs[0], null);
    assert.equal(vqs[1]?.size, 4);
    assert.equal(transport.virtqueue(1), vqs[1]);
    assert.equal(c.queue(1)?.ready, true);
    assert.equal(c.queue(0)?.ready, false);
    await assert.rejects(transport.findVqs([{ name: 'again' }], features), UsageError);
    await transport.setStatus(c.status | DRIVER_OK);
    await assert.rejects(transport.delVqs(), UsageError);
    await transport.reset();
    await transport.delVqs();
    assert.equal(transport.allocator.allocations, 0);
  });

  test('findVqs before FEATURES_OK: the device refuses the queue (hostile input 3), nothing leaks', async () => {
    const transport = new LoopbackTransport(new EchoDevice(), { memorySize: 1 << 20 });
    await transport.setStatus(ACKNOWLEDGE | DRIVER);
    await assert.rejects(transport.findVqs([{ name: 'early' }], 0n), /refused to enable queue 0/);
    assert.equal(transport.allocator.allocations, 0);
    assert.equal(transport.controller.status & DEVICE_NEEDS_RESET, DEVICE_NEEDS_RESET);
  });

  test('removing the device releases every byte of guest memory the driver side allocated', async () => {
    const s = await setup();
    const client = s.client();
    const pending = client.submit(encode('left behind'), 3);
    pending.catch(() => undefined);
    await s.bus.removeDevice(s.dev);
    await assert.rejects(pending, /device reset/);
    assert.equal(s.transport.allocator.allocations, 0);
    assert.equal(s.transport.controller.status, 0);
  });
});
