/**
 * The device contract: what a virtio device model implements, independent of any transport (VIRTIO 1.2 §2,
 * §3). A transport (loopback, vhost-user, virtio-pci, virtio-mmio) never talks to a device directly: it goes
 * through a {@link DeviceController}, which owns the status state machine and feature negotiation once for all
 * devices and transports.
 */
import type { GuestFault } from '../errors.js';
import type { GuestMemory } from '../guest-memory.js';
import type { SplitQueue } from '../split/split-queue.js';

/** How a device tells the driver that something happened (a transport turns these into interrupts). */
export interface InterruptSink {
  /** Used buffers were published on queue `queueIndex` and the driver wants to know. */
  signalUsed(queueIndex: number): void;
  /** The configuration space (or the device status, e.g. DEVICE_NEEDS_RESET) changed. */
  signalConfig(): void;
}

/** What a device receives when the driver sets DRIVER_OK. */
export interface DeviceContext {
  readonly memory: GuestMemory;
  /** The negotiated features. */
  readonly features: bigint;
  /** One entry per queue the device declared; queues the driver did not enable are not `active`. */
  readonly queues: readonly SplitQueue[];
  readonly interrupt: InterruptSink;
  /**
   * Reports a guest fault seen while processing (a corrupt ring, an impossible request): the device status
   * gets DEVICE_NEEDS_RESET and the driver receives a configuration-change notification. The device must stop
   * processing until it is reset.
   */
  fail(fault: GuestFault): void;
  /** The device changed its configuration space: bumps config_generation and notifies the driver. */
  configChanged(): void;
}

export interface VirtioDevice {
  /** Virtio device id (§5): net 1, blk 2, console 3, rng 4, balloon 5... */
  readonly deviceType: number;
  /**
   * Every feature the device offers, device-specific bits and the reserved bits it supports
   * (VIRTIO_F_VERSION_1, VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC...).
   */
  readonly deviceFeatures: bigint;
  /** Maximum size of each queue; the length is the number of queues. */
  readonly queueMaxSizes: readonly number[];
  /** Bytes of device-specific configuration space. */
  readonly configSize: number;
  /** Copies `dst.length` bytes of configuration space at `offset` into `dst` (range already checked). */
  readConfig(offset: number, dst: Uint8Array): void;
  /** Applies a driver write to configuration space (range already checked). */
  writeConfig(offset: number, src: Uint8Array): void;
  /**
   * Optional: refuses a feature combination the device cannot work with (FEATURES_OK then does not stick).
   * Unoffered features and missing VERSION_1 are refused before this is asked.
   */
  validateFeatures?(features: bigint): boolean;
  /** The driver set DRIVER_OK: start serving the active queues. */
  activate(context: DeviceContext): void;
  /** The driver notified (kicked) queue `queueIndex`. Only called while activated. */
  queueNotify(queueIndex: number): void;
  /**
   * Optional: gives back (`SplitQueue.unpop`) every chain popped ahead of need and not used, so each queue's
   * `nextAvail` is the index the driver expects the device to read next. A transport calls it before it reads a
   * ring's state while the device is active (vhost-user GET_VRING_BASE, a ring stopped or deactivated).
   */
  quiesce?(): void;
  /** Back to the initial state: forget the context and every queue; called on device reset. */
  reset(): void;
}
