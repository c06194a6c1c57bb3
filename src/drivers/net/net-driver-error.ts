/** The virtio-net driver's error class and codes (src/drivers/net). */
import { DriverError } from '../driver-error.js';

export type NetDriverErrorCode =
  /** A bad argument to a call (frame size, queue number, MAC, VLAN id...), thrown before anything is sent. */
  | 'INVALID_ARGUMENT'
  /** The call needs a feature the device did not negotiate (an offload, the control queue, a command class). */
  | 'UNSUPPORTED'
  /** A queue broke (the device returned a bad used element); the cause is the queue's error. */
  | 'QUEUE_BROKEN'
  /** The device was removed. */
  | 'REMOVED'
  | 'NOT_BOUND'
  /** The device's configuration cannot be driven (max_virtqueue_pairs out of range, queues missing...). */
  | 'BAD_CONFIG'
  /** The device offers features that depend on one it does not offer (Linux VIRTNET_FAIL_ON). */
  | 'BAD_FEATURES'
  /** The device's used receive buffers do not make up a frame: the frame is dropped and counted. */
  | 'BAD_FRAME'
  /** The device answered a control command with VIRTIO_NET_ERR (or no ack at all). */
  | 'COMMAND_FAILED';

export class NetDriverError extends DriverError<NetDriverErrorCode> {}
