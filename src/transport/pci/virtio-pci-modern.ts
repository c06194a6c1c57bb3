/**
 * # virtio-pci modern transport (VIRTIO 1.2 §4.1)
 *
 * `VirtioPciModernTransport` implements the driver model's {@link VirtioConfigOps} for a virtio PCI function on
 * a qtest-driven QEMU machine ({@link QtestLink}): modern devices (vendor 0x1AF4, device 0x1040 + id) and
 * transitional ones (0x1000–0x103F, device id from the subsystem id), both through the modern capabilities —
 * the legacy I/O BAR of a transitional device is left alone.
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
 *   notify_off_multiplier; one qtest command, sent without waiting for its answer (a failure is reported through
 *   `onError` and breaks nothing else). QEMU reads the ring only after the command arrives, so the avail index
 *   written to shared memory before it is always seen.
 * - **Interrupts** (no CPU runs, so nothing can take a real one): with MSI-X, every vector's message address
 *   points at a 4-byte slot in guest RAM and its data is a nonzero marker. QEMU's MSI-X delivery is a DMA write
 *   of the data to the address, i.e. into memory this process maps. Vector 0 is the configuration vector, vector
 *   1 + i belongs to queue i (all queues share vector 1 when the table is too small). A poller reads and clears
 *   the slots (`Atomics.exchange`) and calls `vq.interrupt()` / the config handler; clearing before the callback
 *   reads the used ring means no completion can slip between. Without MSI-X (or with `interrupts: 'isr'`) the
 *   poller reads the ISR register instead (a qtest round trip per poll; reading clears it).
 * - **Poller timing**: it runs while a queue has buffers outstanding. Right after a kick or an interrupt it
 *   polls on `setImmediate` (a few microseconds per turn, busy) for {@link VirtioPciModernOptions.spinMs}; after
 *   that on a `pollIntervalMs` timer (default 1 ms, which Node rounds to about 1 ms). Completion latency is thus
 *   QEMU's own plus a few µs while busy, about 1 ms when idle-waiting; an idle device with nothing outstanding is
 *   polled every `configPollMs` (100 ms) for configuration changes only. The cost of a poll is one 32-bit load per
 *   vector in use (MSI-X) or one qtest round trip (ISR).
 */
import type { VirtioConfigOps, VirtqueueSpec } from '../../virtio/driver/config-ops.js';
import type { Virtqueue } from '../../virtio/driver/virtqueue.js';
import type { GuestAllocator } from '../../virtio/guest-allocator.js';
import type { GuestMemory } from '../../virtio/guest-memory.js';
import { isValidSplitQueueSize, type SplitQueueAddresses } from '../../virtio/split/layout.js';
import { SplitVirtqueue } from '../../virtio/split/split-virtqueue.js';
import { PciBus, type PciBar, type PciBusOptions, type PciFunction } from './pci-bus-scan.js';
import { PciCapId, type MemIo, type PortIo } from './pci-config.js';

export const VIRTIO_PCI_VENDOR_ID = 0x1af4;
/** Modern device ids: 0x1040 + virtio device id. */
export const VIRTIO_PCI_MODERN_DEVICE_BASE = 0x1040;
/** Transitional device ids 0x1000–0x103F: the virtio device id is the PCI subsystem id. */
export const VIRTIO_PCI_TRANSITIONAL_FIRST = 0x1000;
export const VIRTIO_PCI_TRANSITIONAL_LAST = 0x103f;
/** Modern ids end at 0x107F (device ids up to 63). */
export const VIRTIO_PCI_MODERN_LAST = 0x107f;

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

/** No MSI-X vector (§4.1.5.1.2). */
export const VIRTIO_MSI_NO_VECTOR = 0xffff;

/** MSI-X capability (PCI 3.0 §6.8.2): message control at +2, table at +4, PBA at +8. */
const MSIX_CONTROL = 2;
const MSIX_TABLE = 4;
const MSIX_CONTROL_ENABLE = 0x8000;
const MSIX_CONTROL_FUNCTION_MASK = 0x4000;
const MSIX_ENTRY_SIZE = 16;
/** A slot holding this value means "the vector fired"; QEMU writes it, the poller clears it. */
const MSI_MARKER = 0x5249_4e47; // 'RING'

const ISR_QUEUE = 0x1;
const ISR_CONFIG = 0x2;

export type VirtioPciErrorCode =
  /** Not a virtio PCI function (vendor/device id). */
  | 'NOT_VIRTIO'
  /** A required vendor capability is missing or points at a BAR it cannot reach. */
  | 'MISSING_CAPABILITY'
  /** The device did not read back 0 after a reset. */
  | 'RESET_TIMEOUT'
  /** A queue cannot be set up (absent, bad size, vector refused, enable did not stick). */
  | 'QUEUE_SETUP'
  /** An operation in the wrong state (queues exist, transport closed...). */
  | 'INVALID_STATE';

export class VirtioPciError extends Error {
  readonly code: VirtioPciErrorCode;
  readonly value: unknown;
  constructor(code: VirtioPciErrorCode, message: string, value: unknown, options?: { cause?: unknown }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'VirtioPciError';
    this.code = code;
    this.value = value;
  }
}

/** What the transport needs from the machine: port and memory accesses, guest RAM and its allocator. */
export interface VirtioPciHost extends PortIo, MemIo {
  readonly memory: GuestMemory;
  readonly allocator: GuestAllocator;
  /** Called when the host shuts down (the transport stops its poller). */
  addCloseHook?(hook: () => void): void;
}

export interface VirtioPciModernOptions {
  /** `msix` (default when the function has MSI-X) or `isr` (poll the ISR register). */
  readonly interrupts?: 'msix' | 'isr';
  /** Busy-poll (setImmediate) this long after a kick or interrupt (default 2 ms). */
  readonly spinMs?: number;
  /** Timer poll interval while buffers are outstanding (default 1 ms). */
  readonly pollIntervalMs?: number;
  /** Poll interval for configuration changes when nothing is outstanding (default 100 ms). */
  readonly configPollMs?: number;
  /** Kick failures and poller errors (default: ignored after marking the transport failed). */
  readonly onError?: (error: Error) => void;
}

/** One BAR-relative register window. */
class Window {
  constructor(
    private readonly host: VirtioPciHost,
    readonly bar: PciBar,
    readonly offset: number,
    readonly length: number,
  ) {}

  get address(): number {
    return this.bar.address + this.offset;
  }

  r8(off: number): Promise<number> {
    const a = this.address + off;
    return this.bar.kind === 'memory' ? this.host.readb(a) : this.host.inb(a);
  }
  r16(off: number): Promise<number> {
    const a = this.address + off;
    return this.bar.kind === 'memory' ? this.host.readw(a) : this.host.inw(a);
  }
  r32(off: number): Promise<number> {
    const a = this.address + off;
    return this.bar.kind === 'memory' ? this.host.readl(a) : this.host.inl(a);
  }
  w8(off: number, v: number): Promise<void> {
    const a = this.address + off;
    return this.bar.kind === 'memory' ? this.host.writeb(a, v) : this.host.outb(a, v);
  }
  w16(off: number, v: number): Promise<void> {
    const a = this.address + off;
    return this.bar.kind === 'memory' ? this.host.writew(a, v) : this.host.outw(a, v);
  }
  w32(off: number, v: number): Promise<void> {
    const a = this.address + off;
    return this.bar.kind === 'memory' ? this.host.writel(a, v >>> 0) : this.host.outl(a, v >>> 0);
  }
}

interface MsixInfo {
  readonly capOffset: number;
  readonly tableSize: number;
  readonly table: Window;
  /** Guest address of vector i's slot: slots + 4 * i. */
  readonly slots: number;
}

interface LiveQueue {
  readonly vq: SplitVirtqueue;
  readonly addresses: SplitQueueAddresses;
  readonly vector: number;
}

/** The virtio device id of a virtio PCI function, or undefined if it is not one (§4.1.2). */
export function virtioPciDeviceId(fn: PciFunction): number | undefined {
  if (fn.vendorId !== VIRTIO_PCI_VENDOR_ID) return undefined;
  if (fn.deviceId >= VIRTIO_PCI_MODERN_DEVICE_BASE && fn.deviceId <= VIRTIO_PCI_MODERN_LAST) {
    return fn.deviceId - VIRTIO_PCI_MODERN_DEVICE_BASE;
  }
  if (fn.deviceId >= VIRTIO_PCI_TRANSITIONAL_FIRST && fn.deviceId <= VIRTIO_PCI_TRANSITIONAL_LAST) {
    return fn.subsystemId;
  }
  return undefined;
}

export class VirtioPciModernTransport implements VirtioConfigOps {
  readonly deviceId: number;
  readonly vendorId: number;
  readonly location: string;
  readonly memory: GuestMemory;
  readonly allocator: GuestAllocator;
  readonly pci: PciFunction;
  /** Whether the device is transitional (0x1000–0x103F), driven through its modern interface all the same. */
  readonly transitional: boolean;
  /** `msix` or `isr`: how interrupts are seen. */
  readonly interruptMode: 'msix' | 'isr';
  readonly notifyMultiplier: number;
  /** Counters for tests and benchmarks. */
  readonly stats = { kicks: 0, polls: 0, queueInterrupts: 0, configInterrupts: 0 };

  readonly #common: Window;
  readonly #notify: Window;
  readonly #isr: Window;
  readonly #device: Window | undefined;
  readonly #msix: MsixInfo | undefined;
  readonly #options: VirtioPciModernOptions;
  #queues: (LiveQueue | null)[] = [];
  #configHandler: (() => void) | undefined;
  #serial: Promise<unknown> = Promise.resolve();
  #closed = false;
  #pollTimer:
    { kind: 'immediate'; handle: NodeJS.Immediate } | { kind: 'timer'; handle: NodeJS.Timeout } | undefined;
  #pollRunning = false;
  #hotUntil = 0;
  #error: Error | undefined;

  private constructor(init: {
    host: VirtioPciHost;
    pci: PciFunction;
    deviceId: number;
    common: Window;
    notify: Window;
    notifyMultiplier: number;
    isr: Window;
    device: Window | undefined;
    msix: MsixInfo | undefined;
    options: VirtioPciModernOptions;
  }) {
    this.pci = init.pci;
    this.deviceId = init.deviceId;
    this.vendorId = init.pci.subsystemVendorId;
    this.location = init.pci.location;
    this.memory = init.host.memory;
    this.allocator = init.host.allocator;
    this.transitional = init.pci.deviceId <= VIRTIO_PCI_TRANSITIONAL_LAST;
    this.#common = init.common;
    this.#notify = init.notify;
    this.notifyMultiplier = init.notifyMultiplier;
    this.#isr = init.isr;
    this.#device = init.device;
    this.#msix = init.msix;
    this.#options = init.options;
    this.interruptMode = init.msix === undefined ? 'isr' : 'msix';
    init.host.addCloseHook?.(() => {
      this.close();
    });
    this.#schedulePoll();
  }

  /**
   * Sets up a virtio PCI function found by a {@link PciBus} scan: BARs, command register, capabilities, MSI-X.
   * Rejects with a {@link VirtioPciError} when it is not a virtio device or lacks a modern capability.
   */
  static async open(
    host: VirtioPciHost,
    fn: PciFunction,
    options: VirtioPciModernOptions = {},
  ): Promise<VirtioPciModernTransport> {
    const deviceId = virtioPciDeviceId(fn);
    if (deviceId === undefined) {
      throw new VirtioPciError(
        'NOT_VIRTIO',
        `${fn.location}: ${hex4(fn.vendorId)}:${hex4(fn.deviceId)} is not a virtio PCI device`,
        fn.deviceId,
      );
    }
    const bars = await fn.assignBars();
    await fn.enable({ busMaster: true });
    const cfg = fn.config;
    const found = new Map<number, Window>();
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
      const bar = barIndex < 6 ? bars[barIndex] : undefined;
      // §4.1.4: a capability naming a BAR the device does not have (or out of its range) is ignored.
      if (bar === undefined || offset + length > bar.size) continue;
      if (type === VirtioPciCapType.NOTIFY) {
        notifyMultiplier = await cfg.readU32(cap.offset + CAP_NOTIFY_MULTIPLIER);
      }
      found.set(type, new Window(host, bar, offset, length));
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
    let msix: MsixInfo | undefined;
    if (msixCap !== undefined && options.interrupts !== 'isr') {
      msix = await setUpMsix(host, fn, bars, msixCap);
    } else if (msixCap !== undefined) {
      // ISR mode: MSI-X off, so the device signals through ISR (and INTx) only.
      const control = await cfg.readU16(msixCap + MSIX_CONTROL);
      await cfg.writeU16(msixCap + MSIX_CONTROL, control & ~MSIX_CONTROL_ENABLE & 0xffff);
    }
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

  /** Stops the poller; the transport is unusable afterwards (the host closes it on shutdown). */
  close(): void {
    this.#closed = true;
    this.#cancelPoll();
  }

  get isClosed(): boolean {
    return this.#closed;
  }

  // ---- VirtioConfigOps ----

  getStatus(): Promise<number> {
    return this.#common.r8(CommonCfg.DEVICE_STATUS);
  }

  async setStatus(status: number): Promise<void> {
    if (status === 0) {
      await this.reset();
      return;
    }
    await this.#common.w8(CommonCfg.DEVICE_STATUS, status);
  }

  /** Writes 0 to device_status and waits (up to 5 s) until it reads back 0 (§4.1.4.3.2). */
  async reset(): Promise<void> {
    await this.#common.w8(CommonCfg.DEVICE_STATUS, 0);
    const deadline = Date.now() + 5000;
    while ((await this.#common.r8(CommonCfg.DEVICE_STATUS)) !== 0) {
      if (Date.now() > deadline) {
        throw new VirtioPciError(
          'RESET_TIMEOUT',
          `${this.location}: device_status stays nonzero after reset`,
          0,
        );
      }
      await new Promise((r) => setTimeout(r, 1));
    }
  }

  getFeatures(): Promise<bigint> {
    return this.#serialized(async () => {
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
    return this.#serialized(async () => {
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
    const dev = this.#deviceWindow(offset, length);
    const out = new Uint8Array(length);
    const view = new DataView(out.buffer);
    const reads: Promise<void>[] = [];
    forEachAccess(offset, length, (off, size) => {
      const at = off - offset;
      if (size === 4)
        reads.push(
          dev.r32(off).then((v) => {
            view.setUint32(at, v, true);
          }),
        );
      else if (size === 2)
        reads.push(
          dev.r16(off).then((v) => {
            view.setUint16(at, v, true);
          }),
        );
      else
        reads.push(
          dev.r8(off).then((v) => {
            view.setUint8(at, v);
          }),
        );
    });
    await Promise.all(reads);
    return out;
  }

  async writeConfig(offset: number, data: Uint8Array): Promise<void> {
    const dev = this.#deviceWindow(offset, data.length);
    const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
    const writes: Promise<void>[] = [];
    forEachAccess(offset, data.length, (off, size) => {
      const at = off - offset;
      if (size === 4) writes.push(dev.w32(off, view.getUint32(at, true)));
      else if (size === 2) writes.push(dev.w16(off, view.getUint16(at, true)));
      else writes.push(dev.w8(off, view.getUint8(at)));
    });
    await Promise.all(writes);
  }

  generation(): Promise<number> {
    return this.#common.r8(CommonCfg.CONFIG_GENERATION);
  }

  /**
   * Sets up and enables the queues (between FEATURES_OK and DRIVER_OK): rings from the allocator, MSI-X vectors
   * (config vector 0, queue i vector 1 + i, or 1 shared), addresses, enable. Undone on failure.
   */
  findVqs(specs: readonly (VirtqueueSpec | null)[], features: bigint): Promise<(Virtqueue | null)[]> {
    return this.#serialized(async () => {
      if (this.#closed) throw new VirtioPciError('INVALID_STATE', `${this.location}: transport closed`, 0);
      if (this.#queues.length !== 0) {
        throw new VirtioPciError('INVALID_STATE', `${this.location}: queues exist already, delVqs first`, 0);
      }
      const c = this.#common;
      const numQueues = await c.r16(CommonCfg.NUM_QUEUES);
      const wanted = specs.filter((s) => s !== null).length;
      const msix = this.#msix;
      const perQueue = msix !== undefined && msix.tableSize >= 1 + specs.length;
      if (msix !== undefined) {
        await c.w16(CommonCfg.CONFIG_MSIX_VECTOR, 0);
        const got = await c.r16(CommonCfg.CONFIG_MSIX_VECTOR);
        if (got !== 0)
          throw this.#queueError(`the device refused MSI-X vector 0 for config changes (${got})`, -1);
      }
      const made: (LiveQueue | null)[] = [];
      try {
        for (let index = 0; index < specs.length; index++) {
          const spec = specs[index];
          if (spec === null || spec === undefined) {
            made.push(null);
            continue;
          }
          if (index >= numQueues) {
            throw this.#queueError(`the device has ${numQueues} queues, ${wanted} asked`, index);
          }
          const vector = msix === undefined ? VIRTIO_MSI_NO_VECTOR : perQueue ? 1 + index : 1;
          made.push(await this.#setupQueue(index, spec, vector, features));
        }
      } catch (e) {
        for (const q of made) if (q !== null) this.#release(q);
        await Promise.all(
          made.map(async (q, index) => {
            if (q === null) return;
            await c.w16(CommonCfg.QUEUE_SELECT, index);
            await c.w16(CommonCfg.QUEUE_ENABLE, 0);
          }),
        ).catch(() => undefined);
        throw e;
      }
      this.#queues = made;
      this.#schedulePoll();
      return made.map((q) => q?.vq ?? null);
    });
  }

  /** Frees every queue's rings (and indirect tables of buffers never taken back). Reset the device first. */
  async delVqs(): Promise<void> {
    await this.#serialized(() => {
      const queues = this.#queues;
      this.#queues = [];
      for (const q of queues) if (q !== null) this.#release(q);
      return Promise.resolve();
    });
  }

  onConfigChange(handler: () => void): void {
    this.#configHandler = handler;
  }

  /** The driver-side queue `index` made by findVqs. */
  virtqueue(index: number): SplitVirtqueue | undefined {
    return this.#queues[index]?.vq;
  }

  /** The first kick or poll failure, if any. */
  get error(): Error | undefined {
    return this.#error;
  }

  // ---- internals ----

  async #setupQueue(
    index: number,
    spec: VirtqueueSpec,
    vector: number,
    features: bigint,
  ): Promise<LiveQueue> {
    const c = this.#common;
    await c.w16(CommonCfg.QUEUE_SELECT, index);
    const max = await c.r16(CommonCfg.QUEUE_SIZE);
    if (max === 0) throw this.#queueError(`queue ${index} does not exist (size 0)`, index);
    const size = spec.size ?? max;
    if (!isValidSplitQueueSize(size) || size > max) {
      throw this.#queueError(`queue ${index} size ${size} is not a power of two up to ${max}`, index);
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
          throw this.#queueError(`queue ${index}: MSI-X vector ${vector} refused (${got})`, index);
      }
      const notifyOff = await c.r16(CommonCfg.QUEUE_NOTIFY_OFF);
      const notifyOffset = notifyOff * this.notifyMultiplier;
      if (notifyOffset + 2 > this.#notify.length) {
        throw this.#queueError(
          `queue ${index}: notify offset ${notifyOffset} is outside the ${this.#notify.length}-byte notify region`,
          index,
        );
      }
      await c.w16(CommonCfg.QUEUE_ENABLE, 1);
      if ((await c.r16(CommonCfg.QUEUE_ENABLE)) !== 1) {
        throw this.#queueError(`queue ${index}: queue_enable did not stick`, index);
      }
      const notifyWindow = this.#notify;
      const vq = SplitVirtqueue.forSpec(spec, {
        index,
        memory: this.memory,
        allocator: this.allocator,
        size,
        addresses,
        features,
        notify: () => {
          this.#kick(notifyWindow, notifyOffset, index);
        },
      });
      return { vq, addresses, vector };
    } catch (e) {
      SplitVirtqueue.release(this.allocator, addresses);
      throw e;
    }
  }

  #release(q: LiveQueue): void {
    q.vq.reset();
    SplitVirtqueue.release(this.allocator, q.addresses);
  }

  #kick(window: Window, offset: number, index: number): void {
    this.stats.kicks++;
    this.#hotUntil = performance.now() + (this.#options.spinMs ?? 2);
    window.w16(offset, index).catch((e: unknown) => {
      this.#report(e);
    });
    this.#schedulePoll();
  }

  #report(e: unknown): void {
    const error = e instanceof Error ? e : new Error(String(e));
    this.#error ??= error;
    this.#options.onError?.(error);
  }

  #queueError(message: string, index: number): VirtioPciError {
    return new VirtioPciError('QUEUE_SETUP', `${this.location}: ${message}`, index);
  }

  #deviceWindow(offset: number, length: number): Window {
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

  #serialized<T>(op: () => Promise<T>): Promise<T> {
    const next = this.#serial.then(op);
    this.#serial = next.catch(() => undefined);
    return next;
  }

  // ---- interrupt poller ----

  #outstanding(): boolean {
    for (const q of this.#queues) if (q !== null && q.vq.numFree < q.vq.size) return true;
    return false;
  }

  #cancelPoll(): void {
    const t = this.#pollTimer;
    this.#pollTimer = undefined;
    if (t === undefined) return;
    if (t.kind === 'immediate') clearImmediate(t.handle);
    else clearTimeout(t.handle);
  }

  /** (Re)schedules the poller for the current state: busy, waiting, or idle. */
  #schedulePoll(): void {
    if (this.#closed || this.#pollRunning) return;
    const hot = performance.now() < this.#hotUntil;
    if (this.#pollTimer !== undefined) {
      // Already scheduled: only upgrade an idle/waiting timer to an immediate when a kick made us hot.
      if (!hot || this.#pollTimer.kind === 'immediate') return;
      this.#cancelPoll();
    }
    if (hot) {
      const handle = setImmediate(() => {
        this.#pollTimer = undefined;
        void this.#poll();
      });
      this.#pollTimer = { kind: 'immediate', handle };
      return;
    }
    const delay = this.#outstanding()
      ? (this.#options.pollIntervalMs ?? 1)
      : (this.#options.configPollMs ?? 100);
    const timer = setTimeout(() => {
      this.#pollTimer = undefined;
      void this.#poll();
    }, delay);
    timer.unref();
    this.#pollTimer = { kind: 'timer', handle: timer };
  }

  async #poll(): Promise<void> {
    if (this.#closed) return;
    this.#pollRunning = true;
    try {
      this.stats.polls++;
      let config = false;
      const fired = new Set<number>();
      const msix = this.#msix;
      if (msix !== undefined) {
        const slots = this.memory.u32Array(msix.slots, msix.tableSize);
        if (Atomics.exchange(slots, 0, 0) !== 0) config = true;
        for (let v = 1; v < msix.tableSize; v++) if (Atomics.exchange(slots, v, 0) !== 0) fired.add(v);
      } else {
        const isr = await this.#isr.r8(0);
        if ((isr & ISR_CONFIG) !== 0) config = true;
        if ((isr & ISR_QUEUE) !== 0) fired.add(-1);
      }
      // close() may have run while the ISR read was in flight.
      if (this.isClosed) return;
      if (fired.size !== 0) {
        for (const q of this.#queues) {
          if (q === null) continue;
          if (fired.has(-1) || fired.has(q.vector)) {
            if (q.vq.interrupt()) this.stats.queueInterrupts++;
          }
        }
        this.#hotUntil = performance.now() + (this.#options.spinMs ?? 2);
      }
      if (config) {
        this.stats.configInterrupts++;
        this.#configHandler?.();
      }
    } catch (e) {
      this.#report(e);
    } finally {
      this.#pollRunning = false;
    }
    this.#schedulePoll();
  }
}

/**
 * Scans bus 0 and opens every virtio PCI function on it (in slot order), with one BAR allocator for all of them.
 * Pass the result to `VirtioBus.addDevice`.
 */
export async function openVirtioPciDevices(
  host: VirtioPciHost,
  options: VirtioPciModernOptions & { readonly bus?: PciBusOptions } = {},
): Promise<VirtioPciModernTransport[]> {
  const functions = await new PciBus(host, options.bus ?? {}).scan();
  const out: VirtioPciModernTransport[] = [];
  for (const fn of functions) {
    if (virtioPciDeviceId(fn) !== undefined) out.push(await VirtioPciModernTransport.open(host, fn, options));
  }
  return out;
}

/** Enables MSI-X: a slot per vector in guest RAM, every entry pointed at its slot and unmasked. */
async function setUpMsix(
  host: VirtioPciHost,
  fn: PciFunction,
  bars: readonly (PciBar | undefined)[],
  cap: number,
): Promise<MsixInfo | undefined> {
  const cfg = fn.config;
  const [control, tableReg] = await Promise.all([
    cfg.readU16(cap + MSIX_CONTROL),
    cfg.readU32(cap + MSIX_TABLE),
  ]);
  const tableSize = (control & 0x7ff) + 1;
  const bar = bars[tableReg & 7];
  const tableOffset = tableReg & ~7;
  if (bar?.kind !== 'memory' || tableOffset + tableSize * MSIX_ENTRY_SIZE > bar.size) return undefined;
  const table = new Window(host, bar, tableOffset, tableSize * MSIX_ENTRY_SIZE);
  const slots = host.allocator.alloc(4 * tableSize, 64);
  host.memory.fill(slots, 4 * tableSize, 0);
  // Mask the whole function while the table is written, then enable and unmask.
  await cfg.writeU16(
    cap + MSIX_CONTROL,
    (control | MSIX_CONTROL_FUNCTION_MASK | MSIX_CONTROL_ENABLE) & 0xffff,
  );
  const writes: Promise<void>[] = [];
  for (let v = 0; v < tableSize; v++) {
    const e = v * MSIX_ENTRY_SIZE;
    const addr = slots + 4 * v;
    writes.push(
      table.w32(e, addr % 2 ** 32),
      table.w32(e + 4, Math.floor(addr / 2 ** 32)),
      table.w32(e + 8, MSI_MARKER),
      table.w32(e + 12, 0),
    );
  }
  await Promise.all(writes);
  await cfg.writeU16(
    cap + MSIX_CONTROL,
    (control | MSIX_CONTROL_ENABLE) & ~MSIX_CONTROL_FUNCTION_MASK & 0xffff,
  );
  return { capOffset: cap, tableSize, table, slots };
}

/** Splits [offset, offset + length) into naturally aligned accesses of 4, 2 or 1 bytes. */
function forEachAccess(offset: number, length: number, visit: (off: number, size: 1 | 2 | 4) => void): void {
  let off = offset;
  const end = offset + length;
  while (off < end) {
    const left = end - off;
    const size: 1 | 2 | 4 = off % 4 === 0 && left >= 4 ? 4 : off % 2 === 0 && left >= 2 ? 2 : 1;
    visit(off, size);
    off += size;
  }
}

function hex4(v: number): string {
  return v.toString(16).padStart(4, '0');
}
