/**
 * The qcow2 on-disk layout, declared once (QEMU docs/interop/qcow2.txt). Every number in a qcow2 image is big
 * endian. Offsets are byte offsets into the header (§ "Header") or bit positions in table entries.
 */

/** "QFI\xfb" as a big-endian u32. */
export const QCOW2_MAGIC = 0x514649fb;

/** Header fields (§ Header): byte offsets. Version 2 ends at {@link HEADER_V2_LENGTH}. */
export const HeaderField = {
  magic: 0,
  version: 4,
  backingFileOffset: 8,
  backingFileSize: 16,
  clusterBits: 20,
  size: 24,
  cryptMethod: 32,
  l1Size: 36,
  l1TableOffset: 40,
  refcountTableOffset: 48,
  refcountTableClusters: 56,
  nbSnapshots: 60,
  snapshotsOffset: 64,
  // version 3
  incompatibleFeatures: 72,
  compatibleFeatures: 80,
  autoclearFeatures: 88,
  refcountOrder: 96,
  headerLength: 100,
  // optional additional field
  compressionType: 104,
} as const;

/** A version 2 header is exactly 72 bytes. */
export const HEADER_V2_LENGTH = 72;
/** A version 3 header is at least 104 bytes (through header_length). */
export const HEADER_V3_MIN_LENGTH = 104;
/** The header length ringvm writes: through compression_type (104) padded to a multiple of 8, as QEMU writes. */
export const HEADER_V3_WRITTEN_LENGTH = 112;
/** header_length must be a multiple of this. */
export const HEADER_LENGTH_ALIGN = 8;

/** Incompatible feature bits (§ Header bytes 72–79). */
export const IncompatibleFeature = {
  dirty: 0,
  corrupt: 1,
  externalDataFile: 2,
  compressionType: 3,
  extendedL2: 4,
} as const;
/** Incompatible bits this implementation understands (the others make the image unreadable). */
export const KNOWN_INCOMPATIBLE_MASK = (1n << 0n) | (1n << 1n);

/** Compatible feature bits (§ Header bytes 80–87). */
export const CompatibleFeature = { lazyRefcounts: 0 } as const;

/** Autoclear feature bits (§ Header bytes 88–95). */
export const AutoclearFeature = { bitmaps: 0, rawExternalData: 1 } as const;

/** Version 2 images always have 16-bit refcounts (refcount_order 4). */
export const V2_REFCOUNT_ORDER = 4;
/** refcount_order may not exceed 6 (64-bit refcounts). */
export const MAX_REFCOUNT_ORDER = 6;
/** The refcount width ringvm creates by default (as qemu-img does). */
export const DEFAULT_REFCOUNT_BITS = 16;

/** cluster_bits must be at least 9 (512-byte clusters); QEMU's limit is 21 (2 MiB). */
export const MIN_CLUSTER_BITS = 9;
export const MAX_CLUSTER_BITS = 21;
export const DEFAULT_CLUSTER_SIZE = 65536;

/** The backing file name must not be longer than 1023 bytes. */
export const MAX_BACKING_FILE_NAME = 1023;
/** QEMU's implementation limit on the L1 table (32 MiB); larger tables are refused as hostile. */
export const MAX_L1_BYTES = 32 << 20;
/** QEMU's implementation limit on the refcount table (8 MiB). */
export const MAX_REFCOUNT_TABLE_BYTES = 8 << 20;

/** crypt_method values (§ Header bytes 32–35); only 0 (none) is supported. */
export const CRYPT_NONE = 0;

/** Header extension types (§ Header extensions). */
export const HeaderExtensionType = {
  end: 0x00000000,
  backingFormat: 0xe2792aca,
  featureNameTable: 0x6803f857,
  bitmaps: 0x23852875,
  fullDiskEncryption: 0x0537be77,
  externalDataFile: 0x44415441,
} as const;
/** Each extension: u32 type, u32 length, data, padded to a multiple of 8. */
export const EXTENSION_HEADER_BYTES = 8;
export const EXTENSION_ALIGN = 8;
/** Feature name table entry: u8 type, u8 bit, 46 bytes of name. */
export const FEATURE_NAME_ENTRY_BYTES = 48;
export const FEATURE_NAME_BYTES = 46;
/** Feature name table entry types. */
export const FeatureType = { incompatible: 0, compatible: 1, autoclear: 2 } as const;

/** Every table entry (L1, L2, refcount table) is a u64. */
export const ENTRY_BYTES = 8;

/**
 * L1 and L2 entries are read as two big-endian u32 halves, `hi` (bits 32–63) and `lo` (bits 0–31), so the hot
 * path never needs a BigInt. The masks below apply to those halves.
 */
export const EntryBits = {
  /** Bit 63 (in `hi`): the refcount of the cluster / L2 table is exactly one (writes may go in place). */
  COPIED_HI: 0x80000000,
  /** Bit 62 (in `hi`, L2 only): a compressed cluster. */
  COMPRESSED_HI: 0x40000000,
  /** Bit 0 (in `lo`, L2 standard descriptor, version 3): the cluster reads as zeros. */
  ZERO_LO: 0x1,
  /** Bits 9–31 of the host offset (in `lo`). */
  OFFSET_LO: 0xfffffe00,
  /** Bits 32–55 of the host offset (in `hi`). */
  OFFSET_HI: 0x00ffffff,
  /** Reserved bits of a standard L2 descriptor: 1–8 (lo), 56–61 (hi). */
  L2_RESERVED_LO: 0x000001fe,
  L2_RESERVED_HI: 0x3f000000,
  /** Reserved bits of an L1 entry: 0–8 (lo), 56–62 (hi). */
  L1_RESERVED_LO: 0x000001ff,
  L1_RESERVED_HI: 0x7f000000,
} as const;

/** Refcount table entries: bits 9–63 are the refcount block's offset, bits 0–8 reserved. */
export const REFTABLE_RESERVED_LO = 0x1ff;

/** Compressed cluster sizes are counted in 512-byte sectors. */
export const COMPRESSED_SECTOR = 512;
/** QEMU compresses with a 4 KiB window (zlib windowBits 12) and decompresses with the same: so must we. */
export const DEFLATE_WINDOW_BITS = 12;

/** Snapshot table entry (§ Snapshots): fixed part. */
export const SnapshotField = {
  l1TableOffset: 0,
  l1Size: 8,
  idStrSize: 12,
  nameSize: 14,
  extraDataSize: 36,
} as const;
export const SNAPSHOT_FIXED_BYTES = 40;

/** 2^32, to join two u32 halves into a number. */
export const TWO_POW_32 = 0x100000000;
