/**
 * # virtio-pci legacy transport (VIRTIO 1.2 §4.1.4.10 and §4.1.5.1.1.1 "legacy interfaces"; virtio 0.9.5)
 *
 * `VirtioPciLegacyTransport` drives a transitional virtio PCI function (device id 0x1000–0x103F) through its
 * legacy I/O BAR (BAR0) instead of the modern capabilities — what QEMU's `disable-modern=on` leaves, and what
 * pre-1.0 drivers use. It implements the same {@link VirtioConfigOps} (with `legacy: true`), so the same drivers
 * run on it; the bus then negotiates without VIRTIO_F_VERSION_1 and without FEATURES_OK, as Linux does for a
 * legacy device.
 *
 * The legacy header ({@link LegacyCfg}, declared once): 32 feature bits only; queues selected by index, their size
 * fixed by the device (a driver's size wish is ignored, as in Linux's legacy setup_vq) and placed by one page
 * frame number: descriptor table, available ring, then the used ring at the next 4096-byte boundary
 * (`SplitVirtqueue.allocate(..., legacy = true)`); writing PFN 0 disables the queue. With MSI-X enabled two vector
 * registers follow the ISR and the device configuration starts at 24 instead of 20. No config generation (always
 * 0). The configuration is guest-endian, i.e. little-endian on the x86 machines qtest drives.
 *
 * Interrupts and the poller are virtio-pci-transport.ts's, as for the modern transport.
 */
import type { VirtqueueSpec } from '../../virtio/driver/config-ops.js';
import { isValidSplitQueueSize } from '../../virtio/split/layout.js';
import { SplitVirtqueue } from '../../virtio/split/split-virtqueue.js';
import { PciBus, type PciBusOptions, type PciFunction } from './pci-bus-scan.js';
import { PciCapId } from './pci-config.js';
import {
  PciWindow,
  VIRTIO_MSI_NO_VECTOR,
  VIRTIO_PCI_TRANSITIONAL_FIRST,
  VIRTIO_PCI_TRANSITIONAL_LAST,
  VIRTIO_PCI_VENDOR_ID,
  VirtioPciError,
  VirtioPciTransport,
  configureMsix,
  readWindow,
  requireVirtioPciDeviceId,
  writeWindow,
  type LiveQueue,
  type MsixInfo,
  type VirtioPciHost,
  type VirtioPciOptions,
} from './virtio-pci-transport.js';

/** The legacy header in BAR0 (§4.1.4.10): offsets of each register. */
export const LegacyCfg = {
  /** u32, read: the device's feature bits 0..31. */
  HOST_FEATURES: 0,
  /** u32, read/write: the driver's accepted features. */
  GUEST_FEATURES: 4,
  /** u32, read/write: the selected queue's page frame number (address >> 12); 0 disables it. */
  QUEUE_PFN: 8,
  /** u16, read: the selected queue's size (0: no such queue). */
  QUEUE_NUM: 12,
  /** u16, read/write. */
  QUEUE_SEL: 14,
  /** u16, write: the index of the queue with new buffers. */
  QUEUE_NOTIFY: 16,
  /** u8, read/write. */
  STATUS: 18,
  /** u8, read (clears). */
  ISR: 19,
  /** u16, read/write, only while MSI-X is enabled. */
  CONFIG_MSIX_VECTOR: 20,
  /** u16, read/write, only while MSI-X is enabled: the selected queue's vector. */
  QUEUE_MSIX_VECTOR: 22,
} as const;
/** Where the device-specific configuration starts without / with MSI-X enabled. */
export const LEGACY_CONFIG_OFFSET = 20;
export const LEGACY_CONFIG_OFFSET_MSIX = 24;
/** QUEUE_PFN is the ring address shifted right by this (Linux VIRTIO_PCI_QUEUE_ADDR_SHIFT). */
export const LEGACY_QUEUE_ADDR_SHIFT = 12;
/** PFNs are 32 bits: rings must lie below 2^44. */
const LEGACY_MAX_PFN = 2 ** 32 - 1;
/** The legacy interface has no queue count; queues are probed by index until QUEUE_NUM reads 0. */
const LEGACY_MAX_QUEUES = 0x10000;

/** Whether `fn` is a transitional virtio function, i.e. has the legacy interface (§4.1.2.1). */
export function isTransitionalVirtioPci(fn: PciFunction): boolean {
  return (
    fn.vendorId === VIRTIO_PCI_VENDOR_ID &&
    fn.deviceId >= VIRTIO_PCI_TRANSITIONAL_FIRST &&
    fn.deviceId <= VIRTIO_PCI_TRANSITIONAL_LAST
  );
}

export class VirtioPciLegacyTransport extends VirtioPciTransport {
  /** The legacy interface: the bus negotiates without VERSION_1 and FEATURES_OK. */
  readonly legacy = true;
  /** Offset of the device configuration in BAR0 (20, or 24 with MSI-X). */
  readonly configOffset: number;

  readonly #bar: PciWindow;
  readonly #config: PciWindow;

  private constructor(init: {
    host: VirtioPciHost;
    pci: PciFunction;
    deviceId: number;
    bar: PciWindow;
    msix: MsixInfo | undefined;
    options: VirtioPciOptions;
  }) {
    super(init);
    this.#bar = init.bar;
    this.configOffset = init.msix === undefined ? LEGACY_CONFIG_OFFSET : LEGACY_CONFIG_OFFSET_MSIX;
    this.#config = new PciWindow(
      init.host,
      init.bar.bar,
      this.configOffset,
      Math.max(0, init.bar.length - this.configOffset),
    );
  }

  /**
   * Sets up a transitional virtio PCI function for the legacy interface: BARs, I/O decoding and bus mastering,
   * MSI-X (when present and not `interrupts: 'isr'`). Rejects with a {@link VirtioPciError}: NOT_VIRTIO, or
   * MISSING_CAPABILITY for a modern-only device (no legacy I/O BAR).
   */
  static async open(
    host: VirtioPciHost,
    fn: PciFunction,
    options: VirtioPciOptions = {},
  ): Promise<VirtioPciLegacyTransport> {
    const deviceId = requireVirtioPciDeviceId(fn);
    const bars = await fn.assignBars();
    const bar0 = bars[0];
    if (!isTransitionalVirtioPci(fn) || bar0?.kind !== 'io' || bar0.size < LEGACY_CONFIG_OFFSET) {
      throw new VirtioPciError(
        'MISSING_CAPABILITY',
        `${fn.location}: no legacy I/O BAR (device id 0x${fn.deviceId.toString(16)}: a modern-only device?)`,
        fn.deviceId,
      );
    }
    await fn.enable({ busMaster: true });
    const msixCap = (await fn.capabilities()).find((c) => c.id === PciCapId.MSIX)?.offset;
    const msix = await configureMsix(host, fn, bars, msixCap, options.interrupts);
    return new VirtioPciLegacyTransport({
      host,
      pci: fn,
      deviceId,
      bar: new PciWindow(host, bar0, 0, bar0.size),
      msix,
      options,
    });
  }

  // ---- VirtioConfigOps ----

  getStatus(): Promise<number> {
    return this.#bar.r8(LegacyCfg.STATUS);
  }

  protected writeStatus(status: number): Promise<void> {
    return this.#bar.w8(LegacyCfg.STATUS, status);
  }

  protected resetRegister(): Promise<void> {
    return this.#bar.w8(LegacyCfg.STATUS, 0);
  }

  async getFeatures(): Promise<bigint> {
    return BigInt(await this.#bar.r32(LegacyCfg.HOST_FEATURES));
  }

  /** Writes feature bits 0..31 (the legacy interface has no others). */
  finalizeFeatures(features: bigint): Promise<void> {
    return this.#bar.w32(LegacyCfg.GUEST_FEATURES, Number(features & 0xffff_ffffn));
  }

  async readConfig(offset: number, length: number): Promise<Uint8Array> {
    this.#checkConfig(offset, length);
    return readWindow(this.#config, offset, length);
  }

  async writeConfig(offset: number, data: Uint8Array): Promise<void> {
    this.#checkConfig(offset, data.length);
    return writeWindow(this.#config, offset, data);
  }

  /** The legacy interface has no generation counter. */
  generation(): Promise<number> {
    return Promise.resolve(0);
  }

  // ---- queue set-up ----

  protected queueCount(): Promise<number> {
    return Promise.resolve(LEGACY_MAX_QUEUES);
  }

  protected async setConfigVector(vector: number): Promise<number> {
    await this.#bar.w16(LegacyCfg.CONFIG_MSIX_VECTOR, vector);
    return this.#bar.r16(LegacyCfg.CONFIG_MSIX_VECTOR);
  }

  protected async disableQueue(index: number): Promise<void> {
    await this.#bar.w16(LegacyCfg.QUEUE_SEL, index);
    await this.#bar.w32(LegacyCfg.QUEUE_PFN, 0);
  }

  protected readIsr(): Promise<number> {
    return this.#bar.r8(LegacyCfg.ISR);
  }

  protected async setupQueue(
    index: number,
    spec: VirtqueueSpec,
    vector: number,
    features: bigint,
  ): Promise<LiveQueue> {
    const b = this.#bar;
    await b.w16(LegacyCfg.QUEUE_SEL, index);
    const [size, pfn] = await Promise.all([b.r16(LegacyCfg.QUEUE_NUM), b.r32(LegacyCfg.QUEUE_PFN)]);
    if (size === 0) throw this.queueError(`queue ${index} does not exist (size 0)`, index);
    if (pfn !== 0)
      throw this.queueError(`queue ${index} is already active (PFN 0x${pfn.toString(16)})`, index);
    if (!isValidSplitQueueSize(size)) {
      throw this.queueError(`queue ${index}: the device's size ${size} is not a power of two`, index);
    }
    const addresses = SplitVirtqueue.allocate(this.allocator, size, true);
    try {
      const ringPfn = addresses.descTable / 2 ** LEGACY_QUEUE_ADDR_SHIFT;
      if (!Number.isInteger(ringPfn) || ringPfn > LEGACY_MAX_PFN) {
        throw this.queueError(
          `queue ${index}: ring at 0x${addresses.descTable.toString(16)} has no 32-bit PFN`,
          index,
        );
      }
      if (vector !== VIRTIO_MSI_NO_VECTOR) {
        await b.w16(LegacyCfg.QUEUE_MSIX_VECTOR, vector);
        const got = await b.r16(LegacyCfg.QUEUE_MSIX_VECTOR);
        if (got !== vector)
          throw this.queueError(`queue ${index}: MSI-X vector ${vector} refused (${got})`, index);
      }
      await b.w32(LegacyCfg.QUEUE_PFN, ringPfn);
      const vq = this.makeQueue(index, spec, size, addresses, features, () =>
        b.w16(LegacyCfg.QUEUE_NOTIFY, index),
      );
      return { vq, addresses, vector };
    } catch (e) {
      SplitVirtqueue.release(this.allocator, addresses);
      throw e;
    }
  }

  #checkConfig(offset: number, length: number): void {
    const size = this.#config.length;
    if (
      !Number.isInteger(offset) ||
      !Number.isInteger(length) ||
      offset < 0 ||
      length < 0 ||
      offset + length > size
    ) {
      throw new VirtioPciError(
        'INVALID_STATE',
        `${this.location}: config access ${offset}+${length} is outside the ${size}-byte legacy config region`,
        offset,
      );
    }
  }
}

/**
 * Scans bus 0 and opens every transitional virtio PCI function through its legacy interface (in slot order).
 * Modern-only functions are skipped. Pass the result to `VirtioBus.addDevice`.
 */
export async function openVirtioPciLegacyDevices(
  host: VirtioPciHost,
  options: VirtioPciOptions & { readonly bus?: PciBusOptions } = {},
): Promise<VirtioPciLegacyTransport[]> {
  const functions = await new PciBus(host, options.bus ?? {}).scan();
  const out: VirtioPciLegacyTransport[] = [];
  for (const fn of functions) {
    if (isTransitionalVirtioPci(fn)) out.push(await VirtioPciLegacyTransport.open(host, fn, options));
  }
  return out;
}
