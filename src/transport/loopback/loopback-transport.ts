/**
 * # Loopback transport
 *
 * Connects the driver model (a {@link VirtioBus} and its drivers) to a {@link VirtioDevice} in the same process,
 * with nothing in between but guest memory — the way a guest kernel and a device model meet, minus the VM. It is
 * what the tests and benchmarks of devices and drivers run on, and the reference for what every other transport
 * must do.
 *
 * - **Memory**: one {@link GuestMemory} (`memorySize`, default 16 MiB at address 0, or several `regions` to
 *   exercise buffers that cross region boundaries) and a {@link GuestAllocator} over all of it, from which the
 *   driver side takes its rings, buffers and indirect tables.
 * - **Device side**: a {@link DeviceController} owns status, features, configuration and the device's
 *   {@link SplitQueue}s; `findVqs` writes each queue's size and ring addresses into it and enables it, exactly as a
 *   driver would through virtio-pci's common configuration.
 * - **Notifications** behave like eventfds: a driver kick (`vq.notify()`) schedules `controller.notify(i)` on a
 *   microtask, and a device's used-buffer or configuration interrupt schedules `vq.interrupt()` / the config
 *   handler on a microtask. At most one notification per queue and direction is pending at a time, so a burst of
 *   kicks or interrupts costs one delivery. Nothing runs re-entrantly: the device never runs inside `addBuf` or
 *   `kick`, the driver's callback never inside the device.
 * - **Reset** drops notifications still pending from before it. Queues made before a reset stay dead (their
 *   kicks go nowhere): as on every transport, the driver deletes them (`delVqs`) and finds new ones.
 *
 * ```ts
 * import { VirtioBus } from '../../virtio/driver/virtio-bus.js';
 * import { LoopbackTransport } from './loopback-transport.js';
 *
 * const bus = new VirtioBus();
 * await bus.registerDriver(myDriver);                         // a VirtioDriver
 * const transport = new LoopbackTransport(myDevice, { memorySize: 4 << 20 });
 * const dev = await bus.addDevice(transport);                  // reset, negotiate, probe, DRIVER_OK
 * // In the driver: const [vq] = await dev.findVqs([{ name: 'rq', callback: onUsed }]);
 * //                 const buf = dev.ops.allocator.alloc(512); vq.addInbuf([{ addr: buf, len: 512 }], token);
 * //                 vq.kick();   // the device runs on the next microtask, onUsed after it
 * ```
 */
import { DeviceController } from '../../virtio/device/device-controller.js';
import type { InterruptSink, VirtioDevice } from '../../virtio/device/virtio-device.js';
import type { VirtioConfigOps, VirtqueueSpec } from '../../virtio/driver/config-ops.js';
import type { Virtqueue } from '../../virtio/driver/virtqueue.js';
import { UsageError, type VirtioError } from '../../virtio/errors.js';
import { GuestAllocator } from '../../virtio/guest-allocator.js';
import { GuestMemory } from '../../virtio/guest-memory.js';
import { isValidSplitQueueSize, type SplitQueueAddresses } from '../../virtio/split/layout.js';
import { SplitVirtqueue } from '../../virtio/split/split-virtqueue.js';
import { DeviceStatus } from '../../virtio/status.js';

/** Default guest memory: 16 MiB at guest address 0. */
export const LOOPBACK_DEFAULT_MEMORY_SIZE = 16 << 20;

export interface LoopbackRegion {
  readonly guestAddr: number;
  readonly size: number;
}

export interface LoopbackTransportOptions {
  /** Bytes of guest memory, one region at address 0 (default {@link LOOPBACK_DEFAULT_MEMORY_SIZE}). */
  readonly memorySize?: number;
  /** Several regions instead of `memorySize` (adjacent ones let buffers cross a region boundary). */
  readonly regions?: readonly LoopbackRegion[];
  /** Back the memory with SharedArrayBuffers (for devices that run in a worker). */
  readonly shared?: boolean;
  /** Vendor id shown to the bus (default 0: the loopback has no PCI subsystem vendor). */
  readonly vendorId?: number;
  /** Location string for messages (default `loopback:<n>`). */
  readonly location?: string;
  /** Every device-side fault (from the {@link DeviceController}), for logging. */
  readonly onFault?: (fault: VirtioError) => void;
}

/** Counters of notifications, for tests and benchmarks. */
export interface LoopbackStats {
  /** `vq.notify()` calls by the driver. */
  kicks: number;
  /** Kicks delivered to the device (after coalescing). */
  notifications: number;
  /** Used-buffer interrupts the device signalled. */
  interruptsSignalled: number;
  /** Used-buffer interrupts delivered to `vq.interrupt()` (after coalescing). */
  interrupts: number;
  /** Configuration-change interrupts delivered. */
  configInterrupts: number;
}

interface LiveQueue {
  readonly vq: SplitVirtqueue;
  readonly addresses: SplitQueueAddresses;
}

/** Per-queue "a notification is pending" flags; a new set per reset, so stale microtasks cannot clear them. */
interface PendingFlags {
  readonly kick: Uint8Array;
  readonly irq: Uint8Array;
}

let nextLocation = 0;

export class LoopbackTransport implements VirtioConfigOps {
  readonly device: VirtioDevice;
  readonly memory: GuestMemory;
  readonly allocator: GuestAllocator;
  readonly controller: DeviceController;
  readonly deviceId: number;
  readonly vendorId: number;
  readonly location: string;
  readonly stats: LoopbackStats = {
    kicks: 0,
    notifications: 0,
    interruptsSignalled: 0,
    interrupts: 0,
    configInterrupts: 0,
  };

  #queues: (LiveQueue | null)[] = [];
  #pending: PendingFlags;
  #configPending = false;
  #configHandler: (() => void) | undefined;

  constructor(device: VirtioDevice, options: LoopbackTransportOptions = {}) {
    this.device = device;
    this.deviceId = device.deviceType;
    this.vendorId = options.vendorId ?? 0;
    this.location = options.location ?? `loopback:${nextLocation++}`;
    this.memory = createMemory(options);
    this.allocator = new GuestAllocator(this.memory);
    const sink: InterruptSink = {
      signalUsed: (queueIndex) => {
        this.#signalUsed(queueIndex);
      },
      signalConfig: () => {
        this.#signalConfig();
      },
    };
    this.controller = new DeviceController(
      device,
      sink,
      options.onFault === undefined ? {} : { onFault: options.onFault },
    );
    this.controller.setMemory(this.memory);
    this.#pending = this.#newPending();
  }

  /** The driver-side queue `index` made by findVqs, if any. */
  virtqueue(index: number): SplitVirtqueue | undefined {
    return this.#queues[index]?.vq;
  }

  // ---- VirtioConfigOps ----

  getStatus(): Promise<number> {
    return settle(() => this.controller.status);
  }

  setStatus(status: number): Promise<void> {
    if (status === 0) return this.reset();
    return settle(() => {
      this.controller.setStatus(status);
    });
  }

  /** Resets the device; kicks and interrupts still pending from before are dropped. */
  reset(): Promise<void> {
    return settle(() => {
      this.controller.setStatus(0);
      this.#pending = this.#newPending();
    });
  }

  getFeatures(): Promise<bigint> {
    return settle(() => this.controller.deviceFeatures);
  }

  finalizeFeatures(features: bigint): Promise<void> {
    return settle(() => {
      this.controller.setDriverFeatures(features);
    });
  }

  readConfig(offset: number, length: number): Promise<Uint8Array> {
    return settle(() => this.controller.readConfig(offset, length));
  }

  writeConfig(offset: number, data: Uint8Array): Promise<void> {
    return settle(() => {
      this.controller.writeConfig(offset, data);
    });
  }

  generation(): Promise<number> {
    return settle(() => this.controller.configGeneration);
  }

  /**
   * Allocates each queue's rings in guest memory, writes size and addresses into the device's queue config,
   * enables it, and returns the driver-side {@link SplitVirtqueue}s. Must run between FEATURES_OK and DRIVER_OK.
   */
  findVqs(specs: readonly (VirtqueueSpec | null)[], features: bigint): Promise<(Virtqueue | null)[]> {
    return settle(() => {
      if (this.#queues.length !== 0) {
        throw new UsageError(
          'INVALID_STATE',
          `${this.location}: queues exist already, delVqs first`,
          specs.length,
        );
      }
      const made: (LiveQueue | null)[] = [];
      try {
        specs.forEach((spec, index) => {
          made.push(spec === null ? null : this.#setupQueue(index, spec, features));
        });
      } catch (e) {
        // Undo: the queues set up so far go back to unconfigured, their rings to the allocator.
        made.forEach((q, index) => {
          if (q === null) return;
          this.controller.queue(index)?.reset();
          this.#freeRings(q);
        });
        throw e;
      }
      this.#queues = made;
      return made.map((q) => q?.vq ?? null);
    });
  }

  /**
   * Frees the rings of every queue made by findVqs (and the indirect tables of buffers the driver did not take
   * back with detachUnusedBuf). The device must have been reset first.
   */
  delVqs(): Promise<void> {
    return settle(() => {
      if ((this.controller.status & DeviceStatus.DRIVER_OK) !== 0) {
        throw new UsageError(
          'INVALID_STATE',
          `${this.location}: reset the device before deleting its queues`,
          0,
        );
      }
      const queues = this.#queues;
      this.#queues = [];
      for (const q of queues) if (q !== null) this.#freeRings(q);
    });
  }

  onConfigChange(handler: () => void): void {
    this.#configHandler = handler;
  }

  // ---- internals ----

  #setupQueue(index: number, spec: VirtqueueSpec, features: bigint): LiveQueue {
    const queue = this.controller.queue(index);
    if (queue === undefined) {
      throw new UsageError(
        'INVALID_ARGUMENT',
        `${this.location}: the device has ${this.controller.numQueues} queues, no queue ${index}`,
        index,
      );
    }
    const size = spec.size ?? queue.maxSize;
    if (!isValidSplitQueueSize(size) || size > queue.maxSize) {
      throw new UsageError(
        'INVALID_ARGUMENT',
        `${this.location}: queue ${index} size ${size} is not a power of two up to ${queue.maxSize}`,
        size,
      );
    }
    const addresses = SplitVirtqueue.allocate(this.allocator, size);
    queue.size = size;
    queue.descTable = addresses.descTable;
    queue.availRing = addresses.availRing;
    queue.usedRing = addresses.usedRing;
    if (!this.controller.enableQueue(index)) {
      this.#freeRings({ addresses });
      throw new UsageError(
        'INVALID_STATE',
        `${this.location}: the device refused to enable queue ${index} (${this.controller.lastFault?.message ?? 'no reason'})`,
        index,
      );
    }
    const pending = this.#pending;
    const vq = SplitVirtqueue.forSpec(spec, {
      index,
      memory: this.memory,
      allocator: this.allocator,
      size,
      addresses,
      features,
      notify: () => {
        this.#kick(index, pending);
      },
    });
    return { vq, addresses };
  }

  /** Gives a queue's ring block back, with the indirect tables of buffers still outstanding. */
  #freeRings(queue: { readonly addresses: SplitQueueAddresses; readonly vq?: SplitVirtqueue }): void {
    queue.vq?.reset();
    SplitVirtqueue.release(this.allocator, queue.addresses);
  }

  #newPending(): PendingFlags {
    const n = this.controller.numQueues;
    return { kick: new Uint8Array(n), irq: new Uint8Array(n) };
  }

  /** The driver kicked queue `index`: deliver one notification on a microtask (an eventfd write). */
  #kick(index: number, pending: PendingFlags): void {
    this.stats.kicks++;
    if (pending !== this.#pending || pending.kick[index] === 1) return;
    pending.kick[index] = 1;
    queueMicrotask(() => {
      if (pending !== this.#pending) return;
      pending.kick[index] = 0;
      this.stats.notifications++;
      this.controller.notify(index);
    });
  }

  /** The device signalled used buffers on queue `index`: deliver one interrupt on a microtask. */
  #signalUsed(index: number): void {
    this.stats.interruptsSignalled++;
    const pending = this.#pending;
    if (pending.irq[index] !== 0) return;
    pending.irq[index] = 1;
    queueMicrotask(() => {
      if (pending !== this.#pending) return;
      pending.irq[index] = 0;
      const vq = this.#queues[index]?.vq;
      if (vq === undefined) return;
      this.stats.interrupts++;
      vq.interrupt();
    });
  }

  /** Configuration change (or DEVICE_NEEDS_RESET): one pending delivery to the bus's handler. */
  #signalConfig(): void {
    if (this.#configPending) return;
    this.#configPending = true;
    queueMicrotask(() => {
      this.#configPending = false;
      this.stats.configInterrupts++;
      this.#configHandler?.();
    });
  }
}

/** Runs `fn` now and returns its outcome as a promise (a throw becomes a rejection). */
function settle<T>(fn: () => T): Promise<T> {
  try {
    return Promise.resolve(fn());
  } catch (e) {
    return Promise.reject(e instanceof Error ? e : new Error(String(e)));
  }
}

function createMemory(options: LoopbackTransportOptions): GuestMemory {
  const make = (size: number): Uint8Array =>
    new Uint8Array(options.shared === true ? new SharedArrayBuffer(size) : new ArrayBuffer(size));
  if (options.regions !== undefined) {
    return new GuestMemory(options.regions.map((r) => ({ guestAddr: r.guestAddr, bytes: make(r.size) })));
  }
  return new GuestMemory([{ guestAddr: 0, bytes: make(options.memorySize ?? LOOPBACK_DEFAULT_MEMORY_SIZE) }]);
}
