/**
 * Errors of the vhost-user transport. Both kinds end the connection: the front-end (QEMU, UML) broke the
 * protocol, and "If back-end detects some error ... it may also close the connection" (vhost-user.rst,
 * Communication). They are returned by the session, never thrown into the event loop; every fd that came with
 * the offending message is closed by then.
 *
 * A guest's fault (a bad ring, a bad chain) is not one of these: it goes the core's way (a {@link GuestFault},
 * the device marked DEVICE_NEEDS_RESET) and the connection stays up.
 */
import { VirtioError } from '../../virtio/errors.js';

export type VhostUserProtocolErrorCode =
  /** flags bits 0–1 are not version 1. */
  | 'BAD_VERSION'
  /** A reserved flag bit, or REPLY on a request (or missing on a reply). */
  | 'BAD_FLAGS'
  /** The header announces more than MAX_PAYLOAD_SIZE bytes. */
  | 'PAYLOAD_TOO_LARGE'
  /** A known request whose payload size does not fit its layout. */
  | 'BAD_PAYLOAD_SIZE'
  /** A request code the protocol does not define. */
  | 'UNKNOWN_REQUEST'
  /** More or fewer fds than the request carries. */
  | 'WRONG_FD_COUNT';

/** The byte stream is not a well-formed vhost-user message (the parser's verdict). */
export class VhostUserProtocolError extends VirtioError<VhostUserProtocolErrorCode> {}

export type VhostUserSessionErrorCode =
  /** A field holds a value the protocol does not allow (reserved bits, enable not 0/1, ...). */
  | 'BAD_VALUE'
  /** The fds do not match the content (nregions, the "no fd" bit of SET_VRING_KICK/CALL/ERR). */
  | 'WRONG_FD_COUNT'
  /** A vring index the device does not have. */
  | 'RING_INDEX_OUT_OF_RANGE'
  /** SET_VRING_NUM not a power of two, 0, or above the queue's maximum. */
  | 'BAD_RING_SIZE'
  /** A ring address outside every region of the memory table (or a part crossing a region's end). */
  | 'RING_ADDRESS_NOT_MAPPED'
  /** A message that needs the memory table before SET_MEM_TABLE / ADD_MEM_REG. */
  | 'NO_MEMORY_TABLE'
  /** A memory table or region that cannot be right: empty, past 2^53, too many regions, overlapping. */
  | 'BAD_MEMORY_REGION'
  /** The host could not map a region's fd. */
  | 'MAP_FAILED'
  /** REM_MEM_REG names a region that is not in the table. */
  | 'REGION_NOT_FOUND'
  /** SET_FEATURES with a bit GET_FEATURES did not offer. */
  | 'FEATURE_NOT_OFFERED'
  /** SET_PROTOCOL_FEATURES with a bit GET_PROTOCOL_FEATURES did not offer. */
  | 'PROTOCOL_FEATURE_NOT_OFFERED'
  /** The device refused the acked features (FEATURES_OK did not stick: VERSION_1 missing, validateFeatures). */
  | 'FEATURES_REJECTED'
  /** A request whose feature ringvm does not offer (logging, postcopy, inflight, IOTLB, ...). */
  | 'UNSUPPORTED_REQUEST'
  /** A bug: something threw that is not a vhost-user error (the cause is attached). Still ends the connection. */
  | 'INTERNAL_ERROR';

/** The front-end sent something the back-end cannot accept (the session's verdict). */
export class VhostUserSessionError extends VirtioError<VhostUserSessionErrorCode> {}

/** Whatever ends a vhost-user connection. */
export type VhostUserError = VhostUserProtocolError | VhostUserSessionError;
