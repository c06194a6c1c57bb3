/**
 * # virtio-pci modern transport (VIRTIO 1.2 §4.1)
 *
 * `VirtioPciModernTransport` implements the driver model's {@link VirtioConfigOps} for a virtio PCI function on
 * a qtest-driven QEMU machine ({@link QtestLink}): modern devices (vendor 0x1AF4, device 0x1040 + id) and
 * transitional ones (0x1000–0x103F, device id from the subsystem id), both through the modern capabilities. The
 * legacy I/O BAR of a transitional device is virtio-pci-legacy.ts's.
 *
 * - **Set-up** ({@link VirtioPciModernTransport.open}): BARs sized and assigned, memory decoding and bus mastering
 *   on, the vendor capabilities walked (the first COMMON, NOTIFY, ISR and DEVICE capability each, as §4.1.4
 *   recommends), MSI-X enabled when the function has it.
 * - **Common configuration**: status, 64-bit feature words through the select registers, config_generation,
 *   queue set-up (queue_select, queue_size, the three ring addresses as 32-bit halves, queue_msix_vector,
 *   queue_enable). Accesses that go through a select register are serialized, so two calls never interleave.
 * - **Rings** live in guest RAM shared with QEMU (the link's {@link GuestMemory}), allocated from the link's
 *   {@link GuestAllocator} (above 1 MiB). Drivers allocate their buffers there too (`memory`, `allocator`).
 * - **Kick**: a 16-bit write of the queue index at notify BAR + cap.offset + queue_notify_off ×
 *   notify_off_multiplier.
 * - **Interrupts and the poller**: virtio-pci-transport.ts (MSI-X messages aimed at guest RAM, or the ISR).
 */
import type { VirtqueueSpec } from '../../virtio/driver/config-ops.js';
import { isValidSplitQueueSize } from '../../virtio/split/layout.js';
import { SplitVirtqueue } from '../../virtio/split/split-virtqueue.js';
import { PciBus, type PciBusOptions, type PciFunction } from './pci-bus-scan.js';
import { PciCapId } from './pci-config.js';
import {
  PciWindow,
  VIRTIO_MSI_NO_VECTOR,
  VirtioPciError,
  VirtioPciTransport,
  configureMsix,
  readWindow,
  requireVirtioPciDeviceId,
  virtioPciDeviceId,
  writeWindow,
  type LiveQueue,
  type MsixInfo,
  type VirtioPciHost,
  type VirtioPciOptions,
} from './virtio-pci-transport.js';

export {
  VIRTIO_MSI_NO_VECTOR,
  VIRTIO_PCI_MODERN_DEVICE_BASE,
  VIRTIO_PCI_MODERN_LAST,
  VIRTIO_PCI_TRANSITIONAL_FIRST,
  VIRTIO_PCI_TRANSITIONAL_LAST,
  VIRTIO_PCI_VENDOR_ID,
  VirtioPciError,
  virtioPciDeviceId,
  type VirtioPciErrorCode,
  type VirtioPciHost,
} from './virtio-pci-transport.js';

/** The options of either virtio-pci transport (the name this module has always exported). */
export type VirtioPciModernOptions = VirtioPciOptions;

/** Vendor capability cfg_type values (§4.1.4). */
export const VirtioPciCapType = {
  COMMON: 1,
  NOTIFY: 2,
  ISR: 3,
  DEVICE: 4,
  PCI_CFG: 5,
  SHARED_MEMORY: 8,
  VENDOR: 9,
} as const;

/** `struct virtio_pci_cap` field offsets (within the capability). */
const CAP_CFG_TYPE = 3;
const CAP_BAR = 4;
const CAP_OFFSET = 8;
const CAP_LENGTH = 12;
const CAP_NOTIFY_MULTIPLIER = 16;
const PCI_BAR_COUNT = 6;

/** `struct virtio_pci_common_cfg` offsets (§4.1.4.3). */
export const CommonCfg = {
  DEVICE_FEATURE_SELECT: 0,
  DEVICE_FEATURE: 4,
  DRIVER_FEATURE_SELECT: 8,
  DRIVER_FEATURE: 12,
  CONFIG_MSIX_VECTOR: 16,
  NUM_QUEUES: 18,
  DEVICE_STATUS: 20,
  CONFIG_GENERATION: 21,
  QUEUE_SELECT: 22,
  QUEUE_SIZE: 24,
  QUEUE_MSIX_VECTOR: 26,
  QUEUE_ENABLE: 28,
  QUEUE_NOTIFY_OFF: 30,
  QUEUE_DESC: 32,
  QUEUE_DRIVER: 40,
  QUEUE_DEVICE: 48,
} as const;
/** Bytes of the common configuration this driver uses (up to queue_device). */
const COMMON_CFG_MIN_LENGTH = 56;

export class VirtioPciModernTransport extends VirtioPciTransport {
  readonly notifyMultiplier: number;

  readonly #common: PciWindow;
  readonly #notify: PciWindow;
  readonly #isr: PciWindow;
  readonly #device: PciWindow | undefined;

  private constructor(init: {
    host: VirtioPciHost;
    pci: PciFunction;
    deviceId: number;
    common: PciWindow;
    notify: PciWindow;
    notifyMultiplier: number;
    isr: PciWindow;
    device: PciWindow | undefined;
    msix: MsixInfo | undefined;
    options: VirtioPciOptions;
  }) {
    super(init);
    this.#common = init.common;
    this.#notify = init.notify;
    this.notifyMultiplier = init.notifyMultiplier;
    this.#isr = init.isr;
    this.#device = init.device;
  }

  /**
   * Sets up a virtio PCI function found by a {@link PciBus} scan: BARs, command register, capabilities, MSI-X.
   * Rejects with a {@link VirtioPciError} when it is not a virtio device or lacks a modern capability.
   */
  static async open(
    host: VirtioPciHost,
    fn: PciFunction,
    options: VirtioPciOptions = {},
  ): Promise<VirtioPciModernTransport> {
    const deviceId = requireVirtioPciDeviceId(fn);
    const bars = await fn.assignBars();
    await fn.enable({ busMaster: true });
    const cfg = fn.config;
    const found = new Map<number, PciWindow>();
    let notifyMultiplier = 0;
    let msixCap: number | undefined;
    for (const cap of await fn.capabilities()) {
      if (cap.id === PciCapId.MSIX) msixCap ??= cap.offset;
      if (cap.id !== PciCapId.VENDOR) continue;
      const [type, barIndex, offset, length] = await Promise.all([
        cfg.readU8(cap.offset + CAP_CFG_TYPE),
        cfg.readU8(cap.offset + CAP_BAR),
        cfg.readU32(cap.offset + CAP_OFFSET),
        cfg.readU32(cap.offset + CAP_LENGTH),
      ]);
      if (type < VirtioPciCapType.COMMON || type > VirtioPciCapType.DEVICE || found.has(type)) continue;
      const bar = barIndex < PCI_BAR_COUNT ? bars[barIndex] : undefined;
      // §4.1.4: a capability naming a BAR the device does not have (or out of its range) is ignored.
      if (bar === undefined || offset + length > bar.size) continue;
      if (type === VirtioPciCapType.NOTIFY) {
        notifyMultiplier = await cfg.readU32(cap.offset + CAP_NOTIFY_MULTIPLIER);
      }
      found.set(type, new PciWindow(host, bar, offset, length));
    }
    const common = found.get(VirtioPciCapType.COMMON);
    const notify = found.get(VirtioPciCapType.NOTIFY);
    const isr = found.get(VirtioPciCapType.ISR);
    const missing = [
      common === undefined || common.length < COMMON_CFG_MIN_LENGTH ? 'COMMON' : '',
      notify === undefined ? 'NOTIFY' : '',
      isr === undefined ? 'ISR' : '',
    ].filter((s) => s !== '');
    if (common === undefined || notify === undefined || isr === undefined || missing.length !== 0) {
      throw new VirtioPciError(
        'MISSING_CAPABILITY',
        `${fn.location}: no usable virtio ${missing.join(', ')} capability (a legacy-only device?)`,
        missing,
      );
    }
    const msix = await configureMsix(host, fn, bars, msixCap, options.interrupts);
    return new VirtioPciModernTransport({
      host,
      pci: fn,
      deviceId,
      common,
      notify,
      notifyMultiplier,
      isr,
      device: found.get(VirtioPciCapType.DEVICE),
      msix,
      options,
    });
  }

  // ---- VirtioConfigOps ----

  getStatus(): Promise<number> {
    return this.#common.r8(CommonCfg.DEVICE_STATUS);
  }

  protected writeStatus(status: number): Promise<void> {
    return this.#common.w8(CommonCfg.DEVICE_STATUS, status);
  }

  protected resetRegister(): Promise<void> {
    return this.#common.w8(CommonCfg.DEVICE_STATUS, 0);
  }

  getFeatures(): Promise<bigint> {
    return this.serialized(async () => {
      const c = this.#common;
      const [, lo, , hi] = await Promise.all([
        c.w32(CommonCfg.DEVICE_FEATURE_SELECT, 0),
        c.r32(CommonCfg.DEVICE_FEATURE),
        c.w32(CommonCfg.DEVICE_FEATURE_SELECT, 1),
        c.r32(CommonCfg.DEVICE_FEATURE),
      ]);
      return (BigInt(hi) << 32n) | BigInt(lo);
    });
  }

  finalizeFeatures(features: bigint): Promise<void> {
    return this.serialized(async () => {
      const c = this.#common;
      await Promise.all([
        c.w32(CommonCfg.DRIVER_FEATURE_SELECT, 0),
        c.w32(CommonCfg.DRIVER_FEATURE, Number(features & 0xffff_ffffn)),
        c.w32(CommonCfg.DRIVER_FEATURE_SELECT, 1),
        c.w32(CommonCfg.DRIVER_FEATURE, Number((features >> 32n) & 0xffff_ffffn)),
      ]);
    });
  }

  /**
   * Device configuration bytes, read with naturally aligned accesses of the largest size that fits (4, 2, 1),
   * as the device's register semantics expect; all accesses are pipelined.
   */
  async readConfig(offset: number, length: number): Promise<Uint8Array> {
    return readWindow(this.#deviceWindow(offset, length), offset, length);
  }

  async writeConfig(offset: number, data: Uint8Array): Promise<void> {
    return writeWindow(this.#deviceWindow(offset, data.length), offset, data);
  }

  generation(): Promise<number> {
    return this.#common.r8(CommonCfg.CONFIG_GENERATION);
  }

  // ---- queue set-up ----

  protected queueCount(): Promise<number> {
    return this.#common.r16(CommonCfg.NUM_QUEUES);
  }

  protected async setConfigVector(vector: number): Promise<number> {
    await this.#common.w16(CommonCfg.CONFIG_MSIX_VECTOR, vector);
    return this.#common.r16(CommonCfg.CONFIG_MSIX_VECTOR);
  }

  protected async disableQueue(index: number): Promise<void> {
    await this.#common.w16(CommonCfg.QUEUE_SELECT, index);
    await this.#common.w16(CommonCfg.QUEUE_ENABLE, 0);
  }

  protected readIsr(): Promise<number> {
    return this.#isr.r8(0);
  }

  protected async setupQueue(
    index: number,
    spec: VirtqueueSpec,
    vector: number,
    features: bigint,
  ): Promise<LiveQueue> {
    const c = this.#common;
    await c.w16(CommonCfg.QUEUE_SELECT, index);
    const max = await c.r16(CommonCfg.QUEUE_SIZE);
    if (max === 0) throw this.queueError(`queue ${index} does not exist (size 0)`, index);
    const size = spec.size ?? max;
    if (!isValidSplitQueueSize(size) || size > max) {
      throw this.queueError(`queue ${index} size ${size} is not a power of two up to ${max}`, index);
    }
    const addresses = SplitVirtqueue.allocate(this.allocator, size);
    try {
      const a = addresses;
      const writes = [
        c.w16(CommonCfg.QUEUE_SIZE, size),
        c.w32(CommonCfg.QUEUE_DESC, a.descTable % 2 ** 32),
        c.w32(CommonCfg.QUEUE_DESC + 4, Math.floor(a.descTable / 2 ** 32)),
        c.w32(CommonCfg.QUEUE_DRIVER, a.availRing % 2 ** 32),
        c.w32(CommonCfg.QUEUE_DRIVER + 4, Math.floor(a.availRing / 2 ** 32)),
        c.w32(CommonCfg.QUEUE_DEVICE, a.usedRing % 2 ** 32),
        c.w32(CommonCfg.QUEUE_DEVICE + 4, Math.floor(a.usedRing / 2 ** 32)),
      ];
      if (vector !== VIRTIO_MSI_NO_VECTOR) writes.push(c.w16(CommonCfg.QUEUE_MSIX_VECTOR, vector));
      await Promise.all(writes);
      if (vector !== VIRTIO_MSI_NO_VECTOR) {
        const got = await c.r16(CommonCfg.QUEUE_MSIX_VECTOR);
        if (got !== vector)
          throw this.queueError(`queue ${index}: MSI-X vector ${vector} refused (${got})`, index);
      }
      const notifyOff = await c.r16(CommonCfg.QUEUE_NOTIFY_OFF);
      const notifyOffset = notifyOff * this.notifyMultiplier;
      if (notifyOffset + 2 > this.#notify.length) {
        throw this.queueError(
          `queue ${index}: notify offset ${notifyOffset} is outside the ${this.#notify.length}-byte notify region`,
          index,
        );
      }
      await c.w16(CommonCfg.QUEUE_ENABLE, 1);
      if ((await c.r16(CommonCfg.QUEUE_ENABLE)) !== 1) {
        throw this.queueError(`queue ${index}: queue_enable did not stick`, index);
      }
      const notifyWindow = this.#notify;
      const vq = this.makeQueue(index, spec, size, addresses, features, () =>
        notifyWindow.w16(notifyOffset, index),
      );
      return { vq, addresses, vector };
    } catch (e) {
      SplitVirtqueue.release(this.allocator, addresses);
      throw e;
    }
  }

  #deviceWindow(offset: number, length: number): PciWindow {
    const dev = this.#device;
    if (dev === undefined) {
      throw new VirtioPciError(
        'MISSING_CAPABILITY',
        `${this.location}: the device has no configuration space`,
        0,
      );
    }
    if (
      !Number.isInteger(offset) ||
      !Number.isInteger(length) ||
      offset < 0 ||
      length < 0 ||
      offset + length > dev.length
    ) {
      throw new VirtioPciError(
        'INVALID_STATE',
        `${this.location}: config access ${offset}+${length} is outside the ${dev.length}-byte device region`,
        offset,
      );
    }
    return dev;
  }
}

/**
 * Scans bus 0 and opens every virtio PCI function on it (in slot order) through its modern interface, with one
 * BAR allocator for all of them. Pass the result to `VirtioBus.addDevice`.
 */
export async function openVirtioPciDevices(
  host: VirtioPciHost,
  options: VirtioPciOptions & { readonly bus?: PciBusOptions } = {},
): Promise<VirtioPciModernTransport[]> {
  const functions = await new PciBus(host, options.bus ?? {}).scan();
  const out: VirtioPciModernTransport[] = [];
  for (const fn of functions) {
    if (virtioPciDeviceId(fn) !== undefined) out.push(await VirtioPciModernTransport.open(host, fn, options));
  }
  return out;
}
