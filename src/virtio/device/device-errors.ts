/**
 * Errors of the device model's state machine ({@link DeviceController}). The guest-caused ones are
 * {@link GuestFault}s: the controller reports each through its `onFault` hook and, when the device can no longer
 * trust its state, sets DEVICE_NEEDS_RESET. None of them is ever thrown into a transport.
 */
import { GuestFault, VirtioError } from '../errors.js';

export type StatusErrorCode =
  /** A status write cleared a bit the driver had set (§2.1.1: the driver MUST NOT clear a device status bit). */
  | 'STATUS_BIT_CLEARED'
  /** A status write set bits out of the §3.1.1 order (DRIVER before ACKNOWLEDGE, DRIVER_OK before FEATURES_OK...). */
  | 'STATUS_OUT_OF_ORDER'
  /** A status write set a bit the spec does not define (or the device-owned DEVICE_NEEDS_RESET). */
  | 'STATUS_RESERVED_BIT'
  /** The driver tried to advance the status while DEVICE_NEEDS_RESET was set. */
  | 'STATUS_NEEDS_RESET'
  /** A queue was enabled before FEATURES_OK or after DRIVER_OK (§3.1.1 step 7). */
  | 'QUEUE_ENABLE_OUT_OF_ORDER'
  /** A queue index the device does not have. */
  | 'QUEUE_INDEX_OUT_OF_RANGE'
  /** A notification before DRIVER_OK (§3.1.1: the driver MUST NOT notify before DRIVER_OK) or to a queue not live. */
  | 'NOTIFY_NOT_LIVE'
  /** A configuration-space access outside the device's configuration space. */
  | 'CONFIG_OUT_OF_RANGE';

/** The driver broke the device status protocol (§2.1, §3.1). */
export class StatusError extends GuestFault<StatusErrorCode> {}

export type FeatureErrorCode =
  /** The driver accepted a feature the device did not offer (§2.2.1). */
  | 'FEATURE_NOT_OFFERED'
  /** A modern device needs VIRTIO_F_VERSION_1 accepted (§6.1). */
  | 'VERSION_1_NOT_ACCEPTED'
  /** The device model refused the combination (`VirtioDevice.validateFeatures`). */
  | 'FEATURES_REJECTED'
  /** Driver features written outside the window DRIVER..FEATURES_OK (§3.1.1 step 4). */
  | 'FEATURES_WRITE_OUT_OF_ORDER';

/** Feature negotiation failed (§2.2): FEATURES_OK does not stick, or the write was ignored. */
export class FeatureError extends GuestFault<FeatureErrorCode> {}

export type DeviceModelErrorCode = 'DEVICE_ACTIVATE_FAILED' | 'DEVICE_NOTIFY_FAILED' | 'DEVICE_CONFIG_FAILED';

/**
 * The device model itself threw something that is not a guest fault (a host resource it could not open, a bug).
 * The controller still answers with DEVICE_NEEDS_RESET, since the device cannot serve the driver any more; the
 * original error is the `cause`.
 */
export class DeviceModelError extends VirtioError<DeviceModelErrorCode> {}
