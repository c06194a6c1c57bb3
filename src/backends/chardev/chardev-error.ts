/**
 * `ChardevError`: a host chardev could not be set up (a socket path taken by something else, a connection
 * refused, a file that cannot be opened). Host configuration problems, never guest faults; the message names the
 * path.
 */
import { VirtioError, type VirtioErrorOptions } from '../../virtio/errors.js';

export type ChardevErrorCode =
  /** The path exists and is not a socket: the chardev refuses to replace it. */
  | 'CHARDEV_PATH_NOT_SOCKET'
  /** The socket path has a live server behind it. */
  | 'CHARDEV_PATH_IN_USE'
  /** listen() failed. */
  | 'CHARDEV_LISTEN_FAILED'
  /** connect() failed (client mode without reconnect). */
  | 'CHARDEV_CONNECT_FAILED'
  /** The file could not be opened. */
  | 'CHARDEV_OPEN_FAILED'
  /** start() called twice, or after close(). */
  | 'CHARDEV_STATE';

export class ChardevError extends VirtioError<ChardevErrorCode> {
  /** The socket or file path concerned (also the error's `value`). */
  readonly path: string;

  constructor(code: ChardevErrorCode, message: string, path: string, options?: VirtioErrorOptions) {
    super(code, message, path, options);
    this.path = path;
  }
}

/** The message of an unknown thrown value. */
export function describeError(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
