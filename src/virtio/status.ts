/** Device status field bits (VIRTIO 1.2 §2.1). */
export const DeviceStatus = {
  ACKNOWLEDGE: 1,
  DRIVER: 2,
  DRIVER_OK: 4,
  FEATURES_OK: 8,
  DEVICE_NEEDS_RESET: 64,
  FAILED: 128,
} as const;

/** Every defined status bit. */
export const DEVICE_STATUS_MASK =
  DeviceStatus.ACKNOWLEDGE |
  DeviceStatus.DRIVER |
  DeviceStatus.DRIVER_OK |
  DeviceStatus.FEATURES_OK |
  DeviceStatus.DEVICE_NEEDS_RESET |
  DeviceStatus.FAILED;

/** A readable rendering of a status byte, e.g. `ACKNOWLEDGE|DRIVER|FEATURES_OK`. */
export function describeStatus(status: number): string {
  if (status === 0) return 'RESET';
  const names = Object.entries(DeviceStatus)
    .filter(([, bit]) => (status & bit) !== 0)
    .map(([name]) => name);
  const unknown = status & ~DEVICE_STATUS_MASK & 0xff;
  if (unknown !== 0) names.push(`0x${unknown.toString(16)}`);
  return names.join('|');
}
