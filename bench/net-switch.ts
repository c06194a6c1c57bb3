/**
 * In-process switch benchmark (issue 5: "packets per second for 64-byte frames through the in-process switch
 * between two ringvm ports"). Two worker threads, each holding a {@link SwitchPortBackend} as a net device in a
 * vhost-user export's worker does; the {@link NetSwitch} runs on the main thread. Worker A transmits 64-byte
 * unicast frames to worker B's MAC as fast as its ring takes them; B copies each into a buffer (as the device
 * copies into guest memory). Rate = frames delivered to B / time from start to B's last frame. Every frame
 * crosses two SharedArrayBuffer rings and is copied three times (guest → ring, ring → ring, ring → guest).
 *
 * Peer, in the same run and interleaved: the same two workers and a main-thread relay over MessagePorts, one
 * postMessage per frame (the design the rings replace). Ratio = rings / MessagePort.
 */
import { MessageChannel, Worker, type Transferable } from 'node:worker_threads';
import { NetSwitch } from '../src/backends/net/net-switch.js';
import type { SwitchBenchRole } from './net-switch-worker.js';

export interface SwitchBenchResult {
  readonly framesPerSec: number;
  readonly delivered: number;
  readonly dropped: number;
  /** Sender: times transmit returned false (ring full → waited for room). */
  readonly pushedBack: number;
  /** Receiver wake-ups per frame (wake-up suppression at work). */
  readonly wakeupsPerFrame: number;
}

const FRAME_BYTES = 64;
const MAC_A = [0x52, 0x54, 0x00, 0x00, 0x00, 0x0a];
const MAC_B = [0x52, 0x54, 0x00, 0x00, 0x00, 0x0b];

function frame(dst: number[], src: number[]): Uint8Array {
  const f = new Uint8Array(FRAME_BYTES);
  f.set(dst, 0);
  f.set(src, 6);
  f[12] = 0x88;
  f[13] = 0xb5;
  return f;
}

function worker(role: SwitchBenchRole, transfer: readonly Transferable[] = []): Worker {
  return new Worker(new URL('./net-switch-worker.js', import.meta.url), {
    workerData: role,
    transferList: [...transfer],
  });
}

function message<T>(w: Worker, pick: (m: Record<string, unknown>) => boolean): Promise<T> {
  return new Promise((resolve, reject) => {
    const on = (m: Record<string, unknown>): void => {
      if (!pick(m)) return;
      w.off('message', on);
      resolve(m as T);
    };
    w.on('message', on);
    w.once('error', reject);
  });
}

async function runRings(frames: number): Promise<SwitchBenchResult> {
  const sw = new NetSwitch();
  const a = sw.addSharedPort({ name: 'a' });
  const b = sw.addSharedPort({ name: 'b' });
  const recv = worker({ role: 'sab-recv', handle: b.handle, frames });
  const send = worker({ role: 'sab-send', handle: a.handle, frame: frame(MAC_B, MAC_A), frames });
  await Promise.all([message(recv, (m) => m.ready === true), message(send, (m) => m.ready === true)]);
  // The switch knows where B lives before the timed part (unknown unicast would be flooded).
  teach(sw, b.name, MAC_B);
  const recvDone = message<{ wakeups: number; got: number }>(recv, (m) => m.done === true);
  const sendDone = message<{ pushedBack: number }>(send, (m) => m.done === true);
  const start = performance.now();
  send.postMessage('go');
  const sent = await sendDone;
  // Everything A sent has been forwarded or dropped once the switch's counters add up.
  while (b.stats.txFrames + b.stats.txDropped + b.backlog < frames) await new Promise((r) => setImmediate(r));
  while (b.backlog > 0) await new Promise((r) => setImmediate(r));
  recv.postMessage({ expect: b.stats.txFrames });
  const got = await recvDone;
  const seconds = (performance.now() - start) / 1000;
  await Promise.all([send.terminate(), recv.terminate()]);
  await sw.close();
  return {
    framesPerSec: got.got / seconds,
    delivered: got.got,
    dropped: b.stats.txDropped,
    pushedBack: sent.pushedBack,
    wakeupsPerFrame: got.wakeups / got.got,
  };
}

/** Makes the switch learn `mac` on the port named `port` without sending anything to the workers. */
function teach(sw: NetSwitch, port: string, mac: number[]): void {
  const p = sw.ports.find((x) => x.name === port);
  if (p === undefined) throw new Error(`no port ${port}`);
  // A broadcast "from" that port: the switch learns the source, floods to the others (A's ring; A never reads).
  sw.ingress(p, frame([0xff, 0xff, 0xff, 0xff, 0xff, 0xff], mac));
}

async function runMessagePort(frames: number): Promise<SwitchBenchResult> {
  const toRelay = new MessageChannel();
  const fromRelay = new MessageChannel();
  const recv = worker({ role: 'mp-recv', port: fromRelay.port2, frames }, [fromRelay.port2]);
  const send = worker({ role: 'mp-send', port: toRelay.port2, frame: frame(MAC_B, MAC_A), frames }, [
    toRelay.port2,
  ]);
  await Promise.all([message(recv, (m) => m.ready === true), message(send, (m) => m.ready === true)]);
  toRelay.port1.on('message', (f: Uint8Array) => {
    fromRelay.port1.postMessage(f);
  });
  const recvDone = message(recv, (m) => m.done === true);
  const start = performance.now();
  send.postMessage('go');
  await recvDone;
  const seconds = (performance.now() - start) / 1000;
  toRelay.port1.close();
  fromRelay.port1.close();
  await Promise.all([send.terminate(), recv.terminate()]);
  return { framesPerSec: frames / seconds, delivered: frames, dropped: 0, pushedBack: 0, wakeupsPerFrame: 1 };
}

export interface SwitchBenchReport {
  readonly rings: SwitchBenchResult;
  readonly messagePort: SwitchBenchResult;
}

/** Best of `rounds` for each design, interleaved. */
export async function runSwitchBench(options: {
  frames: number;
  rounds: number;
}): Promise<SwitchBenchReport> {
  let rings: SwitchBenchResult | undefined;
  let mp: SwitchBenchResult | undefined;
  for (let r = 0; r < options.rounds; r++) {
    const x = await runRings(options.frames);
    if (rings === undefined || x.framesPerSec > rings.framesPerSec) rings = x;
    const y = await runMessagePort(options.frames);
    if (mp === undefined || y.framesPerSec > mp.framesPerSec) mp = y;
  }
  if (rings === undefined || mp === undefined) throw new Error('no rounds');
  return { rings, messagePort: mp };
}

export function printSwitchBench(report: SwitchBenchReport, frames: number, rounds: number): void {
  const m = (n: number): string => `${(n / 1e6).toFixed(2)} M/s`;
  const { rings, messagePort } = report;
  console.log(
    `\nIn-process switch, 64-byte frames between two ports in different worker threads (${frames} frames, best of ${rounds})`,
  );
  console.log(
    `SharedArrayBuffer rings + NetSwitch   ${m(rings.framesPerSec).padStart(10)}  delivered ${rings.delivered}, dropped ${rings.dropped}, sender pushed back ${rings.pushedBack}×, receiver wake-ups/frame ${rings.wakeupsPerFrame.toFixed(4)}`,
  );
  console.log(`MessagePort relay (peer design)       ${m(messagePort.framesPerSec).padStart(10)}`);
  console.log(`ratio rings / MessagePort: ${(rings.framesPerSec / messagePort.framesPerSec).toFixed(2)}×`);
}
