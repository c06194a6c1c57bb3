/**
 * What a transport provides to the driver model (Linux's struct virtio_config_ops). Every call is async:
 * transports such as qtest-driven virtio-pci or a vhost-user front end need a round trip per access.
 */
import type { GuestAllocator } from '../guest-allocator.js';
import type { GuestMemory } from '../guest-memory.js';
import type { Virtqueue } from './virtqueue.js';

/** A queue the driver asks for in findVqs. */
export interface VirtqueueSpec {
  readonly name: string;
  /** Called when the device signals used buffers on this queue (the driver then calls getBuf). */
  readonly callback?: (vq: Virtqueue) => void;
  /** Ring size to use; defaults to the device's maximum for that queue. */
  readonly size?: number;
}

export interface VirtioConfigOps {
  /** Virtio device id (§5). */
  readonly deviceId: number;
  /** Subsystem vendor id (PCI) or VendorID (MMIO); 0 where the transport has none. */
  readonly vendorId: number;
  /** A short description of where the device is, for messages (e.g. `loopback:0`, `pci:0000:00:04.0`). */
  readonly location: string;
  /**
   * The transport speaks the legacy (pre-1.0) interface, e.g. virtio-pci's legacy I/O BAR: the device offers no
   * VIRTIO_F_VERSION_1 and the bus negotiates without FEATURES_OK (§3.1.1 "legacy interface"). Absent: false.
   */
  readonly legacy?: boolean;
  /**
   * The guest memory the device can reach (Linux's DMA-able memory): drivers place their buffers here and pass
   * guest-physical addresses to addBuf.
   */
  readonly memory: GuestMemory;
  /** Allocates driver buffers inside {@link memory} (Linux's DMA API, here a plain allocator). */
  readonly allocator: GuestAllocator;

  getStatus(): Promise<number>;
  setStatus(status: number): Promise<void>;
  /** Writes 0 to the status and waits until the device reads back 0. */
  reset(): Promise<void>;
  /** The device's offered features. */
  getFeatures(): Promise<bigint>;
  /** Writes the driver's accepted features (before FEATURES_OK). */
  finalizeFeatures(features: bigint): Promise<void>;
  /** Bytes of device configuration space at `offset`. */
  readConfig(offset: number, length: number): Promise<Uint8Array>;
  writeConfig(offset: number, data: Uint8Array): Promise<void>;
  /** The configuration generation counter (re-read config when it changes mid-read). */
  generation(): Promise<number>;
  /**
   * Sets up one queue per spec, queue index = position in `specs` (a null entry skips that index), and
   * enables them. The negotiated features decide EVENT_IDX and INDIRECT_DESC use.
   */
  findVqs(specs: readonly (VirtqueueSpec | null)[], features: bigint): Promise<(Virtqueue | null)[]>;
  /** Tears down every queue made by findVqs (after a reset). */
  delVqs(): Promise<void>;
  /** Registers the handler for configuration-change interrupts. */
  onConfigChange(handler: () => void): void;
}
