/**
 * What every driver's errors share: a stable `code` and the offending `value` (VirtioError), and the check that
 * a device is bound to the driver asking for its per-device state.
 */
import type { VirtioBusDevice } from '../virtio/driver/virtio-bus-device.js';
import type { VirtioDriver } from '../virtio/driver/virtio-driver.js';
import { VirtioError, type VirtioErrorOptions } from '../virtio/errors.js';

/** Base of the drivers' error classes (BlkDriverError, NetDriverError...). */
export abstract class DriverError<Code extends string = string> extends VirtioError<Code> {}

/**
 * The per-device state (`dev.driverData`) that `driver` stored at probe, if `dev` is bound to it and the state is a
 * `type`; otherwise throws the error `notBound` makes, whose message names the device, the driver and, when the
 * probe failed, why (the probe error is also the cause).
 */
export function boundData<T>(
  dev: VirtioBusDevice,
  driver: VirtioDriver,
  type: abstract new (...args: never[]) => T,
  notBound: (message: string, options: VirtioErrorOptions | undefined) => Error,
): T {
  const data: unknown = dev.driverData;
  if (dev.driver === driver && data instanceof type) return data;
  const cause = dev.probeError;
  throw notBound(
    `${dev.name} is not bound to ${driver.name}${cause === undefined ? '' : `: ${cause.message}`}`,
    cause === undefined ? undefined : { cause },
  );
}

/** The message of a QUEUE_BROKEN error: which device and queue, and why the queue broke when that is known. */
export function queueBrokenMessage(dev: VirtioBusDevice, queueName: string, cause: unknown): string {
  return `${dev.name}: queue ${queueName} is broken${cause instanceof Error ? `: ${cause.message}` : ''}`;
}
