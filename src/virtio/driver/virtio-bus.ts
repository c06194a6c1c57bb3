/**
 * The driver model's bus (Linux drivers/virtio/virtio.c): devices come from transports, drivers register with
 * id tables, and the bus matches them and runs the device initialization sequence of VIRTIO 1.2 §3.1.1 around the
 * driver's `probe`:
 *
 * 1. reset, 2. ACKNOWLEDGE (when the device is added), 3. DRIVER (a driver matched), 4. features = device offer ∩
 * (driver table + transport bits), `validate`, finalize, 5. FEATURES_OK, 6. re-read the status: FEATURES_OK must
 * have stuck, 7. driver `probe` (queues, config), 8. DRIVER_OK unless the driver already set it.
 *
 * A device without VIRTIO_F_VERSION_1 is refused (LEGACY_DEVICE) unless its transport is a legacy one
 * (`ops.legacy`); then steps 5 and 6 do not exist, as for Linux's legacy devices.
 *
 * Any failure sets FAILED, leaves the device unbound and is reported (`dev.probeError`, `onError`).
 *
 * ```ts
 * const bus = new VirtioBus({ onError: (dev, e) => console.error(dev.name, e) });
 * await bus.registerDriver(myDriver);
 * const dev = await bus.addDevice(new LoopbackTransport(myDevice)); // probed if an id matches
 * ```
 */
import { UsageError } from '../errors.js';
import { TRANSPORT_FEATURES, VirtioFeature, featureSet, hasFeature } from '../features.js';
import { DeviceStatus, describeStatus } from '../status.js';
import type { VirtioConfigOps } from './config-ops.js';
import { VirtioBusDevice } from './virtio-bus-device.js';
import { ProbeError, virtioIdMatch, type ProbeErrorCode, type VirtioDriver } from './virtio-driver.js';

export interface VirtioBusOptions {
  /** Probe failures, and errors thrown by a driver's remove or configChanged. */
  readonly onError?: (dev: VirtioBusDevice, error: Error) => void;
}

export class VirtioBus {
  /** See {@link VirtioBusOptions.onError}. */
  onError: ((dev: VirtioBusDevice, error: Error) => void) | undefined;

  readonly #drivers: VirtioDriver[] = [];
  readonly #devices: VirtioBusDevice[] = [];
  /** Per-device chain of bus operations, so probe, remove and reprobe of one device never interleave. */
  readonly #serial = new Map<VirtioBusDevice, Promise<void>>();
  #nextIndex = 0;

  constructor(options: VirtioBusOptions = {}) {
    this.onError = options.onError;
  }

  get devices(): readonly VirtioBusDevice[] {
    return this.#devices;
  }

  get drivers(): readonly VirtioDriver[] {
    return this.#drivers;
  }

  /** Adds a driver and probes every unbound device it matches. */
  async registerDriver(driver: VirtioDriver): Promise<void> {
    if (this.#drivers.includes(driver)) {
      throw new UsageError('INVALID_ARGUMENT', `driver ${driver.name} is already registered`, driver.name);
    }
    this.#drivers.push(driver);
    for (const dev of [...this.#devices]) {
      await this.#serialize(dev, async () => {
        if (dev.driver === undefined && this.#matches(driver, dev)) await this.#probe(dev, driver);
      });
    }
  }

  /** Removes a driver, unbinding (remove + reset) every device it had. */
  async unregisterDriver(driver: VirtioDriver): Promise<void> {
    const i = this.#drivers.indexOf(driver);
    if (i < 0)
      throw new UsageError('INVALID_ARGUMENT', `driver ${driver.name} is not registered`, driver.name);
    this.#drivers.splice(i, 1);
    for (const dev of [...this.#devices]) {
      await this.#serialize(dev, async () => {
        if (dev.driver !== driver) return;
        await this.#unbind(dev);
        await dev.addStatus(DeviceStatus.ACKNOWLEDGE);
      });
    }
  }

  /**
   * Adds a device: reset, ACKNOWLEDGE, then probe with the first registered driver whose id table matches. A
   * probe failure does not reject: the device stays on the bus unbound, with FAILED set and `probeError`.
   */
  async addDevice(ops: VirtioConfigOps): Promise<VirtioBusDevice> {
    const dev = new VirtioBusDevice(this.#nextIndex++, ops, (e) => {
      this.#report(dev, e);
    });
    ops.onConfigChange(() => {
      dev._configInterrupt();
    });
    this.#devices.push(dev);
    await this.#serialize(dev, async () => {
      await ops.reset();
      await dev.addStatus(DeviceStatus.ACKNOWLEDGE);
      await this.#attach(dev);
    });
    return dev;
  }

  /** Unbinds the device's driver (remove, reset, delete queues) and takes it off the bus. */
  async removeDevice(dev: VirtioBusDevice): Promise<void> {
    this.#checkOnBus(dev);
    await this.#serialize(dev, async () => {
      await this.#unbind(dev);
      await this.#quiesce(dev);
    });
    this.#devices.splice(this.#devices.indexOf(dev), 1);
    this.#serial.delete(dev);
  }

  /**
   * Starts the device over: unbinds its driver, resets it, ACKNOWLEDGE, and probes again. This is how a driver
   * recovers a device that set DEVICE_NEEDS_RESET. Resolves to whether a driver is bound afterwards.
   */
  async reprobe(dev: VirtioBusDevice): Promise<boolean> {
    this.#checkOnBus(dev);
    await this.#serialize(dev, async () => {
      await this.#unbind(dev);
      await this.#quiesce(dev); // also for an unbound device (a failed probe) or a driver that did not reset
      await dev.addStatus(DeviceStatus.ACKNOWLEDGE);
      await this.#attach(dev);
    });
    return dev.driver !== undefined;
  }

  #matches(driver: VirtioDriver, dev: VirtioBusDevice): boolean {
    return driver.idTable.some((entry) => virtioIdMatch(entry, dev.id));
  }

  async #attach(dev: VirtioBusDevice): Promise<void> {
    const driver = this.#drivers.find((d) => this.#matches(d, dev));
    if (driver !== undefined) await this.#probe(dev, driver);
  }

  /** Steps 3–8 of §3.1.1 (Linux virtio_dev_probe). Never rejects: a failure sets FAILED and is reported. */
  async #probe(dev: VirtioBusDevice, driver: VirtioDriver): Promise<void> {
    const ops = dev.ops;
    let probed = false;
    dev._disableConfig();
    dev._setDriver(driver);
    dev._setProbeError(undefined);
    try {
      await dev.addStatus(DeviceStatus.DRIVER);
      const offered = await ops.getFeatures();
      const modern = hasFeature(offered, VirtioFeature.VIRTIO_F_VERSION_1);
      if (!modern && ops.legacy !== true) {
        throw probeError('LEGACY_DEVICE', `${dev.name} does not offer VIRTIO_F_VERSION_1`, offered);
      }
      dev._setFeatures(offered & (featureSet(...driver.featureTable) | TRANSPORT_FEATURES), true);
      if (driver.validate !== undefined) {
        try {
          await driver.validate(dev);
        } catch (e) {
          throw probeError(
            'VALIDATE_FAILED',
            `${driver.name} refused ${dev.name} in validate`,
            dev.features,
            e,
          );
        }
      }
      dev._setFeatures(dev.features, false);
      await ops.finalizeFeatures(dev.features);
      // A legacy device has no FEATURES_OK: the features written are the features (Linux virtio_features_ok).
      if (modern) {
        await dev.addStatus(DeviceStatus.FEATURES_OK);
        const status = await ops.getStatus();
        if ((status & DeviceStatus.FEATURES_OK) === 0) {
          throw probeError(
            'FEATURES_NOT_ACCEPTED',
            `${dev.name} did not accept features 0x${dev.features.toString(16)} (status ${describeStatus(status)})`,
            dev.features,
          );
        }
      }
      try {
        await driver.probe(dev);
      } catch (e) {
        throw probeError('PROBE_FAILED', `${driver.name} failed to probe ${dev.name}`, dev.name, e);
      }
      probed = true;
      if (((await ops.getStatus()) & DeviceStatus.DRIVER_OK) === 0) await dev.ready();
      dev._enableConfig();
    } catch (e) {
      const error =
        e instanceof ProbeError
          ? e
          : probeError('TRANSPORT_FAILED', `initializing ${dev.name} for ${driver.name} failed`, dev.name, e);
      if (probed) await this.#callRemove(dev, driver);
      dev._setDriver(undefined);
      dev._setFeatures(0n, false);
      dev._setProbeError(error);
      try {
        await dev.addStatus(DeviceStatus.FAILED);
      } catch (statusError) {
        this.#report(dev, statusError);
      }
      this.#report(dev, error);
    }
  }

  /** Linux virtio_dev_remove: driver remove, then make sure the device is reset and its queues are gone. */
  async #unbind(dev: VirtioBusDevice): Promise<void> {
    const driver = dev.driver;
    if (driver === undefined) return;
    dev._disableConfig();
    await this.#callRemove(dev, driver);
    dev._setDriver(undefined);
    dev._setFeatures(0n, false);
    dev.driverData = undefined;
    await this.#quiesce(dev);
  }

  /** Drivers should reset the device and delete its queues in remove (or on a failed probe); this covers those
   * that did not. */
  async #quiesce(dev: VirtioBusDevice): Promise<void> {
    if ((await dev.getStatus()) !== 0) await dev.reset();
    if (dev.vqs.length !== 0) await dev.delVqs();
  }

  async #callRemove(dev: VirtioBusDevice, driver: VirtioDriver): Promise<void> {
    try {
      await driver.remove(dev);
    } catch (e) {
      this.#report(dev, e);
    }
  }

  #checkOnBus(dev: VirtioBusDevice): void {
    if (!this.#devices.includes(dev)) {
      throw new UsageError('INVALID_ARGUMENT', `${dev.name} is not on this bus`, dev.index);
    }
  }

  #serialize(dev: VirtioBusDevice, op: () => Promise<void>): Promise<void> {
    const previous = this.#serial.get(dev) ?? Promise.resolve();
    const next = previous.then(op);
    // Keep the chain alive after a failure; the caller still sees the rejection through `next`.
    this.#serial.set(
      dev,
      next.catch(() => undefined),
    );
    return next;
  }

  #report(dev: VirtioBusDevice, error: unknown): void {
    this.onError?.(dev, error instanceof Error ? error : new Error(String(error)));
  }
}

function probeError(code: ProbeErrorCode, message: string, value: unknown, cause?: unknown): ProbeError {
  return new ProbeError(code, message, value, cause === undefined ? undefined : { cause });
}
