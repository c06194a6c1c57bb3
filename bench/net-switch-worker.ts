/**
 * One end of the switch benchmark (bench/net-switch.ts), in its own worker thread as a net device in a vhost-user
 * export's worker would be. Roles:
 *
 * - `sab-send`: transmits `frames` 64-byte frames through a {@link SwitchPortBackend}, as fast as the ring takes
 *   them (back-pressure: waits for `writable`).
 * - `sab-recv`: receives through a SwitchPortBackend into a buffer (as the device copies into guest memory) and
 *   posts 'done' after `frames`.
 * - `mp-send` / `mp-recv`: the same over a MessagePort (one postMessage per frame, what a naive cross-thread port
 *   would do), the peer design measured against the rings.
 */
import { parentPort, workerData, type MessagePort } from 'node:worker_threads';
import { SwitchPortBackend, type SwitchPortHandle } from '../src/backends/net/switch-port-backend.js';

export type SwitchBenchRole =
  | {
      readonly role: 'sab-send';
      readonly handle: SwitchPortHandle;
      readonly frame: Uint8Array;
      readonly frames: number;
    }
  | { readonly role: 'sab-recv'; readonly handle: SwitchPortHandle; readonly frames: number }
  | {
      readonly role: 'mp-send';
      readonly port: MessagePort;
      readonly frame: Uint8Array;
      readonly frames: number;
    }
  | { readonly role: 'mp-recv'; readonly port: MessagePort; readonly frames: number };

const data = workerData as SwitchBenchRole;

function done(extra: Record<string, number> = {}): void {
  parentPort?.postMessage({ done: true, ...extra });
}

function sabSend(handle: SwitchPortHandle, frame: Uint8Array, frames: number): void {
  const backend = new SwitchPortBackend(handle);
  let sent = 0;
  let pushedBack = 0;
  const bufs = [frame];
  const pump = (): void => {
    while (sent < frames) {
      if (!backend.transmit(bufs)) {
        pushedBack++;
        return;
      }
      sent++;
    }
    done({ pushedBack });
  };
  backend.start({ readable: () => undefined, writable: pump });
  parentPort?.once('message', pump);
  parentPort?.postMessage({ ready: true });
}

function sabRecv(handle: SwitchPortHandle, frames: number): void {
  const backend = new SwitchPortBackend(handle);
  const buffer = new Uint8Array(2048);
  const bufs = [buffer];
  let got = 0;
  let wakeups = 0;
  // The switch may drop frames (a full port): the main thread then lowers the target to what it delivered.
  let target = frames;
  const check = (): void => {
    if (got === target) done({ wakeups, got });
  };
  parentPort?.on('message', (m: { expect: number }) => {
    target = m.expect;
    check();
  });
  backend.start({
    readable: () => {
      wakeups++;
      while (backend.receive(bufs) > 0) {
        got++;
        check();
      }
    },
    writable: () => undefined,
  });
  parentPort?.postMessage({ ready: true });
}

function mpSend(port: MessagePort, frame: Uint8Array, frames: number): void {
  parentPort?.once('message', () => {
    for (let i = 0; i < frames; i++) port.postMessage(frame);
    done();
  });
  parentPort?.postMessage({ ready: true });
}

function mpRecv(port: MessagePort, frames: number): void {
  const buffer = new Uint8Array(2048);
  let got = 0;
  port.on('message', (f: Uint8Array) => {
    buffer.set(f);
    if (++got === frames) done();
  });
  parentPort?.postMessage({ ready: true });
}

switch (data.role) {
  case 'sab-send':
    sabSend(data.handle, data.frame, data.frames);
    break;
  case 'sab-recv':
    sabRecv(data.handle, data.frames);
    break;
  case 'mp-send':
    mpSend(data.port, data.frame, data.frames);
    break;
  case 'mp-recv':
    mpRecv(data.port, data.frames);
    break;
}
