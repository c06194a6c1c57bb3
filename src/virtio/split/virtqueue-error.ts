/**
 * `VirtqueueError`: every way a device can break a split ring, as seen by the driver side
 * ({@link SplitVirtqueue}). Linux reports these with BAD_RING() in drivers/virtio/virtio_ring.c and marks the
 * queue broken; so does ringvm. The queue's private state (free list, tokens) is left untouched, so the
 * outstanding tokens can still be taken back with `detachUnusedBuf` or `reset`.
 */
import { DeviceFault } from '../errors.js';

export type VirtqueueErrorCode =
  /** A used element's id is not a descriptor index (id ≥ queue size). */
  | 'USED_ID_OUT_OF_RANGE'
  /** A used element's id is not the head of a buffer the driver made available (or it was already used). */
  | 'USED_ID_NOT_HEAD'
  /** A used element's len is larger than the device-writable bytes of that buffer. */
  | 'USED_LEN_TOO_LARGE'
  /** used.idx moved further than the number of buffers made available and not yet used. */
  | 'USED_IDX_JUMP';

/** The device wrote a used ring the driver cannot accept. The queue is broken from then on. */
export class VirtqueueError extends DeviceFault<VirtqueueErrorCode> {}
