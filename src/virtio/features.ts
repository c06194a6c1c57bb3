/**
 * Feature bits (VIRTIO 1.2 §6 "Reserved Feature Bits") and helpers. Feature sets are `bigint` bitmaps: bits run
 * past 32 (VERSION_1 is bit 32), and transports move them 32 bits at a time.
 */

/** Reserved (device-independent) feature bit numbers, §6. */
export const VirtioFeature = {
  /** Descriptors may point to indirect descriptor tables (§2.7.5.3). */
  VIRTIO_F_INDIRECT_DESC: 28,
  /** used_event / avail_event notification suppression (§2.7.7, §2.7.10). */
  VIRTIO_F_EVENT_IDX: 29,
  /** Compliance with virtio 1.x (non-legacy). */
  VIRTIO_F_VERSION_1: 32,
  /** The device is behind an IOMMU / limited platform access. */
  VIRTIO_F_ACCESS_PLATFORM: 33,
  /** Packed virtqueue layout (§2.8). */
  VIRTIO_F_RING_PACKED: 34,
  /** Buffers are used in the order they were made available. */
  VIRTIO_F_IN_ORDER: 35,
  /** Memory accesses need platform ordering (hardware devices). */
  VIRTIO_F_ORDER_PLATFORM: 36,
  VIRTIO_F_SR_IOV: 37,
  /** The driver passes extra data in its notifications. */
  VIRTIO_F_NOTIFICATION_DATA: 38,
  VIRTIO_F_NOTIF_CONFIG_DATA: 39,
  /** Individual queues can be reset. */
  VIRTIO_F_RING_RESET: 40,
} as const;

export type VirtioFeatureName = keyof typeof VirtioFeature;

/** The bit for feature number `bit`. */
export function featureBit(bit: number): bigint {
  return 1n << BigInt(bit);
}

/** Whether `features` has bit number `bit` set. */
export function hasFeature(features: bigint, bit: number): boolean {
  return (features & featureBit(bit)) !== 0n;
}

/** A feature bitmap with each of `bits` set. */
export function featureSet(...bits: readonly number[]): bigint {
  let set = 0n;
  for (const b of bits) set |= featureBit(b);
  return set;
}

/** The feature numbers set in `features`, ascending. */
export function featureBits(features: bigint): number[] {
  const out: number[] = [];
  for (let bit = 0; features >> BigInt(bit) !== 0n; bit++) if (hasFeature(features, bit)) out.push(bit);
  return out;
}

/** The 32-bit word `select` of a feature bitmap (what a transport shows through a feature-select register). */
export function featureWord(features: bigint, select: number): number {
  return Number((features >> BigInt(32 * select)) & 0xffff_ffffn);
}

/** `features` with its 32-bit word `select` replaced by `value`. */
export function withFeatureWord(features: bigint, select: number, value: number): bigint {
  const shift = BigInt(32 * select);
  return (features & ~(0xffff_ffffn << shift)) | (BigInt(value >>> 0) << shift);
}

/** Device-independent feature bits this core implements for split rings. */
export const TRANSPORT_FEATURES = featureSet(
  VirtioFeature.VIRTIO_F_INDIRECT_DESC,
  VirtioFeature.VIRTIO_F_EVENT_IDX,
  VirtioFeature.VIRTIO_F_VERSION_1,
);
