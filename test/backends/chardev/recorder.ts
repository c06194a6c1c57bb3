/** A {@link ChardevListener} that records what a chardev reports, for the backend tests. */
import type { ChardevListener } from '../../../src/devices/console/chardev.js';
import { concat } from '../../devices/console/console-driver.js';

export class Recorder implements ChardevListener {
  readonly chunks: Uint8Array[] = [];
  readonly events: string[] = [];
  drains = 0;

  onData(data: Uint8Array): void {
    this.chunks.push(Uint8Array.from(data));
  }

  onDrain(): void {
    this.drains++;
  }

  onOpen(): void {
    this.events.push('open');
  }

  onClose(): void {
    this.events.push('close');
  }

  get bytes(): Uint8Array {
    return concat(this.chunks);
  }

  get text(): string {
    return new TextDecoder().decode(this.bytes);
  }
}
