/**
 * One device on a {@link VirtioBus}, as its driver sees it (Linux include/linux/virtio.h `struct virtio_device`
 * plus the helpers of virtio_config.h): identity, negotiated features, configuration-space access, queues,
 * status helpers. The transport behind it is a {@link VirtioConfigOps}.
 */
import { UsageError } from '../errors.js';
import { hasFeature } from '../features.js';
import { DeviceStatus, describeStatus } from '../status.js';
import type { VirtioConfigOps, VirtqueueSpec } from './config-ops.js';
import type { Virtqueue } from './virtqueue.js';
import { ConfigReadError, type VirtioDeviceId, type VirtioDriver } from './virtio-driver.js';

/**
 * How many times a configuration read is retried while config_generation keeps changing (§2.5.1 asks drivers
 * to retry; Linux loops forever). A device that changes its configuration this often is broken or hostile, and
 * bounding the loop keeps the driver from spinning on it.
 */
export const MAX_CONFIG_GENERATION_RETRIES = 64;

export class VirtioBusDevice {
  /** Bus-unique number (Linux `index`, as in `virtio0`). */
  readonly index: number;
  readonly id: VirtioDeviceId;
  readonly ops: VirtioConfigOps;
  /** Free for the bound driver to keep its per-device state (Linux `vdev->priv`). */
  driverData: unknown;

  readonly #reportError: (error: Error) => void;
  #driver: VirtioDriver | undefined;
  #features = 0n;
  #negotiating = false;
  #vqs: readonly (Virtqueue | null)[] = [];
  #configEnabled = false;
  #configPending = false;
  #probeError: Error | undefined;

  /** Made by {@link VirtioBus.addDevice}. */
  constructor(index: number, ops: VirtioConfigOps, reportError: (error: Error) => void) {
    this.index = index;
    this.ops = ops;
    this.id = { device: ops.deviceId, vendor: ops.vendorId };
    this.#reportError = reportError;
  }

  /** `virtio<index>`, as Linux names them. */
  get name(): string {
    return `virtio${this.index}`;
  }

  /** The driver bound to this device, if any. */
  get driver(): VirtioDriver | undefined {
    return this.#driver;
  }

  /** Why the last probe failed (the device status then has FAILED), until the next successful probe. */
  get probeError(): Error | undefined {
    return this.#probeError;
  }

  // ---- features ----

  /** The negotiated features (tentative while the driver's `validate` runs). */
  get features(): bigint {
    return this.#features;
  }

  hasFeature(bit: number): boolean {
    return hasFeature(this.#features, bit);
  }

  /** Drops a feature before FEATURES_OK; only valid inside the driver's `validate` (Linux __virtio_clear_bit). */
  clearFeature(bit: number): void {
    if (!this.#negotiating) {
      throw new UsageError('INVALID_STATE', `feature ${bit} cleared after negotiation on ${this.name}`, bit);
    }
    this.#features &= ~(1n << BigInt(bit));
  }

  // ---- status ----

  getStatus(): Promise<number> {
    return this.ops.getStatus();
  }

  /** Sets `bits` on top of the current status (Linux virtio_add_status). */
  async addStatus(bits: number): Promise<void> {
    const status = await this.ops.getStatus();
    await this.ops.setStatus(status | bits);
  }

  /** Whether the device has set DEVICE_NEEDS_RESET. */
  async needsReset(): Promise<boolean> {
    return ((await this.ops.getStatus()) & DeviceStatus.DEVICE_NEEDS_RESET) !== 0;
  }

  /**
   * Sets DRIVER_OK (Linux virtio_device_ready): from here on the device may use the queues. A driver calls it
   * inside `probe` when it must use the device before probe returns; otherwise the bus does it afterwards.
   */
  async ready(): Promise<void> {
    const status = await this.ops.getStatus();
    if ((status & DeviceStatus.DRIVER_OK) !== 0) {
      throw new UsageError(
        'INVALID_STATE',
        `${this.name} is already DRIVER_OK (${describeStatus(status)})`,
        status,
      );
    }
    await this.ops.setStatus(status | DeviceStatus.DRIVER_OK);
  }

  /** Resets the device (Linux virtio_reset_device): the device stops using the queues when this resolves. */
  reset(): Promise<void> {
    return this.ops.reset();
  }

  // ---- queues ----

  /** The queues made by the last {@link findVqs}. */
  get vqs(): readonly (Virtqueue | null)[] {
    return this.#vqs;
  }

  /** Sets up the queues (index = position in `specs`) with the negotiated features. */
  async findVqs(specs: readonly (VirtqueueSpec | null)[]): Promise<(Virtqueue | null)[]> {
    if (this.#vqs.length !== 0) {
      throw new UsageError(
        'INVALID_STATE',
        `${this.name} already has queues: delVqs first`,
        this.#vqs.length,
      );
    }
    const vqs = await this.ops.findVqs(specs, this.#features);
    this.#vqs = vqs;
    return vqs;
  }

  /** Tears down the queues (after a reset). */
  async delVqs(): Promise<void> {
    this.#vqs = [];
    await this.ops.delVqs();
  }

  // ---- configuration space ----

  /** `length` bytes of configuration space at `offset` (one transport access, no generation check). */
  async readConfig(offset: number, length: number): Promise<Uint8Array> {
    const data = await this.ops.readConfig(offset, length);
    if (data.length !== length) {
      throw new ConfigReadError(
        'CONFIG_SHORT_READ',
        `${this.name}: config read at ${offset} returned ${data.length} of ${length} bytes`,
        { offset, length },
      );
    }
    return data;
  }

  /**
   * `length` bytes of configuration space read consistently: re-read while config_generation changes across the
   * read (§2.5.1, Linux __virtio_cread_many), at most {@link MAX_CONFIG_GENERATION_RETRIES} times.
   */
  async readConfigStable(offset: number, length: number): Promise<Uint8Array> {
    let generation = await this.ops.generation();
    for (let attempt = 0; attempt < MAX_CONFIG_GENERATION_RETRIES; attempt++) {
      const data = await this.readConfig(offset, length);
      const after = await this.ops.generation();
      if (after === generation) return data;
      generation = after;
    }
    throw new ConfigReadError(
      'CONFIG_GENERATION_UNSTABLE',
      `${this.name}: config_generation changed during ${MAX_CONFIG_GENERATION_RETRIES} reads at ${offset}+${length}`,
      { offset, length },
    );
  }

  async readConfigU8(offset: number): Promise<number> {
    return (await this.readConfig(offset, 1))[0] as number;
  }

  async readConfigU16(offset: number): Promise<number> {
    return view(await this.readConfig(offset, 2)).getUint16(0, true);
  }

  async readConfigU32(offset: number): Promise<number> {
    return view(await this.readConfig(offset, 4)).getUint32(0, true);
  }

  /** A little-endian u64 field, read generation-consistently (transports may split it in two accesses). */
  async readConfigU64(offset: number): Promise<bigint> {
    return view(await this.readConfigStable(offset, 8)).getBigUint64(0, true);
  }

  writeConfig(offset: number, data: Uint8Array): Promise<void> {
    return this.ops.writeConfig(offset, data);
  }

  writeConfigU8(offset: number, value: number): Promise<void> {
    return this.ops.writeConfig(offset, Uint8Array.of(value));
  }

  writeConfigU16(offset: number, value: number): Promise<void> {
    const data = new Uint8Array(2);
    view(data).setUint16(0, value, true);
    return this.ops.writeConfig(offset, data);
  }

  writeConfigU32(offset: number, value: number): Promise<void> {
    const data = new Uint8Array(4);
    view(data).setUint32(0, value, true);
    return this.ops.writeConfig(offset, data);
  }

  // ---- used by VirtioBus (not for drivers) ----

  /** @internal Binds or unbinds the driver. */
  _setDriver(driver: VirtioDriver | undefined): void {
    this.#driver = driver;
  }

  /** @internal Sets the features; `negotiating` opens the window for {@link clearFeature}. */
  _setFeatures(features: bigint, negotiating: boolean): void {
    this.#features = features;
    this.#negotiating = negotiating;
  }

  /** @internal */
  _setProbeError(error: Error | undefined): void {
    this.#probeError = error;
  }

  /** @internal Forgets queues a failed or finished driver left behind (after delVqs by the bus). */
  _forgetVqs(): void {
    this.#vqs = [];
  }

  /**
   * @internal Starts delivering configuration changes to the driver, including one that arrived while disabled
   * (Linux virtio_config_enable: changes during probe are held back until probe has finished).
   */
  _enableConfig(): void {
    this.#configEnabled = true;
    if (this.#configPending) {
      this.#configPending = false;
      this._configInterrupt();
    }
  }

  /**
   * @internal Holds configuration changes back (during probe and remove). A change already pending is dropped:
   * the probe that follows reads the configuration afresh.
   */
  _disableConfig(): void {
    this.#configEnabled = false;
    this.#configPending = false;
  }

  /** @internal The transport's configuration-change interrupt. */
  _configInterrupt(): void {
    if (!this.#configEnabled) {
      this.#configPending = true;
      return;
    }
    const driver = this.#driver;
    if (driver?.configChanged === undefined) return;
    try {
      driver.configChanged(this);
    } catch (e) {
      this.#reportError(e instanceof Error ? e : new Error(String(e)));
    }
  }
}

function view(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}
