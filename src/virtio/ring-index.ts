/**
 * Free-running 16-bit ring index arithmetic (VIRTIO 1.2 §2.7.6, §2.7.8): avail.idx and used.idx count up and
 * wrap at 2^16; positions in a ring of size N are `idx & (N - 1)` (N is a power of two for split rings).
 */

export const RING_INDEX_MASK = 0xffff;

/** `(a + n) mod 2^16`. */
export function ringAdd(a: number, n: number): number {
  return (a + n) & RING_INDEX_MASK;
}

/** How far `to` is ahead of `from`, mod 2^16. */
export function ringDistance(from: number, to: number): number {
  return (to - from) & RING_INDEX_MASK;
}

/**
 * The spec's `vring_need_event(event_idx, new_idx, old_idx)`: whether moving an index from `oldIdx` to `newIdx`
 * crossed `eventIdx`, i.e. whether the other side asked to be notified for this step (§2.7.7.2, §2.7.10.2).
 */
export function needEvent(eventIdx: number, newIdx: number, oldIdx: number): boolean {
  return ((newIdx - eventIdx - 1) & RING_INDEX_MASK) < ((newIdx - oldIdx) & RING_INDEX_MASK);
}
