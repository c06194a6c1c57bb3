/**
 * The device model's state machine: device status (VIRTIO 1.2 §2.1, §3.1), feature negotiation (§2.2), the
 * configuration generation (§2.5), queue enable and DEVICE_NEEDS_RESET — written once, for every device and
 * every transport. A transport turns register writes or protocol messages into calls on a {@link DeviceController}
 * and never talks to the {@link VirtioDevice} itself.
 *
 * Guest input never makes these methods throw: a bad write is reported through {@link DeviceController.onFault}
 * and either ignored (harmless: a stray kick, an out-of-range config read) or answered with DEVICE_NEEDS_RESET
 * (the device can no longer trust its state). Only programming errors of the transport throw ({@link UsageError}).
 *
 * ```ts
 * const controller = new DeviceController(device, { signalUsed: (q) => irq(q), signalConfig: () => irq(-1) });
 * controller.setMemory(memory);
 * controller.setStatus(DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER);
 * controller.setDriverFeatures(controller.deviceFeatures);
 * controller.setStatus(controller.status | DeviceStatus.FEATURES_OK);
 * // queue config: controller.queue(0).size = 256; ... controller.enableQueue(0);
 * controller.setStatus(controller.status | DeviceStatus.DRIVER_OK); // activates the device
 * controller.notify(0); // a kick: device.queueNotify(0)
 * ```
 */
import { GuestFault, UsageError, VirtioError, hex } from '../errors.js';
import { TRANSPORT_FEATURES, VirtioFeature, featureBits, hasFeature } from '../features.js';
import type { GuestMemory } from '../guest-memory.js';
import { SplitQueue } from '../split/split-queue.js';
import { DEVICE_STATUS_MASK, DeviceStatus, describeStatus } from '../status.js';
import { DeviceModelError, FeatureError, StatusError, type DeviceModelErrorCode } from './device-errors.js';
import type { DeviceContext, InterruptSink, VirtioDevice } from './virtio-device.js';

const { ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK, DEVICE_NEEDS_RESET, FAILED } = DeviceStatus;

/** The status bits the driver owns (DEVICE_NEEDS_RESET belongs to the device). */
const DRIVER_STATUS_BITS = ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK | FAILED;

/**
 * Feature bits 24 to 49 are reserved for the queue and negotiation mechanisms (§6); bits 0–23 and 50–127 are
 * device-specific. Of the reserved bits, only those the core implements ({@link TRANSPORT_FEATURES}) are offered:
 * a device model that lists, say, VIRTIO_F_RING_PACKED cannot make the split-ring core pretend to support it.
 */
const RESERVED_FEATURES = ((1n << 50n) - 1n) & ~((1n << 24n) - 1n);
const OFFERABLE_FEATURES = ~RESERVED_FEATURES | TRANSPORT_FEATURES;

/** Feature bitmaps are at most 128 bits (four 32-bit select words). */
const FEATURE_BITS = 128;

/**
 * Largest configuration access honoured. Real transports access 1, 2, 4 or 8 bytes; the bound only keeps a
 * hostile length from allocating an arbitrary zero-filled buffer.
 */
export const MAX_CONFIG_ACCESS = 4096;

export interface DeviceControllerOptions {
  /** Called for every fault, whether ignored or answered with DEVICE_NEEDS_RESET (for logging). */
  readonly onFault?: (fault: VirtioError) => void;
}

export class DeviceController {
  readonly device: VirtioDevice;
  /** One queue per `device.queueMaxSizes` entry. */
  readonly queues: readonly SplitQueue[];
  /** Called for every fault (for logging); see {@link DeviceControllerOptions.onFault}. */
  onFault: ((fault: VirtioError) => void) | undefined;

  readonly #sink: InterruptSink;
  readonly #deviceFeatures: bigint;
  #status = 0;
  #driverFeatures = 0n;
  #generation = 0;
  #memory: GuestMemory | undefined;
  /** The context handed to `device.activate`, while activated. */
  #context: ControllerDeviceContext | undefined;
  #lastFault: VirtioError | undefined;
  #resetReason: VirtioError | undefined;

  constructor(device: VirtioDevice, interrupt: InterruptSink, options: DeviceControllerOptions = {}) {
    this.device = device;
    this.#sink = interrupt;
    this.onFault = options.onFault;
    this.#deviceFeatures = BigInt.asUintN(FEATURE_BITS, device.deviceFeatures & OFFERABLE_FEATURES);
    this.queues = device.queueMaxSizes.map((max, i) => new SplitQueue(i, max));
  }

  // ---- status (§2.1, §3.1) ----

  /** The device status byte as the driver reads it. */
  get status(): number {
    return this.#status;
  }

  /**
   * A driver write of the device status. 0 resets the device. Otherwise the driver may only add bits, in the
   * §3.1.1 order (ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK; FAILED at any time):
   *
   * - clearing a bit, or setting one before its predecessor, is a guest fault → DEVICE_NEEDS_RESET;
   * - FEATURES_OK sticks only when the driver's features are acceptable (§2.2.2: otherwise the device "MUST NOT"
   *   accept them, and the driver sees the bit missing when it re-reads the status);
   * - DRIVER_OK activates the enabled queues and the device; any failure → DEVICE_NEEDS_RESET.
   */
  setStatus(value: number): void {
    if (!Number.isInteger(value) || value < 0 || value > 0xff) {
      throw new UsageError('INVALID_ARGUMENT', `device status ${value} is not a byte`, value);
    }
    if (value === 0) {
      this.reset();
      return;
    }
    const old = this.#status;
    const reserved = value & ~DEVICE_STATUS_MASK;
    if (reserved !== 0) {
      this.#report(
        new StatusError('STATUS_RESERVED_BIT', `status write set undefined bits ${hex(reserved)}`, value),
      );
    }
    // DEVICE_NEEDS_RESET is the device's bit: a driver writing back what it read carries it along; ignore it.
    const written = value & DRIVER_STATUS_BITS;
    const had = old & DRIVER_STATUS_BITS;
    const cleared = had & ~written;
    if (cleared !== 0) {
      this.needsReset(
        new StatusError(
          'STATUS_BIT_CLEARED',
          `status write ${describeStatus(value)} clears ${describeStatus(cleared)} (only a reset may)`,
          value,
        ),
      );
      return;
    }
    let added = written & ~had;
    if (added === 0) return;
    if ((added & FAILED) !== 0) {
      // The driver gave up on the device (§2.1): always accepted; the device stops taking kicks.
      this.#status |= FAILED;
      added &= ~FAILED;
      if (added === 0) return;
    }
    if ((old & DEVICE_NEEDS_RESET) !== 0) {
      this.#report(
        new StatusError(
          'STATUS_NEEDS_RESET',
          `status write ${describeStatus(value)} ignored: the device needs a reset first`,
          value,
        ),
      );
      return;
    }

    let next = this.#status;
    const outOfOrder = (bit: number, needs: number): boolean => {
      if ((next & needs) !== 0) return false;
      this.#status = next;
      this.needsReset(
        new StatusError(
          'STATUS_OUT_OF_ORDER',
          `status bit ${describeStatus(bit)} set before ${describeStatus(needs)} (status ${describeStatus(old)})`,
          value,
        ),
      );
      return true;
    };
    if ((added & ACKNOWLEDGE) !== 0) next |= ACKNOWLEDGE;
    if ((added & DRIVER) !== 0) {
      if (outOfOrder(DRIVER, ACKNOWLEDGE)) return;
      next |= DRIVER;
    }
    if ((added & FEATURES_OK) !== 0) {
      if (outOfOrder(FEATURES_OK, DRIVER)) return;
      const refusal = this.#checkFeatures(this.#driverFeatures);
      if (refusal === undefined) next |= FEATURES_OK;
      else this.#report(refusal); // FEATURES_OK does not stick; the driver sees it and sets FAILED
    }
    if ((added & DRIVER_OK) !== 0) {
      if (outOfOrder(DRIVER_OK, FEATURES_OK)) return;
      if (this.#memory === undefined) {
        throw new UsageError('INVALID_STATE', 'DRIVER_OK before the transport set the guest memory', value);
      }
      this.#status = next | DRIVER_OK;
      this.#activate(this.#memory);
      return;
    }
    this.#status = next;
  }

  /** Whether the device is activated and serving kicks (DRIVER_OK, no DEVICE_NEEDS_RESET, no FAILED). */
  get isLive(): boolean {
    return this.#context !== undefined && (this.#status & (DEVICE_NEEDS_RESET | FAILED)) === 0;
  }

  /**
   * Device reset (§2.4): the device model and every queue return to their initial state, the driver features
   * are forgotten and the status reads 0. The configuration generation is bumped rather than restarted: reset
   * may return writable configuration fields to their defaults, and a driver reading across the reset must see
   * a different generation (§2.5.1).
   */
  reset(): void {
    const context = this.#context;
    this.#context = undefined;
    context?.revoke();
    try {
      this.device.reset();
    } catch (e) {
      this.#report(this.#asFault(e, 'DEVICE_ACTIVATE_FAILED', 'device reset failed'));
    }
    for (const q of this.queues) q.reset();
    this.#driverFeatures = 0n;
    this.#status = 0;
    this.#resetReason = undefined;
    this.#generation = (this.#generation + 1) >>> 0;
  }

  /**
   * Puts the device in DEVICE_NEEDS_RESET (§2.1.2) because of `fault`: the device stops taking kicks until the
   * driver resets it, and — if DRIVER_OK is set — the driver gets a configuration-change notification ("If
   * DRIVER_OK is set, after it sets DEVICE_NEEDS_RESET, the device MUST send a device configuration change
   * notification to the driver"). A second fault while already in that state is only reported.
   */
  needsReset(fault: VirtioError): void {
    this.#report(fault);
    if ((this.#status & DEVICE_NEEDS_RESET) !== 0) return;
    this.#status |= DEVICE_NEEDS_RESET;
    this.#resetReason = fault;
    if ((this.#status & DRIVER_OK) !== 0) this.#sink.signalConfig();
  }

  /** The fault that put the device in DEVICE_NEEDS_RESET, until the next reset. */
  get resetReason(): VirtioError | undefined {
    return this.#resetReason;
  }

  /** The most recent fault of any kind (kept across resets, for diagnostics). */
  get lastFault(): VirtioError | undefined {
    return this.#lastFault;
  }

  // ---- features (§2.2) ----

  /** The features offered: the device's, restricted to the reserved bits the core implements. */
  get deviceFeatures(): bigint {
    return this.#deviceFeatures;
  }

  /** The features the driver wrote (the negotiated set once FEATURES_OK sticks). */
  get driverFeatures(): bigint {
    return this.#driverFeatures;
  }

  /** The negotiated features: the driver's once FEATURES_OK is set, 0 before. */
  get features(): bigint {
    return (this.#status & FEATURES_OK) !== 0 ? this.#driverFeatures : 0n;
  }

  /**
   * A driver write of its accepted features. Only valid with DRIVER set and FEATURES_OK not yet set (§3.1.1 step
   * 4); otherwise ignored with a fault. Acceptability is checked when FEATURES_OK is written, not here, so a
   * transport writing 32 bits at a time may pass through intermediate values.
   */
  setDriverFeatures(features: bigint): void {
    const s = this.#status;
    if ((s & DRIVER) === 0 || (s & (FEATURES_OK | DEVICE_NEEDS_RESET)) !== 0) {
      this.#report(
        new FeatureError(
          'FEATURES_WRITE_OUT_OF_ORDER',
          `driver features ${hex(features)} written in status ${describeStatus(s)} (needs DRIVER, not FEATURES_OK)`,
          features,
        ),
      );
      return;
    }
    this.#driverFeatures = BigInt.asUintN(FEATURE_BITS, features);
  }

  #checkFeatures(features: bigint): FeatureError | undefined {
    const unoffered = features & ~this.#deviceFeatures;
    if (unoffered !== 0n) {
      return new FeatureError(
        'FEATURE_NOT_OFFERED',
        `driver accepted feature bits ${featureBits(unoffered).join(', ')} the device did not offer`,
        features,
      );
    }
    if (!hasFeature(features, VirtioFeature.VIRTIO_F_VERSION_1)) {
      return new FeatureError(
        'VERSION_1_NOT_ACCEPTED',
        `driver features ${hex(features)} lack VIRTIO_F_VERSION_1 (legacy drivers are not supported)`,
        features,
      );
    }
    let accepted: boolean;
    let cause: unknown;
    try {
      accepted = this.device.validateFeatures?.(features) ?? true;
    } catch (e) {
      accepted = false;
      cause = e;
    }
    if (!accepted) {
      return new FeatureError(
        'FEATURES_REJECTED',
        `the device refused features ${hex(features)}`,
        features,
        cause === undefined ? undefined : { cause },
      );
    }
    return undefined;
  }

  // ---- queues ----

  /** Number of queues the device has. */
  get numQueues(): number {
    return this.queues.length;
  }

  /**
   * Queue `index` for the transport to write its configuration (size, ring addresses) before enabling it, or
   * undefined when the device has no such queue (a transport shows that as a queue size of 0).
   */
  queue(index: number): SplitQueue | undefined {
    return Number.isInteger(index) ? this.queues[index] : undefined;
  }

  /**
   * The driver enabled queue `index` (queue_enable / QueueReady). Allowed only between FEATURES_OK and DRIVER_OK
   * (§3.1.1 step 7, hostile input 3): otherwise a guest fault → DEVICE_NEEDS_RESET and the queue stays disabled.
   * The ring configuration itself is validated when DRIVER_OK activates the queue. Returns whether enabled.
   */
  enableQueue(index: number): boolean {
    const q = this.#queueOrFault(index, 'enable');
    if (q === undefined) return false;
    const s = this.#status;
    if ((s & DEVICE_NEEDS_RESET) !== 0) return false;
    if ((s & FEATURES_OK) === 0 || (s & DRIVER_OK) !== 0) {
      this.needsReset(
        new StatusError(
          'QUEUE_ENABLE_OUT_OF_ORDER',
          `queue ${index} enabled in status ${describeStatus(s)} (needs FEATURES_OK, before DRIVER_OK)`,
          index,
        ),
      );
      return false;
    }
    q.ready = true;
    return true;
  }

  /**
   * A driver notification (kick) for queue `index`. Passed to the device only while it is live: before DRIVER_OK
   * the kick is ignored with a fault (§3.1.1, hostile input 3: nothing is consumed before DRIVER_OK); after
   * DEVICE_NEEDS_RESET or FAILED it is ignored silently until reset. An exception from the device → NEEDS_RESET.
   */
  notify(index: number): void {
    const q = this.#queueOrFault(index, 'notify');
    if (q === undefined) return;
    const s = this.#status;
    if ((s & (DEVICE_NEEDS_RESET | FAILED)) !== 0) return;
    if (this.#context === undefined) {
      this.#report(
        new StatusError('NOTIFY_NOT_LIVE', `queue ${index} notified in status ${describeStatus(s)}`, index),
      );
      return;
    }
    if (!q.isActive) {
      this.#report(
        new StatusError('NOTIFY_NOT_LIVE', `queue ${index} notified but was never enabled`, index),
      );
      return;
    }
    try {
      this.device.queueNotify(index);
    } catch (e) {
      this.needsReset(this.#asFault(e, 'DEVICE_NOTIFY_FAILED', `device failed on a kick of queue ${index}`));
    }
  }

  #queueOrFault(index: number, what: string): SplitQueue | undefined {
    const q = this.queue(index);
    if (q === undefined) {
      this.#report(
        new StatusError(
          'QUEUE_INDEX_OUT_OF_RANGE',
          `${what} of queue ${index}: the device has ${this.queues.length} queues`,
          index,
        ),
      );
    }
    return q;
  }

  #activate(memory: GuestMemory): void {
    const features = this.#driverFeatures;
    for (const q of this.queues) {
      if (!q.ready) continue;
      try {
        q.activate(memory, features);
      } catch (e) {
        this.needsReset(this.#asFault(e, 'DEVICE_ACTIVATE_FAILED', `queue ${q.index} failed to activate`));
        return;
      }
    }
    const context = new ControllerDeviceContext(this, memory, features, this.#sink);
    this.#context = context;
    try {
      this.device.activate(context);
    } catch (e) {
      this.needsReset(this.#asFault(e, 'DEVICE_ACTIVATE_FAILED', 'device activation failed'));
    }
  }

  // ---- guest memory ----

  /** The guest memory the transport set (used at the next activation). */
  get memory(): GuestMemory | undefined {
    return this.#memory;
  }

  /** Sets the guest memory the queues and device will use; takes effect at the next DRIVER_OK. */
  setMemory(memory: GuestMemory): void {
    this.#memory = memory;
  }

  // ---- configuration space (§2.5) ----

  /** The configuration generation (§2.5.1); transports show its low 8 (PCI) or 32 (MMIO) bits. */
  get configGeneration(): number {
    return this.#generation;
  }

  /** Bytes of device configuration space. */
  get configSize(): number {
    return this.device.configSize;
  }

  /**
   * `length` bytes of configuration space at `offset`. An access outside the space reads as zeros and is
   * reported as a fault, never thrown.
   */
  readConfig(offset: number, length: number): Uint8Array {
    const size = Number.isSafeInteger(length) && length >= 0 && length <= MAX_CONFIG_ACCESS ? length : 0;
    const out = new Uint8Array(size);
    if (!this.#configRangeOk(offset, length, 'read')) return out;
    try {
      this.device.readConfig(offset, out);
    } catch (e) {
      out.fill(0);
      this.#report(this.#asFault(e, 'DEVICE_CONFIG_FAILED', `config read at ${offset}+${length} failed`));
    }
    return out;
  }

  /** A driver write to configuration space; outside the space it is ignored and reported as a fault. */
  writeConfig(offset: number, data: Uint8Array): void {
    if (!this.#configRangeOk(offset, data.length, 'write')) return;
    try {
      this.device.writeConfig(offset, data);
    } catch (e) {
      this.#report(
        this.#asFault(e, 'DEVICE_CONFIG_FAILED', `config write at ${offset}+${data.length} failed`),
      );
    }
  }

  /**
   * The device's configuration space changed (§2.5.1, §4.1.4.5...): bumps the generation and, once DRIVER_OK is
   * set, sends the driver a configuration-change notification.
   */
  configChanged(): void {
    this.#generation = (this.#generation + 1) >>> 0;
    if ((this.#status & DRIVER_OK) !== 0) this.#sink.signalConfig();
  }

  #configRangeOk(offset: number, length: number, what: string): boolean {
    const size = this.device.configSize;
    const ok =
      Number.isSafeInteger(offset) &&
      Number.isSafeInteger(length) &&
      offset >= 0 &&
      length >= 0 &&
      length <= MAX_CONFIG_ACCESS &&
      offset + length <= size;
    if (!ok) {
      this.#report(
        new StatusError(
          'CONFIG_OUT_OF_RANGE',
          `config ${what} at ${offset}+${length} outside the ${size}-byte configuration space`,
          { offset, length },
        ),
      );
    }
    return ok;
  }

  // ---- faults ----

  #report(fault: VirtioError): void {
    this.#lastFault = fault;
    this.onFault?.(fault);
  }

  #asFault(e: unknown, code: DeviceModelErrorCode, message: string): VirtioError {
    if (e instanceof GuestFault) return e;
    return new DeviceModelError(code, `${message}: ${e instanceof Error ? e.message : String(e)}`, e, {
      cause: e,
    });
  }
}

/**
 * The {@link DeviceContext} a {@link DeviceController} gives the device at DRIVER_OK. It is revoked at the next
 * reset: a device that kept it around (an I/O completing late) can then no longer interrupt the driver or
 * change the state of the device's next life.
 */
export class ControllerDeviceContext implements DeviceContext {
  readonly memory: GuestMemory;
  readonly features: bigint;
  readonly queues: readonly SplitQueue[];
  readonly interrupt: InterruptSink;
  readonly #controller: DeviceController;
  #revoked = false;

  constructor(controller: DeviceController, memory: GuestMemory, features: bigint, sink: InterruptSink) {
    this.#controller = controller;
    this.memory = memory;
    this.features = features;
    this.queues = controller.queues;
    this.interrupt = {
      signalUsed: (queueIndex: number) => {
        if (!this.#revoked) sink.signalUsed(queueIndex);
      },
      signalConfig: () => {
        if (!this.#revoked) sink.signalConfig();
      },
    };
  }

  /** False once the device was reset after this context was handed out. */
  get isCurrent(): boolean {
    return !this.#revoked;
  }

  fail(fault: GuestFault): void {
    if (!this.#revoked) this.#controller.needsReset(fault);
  }

  configChanged(): void {
    if (!this.#revoked) this.#controller.configChanged();
  }

  /** Called by the controller at reset. */
  revoke(): void {
    this.#revoked = true;
  }
}
