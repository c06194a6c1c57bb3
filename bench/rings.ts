/**
 * Split-ring benchmark over the loopback transport (issue: "Foundation and the virtio core").
 *
 * Round trip: driver addBuf → kick → device popChain → addUsed/publishUsed → interrupt → driver getBuf, the
 * whole path a request takes through the rings, with real notification coalescing (microtasks standing in for
 * eventfds). Pop+push: the time the device spends in popChain + addUsed + publishUsed alone, measured inside
 * the same runs. The device does not touch the buffers: this measures ring overhead, not data copies.
 */
import { LoopbackTransport } from '../src/transport/loopback/loopback-transport.js';
import type { Virtqueue, ScatterEntry } from '../src/virtio/driver/virtqueue.js';
import { VirtioBus } from '../src/virtio/driver/virtio-bus.js';
import { VIRTIO_DEV_ANY_ID, type VirtioDriver } from '../src/virtio/driver/virtio-driver.js';
import { BENCH_DEVICE_TYPE, BenchDevice } from './bench-device.js';

export interface RingScenario {
  readonly name: string;
  /** Descriptors per chain: 1 (one readable buffer) or 3 (header, data, status — a blk request's shape). */
  readonly descriptors: 1 | 3;
  readonly eventIdx: boolean;
  readonly indirect: boolean;
}

export interface RingResult {
  readonly scenario: RingScenario;
  readonly chains: number;
  /** Round trips per second (best of the repetitions). */
  readonly roundTripsPerSec: number;
  /** Device pop+push per second (best of the repetitions). */
  readonly popPushPerSec: number;
  /** Interrupts delivered per chain: how well suppression batches. */
  readonly interruptsPerChain: number;
}

export const RING_SCENARIOS: readonly RingScenario[] = [
  { name: '1 desc', descriptors: 1, eventIdx: false, indirect: false },
  { name: '1 desc, event idx', descriptors: 1, eventIdx: true, indirect: false },
  { name: '3 desc', descriptors: 3, eventIdx: false, indirect: false },
  { name: '3 desc, event idx', descriptors: 3, eventIdx: true, indirect: false },
  { name: '3 desc indirect', descriptors: 3, eventIdx: false, indirect: true },
  { name: '3 desc indirect, event idx', descriptors: 3, eventIdx: true, indirect: true },
];

const QUEUE_SIZE = 256;

/** One run: `chains` round trips through a fresh device, driver and transport. */
async function runOnce(
  scenario: RingScenario,
  chains: number,
): Promise<{ seconds: number; popPushNs: bigint; interrupts: number }> {
  const device = new BenchDevice(QUEUE_SIZE, scenario);
  const transport = new LoopbackTransport(device, { memorySize: 8 << 20 });
  let vq: Virtqueue | undefined;
  const driver: VirtioDriver = {
    name: 'ring-bench',
    idTable: [{ device: BENCH_DEVICE_TYPE, vendor: VIRTIO_DEV_ANY_ID }],
    featureTable: [],
    async probe(dev) {
      const [found] = await dev.findVqs([
        {
          name: 'bench',
          callback: () => {
            onUsed();
          },
        },
      ]);
      vq = found ?? undefined;
    },
    async remove(dev) {
      await dev.reset();
      await dev.delVqs();
    },
  };
  const bus = new VirtioBus();
  await bus.registerDriver(driver);
  const dev = await bus.addDevice(transport);
  if (dev.probeError !== undefined) throw dev.probeError;
  const queue = vq;
  if (queue === undefined) throw new Error('bench driver found no queue');

  // Buffers are allocated once: a header, a data buffer and a status byte per slot.
  const alloc = (n: number) => transport.allocator.alloc(n);
  const slots = Array.from({ length: QUEUE_SIZE }, (): { out: ScatterEntry[]; inn: ScatterEntry[] } =>
    scenario.descriptors === 1
      ? { out: [{ addr: alloc(64), len: 64 }], inn: [] }
      : {
          out: [
            { addr: alloc(16), len: 16 },
            { addr: alloc(512), len: 512 },
          ],
          inn: [{ addr: alloc(16), len: 1 }],
        },
  );

  let added = 0;
  let done = 0;
  let finish: (() => void) | undefined;
  const finished = new Promise<void>((resolve) => (finish = resolve));
  const fill = (): void => {
    while (added < chains && queue.numFree >= (scenario.indirect ? 1 : scenario.descriptors)) {
      const slot = slots[added % QUEUE_SIZE]!;
      queue.addBuf(slot.out, slot.inn, added);
      added++;
    }
    queue.kick();
  };
  const onUsed = (): void => {
    do {
      queue.disableCb();
      while (queue.getBuf() !== null) done++;
      if (done >= chains) {
        finish?.();
        return;
      }
      fill();
    } while (!queue.enableCb());
  };

  const start = process.hrtime.bigint();
  fill();
  await finished;
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  await bus.removeDevice(dev);
  return { seconds, popPushNs: device.popPushNs, interrupts: transport.stats.interrupts };
}

export async function runRingBench(options: { chains: number; repetitions: number }): Promise<RingResult[]> {
  const results: RingResult[] = [];
  for (const scenario of RING_SCENARIOS) {
    await runOnce(scenario, Math.min(200_000, options.chains)); // warm-up: let the JIT settle
    let best = { roundTripsPerSec: 0, popPushPerSec: 0, interruptsPerChain: 0 };
    for (let r = 0; r < options.repetitions; r++) {
      const run = await runOnce(scenario, options.chains);
      const roundTripsPerSec = options.chains / run.seconds;
      const popPushPerSec = options.chains / (Number(run.popPushNs) / 1e9);
      if (roundTripsPerSec > best.roundTripsPerSec) {
        best = { roundTripsPerSec, popPushPerSec, interruptsPerChain: run.interrupts / options.chains };
      }
    }
    results.push({ scenario, chains: options.chains, ...best });
  }
  return results;
}
