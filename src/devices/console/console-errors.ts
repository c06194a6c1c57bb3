/**
 * Guest faults of the console device. Each one breaks a MUST of §5.3 in a way the device cannot work around, so
 * the device reports it through `DeviceContext.fail` (DEVICE_NEEDS_RESET). Harmless protocol mistakes (a short
 * or unknown control message, a port id out of range) are not errors: they are ignored and counted, see
 * {@link ConsoleIgnoreReason}.
 */
import { GuestFault } from '../../virtio/errors.js';

export type ConsoleErrorCode =
  /** §5.3.6.1: "The driver MUST NOT put a device-writable buffer in a transmitq". `value`: the queue index. */
  | 'TX_WRITABLE_BUFFER'
  /** §5.3.6.1: "The driver MUST NOT put a device-readable buffer in a receiveq". `value`: the queue index. */
  | 'RX_READABLE_BUFFER'
  /** A receiveq buffer with no writable byte: the device could never fill it (hostile item 11). `value`: queue. */
  | 'RX_BUFFER_EMPTY'
  /** A control receiveq buffer smaller than the 8-byte control header. `value`: its writable length. */
  | 'CONTROL_BUFFER_TOO_SHORT';

export class ConsoleError extends GuestFault<ConsoleErrorCode> {}

/** Why a control message from the driver was ignored (each reason is counted in the device's stats). */
export type ConsoleIgnoreReason =
  /** Fewer readable bytes than the 8-byte header. */
  | 'short-message'
  /** An event number the spec does not define. */
  | 'unknown-event'
  /** An event only the device sends (DEVICE_ADD, DEVICE_REMOVE, CONSOLE_PORT, RESIZE, PORT_NAME). */
  | 'unexpected-event'
  /** A port id the device does not have, or one it never announced with DEVICE_ADD. */
  | 'bad-port-id'
  /** A value other than 0 or 1 where the spec allows only those. */
  | 'bad-value'
  /** A second DEVICE_READY, or PORT_READY for a port already ready. */
  | 'duplicate'
  /** DEVICE_READY or PORT_READY with value 0: the driver failed to set the device or port up. */
  | 'driver-failed';

export const CONSOLE_IGNORE_REASONS: readonly ConsoleIgnoreReason[] = [
  'short-message',
  'unknown-event',
  'unexpected-event',
  'bad-port-id',
  'bad-value',
  'duplicate',
  'driver-failed',
];
