/**
 * An in-memory {@link Chardev} for console tests: records every byte the guest writes, feeds host bytes in chunks
 * while not paused, and can play a slow consumer (write returns false above a high-water mark; the buffered bytes
 * are "consumed" after a delay, then onDrain).
 */
import type { Chardev, ChardevListener } from '../../../src/devices/console/chardev.js';
import { concat } from './console-driver.js';

export interface MemoryChardevOptions {
  /** Connected from the start (default true). */
  readonly open?: boolean;
  /** Bytes accepted before write returns false (default: unlimited). */
  readonly highWater?: number;
  /** Delay of the slow consumer before it empties its buffer and signals drain (default 1 ms). */
  readonly drainDelayMs?: number;
  /** Keep delivering host bytes while paused (a misbehaving chardev). */
  readonly ignorePause?: boolean;
}

export class MemoryChardev implements Chardev {
  isOpen: boolean;
  listener: ChardevListener | undefined;
  /** Every guest → host write, in order. */
  readonly written: Uint8Array[] = [];
  /** Writes that came while not open (the device should discard instead). */
  writesWhileClosed = 0;
  /** Times write returned false. */
  refusals = 0;
  pauses = 0;
  resumes = 0;
  paused = false;
  readonly guestOpenEvents: boolean[] = [];
  closed = false;

  readonly #highWater: number;
  readonly #drainDelayMs: number;
  readonly #ignorePause: boolean;
  #buffered = 0;
  #needDrain = false;
  #timer: NodeJS.Timeout | undefined;
  readonly #source: Uint8Array[] = [];

  constructor(options: MemoryChardevOptions = {}) {
    this.isOpen = options.open ?? true;
    this.#highWater = options.highWater ?? Infinity;
    this.#drainDelayMs = options.drainDelayMs ?? 1;
    this.#ignorePause = options.ignorePause ?? false;
  }

  attach(listener: ChardevListener | undefined): void {
    this.listener = listener;
  }

  /** All guest bytes, concatenated. */
  get output(): Uint8Array {
    return concat(this.written);
  }

  get outputText(): string {
    return new TextDecoder().decode(this.output);
  }

  write(data: Uint8Array): boolean {
    if (!this.isOpen) this.writesWhileClosed++;
    this.written.push(Uint8Array.from(data));
    if (this.#highWater === Infinity) return true;
    this.#buffered += data.length;
    this.#timer ??= setTimeout(() => {
      this.#timer = undefined;
      this.#buffered = 0;
      if (this.#needDrain) {
        this.#needDrain = false;
        this.listener?.onDrain();
      }
    }, this.#drainDelayMs);
    if (this.#buffered >= this.#highWater) {
      this.refusals++;
      this.#needDrain = true;
      return false;
    }
    return true;
  }

  pause(): void {
    this.paused = true;
    this.pauses++;
  }

  resume(): void {
    this.paused = false;
    this.resumes++;
    setImmediate(() => {
      this.#pump();
    });
  }

  setGuestOpen(open: boolean): void {
    this.guestOpenEvents.push(open);
  }

  /** Host → guest: queues `data` in chunks of `chunk` bytes and delivers what it can now. */
  send(data: Uint8Array | string, chunk = 65536): void {
    const bytes = typeof data === 'string' ? new TextEncoder().encode(data) : data;
    for (let off = 0; off < bytes.length; off += chunk) {
      this.#source.push(bytes.slice(off, Math.min(off + chunk, bytes.length)));
    }
    this.#pump();
  }

  /** Host bytes not yet handed to the device. */
  get unsent(): number {
    return this.#source.reduce((n, c) => n + c.length, 0);
  }

  connect(): void {
    this.isOpen = true;
    this.listener?.onOpen();
  }

  disconnect(): void {
    this.isOpen = false;
    this.listener?.onClose();
  }

  close(): Promise<void> {
    this.closed = true;
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    return Promise.resolve();
  }

  #pump(): void {
    while (this.#source.length > 0 && (!this.paused || this.#ignorePause)) {
      this.listener?.onData(this.#source.shift() as Uint8Array);
    }
  }
}
