/**
 * `NativeBuffer`: a block of C heap memory with a stable address and a zero-copy JS view of it.
 *
 * System calls that take structures holding pointers (`msghdr` → `iovec` → data, `epoll_event` arrays) need
 * addresses that do not move. A JS typed array can be passed to a koffi call as a transient pointer, but its
 * address cannot be stored inside another structure, so src/sys builds such structures in native memory and
 * reads and writes them through `bytes`/`data`.
 *
 * One NativeBuffer per module or object, allocated once and reused: the hot paths allocate nothing.
 */
import koffi from 'koffi';
import type { Pointer } from './libc.js';

export class NativeBuffer {
  /** The address of the first byte. */
  readonly ptr: Pointer;
  readonly length: number;
  /** A zero-copy view of the memory (valid until {@link free}). */
  readonly bytes: Uint8Array;
  /** The same memory, for little-endian field access at byte offsets. */
  readonly data: DataView;
  #freed = false;

  constructor(length: number) {
    if (!Number.isSafeInteger(length) || length <= 0) {
      throw new RangeError(`NativeBuffer length must be a positive integer, got ${length}`);
    }
    this.ptr = koffi.alloc('uint8_t', length) as Pointer;
    this.length = length;
    const buffer = koffi.view(this.ptr, length);
    this.bytes = new Uint8Array(buffer);
    this.data = new DataView(buffer);
  }

  /** The address `offset` bytes into the buffer. */
  at(offset: number): Pointer {
    return this.ptr + BigInt(offset);
  }

  /** Releases the memory. The views must not be used afterwards. A second call is a no-op. */
  free(): void {
    if (this.#freed) return;
    this.#freed = true;
    koffi.free(this.ptr);
  }
}
