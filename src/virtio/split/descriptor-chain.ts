/**
 * `DescriptorChain`: one chain popped from a split virtqueue (VIRTIO 1.2 §2.7.5), already validated and copied
 * out of the descriptor table, so later guest writes to the table cannot change it.
 *
 * The chain's buffers are kept as segments: a flat `[addr, len, addr, len, ...]` array of guest ranges, each
 * lying inside one guest memory region (a descriptor that crosses from one region into an adjacent one becomes
 * two segments) and each non-empty (zero-length descriptors contribute nothing). The device-readable segments
 * come first (`readableSegments` of them), then the device-writable ones (§2.7.4.2).
 *
 * ```ts
 * const chain = queue.popChain();
 * if (chain !== null) {
 *   const r = chain.reader();
 *   const type = r.readU32();
 *   const w = chain.writer();
 *   w.writeU8(0);
 *   queue.pushUsed(chain.head, w.written);
 * }
 * ```
 */
import type { GuestMemory } from '../guest-memory.js';
import { ChainReader, ChainWriter } from './chain-io.js';

export class DescriptorChain {
  /** The memory the segments live in. */
  readonly memory: GuestMemory;
  /** The head descriptor index: what goes back in the used ring (`addUsed(chain.head, len)`). */
  readonly head: number;
  /**
   * Flat `[addr, len, ...]` pairs, readable segments first. Aliases the chain's own array: do not modify.
   */
  readonly segments: readonly number[];
  /** How many of the segment pairs are device-readable; the rest are device-writable. */
  readonly readableSegments: number;
  /** Total bytes the device may read. */
  readonly readableLength: number;
  /** Total bytes the device may write. */
  readonly writableLength: number;
  /**
   * Buffer descriptors in the chain, zero-length ones included; a descriptor that only points to an indirect
   * table is not counted, the table's entries are.
   */
  readonly descriptorCount: number;

  constructor(
    memory: GuestMemory,
    head: number,
    segments: readonly number[],
    readableSegments: number,
    readableLength: number,
    writableLength: number,
    descriptorCount: number,
  ) {
    this.memory = memory;
    this.head = head;
    this.segments = segments;
    this.readableSegments = readableSegments;
    this.readableLength = readableLength;
    this.writableLength = writableLength;
    this.descriptorCount = descriptorCount;
  }

  /** Number of segments (readable + writable). */
  get segmentCount(): number {
    return this.segments.length >> 1;
  }

  /** Number of device-writable segments. */
  get writableSegments(): number {
    return (this.segments.length >> 1) - this.readableSegments;
  }

  /** Guest address of segment `i`. */
  segmentAddress(i: number): number {
    return this.segments[2 * i] as number;
  }

  /** Length of segment `i`. */
  segmentLength(i: number): number {
    return this.segments[2 * i + 1] as number;
  }

  /** Whether segment `i` is device-writable. */
  isWritableSegment(i: number): boolean {
    return i >= this.readableSegments;
  }

  /** Zero-copy views of the device-readable segments (aliasing guest memory). */
  readable(): Uint8Array[] {
    return this.#views(0, this.readableSegments);
  }

  /** Zero-copy views of the device-writable segments (aliasing guest memory). */
  writable(): Uint8Array[] {
    return this.#views(this.readableSegments, this.segments.length >> 1);
  }

  /** A cursor over the device-readable part. */
  reader(): ChainReader {
    return new ChainReader(this.memory, this.segments, 0, this.readableSegments, this.readableLength);
  }

  /** A cursor over the device-writable part; its `written` is the used length to report. */
  writer(): ChainWriter {
    return new ChainWriter(
      this.memory,
      this.segments,
      this.readableSegments,
      this.segments.length >> 1,
      this.writableLength,
    );
  }

  #views(first: number, end: number): Uint8Array[] {
    const out: Uint8Array[] = [];
    for (let i = first; i < end; i++) {
      out.push(this.memory.slice(this.segments[2 * i] as number, this.segments[2 * i + 1] as number));
    }
    return out;
  }
}
