/**
 * `QueueError`: every way a driver (guest) can break a split virtqueue, as the device side sees it (VIRTIO 1.2
 * §2.7). Raised by {@link SplitQueue.activate} (bad configuration) and {@link SplitQueue.popChain} (bad ring or
 * chain). It is a {@link GuestFault}: the device reports it through `DeviceContext.fail`, which sets
 * DEVICE_NEEDS_RESET; the queue stays broken until it is reset.
 *
 * Each code names one check; the numbers in brackets are the items of the project's hostile-input note.
 */
import { GuestFault } from '../errors.js';

export type QueueErrorCode =
  /** [1] Queue size 0, above the device maximum, or not a power of two (§2.7). `value`: the size. */
  | 'QUEUE_SIZE_INVALID'
  /** [2] A ring part not aligned to 16 / 2 / 4 bytes (§2.7.1). `value`: the address. */
  | 'QUEUE_MISALIGNED'
  /** [2] A ring part (with its event field) not inside one guest memory region. `value`: the address. */
  | 'QUEUE_OUTSIDE_MEMORY'
  /** The queue was activated without being enabled (queue_enable / QueueReady). `value`: the queue index. */
  | 'QUEUE_NOT_READY'
  /** [5] avail.idx moved more than the queue size past the last index seen. `value`: avail.idx. */
  | 'AVAIL_IDX_JUMP'
  /** [16] More chains outstanding than the ring has descriptors. `value`: new + in flight + used unpublished. */
  | 'TOO_MANY_IN_FLIGHT'
  /** [6] An avail ring entry ≥ queue size. `value`: the head index. */
  | 'HEAD_OUT_OF_RANGE'
  /** [16] A head made available again before the device returned it. `value`: the head index. */
  | 'HEAD_IN_FLIGHT'
  /** [7] `next` ≥ queue size, or ≥ the entry count inside an indirect table. `value`: `next`. */
  | 'DESC_NEXT_OUT_OF_RANGE'
  /** [8] A loop, or a chain longer than the queue size (or the indirect table). `value`: the head index. */
  | 'CHAIN_TOO_LONG'
  /** [9] A chain longer than 2^32 bytes in total, or a part whose length does not fit a le32. `value`: bytes. */
  | 'CHAIN_LENGTH_OVERFLOW'
  /** [9, 10] A buffer outside guest memory, across a hole, or wrapping past 2^64. `value`: the address (bigint). */
  | 'DESC_ADDRESS_INVALID'
  /** [12] A device-readable descriptor after a device-writable one (§2.7.4.2). `value`: the descriptor index. */
  | 'READABLE_AFTER_WRITABLE'
  /** [13] Indirect table length 0, not a multiple of 16, over 65535 entries, or not in one region. `value`: len or addr. */
  | 'INDIRECT_TABLE_INVALID'
  /** [14] VIRTQ_DESC_F_INDIRECT inside an indirect table (§2.7.5.3.1). `value`: the entry index. */
  | 'INDIRECT_NESTED'
  /** [14] VIRTQ_DESC_F_INDIRECT together with VIRTQ_DESC_F_NEXT (§2.7.5.3.1). `value`: the descriptor index. */
  | 'INDIRECT_WITH_NEXT'
  /** [15] VIRTQ_DESC_F_INDIRECT without VIRTIO_F_INDIRECT_DESC negotiated (§2.7.5.3.1). `value`: the index. */
  | 'INDIRECT_NOT_NEGOTIATED';

/**
 * The driver broke a split virtqueue. Constructed as `new QueueError(code, message, value, { cause })` (the
 * {@link GuestFault} constructor); `value` is the offending value (see {@link QueueErrorCode}).
 */
export class QueueError extends GuestFault<QueueErrorCode> {}
