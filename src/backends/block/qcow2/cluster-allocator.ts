/**
 * `ClusterAllocator`: finds free host clusters (refcount 0) for data, L2 tables and compressed data, counts them
 * (refcount 1 before anything can point to them), and frees clusters no longer referenced.
 *
 * Freeing is deferred: a cluster whose last reference was dropped (an L2 entry rewritten by discard, write
 * zeroes or copy on write) keeps its refcount until the image has made the L2/L1 change durable
 * ({@link applyFrees}, called by the image's flush after its barrier). Until then the cluster cannot be handed
 * out again, so no crash can leave an on-disk L2 entry pointing at a cluster that already holds other data.
 */
import { COMPRESSED_SECTOR } from './layout.js';
import { Qcow2Error, offsetHex } from './qcow2-error.js';
import type { RefcountTable } from './refcount-table.js';

export class ClusterAllocator {
  readonly #refcounts: RefcountTable;
  readonly #clusterSize: number;
  readonly #path: string;
  /** No cluster below this one is free. */
  #hint = 0;
  /** The run being counted: its clusters must not be taken by a new refcount block. */
  #runStart = 0;
  #runEnd = 0;
  /** Clusters whose refcount drops by one at the next {@link applyFrees} (one element per reference). */
  #pending: number[] = [];
  /** Next free byte for compressed data (sector aligned), 0 when no cluster is partly filled. */
  #compressedNext = 0;
  /**
   * While refcounts are rebuilt: clusters that are in use but whose refcount may still read 0, which must not
   * be allocated.
   */
  guard: ((cluster: number) => boolean) | undefined;

  constructor(refcounts: RefcountTable, clusterSize: number, path: string) {
    this.#refcounts = refcounts;
    this.#clusterSize = clusterSize;
    this.#path = path;
  }

  /** Whether `cluster` is chosen but not yet counted (or guarded): a new refcount block must avoid it. */
  isReserved(cluster: number): boolean {
    return (cluster >= this.#runStart && cluster < this.#runEnd) || (this.guard?.(cluster) ?? false);
  }

  /** Whether frees wait for {@link applyFrees}. */
  get hasPendingFrees(): boolean {
    return this.#pending.length > 0;
  }

  /** Allocates `n` contiguous clusters with refcount 1; returns the host offset of the first. */
  allocate(n: number): number {
    const rc = this.#refcounts;
    let c = this.#hint;
    let firstFree = -1;
    let run = 0;
    while (run < n) {
      const k = c + run;
      if (k >= rc.endCluster && !this.isReserved(k)) {
        // Past every used cluster: the rest of the run is free (guarded clusters are all below the end).
        if (firstFree < 0) firstFree = c;
        run = n;
        break;
      }
      if (rc.get(k) === 0 && !this.isReserved(k)) {
        if (firstFree < 0) firstFree = k;
        run++;
      } else {
        c = k + 1;
        run = 0;
      }
    }
    this.#runStart = c;
    this.#runEnd = c + n;
    try {
      for (let i = 0; i < n; i++) rc.set(c + i, 1);
    } finally {
      this.#runStart = this.#runEnd = 0;
    }
    if (firstFree === c || firstFree < 0) this.#hint = c + n;
    else this.#hint = firstFree;
    return c * this.#clusterSize;
  }

  /** Counts one more reference to `cluster` (compressed data sharing a host cluster). */
  reference(cluster: number): void {
    this.#refcounts.set(cluster, this.#refcounts.get(cluster) + 1);
  }

  /** Drops one reference to each cluster overlapping [offset, offset + length) at the next applyFrees. */
  free(offset: number, length: number): void {
    const first = Math.floor(offset / this.#clusterSize);
    const last = Math.floor((offset + length - 1) / this.#clusterSize);
    for (let c = first; c <= last; c++) this.#pending.push(c);
  }

  /** Applies the deferred frees (the references are gone on disk). */
  applyFrees(): void {
    const pending = this.#pending;
    this.#pending = [];
    const rc = this.#refcounts;
    for (const c of pending) {
      const v = rc.get(c);
      if (v === 0) {
        throw new Qcow2Error(
          'REFCOUNT_MISMATCH',
          this.#path,
          `freeing the cluster at ${offsetHex(c * this.#clusterSize)}, whose refcount is already 0`,
          c * this.#clusterSize,
        );
      }
      rc.set(c, v - 1);
      if (v === 1) {
        if (c < this.#hint) this.#hint = c;
        if (this.#compressedNext !== 0 && Math.floor(this.#compressedNext / this.#clusterSize) === c) {
          this.#compressedNext = 0;
        }
      }
    }
  }

  /** Lowers the hint after clusters were freed behind the allocator's back (refcount rebuild). */
  resetHint(): void {
    this.#hint = 0;
    this.#compressedNext = 0;
  }

  /**
   * Room for `length` bytes of compressed data: sector aligned, packed after the previous compressed cluster
   * when it fits (into the same host cluster or the free one after it). Every host cluster the data touches
   * gets one reference. Returns the byte offset.
   */
  allocateBytes(length: number): number {
    const cs = this.#clusterSize;
    const rc = this.#refcounts;
    const next = this.#compressedNext;
    if (next !== 0) {
      const firstCluster = Math.floor(next / cs);
      const lastCluster = Math.floor((next + length - 1) / cs);
      let fits = true;
      for (let c = firstCluster + 1; c <= lastCluster; c++) {
        if (rc.get(c) !== 0 || this.isReserved(c)) fits = false;
      }
      if (fits) {
        this.reference(firstCluster);
        for (let c = firstCluster + 1; c <= lastCluster; c++) rc.set(c, 1);
        this.#advanceCompressed(next + length);
        return next;
      }
    }
    const offset = this.allocate(Math.ceil(length / cs));
    this.#advanceCompressed(offset + length);
    return offset;
  }

  #advanceCompressed(end: number): void {
    const aligned = Math.ceil(end / COMPRESSED_SECTOR) * COMPRESSED_SECTOR;
    this.#compressedNext = aligned % this.#clusterSize === 0 ? 0 : aligned;
  }
}
