/**
 * What the two virtio-pci driver transports share (VIRTIO 1.2 §4.1): device identification, register windows in
 * BARs, MSI-X set-up with messages aimed at guest RAM, and the interrupt poller. {@link VirtioPciModernTransport}
 * (virtio-pci-modern.ts, the capabilities) and {@link VirtioPciLegacyTransport} (virtio-pci-legacy.ts, the legacy
 * I/O BAR of a transitional device) extend {@link VirtioPciTransport} and supply the register accesses.
 *
 * - **Interrupts** (no CPU runs, so nothing can take a real one): with MSI-X, every vector's message address
 *   points at a 4-byte slot in guest RAM and its data is a nonzero marker. QEMU's MSI-X delivery is a DMA write
 *   of the data to the address, i.e. into memory this process maps. Vector 0 is the configuration vector, vector
 *   1 + i belongs to queue i (all queues share vector 1 when the table is too small). A poller reads and clears
 *   the slots (`Atomics.exchange`) and calls `vq.interrupt()` / the config handler; clearing before the callback
 *   reads the used ring means no completion can slip between. Without MSI-X (or with `interrupts: 'isr'`) the
 *   poller reads the ISR register instead (a qtest round trip per poll; reading clears it).
 * - **Poller timing**: it runs while a queue has buffers outstanding. Right after a kick or an interrupt it
 *   polls on `setImmediate` (a few microseconds per turn, busy) for {@link VirtioPciOptions.spinMs}; after
 *   that on a `pollIntervalMs` timer (default 1 ms, which Node rounds to about 1 ms). Completion latency is thus
 *   QEMU's own plus a few µs while busy, about 1 ms when idle-waiting; an idle device with nothing outstanding is
 *   polled every `configPollMs` (100 ms) for configuration changes only. The cost of a poll is one 32-bit load per
 *   vector in use (MSI-X) or one qtest round trip (ISR).
 * - **Kick**: one qtest write, sent without waiting for its answer (a failure is reported through `onError` and
 *   breaks nothing else). QEMU reads the ring only after the command arrives, so the avail index written to shared
 *   memory before it is always seen.
 */
import type { VirtioConfigOps, VirtqueueSpec } from '../../virtio/driver/config-ops.js';
import type { Virtqueue } from '../../virtio/driver/virtqueue.js';
import type { GuestAllocator } from '../../virtio/guest-allocator.js';
import type { GuestMemory } from '../../virtio/guest-memory.js';
import type { SplitQueueAddresses } from '../../virtio/split/layout.js';
import { SplitVirtqueue } from '../../virtio/split/split-virtqueue.js';
import type { PciBar, PciFunction } from './pci-bus-scan.js';
import type { MemIo, PortIo } from './pci-config.js';

export const VIRTIO_PCI_VENDOR_ID = 0x1af4;
/** Modern device ids: 0x1040 + virtio device id. */
export const VIRTIO_PCI_MODERN_DEVICE_BASE = 0x1040;
/** Transitional device ids 0x1000–0x103F: the virtio device id is the PCI subsystem id. */
export const VIRTIO_PCI_TRANSITIONAL_FIRST = 0x1000;
export const VIRTIO_PCI_TRANSITIONAL_LAST = 0x103f;
/** Modern ids end at 0x107F (device ids up to 63). */
export const VIRTIO_PCI_MODERN_LAST = 0x107f;

/** No MSI-X vector (§4.1.5.1.2). */
export const VIRTIO_MSI_NO_VECTOR = 0xffff;

/** MSI-X capability (PCI 3.0 §6.8.2): message control at +2, table at +4, PBA at +8. */
const MSIX_CONTROL = 2;
const MSIX_TABLE = 4;
const MSIX_CONTROL_ENABLE = 0x8000;
const MSIX_CONTROL_FUNCTION_MASK = 0x4000;
const MSIX_TABLE_SIZE_MASK = 0x7ff;
const MSIX_BIR_MASK = 7;
const MSIX_ENTRY_SIZE = 16;
const MSIX_ENTRY_ADDR_LO = 0;
const MSIX_ENTRY_ADDR_HI = 4;
const MSIX_ENTRY_DATA = 8;
const MSIX_ENTRY_CONTROL = 12;
/** A slot holding this value means "the vector fired"; QEMU writes it, the poller clears it. */
const MSI_MARKER = 0x5249_4e47; // 'RING'

/** ISR status bits (§4.1.4.5): reading the register clears them. */
export const ISR_QUEUE = 0x1;
export const ISR_CONFIG = 0x2;

export type VirtioPciErrorCode =
  /** Not a virtio PCI function (vendor/device id). */
  | 'NOT_VIRTIO'
  /** A required vendor capability (or the legacy I/O BAR) is missing or points at a BAR it cannot reach. */
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

export interface VirtioPciOptions {
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

/** One BAR-relative register window: memory or I/O space, as the BAR is. */
export class PciWindow {
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

export interface MsixInfo {
  readonly capOffset: number;
  readonly tableSize: number;
  readonly table: PciWindow;
  /** Guest address of vector i's slot: slots + 4 * i. */
  readonly slots: number;
}

export interface LiveQueue {
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

/** The device id, or a NOT_VIRTIO error. */
export function requireVirtioPciDeviceId(fn: PciFunction): number {
  const deviceId = virtioPciDeviceId(fn);
  if (deviceId === undefined) {
    throw new VirtioPciError(
      'NOT_VIRTIO',
      `${fn.location}: ${hex4(fn.vendorId)}:${hex4(fn.deviceId)} is not a virtio PCI device`,
      fn.deviceId,
    );
  }
  return deviceId;
}

/**
 * MSI-X on (`interrupts` not `isr`): a slot per vector in guest RAM, every entry pointed at its slot and
 * unmasked; undefined when the table is unusable. With `isr`, MSI-X is switched off so the device signals
 * through ISR (and INTx) only.
 */
export async function configureMsix(
  host: VirtioPciHost,
  fn: PciFunction,
  bars: readonly (PciBar | undefined)[],
  cap: number | undefined,
  interrupts: VirtioPciOptions['interrupts'],
): Promise<MsixInfo | undefined> {
  if (cap === undefined) return undefined;
  const cfg = fn.config;
  if (interrupts === 'isr') {
    const control = await cfg.readU16(cap + MSIX_CONTROL);
    await cfg.writeU16(cap + MSIX_CONTROL, control & ~MSIX_CONTROL_ENABLE & 0xffff);
    return undefined;
  }
  const [control, tableReg] = await Promise.all([
    cfg.readU16(cap + MSIX_CONTROL),
    cfg.readU32(cap + MSIX_TABLE),
  ]);
  const tableSize = (control & MSIX_TABLE_SIZE_MASK) + 1;
  const bar = bars[tableReg & MSIX_BIR_MASK];
  const tableOffset = tableReg & ~MSIX_BIR_MASK;
  if (bar?.kind !== 'memory' || tableOffset + tableSize * MSIX_ENTRY_SIZE > bar.size) return undefined;
  const table = new PciWindow(host, bar, tableOffset, tableSize * MSIX_ENTRY_SIZE);
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
      table.w32(e + MSIX_ENTRY_ADDR_LO, addr % 2 ** 32),
      table.w32(e + MSIX_ENTRY_ADDR_HI, Math.floor(addr / 2 ** 32)),
      table.w32(e + MSIX_ENTRY_DATA, MSI_MARKER),
      table.w32(e + MSIX_ENTRY_CONTROL, 0),
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
export function forEachAccess(
  offset: number,
  length: number,
  visit: (off: number, size: 1 | 2 | 4) => void,
): void {
  let off = offset;
  const end = offset + length;
  while (off < end) {
    const left = end - off;
    const size: 1 | 2 | 4 = off % 4 === 0 && left >= 4 ? 4 : off % 2 === 0 && left >= 2 ? 2 : 1;
    visit(off, size);
    off += size;
  }
}

/** Reads `length` bytes through `window` at `offset` with naturally aligned accesses, all pipelined. */
export async function readWindow(window: PciWindow, offset: number, length: number): Promise<Uint8Array> {
  const out = new Uint8Array(length);
  const view = new DataView(out.buffer);
  const reads: Promise<void>[] = [];
  forEachAccess(offset, length, (off, size) => {
    const at = off - offset;
    if (size === 4)
      reads.push(
        window.r32(off).then((v) => {
          view.setUint32(at, v, true);
        }),
      );
    else if (size === 2)
      reads.push(
        window.r16(off).then((v) => {
          view.setUint16(at, v, true);
        }),
      );
    else
      reads.push(
        window.r8(off).then((v) => {
          view.setUint8(at, v);
        }),
      );
  });
  await Promise.all(reads);
  return out;
}

/** Writes `data` through `window` at `offset` with naturally aligned accesses, all pipelined. */
export async function writeWindow(window: PciWindow, offset: number, data: Uint8Array): Promise<void> {
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const writes: Promise<void>[] = [];
  forEachAccess(offset, data.length, (off, size) => {
    const at = off - offset;
    if (size === 4) writes.push(window.w32(off, view.getUint32(at, true)));
    else if (size === 2) writes.push(window.w16(off, view.getUint16(at, true)));
    else writes.push(window.w8(off, view.getUint8(at)));
  });
  await Promise.all(writes);
}

export function hex4(v: number): string {
  return v.toString(16).padStart(4, '0');
}

/** Reset polling: how long a device may take to read back status 0. */
const RESET_TIMEOUT_MS = 5000;

/**
 * The transport-independent half of a virtio-pci driver transport: identity, queue bookkeeping, kicks and the
 * interrupt poller. Subclasses give the register accesses.
 */
export abstract class VirtioPciTransport implements VirtioConfigOps {
  readonly deviceId: number;
  readonly vendorId: number;
  readonly location: string;
  readonly memory: GuestMemory;
  readonly allocator: GuestAllocator;
  readonly pci: PciFunction;
  /** Whether the device is transitional (0x1000–0x103F). */
  readonly transitional: boolean;
  /** `msix` or `isr`: how interrupts are seen. */
  readonly interruptMode: 'msix' | 'isr';
  /** Counters for tests and benchmarks. */
  readonly stats = { kicks: 0, polls: 0, queueInterrupts: 0, configInterrupts: 0 };

  protected readonly msix: MsixInfo | undefined;
  protected readonly options: VirtioPciOptions;
  #queues: (LiveQueue | null)[] = [];
  #configHandler: (() => void) | undefined;
  #serial: Promise<unknown> = Promise.resolve();
  #closed = false;
  #pollTimer:
    { kind: 'immediate'; handle: NodeJS.Immediate } | { kind: 'timer'; handle: NodeJS.Timeout } | undefined;
  #pollRunning = false;
  #hotUntil = 0;
  #error: Error | undefined;

  protected constructor(init: {
    host: VirtioPciHost;
    pci: PciFunction;
    deviceId: number;
    msix: MsixInfo | undefined;
    options: VirtioPciOptions;
  }) {
    this.pci = init.pci;
    this.deviceId = init.deviceId;
    this.vendorId = init.pci.subsystemVendorId;
    this.location = init.pci.location;
    this.memory = init.host.memory;
    this.allocator = init.host.allocator;
    this.transitional = init.pci.deviceId <= VIRTIO_PCI_TRANSITIONAL_LAST;
    this.msix = init.msix;
    this.options = init.options;
    this.interruptMode = init.msix === undefined ? 'isr' : 'msix';
    init.host.addCloseHook?.(() => {
      this.close();
    });
    this.schedulePoll();
  }

  // ---- what a register interface supplies ----

  abstract getStatus(): Promise<number>;
  /** Writes the status register (never 0: {@link setStatus} turns that into a reset). */
  protected abstract writeStatus(status: number): Promise<void>;
  abstract getFeatures(): Promise<bigint>;
  abstract finalizeFeatures(features: bigint): Promise<void>;
  abstract readConfig(offset: number, length: number): Promise<Uint8Array>;
  abstract writeConfig(offset: number, data: Uint8Array): Promise<void>;
  abstract generation(): Promise<number>;
  /** How many queues the device has (an upper bound where the interface cannot tell). */
  protected abstract queueCount(): Promise<number>;
  /** Sets the configuration-change vector; resolves to what the device reads back. */
  protected abstract setConfigVector(vector: number): Promise<number>;
  /** Sets queue `index` up on fresh rings and enables it (runs serialized). */
  protected abstract setupQueue(
    index: number,
    spec: VirtqueueSpec,
    vector: number,
    features: bigint,
  ): Promise<LiveQueue>;
  /** Disables queue `index` after a failed findVqs. */
  protected abstract disableQueue(index: number): Promise<void>;
  /** Reads (and so clears) the ISR status. */
  protected abstract readIsr(): Promise<number>;

  // ---- VirtioConfigOps ----

  async setStatus(status: number): Promise<void> {
    if (status === 0) {
      await this.reset();
      return;
    }
    await this.writeStatus(status);
  }

  /** Writes 0 to the status and waits (up to 5 s) until it reads back 0 (§4.1.4.3.2, §4.1.5.1.2.1). */
  async reset(): Promise<void> {
    await this.resetRegister();
    const deadline = Date.now() + RESET_TIMEOUT_MS;
    while ((await this.getStatus()) !== 0) {
      if (Date.now() > deadline) {
        throw new VirtioPciError(
          'RESET_TIMEOUT',
          `${this.location}: device status stays nonzero after reset`,
          0,
        );
      }
      await new Promise((r) => setTimeout(r, 1));
    }
  }

  /** Writes 0 to the status register. */
  protected abstract resetRegister(): Promise<void>;

  /**
   * Sets up and enables the queues (between FEATURES_OK and DRIVER_OK): rings from the allocator, MSI-X vectors
   * (config vector 0, queue i vector 1 + i, or 1 shared), addresses, enable. Undone on failure.
   */
  findVqs(specs: readonly (VirtqueueSpec | null)[], features: bigint): Promise<(Virtqueue | null)[]> {
    return this.serialized(async () => {
      if (this.#closed) throw new VirtioPciError('INVALID_STATE', `${this.location}: transport closed`, 0);
      if (this.#queues.length !== 0) {
        throw new VirtioPciError('INVALID_STATE', `${this.location}: queues exist already, delVqs first`, 0);
      }
      const numQueues = await this.queueCount();
      const wanted = specs.filter((s) => s !== null).length;
      const msix = this.msix;
      const perQueue = msix !== undefined && msix.tableSize >= 1 + specs.length;
      if (msix !== undefined) {
        const got = await this.setConfigVector(0);
        if (got !== 0)
          throw this.queueError(`the device refused MSI-X vector 0 for config changes (${got})`, -1);
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
            throw this.queueError(`the device has ${numQueues} queues, ${wanted} asked`, index);
          }
          const vector = msix === undefined ? VIRTIO_MSI_NO_VECTOR : perQueue ? 1 + index : 1;
          made.push(await this.setupQueue(index, spec, vector, features));
        }
      } catch (e) {
        for (const q of made) if (q !== null) this.#release(q);
        await Promise.all(
          made.map(async (q, index) => (q === null ? undefined : this.disableQueue(index))),
        ).catch(() => undefined);
        throw e;
      }
      this.#queues = made;
      this.schedulePoll();
      return made.map((q) => q?.vq ?? null);
    });
  }

  /** Frees every queue's rings (and indirect tables of buffers never taken back). Reset the device first. */
  async delVqs(): Promise<void> {
    await this.serialized(() => {
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

  /** Stops the poller; the transport is unusable afterwards (the host closes it on shutdown). */
  close(): void {
    this.#closed = true;
    this.#cancelPoll();
  }

  get isClosed(): boolean {
    return this.#closed;
  }

  // ---- for subclasses ----

  /** The driver-side queue on rings set up at `addresses`, kicking with `write`. */
  protected makeQueue(
    index: number,
    spec: VirtqueueSpec,
    size: number,
    addresses: SplitQueueAddresses,
    features: bigint,
    write: () => Promise<void>,
  ): SplitVirtqueue {
    return SplitVirtqueue.forSpec(spec, {
      index,
      memory: this.memory,
      allocator: this.allocator,
      size,
      addresses,
      features,
      notify: () => {
        this.#kick(write);
      },
    });
  }

  protected queueError(message: string, index: number): VirtioPciError {
    return new VirtioPciError('QUEUE_SETUP', `${this.location}: ${message}`, index);
  }

  /** Runs `op` after every earlier serialized operation (select-register sequences must not interleave). */
  protected serialized<T>(op: () => Promise<T>): Promise<T> {
    const next = this.#serial.then(op);
    this.#serial = next.catch(() => undefined);
    return next;
  }

  // ---- internals ----

  #release(q: LiveQueue): void {
    q.vq.reset();
    SplitVirtqueue.release(this.allocator, q.addresses);
  }

  #kick(write: () => Promise<void>): void {
    this.stats.kicks++;
    this.#hotUntil = performance.now() + (this.options.spinMs ?? 2);
    write().catch((e: unknown) => {
      this.#report(e);
    });
    this.schedulePoll();
  }

  #report(e: unknown): void {
    const error = e instanceof Error ? e : new Error(String(e));
    this.#error ??= error;
    this.options.onError?.(error);
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
  protected schedulePoll(): void {
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
      ? (this.options.pollIntervalMs ?? 1)
      : (this.options.configPollMs ?? 100);
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
      const msix = this.msix;
      if (msix !== undefined) {
        const slots = this.memory.u32Array(msix.slots, msix.tableSize);
        if (Atomics.exchange(slots, 0, 0) !== 0) config = true;
        for (let v = 1; v < msix.tableSize; v++) if (Atomics.exchange(slots, v, 0) !== 0) fired.add(v);
      } else {
        const isr = await this.readIsr();
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
        this.#hotUntil = performance.now() + (this.options.spinMs ?? 2);
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
    this.schedulePoll();
  }
}
