/**
 * An in-memory {@link NetBackend} for device tests: frames the guest transmits land in `sent` (copied, with
 * their header when `vnetHdr`), frames the test injects wait in an inbox for the device to receive. It follows
 * the contract's rules (readable only after receive returned 0 or on resume, -1 for a frame too long for the
 * buffers, pendingLength -1 when `knownLength` is off, as a tap) and records every call the device makes.
 */
import type { NetBackend, NetBackendEvents, NetOffloads } from '../../../src/devices/net/net-backend.js';

export class MemoryNetBackend implements NetBackend {
  readonly vnetHdr: boolean;
  linkUp = true;
  /** Frames transmitted, in order. */
  readonly sent: Uint8Array[] = [];
  /** Frames waiting to be received. */
  readonly inbox: Uint8Array[] = [];
  /** When false, pendingLength is -1 (a tap does not know the next frame's length). */
  knownLength: boolean;
  /** When true, transmit returns false (back-pressure). */
  full = false;
  paused = false;
  enabled = true;
  offloads: NetOffloads | undefined;
  events: NetBackendEvents | undefined;
  readonly calls: string[] = [];
  closed = false;

  constructor(options: { vnetHdr?: boolean; knownLength?: boolean } = {}) {
    this.vnetHdr = options.vnetHdr ?? false;
    this.knownLength = options.knownLength ?? true;
  }

  start(events: NetBackendEvents): void {
    this.events = events;
    this.calls.push('start');
  }

  /** Queues frames for the guest and tells the device (unless paused). */
  inject(...frames: Uint8Array[]): void {
    const wasEmpty = this.inbox.length === 0;
    this.inbox.push(...frames);
    if (wasEmpty && !this.paused) this.events?.readable();
  }

  /** Lets the device transmit again after `full`. */
  drain(): void {
    this.full = false;
    this.events?.writable();
  }

  setLink(up: boolean): void {
    this.linkUp = up;
    this.events?.linkChange?.(up);
  }

  transmit(bufs: readonly Uint8Array[]): boolean {
    if (this.full) return false;
    let n = 0;
    for (const b of bufs) n += b.length;
    const frame = new Uint8Array(n);
    let off = 0;
    for (const b of bufs) {
      frame.set(b, off);
      off += b.length;
    }
    this.sent.push(frame);
    return true;
  }

  receive(bufs: readonly Uint8Array[]): number {
    const frame = this.inbox.shift();
    if (frame === undefined) return 0;
    let room = 0;
    for (const b of bufs) room += b.length;
    if (frame.length > room) return -1;
    let off = 0;
    for (const b of bufs) {
      if (off >= frame.length) break;
      const k = Math.min(b.length, frame.length - off);
      b.set(frame.subarray(off, off + k));
      off += k;
    }
    return frame.length;
  }

  pendingLength(): number {
    const next = this.inbox[0];
    if (next === undefined) return 0;
    return this.knownLength ? next.length : -1;
  }

  pauseReceive(): void {
    this.paused = true;
    this.calls.push('pause');
  }

  resumeReceive(): void {
    this.calls.push('resume');
    const was = this.paused;
    this.paused = false;
    if (was && this.inbox.length > 0) queueMicrotask(() => this.events?.readable());
  }

  setOffloads(offloads: NetOffloads): void {
    this.offloads = offloads;
  }

  setEnabled(enabled: boolean): void {
    this.enabled = enabled;
    this.calls.push(enabled ? 'enable' : 'disable');
  }

  close(): Promise<void> {
    this.closed = true;
    return Promise.resolve();
  }
}
