/**
 * Errors of the vhost-user front end ({@link VhostUserFrontend}): the client side of the protocol, where ringvm
 * owns the guest memory and a back end (qemu-storage-daemon, ringvm's own export, any libvhost-user device)
 * serves the device.
 */
import { VirtioError } from '../../virtio/errors.js';

export type VhostUserFrontendErrorCode =
  /** The unix socket could not be connected (no such socket, nobody listening) within the timeout. */
  | 'CONNECT_FAILED'
  /** The back end hung up (or the connection failed); every pending and later call fails with this. */
  | 'DISCONNECTED'
  /** The front end was closed by its owner. */
  | 'CLOSED'
  /** A REPLY_ACK came back nonzero: the back end refused the request. */
  | 'REQUEST_REFUSED'
  /** A reply that does not answer the request sent, or has the wrong size, or is malformed. */
  | 'BAD_REPLY'
  /** No reply within the front end's `replyTimeoutMs`; the connection is dropped. */
  | 'REPLY_TIMEOUT'
  /** Something the back end did not offer (config space without the CONFIG protocol feature, ...). */
  | 'UNSUPPORTED'
  /** A queue cannot be set up (index beyond the back end's queues, bad size). */
  | 'QUEUE_SETUP'
  /** A call in the wrong state (queues already exist, ...) or with a bad argument. */
  | 'INVALID_STATE';

export class VhostUserFrontendError extends VirtioError<VhostUserFrontendErrorCode> {}
