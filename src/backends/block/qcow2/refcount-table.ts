/**
 * `RefcountTable`: the two-level reference counts of host clusters (§ Host cluster management). The refcount
 * table is held in memory; refcount blocks live in a {@link TableCache}. Entries are `refcount_bits` = 1 <<
 * refcount_order wide (1 to 64 bits; sub-byte entries start at the least significant bit).
 *
 * Ordering (what keeps the image consistent if the process dies between any two writes):
 * - A new refcount block is written before the table entry that points to it, with a barrier (fdatasync)
 *   between: {@link flush} writes dirty blocks, then syncs, then the table entries.
 * - A new block is placed inside the range it covers when it can be (so it counts itself, as QEMU places them).
 * - When the table itself must grow, the new table and the new blocks it needs go past the end of the image,
 *   counting themselves; they are written and synced before the header is switched to them (one 12-byte
 *   write of refcount_table_offset + refcount_table_clusters), and the old table is freed after that.
 */
import { ENTRY_BYTES, HeaderField, REFTABLE_RESERVED_LO, TWO_POW_32 } from './layout.js';
import type { ImageFile } from './image-file.js';
import { Qcow2Error, offsetHex } from './qcow2-error.js';
import { TableCache, type CachedTable } from './table-cache.js';

export interface RefcountTableOptions {
  readonly file: ImageFile;
  readonly clusterBits: number;
  readonly refcountOrder: number;
  readonly tableOffset: number;
  readonly tableClusters: number;
  /** The table's bytes as read from the file. */
  readonly table: Uint8Array;
  /** Refcount blocks kept in memory. */
  readonly cacheTables: number;
  /** Clusters the image spans (file size rounded up). */
  readonly endCluster: number;
  /** Makes every write so far durable (fdatasync, skipped when nothing was written). */
  readonly barrier: () => void;
  /** Clusters the allocator has chosen but not yet counted, which a new refcount block must not take. */
  readonly isReserved: (cluster: number) => boolean;
}

export class RefcountTable {
  readonly refcountOrder: number;
  readonly refcountBits: number;
  /** The largest refcount an entry can hold (capped at 2^53 − 1 for 64-bit entries). */
  readonly maxRefcount: number;
  /** Refcount entries per block. */
  readonly entriesPerBlock: number;
  readonly cache: TableCache;
  /** One past the highest cluster in use or in the file. */
  endCluster: number;
  #tableOffset: number;
  #tableClusters: number;
  #table: Uint8Array;
  #tableView: DataView;
  #dirtyEntries = new Set<number>();
  readonly #file: ImageFile;
  readonly #clusterSize: number;
  readonly #barrier: () => void;
  readonly #isReserved: (cluster: number) => boolean;
  /** Clusters held back while a refcount block is placed (see #newBlock's fallback). */
  readonly #held = new Set<number>();

  constructor(o: RefcountTableOptions) {
    this.#file = o.file;
    this.#clusterSize = 2 ** o.clusterBits;
    this.refcountOrder = o.refcountOrder;
    this.refcountBits = 2 ** o.refcountOrder;
    this.maxRefcount = this.refcountBits >= 53 ? Number.MAX_SAFE_INTEGER : 2 ** this.refcountBits - 1;
    this.entriesPerBlock = (this.#clusterSize * 8) / this.refcountBits;
    this.#tableOffset = o.tableOffset;
    this.#tableClusters = o.tableClusters;
    this.#table = o.table;
    this.#tableView = new DataView(o.table.buffer, o.table.byteOffset, o.table.byteLength);
    this.endCluster = o.endCluster;
    this.#barrier = o.barrier;
    this.#isReserved = o.isReserved;
    this.cache = new TableCache(o.file, this.#clusterSize, o.cacheTables, () => undefined);
  }

  get tableOffset(): number {
    return this.#tableOffset;
  }
  get tableClusters(): number {
    return this.#tableClusters;
  }
  /** Entries in the refcount table. */
  get tableEntries(): number {
    return this.#table.length / ENTRY_BYTES;
  }

  /** The offset of refcount block `index` (0: not allocated). */
  blockOffset(index: number): number {
    if (index >= this.tableEntries) return 0;
    const hi = this.#tableView.getUint32(index * ENTRY_BYTES, false);
    const lo = this.#tableView.getUint32(index * ENTRY_BYTES + 4, false);
    return hi * TWO_POW_32 + ((lo & ~REFTABLE_RESERVED_LO) >>> 0);
  }

  /** The raw low bits of table entry `index` (reserved bits 0–8), for checks. */
  entryReservedBits(index: number): number {
    return this.#tableView.getUint32(index * ENTRY_BYTES + 4, false) & REFTABLE_RESERVED_LO;
  }

  /** The refcount of cluster `cluster` (0 for clusters no block covers). */
  get(cluster: number): number {
    const index = Math.floor(cluster / this.entriesPerBlock);
    const off = this.blockOffset(index);
    if (off === 0) return 0;
    return this.#read(this.cache.get(off), cluster - index * this.entriesPerBlock);
  }

  /** Sets the refcount of `cluster`, allocating a refcount block (and growing the table) when needed. */
  set(cluster: number, value: number): void {
    if (value > this.maxRefcount || value < 0) {
      throw new Qcow2Error(
        'REFCOUNT_OVERFLOW',
        this.#file.path,
        `refcount ${value} of cluster at ${offsetHex(cluster * this.#clusterSize)} does not fit in ${this.refcountBits} bits`,
        cluster * this.#clusterSize,
      );
    }
    const index = Math.floor(cluster / this.entriesPerBlock);
    let off = this.blockOffset(index);
    if (off === 0) {
      if (value === 0) return;
      off = this.#newBlock(index);
    }
    const block = this.cache.get(off);
    this.#write(block, cluster - index * this.entriesPerBlock, value);
    this.cache.markDirty(block);
    if (value > 0 && cluster >= this.endCluster) this.endCluster = cluster + 1;
  }

  /** Writes dirty blocks, then (after a barrier) the table entries of new blocks. True if anything was written. */
  flush(): boolean {
    const wrote = this.cache.flush();
    if (this.#dirtyEntries.size === 0) return wrote;
    this.#barrier();
    const sorted = [...this.#dirtyEntries].sort((a, b) => a - b);
    const first = sorted[0] as number;
    const last = sorted[sorted.length - 1] as number;
    this.#file.write(
      this.#table.subarray(first * ENTRY_BYTES, (last + 1) * ENTRY_BYTES),
      this.#tableOffset + first * ENTRY_BYTES,
    );
    this.#dirtyEntries.clear();
    return true;
  }

  /** Whether anything is waiting to be written. */
  get dirty(): boolean {
    return this.cache.dirtyCount > 0 || this.#dirtyEntries.size > 0;
  }

  #read(block: CachedTable, i: number): number {
    const v = block.view;
    switch (this.refcountOrder) {
      case 4:
        return v.getUint16(i * 2, false);
      case 5:
        return v.getUint32(i * 4, false);
      case 6:
        return v.getUint32(i * 8, false) * TWO_POW_32 + v.getUint32(i * 8 + 4, false);
      case 3:
        return block.bytes[i] as number;
      default: {
        const bits = this.refcountBits;
        const bit = i * bits;
        return ((block.bytes[bit >> 3] as number) >> (bit & 7)) & ((1 << bits) - 1);
      }
    }
  }

  #write(block: CachedTable, i: number, value: number): void {
    const v = block.view;
    switch (this.refcountOrder) {
      case 4:
        v.setUint16(i * 2, value, false);
        return;
      case 5:
        v.setUint32(i * 4, value, false);
        return;
      case 6:
        v.setUint32(i * 8, Math.floor(value / TWO_POW_32), false);
        v.setUint32(i * 8 + 4, value % TWO_POW_32, false);
        return;
      case 3:
        block.bytes[i] = value;
        return;
      default: {
        const bits = this.refcountBits;
        const bit = i * bits;
        const mask = ((1 << bits) - 1) << (bit & 7);
        const b = block.bytes[bit >> 3] as number;
        block.bytes[bit >> 3] = (b & ~mask) | ((value << (bit & 7)) & mask);
      }
    }
  }

  #setEntry(index: number, offset: number): void {
    this.#tableView.setUint32(index * ENTRY_BYTES, Math.floor(offset / TWO_POW_32), false);
    this.#tableView.setUint32(index * ENTRY_BYTES + 4, offset % TWO_POW_32, false);
  }

  /** Allocates refcount block `index` and returns its offset. */
  #newBlock(index: number): number {
    if (index >= this.tableEntries) {
      this.#growTable(index + 1);
      const now = this.blockOffset(index);
      if (now !== 0) return now; // the growth placed it
    }
    const E = this.entriesPerBlock;
    const first = index * E;
    // Every cluster of the range this block covers has refcount 0 (no block): take the first one not reserved.
    for (let c = first; c < first + E; c++) {
      if (this.#isReserved(c) || this.#held.has(c)) continue;
      const offset = c * this.#clusterSize;
      const block = this.cache.create(offset);
      this.#write(block, c - first, 1);
      this.#setEntry(index, offset);
      this.#dirtyEntries.add(index);
      if (c >= this.endCluster) this.endCluster = c + 1;
      return offset;
    }
    // The whole range is reserved: put the block in a free cluster elsewhere, counted where it lives.
    let c = this.endCluster;
    while (this.#isReserved(c) || this.#held.has(c) || Math.floor(c / E) === index || this.get(c) !== 0) c++;
    this.#held.add(c);
    try {
      this.set(c, 1);
    } finally {
      this.#held.delete(c);
    }
    const offset = c * this.#clusterSize;
    this.cache.create(offset);
    this.#setEntry(index, offset);
    this.#dirtyEntries.add(index);
    return offset;
  }

  /** Replaces the refcount table by a larger one holding at least `minEntries` entries (see the module doc). */
  #growTable(minEntries: number): void {
    const cs = this.#clusterSize;
    const E = this.entriesPerBlock;
    const perCluster = cs / ENTRY_BYTES;
    const oldEntries = this.tableEntries;
    // Blocks not yet written must be on disk before a new table points to them.
    this.flush();
    let start = this.endCluster;
    while (this.#isReserved(start)) start++;
    let entries = Math.max(minEntries, Math.ceil(oldEntries * 1.5), perCluster);
    let tableClusters = 0;
    let missing: number[] = [];
    for (;;) {
      tableClusters = Math.ceil(entries / perCluster);
      let blocks = 0;
      for (;;) {
        const last = start + tableClusters + blocks - 1;
        missing = [];
        for (let t = Math.floor(start / E); t <= Math.floor(last / E); t++)
          if (this.blockOffset(t) === 0) missing.push(t);
        if (missing.length === blocks) break;
        blocks = missing.length;
      }
      const lastIndex = Math.floor((start + tableClusters + blocks - 1) / E);
      if (lastIndex < entries) break;
      entries = lastIndex + 1;
    }
    const blocks = missing.length;
    const total = blocks + tableClusters;
    // New blocks at [start, start + blocks), the new table after them.
    const table = new Uint8Array(tableClusters * cs);
    table.set(this.#table);
    const tableView = new DataView(table.buffer);
    const newBlocks = new Map<number, Uint8Array>();
    missing.forEach((t, i) => {
      const offset = (start + i) * cs;
      tableView.setUint32(t * ENTRY_BYTES, Math.floor(offset / TWO_POW_32), false);
      tableView.setUint32(t * ENTRY_BYTES + 4, offset % TWO_POW_32, false);
      newBlocks.set(t, new Uint8Array(cs));
    });
    for (let c = start; c < start + total; c++) {
      const t = Math.floor(c / E);
      const fresh = newBlocks.get(t);
      if (fresh !== undefined) {
        const view = new DataView(fresh.buffer);
        this.#write({ offset: 0, bytes: fresh, view, dirty: false }, c - t * E, 1);
      } else {
        this.set(c, this.get(c) + 1); // an existing block
      }
    }
    this.cache.flush();
    missing.forEach((t, i) => {
      this.#file.write(newBlocks.get(t) as Uint8Array, (start + i) * cs);
    });
    const tableOffset = (start + blocks) * cs;
    this.#file.write(table, tableOffset);
    this.#barrier();
    const header = new Uint8Array(12);
    const hv = new DataView(header.buffer);
    hv.setBigUint64(0, BigInt(tableOffset), false);
    hv.setUint32(8, tableClusters, false);
    this.#file.write(header, HeaderField.refcountTableOffset);
    this.#barrier();
    const oldOffset = this.#tableOffset;
    const oldClusters = this.#tableClusters;
    this.#table = table;
    this.#tableView = tableView;
    this.#tableOffset = tableOffset;
    this.#tableClusters = tableClusters;
    this.#dirtyEntries.clear();
    missing.forEach((t, i) => {
      this.cache.adopt((start + i) * cs, newBlocks.get(t) as Uint8Array);
    });
    if (start + total > this.endCluster) this.endCluster = start + total;
    // The old table is no longer referenced by the (durable) header: free it.
    const oldFirst = oldOffset / cs;
    for (let c = oldFirst; c < oldFirst + oldClusters; c++) {
      const v = this.get(c);
      if (v > 0) this.set(c, v - 1);
    }
  }
}
