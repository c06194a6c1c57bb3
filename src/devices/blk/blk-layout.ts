/**
 * The virtio block device's wire formats, declared once (VIRTIO 1.2 §5.2, Linux include/uapi/linux/virtio_blk.h):
 * device id, feature bits, configuration space layout, request types, status values, the request header and
 * the discard / write-zeroes segment. All multi-byte fields are little-endian (§5.2.4, non-legacy).
 *
 * Configuration space (`struct virtio_blk_config`, §5.2.4), byte offsets:
 * ```
 *  0 le64 capacity                   (512-byte sectors, always present)
 *  8 le32 size_max                   (VIRTIO_BLK_F_SIZE_MAX)
 * 12 le32 seg_max                    (VIRTIO_BLK_F_SEG_MAX)
 * 16 le16 geometry.cylinders         (VIRTIO_BLK_F_GEOMETRY)
 * 18 u8   geometry.heads
 * 19 u8   geometry.sectors
 * 20 le32 blk_size                   (VIRTIO_BLK_F_BLK_SIZE)
 * 24 u8   topology.physical_block_exp (VIRTIO_BLK_F_TOPOLOGY)
 * 25 u8   topology.alignment_offset
 * 26 le16 topology.min_io_size
 * 28 le32 topology.opt_io_size
 * 32 u8   writeback                  (VIRTIO_BLK_F_CONFIG_WCE)
 * 33 u8   unused0
 * 34 le16 num_queues                 (VIRTIO_BLK_F_MQ)
 * 36 le32 max_discard_sectors        (VIRTIO_BLK_F_DISCARD)
 * 40 le32 max_discard_seg
 * 44 le32 discard_sector_alignment
 * 48 le32 max_write_zeroes_sectors   (VIRTIO_BLK_F_WRITE_ZEROES)
 * 52 le32 max_write_zeroes_seg
 * 56 u8   write_zeroes_may_unmap
 * 57 u8   unused1[3]
 * 60 le32 max_secure_erase_sectors   (VIRTIO_BLK_F_SECURE_ERASE, not implemented)
 * 64 le32 max_secure_erase_seg
 * 68 le32 secure_erase_sector_alignment
 * 72 ...  zoned characteristics      (VIRTIO_BLK_F_ZONED, not implemented), 24 bytes, ends at 96
 * ```
 *
 * A request (`struct virtio_blk_req`, §5.2.6) is a device-readable header, data (readable for OUT, DISCARD and
 * WRITE_ZEROES; writable for IN and GET_ID), and one device-writable status byte at the very end:
 * ```
 *  0 le32 type
 *  4 le32 reserved (legacy: ioprio)
 *  8 le64 sector
 * ```
 * A discard / write-zeroes segment (`struct virtio_blk_discard_write_zeroes`):
 * ```
 *  0 le64 sector
 *  8 le32 num_sectors
 * 12 le32 flags (bit 0: unmap, write zeroes only; bits 1–31 reserved)
 * ```
 */

/** Virtio device id of the block device (§5). */
export const VIRTIO_ID_BLOCK = 2;

/** The protocol's unit: sectors are always 512 bytes, whatever `blk_size` says (§5.2.5). */
export const SECTOR_SIZE = 512;
export const SECTOR_SHIFT = 9;

/** Length of the GET_ID device id string: NUL-padded ASCII, no terminator at full length (§5.2.6). */
export const VIRTIO_BLK_ID_BYTES = 20;

/** Device-specific feature bit numbers (§5.2.3). */
export const BlkFeature = {
  /** Maximum size of any single segment is in `size_max`. */
  VIRTIO_BLK_F_SIZE_MAX: 1,
  /** Maximum number of segments in a request is in `seg_max`. */
  VIRTIO_BLK_F_SEG_MAX: 2,
  /** Disk-style geometry in `geometry`. */
  VIRTIO_BLK_F_GEOMETRY: 4,
  /** The device is read-only. */
  VIRTIO_BLK_F_RO: 5,
  /** Block size of the disk is in `blk_size`. */
  VIRTIO_BLK_F_BLK_SIZE: 6,
  /** Cache flush command support. */
  VIRTIO_BLK_F_FLUSH: 9,
  /** Optimal I/O alignment in `topology`. */
  VIRTIO_BLK_F_TOPOLOGY: 10,
  /** The driver can toggle the cache between writeback and writethrough (`writeback`). */
  VIRTIO_BLK_F_CONFIG_WCE: 11,
  /** More than one request queue; their number in `num_queues`. */
  VIRTIO_BLK_F_MQ: 12,
  /** DISCARD command; limits in `max_discard_*`. */
  VIRTIO_BLK_F_DISCARD: 13,
  /** WRITE_ZEROES command; limits in `max_write_zeroes_*`. */
  VIRTIO_BLK_F_WRITE_ZEROES: 14,
  /** GET_LIFETIME command (not implemented). */
  VIRTIO_BLK_F_LIFETIME: 15,
  /** SECURE_ERASE command (not implemented). */
  VIRTIO_BLK_F_SECURE_ERASE: 16,
  /** Zoned block device (not implemented). */
  VIRTIO_BLK_F_ZONED: 17,
} as const;

/** Request types (`virtio_blk_req.type`, §5.2.6). */
export const BlkRequestType = {
  VIRTIO_BLK_T_IN: 0,
  VIRTIO_BLK_T_OUT: 1,
  VIRTIO_BLK_T_FLUSH: 4,
  VIRTIO_BLK_T_GET_ID: 8,
  VIRTIO_BLK_T_GET_LIFETIME: 10,
  VIRTIO_BLK_T_DISCARD: 11,
  VIRTIO_BLK_T_WRITE_ZEROES: 13,
  VIRTIO_BLK_T_SECURE_ERASE: 14,
} as const;

/** Request status values, the last byte of every request (§5.2.6). */
export const BlkStatus = {
  VIRTIO_BLK_S_OK: 0,
  /** Device or driver error. */
  VIRTIO_BLK_S_IOERR: 1,
  /** The request is not supported by the device. */
  VIRTIO_BLK_S_UNSUPP: 2,
} as const;

/** `virtio_blk_discard_write_zeroes.flags` bit 0: the device may deallocate (write zeroes only). */
export const VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP = 0x1;

// ---- request header ----

export const BLK_REQ_TYPE_OFFSET = 0;
export const BLK_REQ_RESERVED_OFFSET = 4;
export const BLK_REQ_SECTOR_OFFSET = 8;
/** Bytes of the device-readable request header (`struct virtio_blk_outhdr`). */
export const BLK_REQ_HEADER_SIZE = 16;
/** Bytes of the device-writable status trailer. */
export const BLK_REQ_STATUS_SIZE = 1;

// ---- discard / write-zeroes segment ----

export const BLK_DWZ_SECTOR_OFFSET = 0;
export const BLK_DWZ_NUM_SECTORS_OFFSET = 8;
export const BLK_DWZ_FLAGS_OFFSET = 12;
/** Bytes of one `struct virtio_blk_discard_write_zeroes`. */
export const BLK_DWZ_SEGMENT_SIZE = 16;

// ---- configuration space ----

export const BLK_CONFIG_CAPACITY = 0;
export const BLK_CONFIG_SIZE_MAX = 8;
export const BLK_CONFIG_SEG_MAX = 12;
export const BLK_CONFIG_GEOMETRY_CYLINDERS = 16;
export const BLK_CONFIG_GEOMETRY_HEADS = 18;
export const BLK_CONFIG_GEOMETRY_SECTORS = 19;
export const BLK_CONFIG_BLK_SIZE = 20;
export const BLK_CONFIG_TOPOLOGY_PHYSICAL_BLOCK_EXP = 24;
export const BLK_CONFIG_TOPOLOGY_ALIGNMENT_OFFSET = 25;
export const BLK_CONFIG_TOPOLOGY_MIN_IO_SIZE = 26;
export const BLK_CONFIG_TOPOLOGY_OPT_IO_SIZE = 28;
export const BLK_CONFIG_WRITEBACK = 32;
export const BLK_CONFIG_NUM_QUEUES = 34;
export const BLK_CONFIG_MAX_DISCARD_SECTORS = 36;
export const BLK_CONFIG_MAX_DISCARD_SEG = 40;
export const BLK_CONFIG_DISCARD_SECTOR_ALIGNMENT = 44;
export const BLK_CONFIG_MAX_WRITE_ZEROES_SECTORS = 48;
export const BLK_CONFIG_MAX_WRITE_ZEROES_SEG = 52;
export const BLK_CONFIG_WRITE_ZEROES_MAY_UNMAP = 56;
export const BLK_CONFIG_MAX_SECURE_ERASE_SECTORS = 60;
/**
 * Bytes of configuration space this device exposes: everything up to (not including) the secure-erase fields,
 * which, like the zoned characteristics, belong to features it never offers. QEMU's minimum size is the same.
 */
export const BLK_CONFIG_SIZE = BLK_CONFIG_MAX_SECURE_ERASE_SECTORS;
