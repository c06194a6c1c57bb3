/** The real {@link VhostHostIo}: mmap, close and eventfd writes through src/sys. */
import { closeFd, eventfdWrite, mapShared, sendWithFds } from '../../sys/index.js';
import type { MappedRegion, VhostHostIo } from './host-io.js';

export class SysHostIo implements VhostHostIo {
  readonly #log: (line: string) => void;

  constructor(log: (line: string) => void) {
    this.#log = log;
  }

  mapShared(fd: number, length: number, offset: number): MappedRegion {
    return mapShared(fd, length, offset);
  }

  closeFd(fd: number): void {
    try {
      closeFd(fd);
    } catch (e) {
      this.#log(`close(${fd}) failed: ${e instanceof Error ? e.message : String(e)}`);
    }
  }

  signalCall(ringIndex: number, fd: number): void {
    this.#signal('call', ringIndex, fd);
  }

  signalErr(ringIndex: number, fd: number): void {
    this.#signal('err', ringIndex, fd);
  }

  sendBackendRequest(fd: number, bytes: Uint8Array): void {
    try {
      const sent = sendWithFds(fd, bytes);
      if (sent !== bytes.length) this.#log(`back-end request truncated: ${sent} of ${bytes.length} bytes`);
    } catch (e) {
      this.#log(`back-end request failed: ${e instanceof Error ? e.message : String(e)}`);
    }
  }

  #signal(what: string, ringIndex: number, fd: number): void {
    try {
      // false = the counter is saturated: the front end has a signal pending anyway.
      eventfdWrite(fd, 1);
    } catch (e) {
      this.#log(
        `ring ${ringIndex}: ${what} eventfd ${fd} write failed: ${e instanceof Error ? e.message : String(e)}`,
      );
    }
  }
}
