/**
 * L1 and L2 table entries (§ Cluster mapping), decoded from their two big-endian u32 halves (`hi` = bits 32–63,
 * `lo` = bits 0–31) so the I/O path never builds a BigInt.
 */
import { COMPRESSED_SECTOR, EntryBits, TWO_POW_32 } from './layout.js';

/** What an L2 entry says about one guest cluster. */
export const ClusterKind = {
  /** Not allocated here: reads fall through to the backing file (or zeros). */
  unallocated: 0,
  /** Reads as zeros, no host cluster (version 3 zero flag). */
  zero: 1,
  /** Reads as zeros; a host cluster is still allocated to it (preallocated zero cluster). */
  zeroAllocated: 2,
  /** Data in a host cluster. */
  normal: 3,
  /** Deflated data at a byte offset. */
  compressed: 4,
} as const;
export type ClusterKind = (typeof ClusterKind)[keyof typeof ClusterKind];

/** The host offset in a standard L2 entry or an L1 entry (bits 9–55). */
export function entryOffset(hi: number, lo: number): number {
  return (hi & EntryBits.OFFSET_HI) * TWO_POW_32 + ((lo & EntryBits.OFFSET_LO) >>> 0);
}

/** Classifies an L2 entry. `version` 2 images have no zero flag (bit 0 is then reserved and ignored). */
export function l2Kind(hi: number, lo: number, version: number): ClusterKind {
  if ((hi & EntryBits.COMPRESSED_HI) !== 0) return ClusterKind.compressed;
  const offset = entryOffset(hi, lo);
  if (version >= 3 && (lo & EntryBits.ZERO_LO) !== 0)
    return offset === 0 ? ClusterKind.zero : ClusterKind.zeroAllocated;
  return offset === 0 ? ClusterKind.unallocated : ClusterKind.normal;
}

/** Field widths of the compressed cluster descriptor for a given cluster_bits. */
export interface CompressedLayout {
  /** Bits of the host offset that live in `hi`: x − 32 where x = 62 − (cluster_bits − 8). */
  readonly offsetHiBits: number;
  /** Width of the "additional sectors" field: cluster_bits − 8. */
  readonly sectorBits: number;
}

export function compressedLayout(clusterBits: number): CompressedLayout {
  return { offsetHiBits: 62 - (clusterBits - 8) - 32, sectorBits: clusterBits - 8 };
}

/** The byte range a compressed cluster occupies: its start and the length of the whole sectors it spans. */
export interface CompressedExtent {
  readonly offset: number;
  /** Bytes from `offset` to the end of its last sector (what to read; the stream ends somewhere inside). */
  readonly length: number;
  /** Sector-aligned start and length, as refcounts count them. */
  readonly sectorStart: number;
  readonly sectorBytes: number;
}

export function compressedExtent(hi: number, lo: number, layout: CompressedLayout): CompressedExtent {
  const h = hi & 0x3fffffff; // drop bits 62 and 63
  const offset = (h & ((1 << layout.offsetHiBits) - 1)) * TWO_POW_32 + (lo >>> 0);
  const sectors = ((h >>> layout.offsetHiBits) & ((1 << layout.sectorBits) - 1)) + 1;
  const sectorStart = offset - (offset % COMPRESSED_SECTOR);
  const sectorBytes = sectors * COMPRESSED_SECTOR;
  return { offset, length: sectorStart + sectorBytes - offset, sectorStart, sectorBytes };
}

/** The (hi, lo) halves of a compressed descriptor for data at `offset` ending at `end` (exclusive). */
export function compressedEntry(
  offset: number,
  end: number,
  layout: CompressedLayout,
): { hi: number; lo: number } {
  const sectorStart = offset - (offset % COMPRESSED_SECTOR);
  const additional = Math.ceil((end - sectorStart) / COMPRESSED_SECTOR) - 1;
  const offHi = Math.floor(offset / TWO_POW_32);
  const lo = offset % TWO_POW_32;
  const hi = (EntryBits.COMPRESSED_HI | (additional << layout.offsetHiBits) | offHi) >>> 0;
  return { hi, lo };
}

/** Splits a host offset into (hi, lo) halves of a standard entry (flags not included). */
export function offsetHalves(offset: number): { hi: number; lo: number } {
  return { hi: Math.floor(offset / TWO_POW_32), lo: offset % TWO_POW_32 };
}
