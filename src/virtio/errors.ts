/**
 * Error classes of the virtio core.
 *
 * Every error carries a stable `code` and the offending `value`. The abstract bases say whose fault it is,
 * because that decides what happens next:
 *
 * - {@link GuestFault}: the driver (guest) broke the spec: a bad ring, a bad address, a bad status write. The
 *   device sets DEVICE_NEEDS_RESET and sends a configuration-change notification; nothing else is affected.
 * - {@link DeviceFault}: the device broke the spec, as seen by a driver: a bad used element. The driver marks
 *   that queue broken.
 * - {@link HostIoError}: a host resource failed (an image file, a socket). The request completes with an
 *   error status; the device carries on.
 * - {@link UsageError}: the caller of this library made a programming error.
 */

export interface VirtioErrorOptions {
  readonly cause?: unknown;
}

export abstract class VirtioError<Code extends string = string> extends Error {
  /** A stable identifier for the condition, e.g. `DESC_NEXT_OUT_OF_RANGE`. */
  readonly code: Code;
  /** The value that was wrong (an address, an index, a status byte...). */
  readonly value: unknown;

  constructor(code: Code, message: string, value: unknown, options?: VirtioErrorOptions) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.value = value;
    this.name = new.target.name;
  }
}

/** The driver side (guest) broke the spec. The device goes to DEVICE_NEEDS_RESET. */
export abstract class GuestFault<Code extends string = string> extends VirtioError<Code> {}

/** The device broke the spec, as seen by the driver side. The driver marks the queue broken. */
export abstract class DeviceFault<Code extends string = string> extends VirtioError<Code> {}

/** A host resource failed; the request completes with an error status. */
export class HostIoError extends VirtioError<'HOST_IO'> {
  constructor(message: string, value: unknown, options?: VirtioErrorOptions) {
    super('HOST_IO', message, value, options);
  }
}

export type UsageErrorCode =
  'INVALID_ARGUMENT' | 'INVALID_STATE' | 'QUEUE_FULL' | 'QUEUE_BROKEN' | 'NOT_IN_FLIGHT' | 'OUT_OF_MEMORY';

/** The library was called wrongly (a programming error in the caller, never guest input). */
export class UsageError extends VirtioError<UsageErrorCode> {}

/** Formats a guest address or length for messages: hexadecimal, as the spec and QEMU print them. */
export function hex(value: number | bigint): string {
  return `0x${value.toString(16)}`;
}
