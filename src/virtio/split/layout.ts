/**
 * Split virtqueue memory layout (VIRTIO 1.2 §2.7). Every offset and size of the three ring parts is declared
 * here once.
 *
 * ```
 * Descriptor table (16-byte aligned), N entries of 16 bytes:
 *   le64 addr | le32 len | le16 flags | le16 next
 * Available ring / driver area (2-byte aligned):
 *   le16 flags | le16 idx | le16 ring[N] | le16 used_event (only with VIRTIO_F_EVENT_IDX)
 * Used ring / device area (4-byte aligned):
 *   le16 flags | le16 idx | { le32 id; le32 len } ring[N] | le16 avail_event (only with VIRTIO_F_EVENT_IDX)
 * ```
 */

/** Largest queue size a split ring may have (§2.7: Queue Size is at most 32768). */
export const SPLIT_QUEUE_MAX_SIZE = 32768;

export const DESC_SIZE = 16;
export const DESC_ADDR_OFFSET = 0;
export const DESC_LEN_OFFSET = 8;
export const DESC_FLAGS_OFFSET = 12;
export const DESC_NEXT_OFFSET = 14;
export const DESC_TABLE_ALIGN = 16;

/** Descriptor flags (§2.7.5). */
export const VIRTQ_DESC_F_NEXT = 1;
export const VIRTQ_DESC_F_WRITE = 2;
export const VIRTQ_DESC_F_INDIRECT = 4;

export const AVAIL_FLAGS_OFFSET = 0;
export const AVAIL_IDX_OFFSET = 2;
export const AVAIL_RING_OFFSET = 4;
export const AVAIL_ELEM_SIZE = 2;
export const AVAIL_RING_ALIGN = 2;
/** VRING_AVAIL_F_NO_INTERRUPT: the driver does not want interrupts (ignored with EVENT_IDX). */
export const VIRTQ_AVAIL_F_NO_INTERRUPT = 1;

export const USED_FLAGS_OFFSET = 0;
export const USED_IDX_OFFSET = 2;
export const USED_RING_OFFSET = 4;
export const USED_ELEM_SIZE = 8;
export const USED_ELEM_ID_OFFSET = 0;
export const USED_ELEM_LEN_OFFSET = 4;
export const USED_RING_ALIGN = 4;
/** Legacy interfaces place the used ring on the next 4096-byte boundary after the avail ring. */
export const LEGACY_USED_RING_ALIGN = 4096;
/** VRING_USED_F_NO_NOTIFY: the device does not want kicks (ignored with EVENT_IDX). */
export const VIRTQ_USED_F_NO_NOTIFY = 1;

/** Largest indirect table, in descriptors (its length field is a u32, but the device bounds it). */
export const INDIRECT_TABLE_MAX_ENTRIES = 65535;

/** Bytes of the descriptor table for `size` entries. */
export function descTableSize(size: number): number {
  return DESC_SIZE * size;
}

/** Bytes of the available ring for `size` entries, including used_event. */
export function availRingSize(size: number): number {
  return AVAIL_RING_OFFSET + AVAIL_ELEM_SIZE * size + 2;
}

/** Offset of used_event in the available ring. */
export function usedEventOffset(size: number): number {
  return AVAIL_RING_OFFSET + AVAIL_ELEM_SIZE * size;
}

/** Bytes of the used ring for `size` entries, including avail_event. */
export function usedRingSize(size: number): number {
  return USED_RING_OFFSET + USED_ELEM_SIZE * size + 2;
}

/** Offset of avail_event in the used ring. */
export function availEventOffset(size: number): number {
  return USED_RING_OFFSET + USED_ELEM_SIZE * size;
}

/** Where the three parts of a split queue live in guest memory. */
export interface SplitQueueAddresses {
  /** Descriptor table. */
  readonly descTable: number;
  /** Available ring (driver area). */
  readonly availRing: number;
  /** Used ring (device area). */
  readonly usedRing: number;
}

/** Whether `size` is a valid split queue size: a power of two from 1 to 32768. */
export function isValidSplitQueueSize(size: number): boolean {
  return Number.isInteger(size) && size >= 1 && size <= SPLIT_QUEUE_MAX_SIZE && (size & (size - 1)) === 0;
}
