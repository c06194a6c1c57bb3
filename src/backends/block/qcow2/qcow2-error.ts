/**
 * `Qcow2Error`: a qcow2 image could not be opened, created or used. The message names the image and, for a
 * corrupt image, the problem and the file offset; `code` is stable and `value` is the offending value (an
 * offset, a feature mask, a path). Failures of the host file itself are `HostIoError`s.
 */
import { VirtioError, type VirtioErrorOptions } from '../../../virtio/errors.js';

export type Qcow2ErrorCode =
  /** The file does not start with the qcow2 magic. */
  | 'NOT_QCOW2'
  /** A version other than 2 or 3. */
  | 'UNSUPPORTED_VERSION'
  /** An incompatible feature (unknown bit, external data file, non-zlib compression, extended L2), encryption. */
  | 'UNSUPPORTED_FEATURE'
  /** A header field out of range (cluster_bits, header_length, refcount_order, backing name...). */
  | 'INVALID_HEADER'
  /** A table or cluster lies (partly) past the end of the file. */
  | 'OUT_OF_BOUNDS'
  /** A metadata offset that must be cluster aligned is not, or reserved bits are set. */
  | 'MISALIGNED_OFFSET'
  /** Two metadata structures (or metadata and data) share a cluster. */
  | 'METADATA_OVERLAP'
  /** A used cluster has a refcount lower than its number of references (0 included), or a wrong COPIED flag. */
  | 'REFCOUNT_MISMATCH'
  /** Compressed data that does not inflate to exactly one cluster. */
  | 'BAD_COMPRESSED_DATA'
  /** The image has the corrupt bit set: it may be opened read-only only. */
  | 'CORRUPT_BIT'
  /** A structural error found while the image was in use: it stays read-only from then on. */
  | 'CORRUPT'
  /** A backing file that does not exist or cannot be opened. */
  | 'BACKING_NOT_FOUND'
  /** A backing chain that comes back to an image already in it. */
  | 'BACKING_LOOP'
  /** A write (or resize, discard...) on an image opened read-only. */
  | 'READ_ONLY'
  /** A refcount would exceed refcount_bits. */
  | 'REFCOUNT_OVERFLOW'
  /** A bad argument to create / resize / writeCompressed. */
  | 'INVALID_ARGUMENT';

export class Qcow2Error extends VirtioError<Qcow2ErrorCode> {
  /** The image the error is about. */
  readonly path: string;

  constructor(
    code: Qcow2ErrorCode,
    path: string,
    message: string,
    value: unknown,
    options?: VirtioErrorOptions,
  ) {
    super(code, `${path}: ${message}`, value, options);
    this.path = path;
  }
}

/** Formats a file offset for messages, as qemu-img does (hexadecimal). */
export function offsetHex(offset: number): string {
  return `0x${offset.toString(16)}`;
}
