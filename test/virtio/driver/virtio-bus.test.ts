import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { DeviceController } from '../../../src/virtio/device/device-controller.js';
import type { VirtioDevice } from '../../../src/virtio/device/virtio-device.js';
import type { VirtioConfigOps, VirtqueueSpec } from '../../../src/virtio/driver/config-ops.js';
import type { Virtqueue } from '../../../src/virtio/driver/virtqueue.js';
import { VirtioBus } from '../../../src/virtio/driver/virtio-bus.js';
import {
  MAX_CONFIG_GENERATION_RETRIES,
  type VirtioBusDevice,
} from '../../../src/virtio/driver/virtio-bus-device.js';
import {
  ConfigReadError,
  ProbeError,
  VIRTIO_DEV_ANY_ID,
  virtioIdMatch,
  type VirtioDriver,
} from '../../../src/virtio/driver/virtio-driver.js';
import { UsageError } from '../../../src/virtio/errors.js';
import { TRANSPORT_FEATURES, VirtioFeature, featureBit } from '../../../src/virtio/features.js';
import { GuestAllocator } from '../../../src/virtio/guest-allocator.js';
import { GuestMemory } from '../../../src/virtio/guest-memory.js';
import { DeviceStatus } from '../../../src/virtio/status.js';
import {
  ECHO_CONFIG_MAGIC,
  ECHO_CONFIG_SERIAL,
  ECHO_DEFAULT_FEATURES,
  ECHO_DEVICE_ID,
  ECHO_F_UPPERCASE,
  ECHO_MAGIC,
  EchoDevice,
} from '../../fixtures/echo-device.js';

const { ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK, FAILED } = DeviceStatus;

/**
 * A transport for bus tests: status, features and config go to a real {@link DeviceController}; findVqs only
 * records what was asked (queues are exercised end to end in the loopback tests). Every call is logged.
 */
class FakeOps implements VirtioConfigOps {
  readonly deviceId: number;
  readonly vendorId: number;
  readonly location = 'fake:0';
  readonly controller: DeviceController;
  readonly memory = GuestMemory.create(0x1000);
  readonly allocator = new GuestAllocator(this.memory);
  readonly log: string[] = [];
  findVqsCalls: { specs: readonly (VirtqueueSpec | null)[]; features: bigint }[] = [];
  delVqsCalls = 0;
  #configHandler: (() => void) | undefined;

  constructor(device: VirtioDevice, vendorId = 0) {
    this.deviceId = device.deviceType;
    this.vendorId = vendorId;
    this.controller = new DeviceController(device, {
      signalUsed: () => undefined,
      signalConfig: () => this.#configHandler?.(),
    });
    this.controller.setMemory(this.memory);
  }

  getStatus(): Promise<number> {
    return Promise.resolve(this.controller.status);
  }
  setStatus(status: number): Promise<void> {
    this.log.push(`status ${status}`);
    this.controller.setStatus(status);
    return Promise.resolve();
  }
  reset(): Promise<void> {
    this.log.push('reset');
    this.controller.setStatus(0);
    return Promise.resolve();
  }
  getFeatures(): Promise<bigint> {
    return Promise.resolve(this.controller.deviceFeatures);
  }
  finalizeFeatures(features: bigint): Promise<void> {
    this.log.push(`features ${features.toString(16)}`);
    this.controller.setDriverFeatures(features);
    return Promise.resolve();
  }
  readConfig(offset: number, length: number): Promise<Uint8Array> {
    return Promise.resolve(this.controller.readConfig(offset, length));
  }
  writeConfig(offset: number, data: Uint8Array): Promise<void> {
    this.controller.writeConfig(offset, data);
    return Promise.resolve();
  }
  generation(): Promise<number> {
    return Promise.resolve(this.controller.configGeneration);
  }
  findVqs(specs: readonly (VirtqueueSpec | null)[], features: bigint): Promise<(Virtqueue | null)[]> {
    this.findVqsCalls.push({ specs, features });
    return Promise.resolve(specs.map(() => null));
  }
  delVqs(): Promise<void> {
    this.delVqsCalls++;
    return Promise.resolve();
  }
  onConfigChange(handler: () => void): void {
    this.#configHandler = handler;
  }
}

interface RecordingDriver extends VirtioDriver {
  readonly calls: string[];
}

function echoDriver(overrides: Partial<VirtioDriver> = {}): RecordingDriver {
  const calls: string[] = [];
  return {
    name: 'echo',
    idTable: [{ device: ECHO_DEVICE_ID, vendor: VIRTIO_DEV_ANY_ID }],
    featureTable: [ECHO_F_UPPERCASE],
    calls,
    async probe(dev) {
      calls.push('probe');
      await dev.findVqs([{ name: 'echo' }]);
    },
    async remove(dev) {
      calls.push('remove');
      await dev.reset();
      await dev.delVqs();
    },
    configChanged() {
      calls.push('configChanged');
    },
    ...overrides,
  };
}

async function settle(): Promise<void> {
  await new Promise((resolve) => setImmediate(resolve));
}

describe('VirtioBus: matching', () => {
  test('id tables match device ids, with VIRTIO_DEV_ANY_ID as a wildcard', () => {
    const id = { device: 2, vendor: 0x1af4 };
    assert.equal(virtioIdMatch({ device: 2, vendor: VIRTIO_DEV_ANY_ID }, id), true);
    assert.equal(virtioIdMatch({ device: 2, vendor: 0x1af4 }, id), true);
    assert.equal(virtioIdMatch({ device: 2, vendor: 0x1234 }, id), false);
    assert.equal(virtioIdMatch({ device: 1, vendor: VIRTIO_DEV_ANY_ID }, id), false);
    assert.equal(virtioIdMatch({ device: VIRTIO_DEV_ANY_ID, vendor: VIRTIO_DEV_ANY_ID }, id), true);
  });

  test('a driver whose id table does not match is never probed; the device stays ACKNOWLEDGE', async () => {
    const bus = new VirtioBus();
    const driver = echoDriver({ idTable: [{ device: 2, vendor: VIRTIO_DEV_ANY_ID }] });
    await bus.registerDriver(driver);
    const ops = new FakeOps(new EchoDevice());
    const dev = await bus.addDevice(ops);
    assert.equal(dev.driver, undefined);
    assert.deepEqual(driver.calls, []);
    assert.equal(ops.controller.status, ACKNOWLEDGE);
    assert.equal(dev.probeError, undefined);
    assert.deepEqual(dev.id, { device: ECHO_DEVICE_ID, vendor: 0 });
    assert.equal(dev.name, 'virtio0');
  });

  test('a vendor-specific entry matches only that vendor', async () => {
    const bus = new VirtioBus();
    const driver = echoDriver({ idTable: [{ device: ECHO_DEVICE_ID, vendor: 0x1af4 }] });
    await bus.registerDriver(driver);
    const other = await bus.addDevice(new FakeOps(new EchoDevice(), 0x1234));
    const mine = await bus.addDevice(new FakeOps(new EchoDevice(), 0x1af4));
    assert.equal(other.driver, undefined);
    assert.equal(mine.driver, driver);
  });

  test('a driver registered after the device probes it; unregistering unbinds it', async () => {
    const bus = new VirtioBus();
    const ops = new FakeOps(new EchoDevice());
    const dev = await bus.addDevice(ops);
    assert.equal(dev.driver, undefined);
    const driver = echoDriver();
    await bus.registerDriver(driver);
    assert.equal(dev.driver, driver);
    assert.equal(ops.controller.status, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    await bus.unregisterDriver(driver);
    assert.equal(dev.driver, undefined);
    assert.deepEqual(driver.calls, ['probe', 'remove']);
    assert.equal(ops.controller.status, ACKNOWLEDGE);
    assert.equal(bus.drivers.length, 0);
    await assert.rejects(bus.unregisterDriver(driver), UsageError);
  });

  test('registering the same driver twice is a usage error', async () => {
    const bus = new VirtioBus();
    const driver = echoDriver();
    await bus.registerDriver(driver);
    await assert.rejects(bus.registerDriver(driver), UsageError);
  });
});

describe('VirtioBus: probe sequence (§3.1.1)', () => {
  test('reset, ACKNOWLEDGE, DRIVER, features, FEATURES_OK, probe, DRIVER_OK — in that order', async () => {
    const bus = new VirtioBus();
    const driver = echoDriver();
    await bus.registerDriver(driver);
    const ops = new FakeOps(new EchoDevice({ features: ECHO_DEFAULT_FEATURES | featureBit(5) }));
    const dev = await bus.addDevice(ops);
    const expected = ECHO_DEFAULT_FEATURES; // bit 5 offered but not in the driver's table
    assert.deepEqual(ops.log, [
      'reset',
      `status ${ACKNOWLEDGE}`,
      `status ${ACKNOWLEDGE | DRIVER}`,
      `features ${expected.toString(16)}`,
      `status ${ACKNOWLEDGE | DRIVER | FEATURES_OK}`,
      `status ${ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK}`,
    ]);
    assert.equal(dev.features, expected);
    assert.equal(dev.hasFeature(ECHO_F_UPPERCASE), true);
    assert.equal(dev.hasFeature(5), false);
    assert.equal(ops.findVqsCalls[0]?.features, expected);
    assert.equal(ops.controller.features, expected);
    assert.deepEqual(driver.calls, ['probe']);
  });

  test('transport bits the device does not offer are not negotiated', async () => {
    const bus = new VirtioBus();
    await bus.registerDriver(echoDriver());
    const version1 = featureBit(VirtioFeature.VIRTIO_F_VERSION_1);
    const dev = await bus.addDevice(new FakeOps(new EchoDevice({ features: version1 })));
    assert.equal(dev.features, version1);
    assert.equal(TRANSPORT_FEATURES & version1, version1);
  });

  test('a driver that calls ready() in probe is not set DRIVER_OK twice', async () => {
    const bus = new VirtioBus();
    const ops = new FakeOps(new EchoDevice());
    const driver = echoDriver({
      async probe(dev) {
        await dev.findVqs([{ name: 'echo' }]);
        await dev.ready();
        await assert.rejects(dev.ready(), UsageError);
      },
    });
    await bus.registerDriver(driver);
    const dev = await bus.addDevice(ops);
    assert.equal(dev.driver, driver);
    assert.equal(
      ops.log.filter((l) => l === `status ${ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK}`).length,
      1,
    );
  });

  test('FEATURES_OK not sticking fails the probe with FAILED set and a FEATURES_NOT_ACCEPTED error', async () => {
    const errors: Error[] = [];
    const bus = new VirtioBus({ onError: (_dev, e) => errors.push(e) });
    const driver = echoDriver();
    await bus.registerDriver(driver);
    const ops = new FakeOps(new EchoDevice({ validateFeatures: () => false }));
    const dev = await bus.addDevice(ops);
    assert.equal(dev.driver, undefined);
    assert.deepEqual(driver.calls, []);
    assert.ok(dev.probeError instanceof ProbeError);
    assert.equal(dev.probeError.code, 'FEATURES_NOT_ACCEPTED');
    assert.deepEqual(errors, [dev.probeError]);
    assert.equal(ops.controller.status, ACKNOWLEDGE | DRIVER | FAILED);
    assert.equal(ops.controller.lastFault?.code, 'FEATURES_REJECTED');
  });

  test('a legacy device (no VERSION_1) is refused', async () => {
    const bus = new VirtioBus();
    await bus.registerDriver(echoDriver());
    const ops = new FakeOps(new EchoDevice({ features: featureBit(ECHO_F_UPPERCASE) }));
    const dev = await bus.addDevice(ops);
    assert.equal((dev.probeError as ProbeError | undefined)?.code, 'LEGACY_DEVICE');
    assert.equal(ops.controller.status & FAILED, FAILED);
  });

  test('validate may clear features before FEATURES_OK, and may refuse the device', async () => {
    const bus = new VirtioBus();
    let clearAfter: VirtioBusDevice | undefined;
    await bus.registerDriver(
      echoDriver({
        validate(dev) {
          dev.clearFeature(ECHO_F_UPPERCASE);
          clearAfter = dev;
        },
      }),
    );
    const ops = new FakeOps(new EchoDevice());
    const dev = await bus.addDevice(ops);
    assert.equal(dev.hasFeature(ECHO_F_UPPERCASE), false);
    assert.equal(ops.controller.features, ECHO_DEFAULT_FEATURES & ~featureBit(ECHO_F_UPPERCASE));
    assert.throws(() => {
      clearAfter?.clearFeature(VirtioFeature.VIRTIO_F_EVENT_IDX);
    }, UsageError);

    const bus2 = new VirtioBus();
    await bus2.registerDriver(
      echoDriver({
        validate() {
          throw new Error('not this one');
        },
      }),
    );
    const ops2 = new FakeOps(new EchoDevice());
    const dev2 = await bus2.addDevice(ops2);
    assert.equal((dev2.probeError as ProbeError | undefined)?.code, 'VALIDATE_FAILED');
    assert.equal(ops2.controller.status, ACKNOWLEDGE | DRIVER | FAILED);
  });

  test('a failing probe sets FAILED; the error keeps the cause', async () => {
    const bus = new VirtioBus();
    const cause = new Error('no memory');
    await bus.registerDriver(
      echoDriver({
        probe() {
          return Promise.reject(cause);
        },
      }),
    );
    const ops = new FakeOps(new EchoDevice());
    const dev = await bus.addDevice(ops);
    assert.ok(dev.probeError instanceof ProbeError);
    assert.equal(dev.probeError.code, 'PROBE_FAILED');
    assert.equal(dev.probeError.cause, cause);
    assert.equal(ops.controller.status, ACKNOWLEDGE | DRIVER | FEATURES_OK | FAILED);
    assert.equal(dev.features, 0n);
  });

  test('reprobe starts over and clears the previous failure', async () => {
    const bus = new VirtioBus();
    let fail = true;
    const driver = echoDriver({
      async probe(dev) {
        if (fail) throw new Error('first time');
        await dev.findVqs([{ name: 'echo' }]);
      },
    });
    await bus.registerDriver(driver);
    const ops = new FakeOps(new EchoDevice());
    const dev = await bus.addDevice(ops);
    assert.ok(dev.probeError);
    fail = false;
    assert.equal(await bus.reprobe(dev), true);
    assert.equal(dev.probeError, undefined);
    assert.equal(ops.controller.status, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
  });
});

describe('VirtioBus: configuration changes and removal', () => {
  test('config changes reach the driver once probed; changes during probe are delivered after it', async () => {
    const bus = new VirtioBus();
    const device = new EchoDevice();
    const driver = echoDriver({
      async probe(dev) {
        driver.calls.push('probe');
        await dev.findVqs([{ name: 'echo' }]);
        await dev.ready();
        device.setSerial(1n); // a change while probe is still running
        await settle();
        driver.calls.push('probe done');
      },
    });
    await bus.registerDriver(driver);
    const ops = new FakeOps(device);
    const dev = await bus.addDevice(ops);
    assert.deepEqual(driver.calls, ['probe', 'probe done', 'configChanged']);
    device.setSerial(2n);
    assert.deepEqual(driver.calls, ['probe', 'probe done', 'configChanged', 'configChanged']);
    assert.equal(await dev.readConfigU64(ECHO_CONFIG_SERIAL), 2n);
  });

  test('a driver throwing in configChanged is reported, not thrown into the transport', async () => {
    const errors: Error[] = [];
    const bus = new VirtioBus({ onError: (_d, e) => errors.push(e) });
    const device = new EchoDevice();
    await bus.registerDriver(
      echoDriver({
        configChanged() {
          throw new Error('oops');
        },
      }),
    );
    await bus.addDevice(new FakeOps(device));
    device.setSerial(3n);
    assert.equal(errors[0]?.message, 'oops');
  });

  test('removeDevice calls remove, and resets and deletes queues for a driver that did not', async () => {
    const bus = new VirtioBus();
    const driver = echoDriver({
      remove() {
        driver.calls.push('remove');
        return Promise.resolve();
      },
    });
    await bus.registerDriver(driver);
    const ops = new FakeOps(new EchoDevice());
    const dev = await bus.addDevice(ops);
    assert.equal(dev.vqs.length, 1);
    await bus.removeDevice(dev);
    assert.deepEqual(driver.calls, ['probe', 'remove']);
    assert.equal(ops.controller.status, 0);
    assert.equal(ops.delVqsCalls, 1);
    assert.equal(dev.vqs.length, 0);
    assert.equal(bus.devices.length, 0);
    await assert.rejects(bus.removeDevice(dev), UsageError);
  });
});

describe('VirtioBusDevice: configuration helpers', () => {
  async function probed(ops: FakeOps): Promise<VirtioBusDevice> {
    const bus = new VirtioBus();
    await bus.registerDriver(echoDriver());
    return bus.addDevice(ops);
  }

  test('little-endian readers', async () => {
    const device = new EchoDevice();
    device.setSerial(0x0102030405060708n);
    const dev = await probed(new FakeOps(device));
    assert.equal(await dev.readConfigU32(ECHO_CONFIG_MAGIC), ECHO_MAGIC);
    assert.equal(await dev.readConfigU16(ECHO_CONFIG_MAGIC), ECHO_MAGIC & 0xffff);
    assert.equal(await dev.readConfigU8(ECHO_CONFIG_MAGIC + 3), ECHO_MAGIC >>> 24);
    assert.equal(await dev.readConfigU64(ECHO_CONFIG_SERIAL), 0x0102030405060708n);
    await dev.writeConfigU32(0, 0); // read-only on this device: ignored
    await dev.writeConfigU16(0, 0);
    await dev.writeConfigU8(0, 0);
    assert.equal(await dev.readConfigU32(ECHO_CONFIG_MAGIC), ECHO_MAGIC);
  });

  test('readConfigStable retries while the generation changes, and gives up on a device that never settles', async () => {
    const ops = new FakeOps(new EchoDevice());
    const dev = await probed(ops);
    // The generation reads 0, 1, 2, 3, 3...: three reads see it change, the fourth sees it stable.
    let generation = 0;
    let changes = 4;
    ops.generation = () => Promise.resolve(--changes > 0 ? generation++ : generation);
    let reads = 0;
    const read = ops.readConfig.bind(ops);
    ops.readConfig = (o, l) => {
      reads++;
      return read(o, l);
    };
    const data = await dev.readConfigStable(ECHO_CONFIG_MAGIC, 4);
    assert.equal(new DataView(data.buffer).getUint32(0, true), ECHO_MAGIC);
    assert.equal(reads, 4);

    reads = 0;
    ops.generation = () => Promise.resolve(generation++);
    await assert.rejects(dev.readConfigStable(0, 4), (e: unknown) => {
      assert.ok(e instanceof ConfigReadError);
      assert.equal(e.code, 'CONFIG_GENERATION_UNSTABLE');
      return true;
    });
    assert.equal(reads, MAX_CONFIG_GENERATION_RETRIES);
  });

  test('a short read from the transport is a ConfigReadError', async () => {
    const ops = new FakeOps(new EchoDevice());
    const dev = await probed(ops);
    ops.readConfig = () => Promise.resolve(new Uint8Array(1));
    await assert.rejects(dev.readConfigU32(0), ConfigReadError);
  });

  test('findVqs twice without delVqs is a usage error', async () => {
    const dev = await probed(new FakeOps(new EchoDevice()));
    await assert.rejects(dev.findVqs([{ name: 'again' }]), UsageError);
    await dev.delVqs();
    assert.equal((await dev.findVqs([null])).length, 1);
    assert.equal(await dev.needsReset(), false);
  });
});
