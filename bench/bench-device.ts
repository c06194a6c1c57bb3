/**
 * The device the ring benchmark serves: it pops every available chain, completes it (writing nothing, or
 * `writeLength` bytes' worth of length), publishes the batch with one used.idx store and interrupts only
 * when the driver asks. It also measures the time spent in pop+push alone.
 */
import type { DeviceContext, VirtioDevice } from '../src/virtio/device/virtio-device.js';
import { featureSet, VirtioFeature } from '../src/virtio/features.js';

/** Not a registered virtio device id: the benchmark's device exists only in this harness. */
export const BENCH_DEVICE_TYPE = 0xfff0;

export class BenchDevice implements VirtioDevice {
  readonly deviceType = BENCH_DEVICE_TYPE;
  readonly deviceFeatures: bigint;
  readonly queueMaxSizes: readonly number[];
  readonly configSize = 0;
  /** Nanoseconds spent popping and pushing, and chains completed. */
  popPushNs = 0n;
  completed = 0;
  #context: DeviceContext | undefined;

  constructor(queueSize: number, options: { eventIdx: boolean; indirect: boolean }) {
    this.queueMaxSizes = [queueSize];
    this.deviceFeatures =
      featureSet(VirtioFeature.VIRTIO_F_VERSION_1) |
      (options.eventIdx ? featureSet(VirtioFeature.VIRTIO_F_EVENT_IDX) : 0n) |
      (options.indirect ? featureSet(VirtioFeature.VIRTIO_F_INDIRECT_DESC) : 0n);
  }

  readConfig(): void {}
  writeConfig(): void {}

  activate(context: DeviceContext): void {
    this.#context = context;
  }

  reset(): void {
    this.#context = undefined;
  }

  queueNotify(queueIndex: number): void {
    const context = this.#context;
    const q = context?.queues[queueIndex];
    if (context === undefined || q === undefined) return;
    const start = process.hrtime.bigint();
    let n = 0;
    do {
      q.disableNotification();
      for (let chain = q.popChain(); chain !== null; chain = q.popChain()) {
        q.addUsed(chain.head, chain.writableLength);
        n++;
      }
      q.publishUsed();
    } while (q.enableNotification());
    this.popPushNs += process.hrtime.bigint() - start;
    this.completed += n;
    if (q.needsNotification()) context.interrupt.signalUsed(queueIndex);
  }
}
