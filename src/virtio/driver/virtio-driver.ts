/**
 * The driver contract of the driver model (Linux include/linux/virtio.h `struct virtio_driver`): an id table
 * to match devices, a feature table, and probe/remove. A {@link VirtioBus} matches devices to drivers and runs
 * the initialization sequence (§3.1.1) around `probe`.
 *
 * ```ts
 * const rngDriver: VirtioDriver = {
 *   name: 'virtio-rng',
 *   idTable: [{ device: 4, vendor: VIRTIO_DEV_ANY_ID }],
 *   featureTable: [],
 *   async probe(dev) { [this.vq] = await dev.findVqs([{ name: 'input' }]); },
 *   async remove(dev) { await dev.reset(); await dev.delVqs(); },
 * };
 * ```
 */
import { DeviceFault, VirtioError } from '../errors.js';
import type { VirtioBusDevice } from './virtio-bus-device.js';

/** A device identity: virtio device id (§5) and subsystem vendor id. */
export interface VirtioDeviceId {
  readonly device: number;
  readonly vendor: number;
}

/** Wildcard for either field of an id table entry (Linux VIRTIO_DEV_ANY_ID). */
export const VIRTIO_DEV_ANY_ID = 0xffff_ffff;

/** Whether id table entry `entry` matches device identity `id` (Linux virtio_id_match). */
export function virtioIdMatch(entry: VirtioDeviceId, id: VirtioDeviceId): boolean {
  if (entry.device !== id.device && entry.device !== VIRTIO_DEV_ANY_ID) return false;
  return entry.vendor === VIRTIO_DEV_ANY_ID || entry.vendor === id.vendor;
}

export interface VirtioDriver {
  readonly name: string;
  /** The devices this driver serves. */
  readonly idTable: readonly VirtioDeviceId[];
  /**
   * Feature bit numbers the driver understands (device-specific ones). The bus adds the transport bits the core
   * implements (VERSION_1, EVENT_IDX, INDIRECT_DESC: `TRANSPORT_FEATURES`).
   */
  readonly featureTable: readonly number[];
  /**
   * Optional: runs after the features are computed and before FEATURES_OK, with `dev.features` tentative. May
   * drop features with `dev.clearFeature(bit)`; throwing refuses the device.
   */
  validate?(dev: VirtioBusDevice): void | Promise<void>;
  /** Sets the device up (findVqs, config reads). DRIVER_OK is set afterwards unless `dev.ready()` was called. */
  probe(dev: VirtioBusDevice): Promise<void>;
  /** Releases the device; the bus resets it and deletes its queues afterwards if the driver did not. */
  remove(dev: VirtioBusDevice): Promise<void>;
  /** The device signalled a configuration change (also how DEVICE_NEEDS_RESET is announced). */
  configChanged?(dev: VirtioBusDevice): void;
}

export type ProbeErrorCode =
  /** The device does not offer VIRTIO_F_VERSION_1 and its transport is not a legacy one. */
  | 'LEGACY_DEVICE'
  /** The driver's `validate` refused the device. */
  | 'VALIDATE_FAILED'
  /** The device did not keep FEATURES_OK after the driver wrote it (§3.1.1 step 6). */
  | 'FEATURES_NOT_ACCEPTED'
  /** The driver's `probe` failed. */
  | 'PROBE_FAILED'
  /** Setting DRIVER_OK failed, or a transport call failed during the sequence. */
  | 'TRANSPORT_FAILED';

/** Initializing a device for a driver failed; the device status then has FAILED set. */
export class ProbeError extends VirtioError<ProbeErrorCode> {}

export type ConfigReadErrorCode =
  /** config_generation kept changing across a configuration read. */
  | 'CONFIG_GENERATION_UNSTABLE'
  /** The transport returned fewer bytes than asked. */
  | 'CONFIG_SHORT_READ';

/** Reading the device configuration space failed (the device's fault, seen by the driver). */
export class ConfigReadError extends DeviceFault<ConfigReadErrorCode> {}
