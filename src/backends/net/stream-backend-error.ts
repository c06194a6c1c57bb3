/**
 * `StreamBackendError`: a stream-socket or passt back end could not be set up (bad options, nothing to connect
 * to, the address is taken, passt failed to start). Frame-level refusals during operation are the device
 * contract's `NetBackendError` instead.
 */
import { VirtioError } from '../../virtio/errors.js';

export type StreamBackendErrorCode =
  | 'INVALID_OPTION'
  | 'LISTEN_FAILED'
  | 'ADDRESS_IN_USE'
  | 'PATH_NOT_SOCKET'
  | 'CONNECT_FAILED'
  | 'PASST_FAILED'
  | 'CLOSED';

export class StreamBackendError extends VirtioError<StreamBackendErrorCode> {}

/** The message of any thrown value. */
export function describeError(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
