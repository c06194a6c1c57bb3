// Test helpers for NetBackend implementations: a device-like consumer that records frames and honours the
// contract (drain on readable until receive returns 0, retry transmit after writable), and frame builders.
import type { NetBackend } from '../../../src/devices/net/net-backend.js';

/** Plays the device's part towards a back end: records received frames, queues transmits under back-pressure. */
export class BackendProbe {
  readonly frames: Buffer[] = [];
  readonly links: boolean[] = [];
  readonly #outbox: Uint8Array[] = [];
  readonly #buffer = new Uint8Array(70_000);
  tooLong = 0;
  writableEvents = 0;
  #paused = false;

  /**
   * `asDevice`: drain as NetDevice does with mergeable buffers — stop when `pendingLength()` says 0, without the
   * `receive` that returns 0 (the back end must re-arm `readable` on either).
   */
  constructor(
    readonly backend: NetBackend,
    readonly options: { readonly asDevice?: boolean } = {},
  ) {
    backend.start({
      readable: () => {
        this.drain();
      },
      writable: () => {
        this.writableEvents++;
        this.flush();
      },
      linkChange: (up) => this.links.push(up),
    });
  }

  /** Stops taking frames (as a guest with no receive buffers); `resume` takes them again. */
  pause(): void {
    this.#paused = true;
    this.backend.pauseReceive();
  }

  resume(): void {
    this.#paused = false;
    this.backend.resumeReceive();
  }

  drain(): void {
    if (this.#paused) return;
    for (;;) {
      const pending = this.backend.pendingLength();
      if (pending === 0 && this.options.asDevice === true) return;
      const n = this.backend.receive([this.#buffer.subarray(0, 100), this.#buffer.subarray(100)]);
      if (n === 0) {
        if (pending !== 0) throw new Error(`pendingLength ${pending} but receive returned 0`);
        return;
      }
      if (n < 0) {
        this.tooLong++;
        continue;
      }
      // pendingLength 0 is allowed: a back end fed by another thread may have got the frame since.
      if (pending !== 0 && pending !== n)
        throw new Error(`pendingLength ${pending} but the frame has ${n} bytes`);
      this.frames.push(Buffer.from(this.#buffer.subarray(0, n)));
    }
  }

  /** Sends `frame` (split in two buffers, as a chain would be), queueing it while the back end pushes back. */
  send(frame: Uint8Array): void {
    this.#outbox.push(frame);
    if (this.#outbox.length === 1) this.flush();
  }

  get queued(): number {
    return this.#outbox.length;
  }

  flush(): void {
    while (this.#outbox.length > 0) {
      const f = this.#outbox[0]!;
      const cut = Math.min(14, f.length);
      if (!this.backend.transmit([f.subarray(0, cut), f.subarray(cut)])) return;
      this.#outbox.shift();
    }
  }
}

/** An Ethernet frame of `size` bytes to `dst` from `src`, ethertype 0x88B5, the rest patterned by `seed`. */
export function testFrame(dst: Uint8Array, src: Uint8Array, size: number, seed: number): Buffer {
  const f = Buffer.alloc(size);
  for (let i = 0; i < size; i++) f[i] = (seed * 31 + i * 7) & 0xff;
  f.set(dst, 0);
  f.set(src, 6);
  f.writeUInt16BE(0x88b5, 12);
  return f;
}

export function mac(last: number): Uint8Array {
  return Uint8Array.of(0x52, 0x54, 0x00, 0x00, 0x00, last);
}

export const BROADCAST = Uint8Array.of(0xff, 0xff, 0xff, 0xff, 0xff, 0xff);

/** Resolves when `cond` holds, polling; rejects with `what` after `ms`. */
export async function until(cond: () => boolean, what: string, ms = 20_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}
