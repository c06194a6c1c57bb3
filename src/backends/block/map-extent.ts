/**
 * `MapExtent`: how one range of an image's virtual disk is stored — what `qemu-img map` reports, and what
 * `ringvm img map` / `convert` read from a back end's `map()`. Extents cover the disk in order, without gaps.
 */
export interface MapExtent {
  /** Guest offset of the range, bytes. */
  readonly start: number;
  readonly length: number;
  /** The range is stored as data somewhere in the chain (it may still happen to be zeros). */
  readonly data: boolean;
  /** The range reads as zeros (known without reading it). */
  readonly zero: boolean;
  /** Allocated in some image of the chain (false: nothing anywhere; reads as zeros). */
  readonly present: boolean;
  /** Which image of the backing chain answers for the range: 0 the image itself, 1 its backing file, ... */
  readonly depth: number;
  /** Where the range's bytes are in the file at `depth`, when they are stored plainly (not compressed). */
  readonly offset?: number;
  /** Stored as compressed clusters (no plain `offset`). */
  readonly compressed?: boolean;
}
