/**
 * `ChardevBase`: what every host chardev shares — the one listener, the open state, the pause state, and the
 * guest's open state — so each implementation only moves bytes.
 */
import type { Chardev, ChardevListener } from '../../devices/console/chardev.js';

export abstract class ChardevBase implements Chardev {
  #listener: ChardevListener | undefined;
  #open = false;
  #paused = false;
  #guestOpen = false;
  /** Called when the guest opens or closes its end of the port. */
  onGuestOpen: ((open: boolean) => void) | undefined;

  get isOpen(): boolean {
    return this.#open;
  }

  /** Whether the console device asked to stop delivering data. */
  get isPaused(): boolean {
    return this.#paused;
  }

  /** Whether the guest has its end of the port open (as last reported by the device). */
  get guestOpen(): boolean {
    return this.#guestOpen;
  }

  attach(listener: ChardevListener | undefined): void {
    this.#listener = listener;
  }

  abstract write(data: Uint8Array): boolean;
  abstract close(): Promise<void>;

  pause(): void {
    if (this.#paused) return;
    this.#paused = true;
    this.pauseInput();
  }

  resume(): void {
    if (!this.#paused) return;
    this.#paused = false;
    this.resumeInput();
  }

  setGuestOpen(open: boolean): void {
    this.#guestOpen = open;
    this.onGuestOpen?.(open);
  }

  /** Stop reading host input (the device holds bytes it cannot place yet). */
  protected abstract pauseInput(): void;
  /** Read host input again. */
  protected abstract resumeInput(): void;

  protected emitData(data: Uint8Array): void {
    this.#listener?.onData(data);
  }

  protected emitDrain(): void {
    this.#listener?.onDrain();
  }

  /** Marks the host side connected and tells the listener (once per change). */
  protected setOpen(open: boolean): void {
    if (this.#open === open) return;
    this.#open = open;
    if (open) this.#listener?.onOpen();
    else this.#listener?.onClose();
  }
}
