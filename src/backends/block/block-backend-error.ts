/**
 * `BlockBackendError`: a block back end could not be opened. The message names the path and says what was
 * wrong; `code` is stable and `value` is the path. (Failures of I/O on an open back end are `HostIoError`s: the
 * device answers the request with VIRTIO_BLK_S_IOERR.)
 */
import { VirtioError, type VirtioErrorOptions } from '../../virtio/errors.js';

export type BlockBackendErrorCode =
  /** The path does not exist. */
  | 'NOT_FOUND'
  /** The host refused access (EACCES, EPERM, or a read-write open on a read-only file system). */
  | 'PERMISSION_DENIED'
  /** The path is a directory, FIFO, socket or character device. */
  | 'NOT_A_REGULAR_FILE'
  /** The path is a block device: raw images only (a block-device back end is a separate concern). */
  | 'BLOCK_DEVICE_UNSUPPORTED'
  /** Any other failure while opening (the `cause` has the host error). */
  | 'OPEN_FAILED';

export class BlockBackendError extends VirtioError<BlockBackendErrorCode> {
  /** The path that could not be opened. */
  readonly path: string;

  constructor(code: BlockBackendErrorCode, path: string, message: string, options?: VirtioErrorOptions) {
    super(code, `${path}: ${message}`, path, options);
    this.path = path;
  }
}
