/**
 * Parsing one popped {@link DescriptorChain} into a virtio-blk request (VIRTIO 1.2 §5.2.6): the 16-byte header
 * from the start of the device-readable part, the data as zero-copy views of guest memory, and the status byte,
 * which is always the last device-writable byte (§5.2.6: "u8 status" follows the data; §2.7.4.1: the device
 * must not assume any particular arrangement of descriptors, so the header, the data and the status may be split
 * or merged across descriptors in any way).
 *
 * Hostile input (the project's hostile-input note, item 19). The rule: **a request the device can answer is
 * answered** — with VIRTIO_BLK_S_IOERR or VIRTIO_BLK_S_UNSUPP, the back end never called, nothing in guest
 * memory written but the status byte — and the device carries on serving other requests. Only a request that
 * cannot be answered at all, because it has no device-writable byte to hold the status, is a guest fault that
 * puts the device in DEVICE_NEEDS_RESET (the chain could be returned, but the driver would read a stale status
 * byte from wherever it thinks the status is and take a failed request for a completed one).
 *
 * | input                                                                 | outcome                          |
 * | --------------------------------------------------------------------- | -------------------------------- |
 * | no device-writable byte (status descriptor missing or not writable)   | fault `BLK_STATUS_MISSING` → NEEDS_RESET |
 * | readable part shorter than the 16-byte header                         | IOERR `BLK_HEADER_TOO_SHORT`     |
 * | unknown type (GET_LIFETIME, SECURE_ERASE, zoned, legacy SCSI/BARRIER...) | UNSUPP `BLK_UNSUPPORTED_TYPE` |
 * | OUT, DISCARD or WRITE_ZEROES on a read-only device                    | IOERR `BLK_READ_ONLY` (§5.2.6.2 MUST) |
 * | IN/OUT data length not a multiple of 512 (or of `blk_size`)           | IOERR `BLK_LENGTH_UNALIGNED`     |
 * | IN/OUT sector not a multiple of `blk_size` / 512                      | IOERR `BLK_SECTOR_UNALIGNED`     |
 * | IN/OUT sector past capacity, or sector + length past it / overflowing | IOERR `BLK_OUT_OF_RANGE`         |
 * | IN/OUT with more than `seg_max` data descriptors (+ header + status)  | IOERR `BLK_TOO_MANY_SEGMENTS`    |
 * | IN with no data, OUT with no data                                     | OK (nothing transferred)         |
 * | extra readable bytes after the header (IN, FLUSH, GET_ID)             | ignored                          |
 * | extra writable bytes before the status (OUT, FLUSH, DISCARD...)       | ignored, left untouched          |
 * | FLUSH with a non-zero sector or with data                             | ignored: the flush is done (OK)  |
 * | GET_ID with no data bytes before the status                           | IOERR `BLK_GET_ID_NO_ROOM`       |
 * | GET_ID with fewer / more than 20 data bytes                           | OK: the id, truncated / NUL-padded to the whole data area |
 * | DISCARD / WRITE_ZEROES when the feature was not negotiated            | UNSUPP `BLK_FEATURE_NOT_NEGOTIATED` |
 * | DISCARD / WRITE_ZEROES data empty or not a multiple of 16             | IOERR `BLK_SEGMENTS_INVALID`     |
 * | more segments than `max_discard_seg` / `max_write_zeroes_seg`         | IOERR `BLK_TOO_MANY_SEGMENTS`    |
 * | a segment with reserved flag bits, or DISCARD with `unmap`            | UNSUPP `BLK_SEGMENT_FLAGS` (§5.2.6.2 MUST) |
 * | a segment larger than `max_*_sectors`                                 | IOERR `BLK_SEGMENT_TOO_LARGE`    |
 * | a segment outside capacity or overflowing                             | IOERR `BLK_OUT_OF_RANGE`         |
 *
 * Checks run in the order of the table; the first that fails decides. For DISCARD / WRITE_ZEROES every
 * segment's flags are checked before any segment's range, so the MUST-UNSUPP answer does not depend on order.
 * Not checked: `size_max` per descriptor (the chain is already split at memory-region boundaries, and the
 * back end takes any buffer size: the limit is advice to the driver), `discard_sector_alignment` (a hint).
 *
 * Used length: the whole device-writable part, for every answered request. The status is its last byte, so
 * any length that covers the status covers everything before it (QEMU reports the same); for a successful IN
 * that is the data plus the status byte, for OUT / FLUSH / DISCARD / WRITE_ZEROES normally 1.
 */
import { GuestFault } from '../../virtio/errors.js';
import type { DescriptorChain } from '../../virtio/split/descriptor-chain.js';
import {
  BLK_DWZ_SEGMENT_SIZE,
  BLK_REQ_HEADER_SIZE,
  BLK_REQ_STATUS_SIZE,
  BlkRequestType,
  BlkStatus,
  SECTOR_SHIFT,
  SECTOR_SIZE,
  VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
} from './blk-layout.js';

const { VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID } = BlkRequestType;
const { VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES } = BlkRequestType;
const { VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_UNSUPP } = BlkStatus;

/**
 * Descriptors of a request that are not data: the header and the status. A driver following `seg_max` uses at
 * most `seg_max` data descriptors plus these two (Linux virtio_blk adds exactly two).
 */
const NON_DATA_DESCRIPTORS = 2;

export type BlkRequestErrorCode =
  /** The chain has no device-writable byte: no status can be returned. The only fault (→ NEEDS_RESET). */
  | 'BLK_STATUS_MISSING'
  | 'BLK_HEADER_TOO_SHORT'
  | 'BLK_UNSUPPORTED_TYPE'
  | 'BLK_READ_ONLY'
  | 'BLK_LENGTH_UNALIGNED'
  | 'BLK_SECTOR_UNALIGNED'
  | 'BLK_OUT_OF_RANGE'
  | 'BLK_TOO_MANY_SEGMENTS'
  | 'BLK_GET_ID_NO_ROOM'
  | 'BLK_FEATURE_NOT_NEGOTIATED'
  | 'BLK_SEGMENTS_INVALID'
  | 'BLK_SEGMENT_FLAGS'
  | 'BLK_SEGMENT_TOO_LARGE';

/**
 * A malformed block request. Thrown only for `BLK_STATUS_MISSING` (a guest fault: DEVICE_NEEDS_RESET); every
 * other code is carried by a `reject` request and answered with its status byte.
 */
export class BlkRequestError extends GuestFault<BlkRequestErrorCode> {}

/** Limits of one segment list command (DISCARD or WRITE_ZEROES), as advertised in configuration space. */
export interface BlkRangeLimits {
  /** `max_discard_sectors` / `max_write_zeroes_sectors`: the largest segment, in sectors. */
  readonly maxSectors: number;
  /** `max_discard_seg` / `max_write_zeroes_seg`: the most segments in one request. */
  readonly maxSegments: number;
}

/** What the parser checks a request against (the device's configuration and negotiated features). */
export interface BlkRequestLimits {
  /** Capacity in 512-byte sectors. */
  readonly capacity: number;
  readonly readOnly: boolean;
  /** `blk_size`: a power of two ≥ 512; IN/OUT must be aligned to it. */
  readonly blockSize: number;
  /** `seg_max`: data descriptors per IN/OUT request. */
  readonly segMax: number;
  /** Present when VIRTIO_BLK_F_DISCARD was negotiated. */
  readonly discard?: BlkRangeLimits | undefined;
  /** Present when VIRTIO_BLK_F_WRITE_ZEROES was negotiated. */
  readonly writeZeroes?: BlkRangeLimits | undefined;
}

/** One DISCARD / WRITE_ZEROES segment, in bytes. */
export interface BlkRange {
  readonly offset: number;
  readonly length: number;
  /** WRITE_ZEROES only: the device may deallocate the range. */
  readonly unmap: boolean;
}

interface BlkRequestCommon {
  /** The chain's head, for the used ring. */
  readonly head: number;
  /** The raw `type` field. */
  readonly type: number;
  /** Guest address of the status byte (the last device-writable byte). */
  readonly statusAddress: number;
  /** What to report in the used ring: the whole device-writable part. */
  readonly usedLength: number;
}

export type BlkRequest = BlkRequestCommon &
  (
    | {
        readonly op: 'read' | 'write';
        /** Byte offset on the disk. */
        readonly offset: number;
        /** Bytes to transfer (the sum of the data views). */
        readonly length: number;
        /** Zero-copy views of the data in guest memory (device-writable for read, readable for write). */
        readonly data: Uint8Array[];
      }
    | { readonly op: 'flush' }
    | { readonly op: 'get-id'; readonly data: Uint8Array[] }
    | { readonly op: 'discard' | 'write-zeroes'; readonly ranges: readonly BlkRange[] }
    /** Answered at once with `status`; `error` says why (never thrown). */
    | { readonly op: 'reject'; readonly status: number; readonly error: BlkRequestError }
  );

/**
 * Parses `chain` into a request. Throws {@link BlkRequestError} `BLK_STATUS_MISSING` (a {@link GuestFault}) when
 * the chain has no device-writable byte; every other malformation comes back as an `op: 'reject'` request.
 */
export function parseBlkRequest(chain: DescriptorChain, limits: BlkRequestLimits): BlkRequest {
  const head = chain.head;
  if (chain.writableLength < BLK_REQ_STATUS_SIZE) {
    throw new BlkRequestError(
      'BLK_STATUS_MISSING',
      `request at head ${head} has no device-writable status byte (${chain.readableLength} readable bytes, none writable)`,
      head,
    );
  }
  const lastSeg = chain.segmentCount - 1;
  const statusAddress = chain.segmentAddress(lastSeg) + chain.segmentLength(lastSeg) - BLK_REQ_STATUS_SIZE;
  const usedLength = chain.writableLength;
  const reject = (type: number, status: number, code: BlkRequestErrorCode, message: string): BlkRequest =>
    rejected(head, statusAddress, usedLength, type, status, code, message);

  if (chain.readableLength < BLK_REQ_HEADER_SIZE) {
    return reject(
      -1,
      VIRTIO_BLK_S_IOERR,
      'BLK_HEADER_TOO_SHORT',
      `the readable part has ${chain.readableLength} bytes, the header needs ${BLK_REQ_HEADER_SIZE}`,
    );
  }
  // Read each header field once: the guest may change the bytes under us.
  const reader = chain.reader();
  const type = reader.readU32();
  reader.readU32(); // reserved (legacy ioprio): ignored
  // The le64 sector as two halves: a number is exact below 2^53, and every sector from 2^53 / 512 on is past
  // any capacity (capacity * 512 is a safe integer), so `sectorHigh` alone rules huge values out, without a
  // bigint on the data path.
  const sectorLow = reader.readU32();
  const sectorHigh = reader.readU32();
  /** Device-writable bytes before the status: the data of IN and GET_ID. */
  const writableData = chain.writableLength - BLK_REQ_STATUS_SIZE;

  switch (type) {
    case VIRTIO_BLK_T_IN:
    case VIRTIO_BLK_T_OUT: {
      const write = type === VIRTIO_BLK_T_OUT;
      if (write && limits.readOnly) {
        return reject(type, VIRTIO_BLK_S_IOERR, 'BLK_READ_ONLY', 'write to a read-only device');
      }
      const length = write ? reader.remaining : writableData;
      const block = limits.blockSize;
      if (length % block !== 0) {
        return reject(
          type,
          VIRTIO_BLK_S_IOERR,
          'BLK_LENGTH_UNALIGNED',
          `data length ${length} is not a multiple of ${block}`,
        );
      }
      // blk_size is a power of two, so is sectors per block, and 2^32 is a multiple of it: the low half decides.
      const sectorsPerBlock = block >> SECTOR_SHIFT;
      if ((sectorLow & (sectorsPerBlock - 1)) !== 0) {
        return reject(
          type,
          VIRTIO_BLK_S_IOERR,
          'BLK_SECTOR_UNALIGNED',
          `sector ${sector64(sectorLow, sectorHigh)} is not a multiple of the ${block}-byte block size`,
        );
      }
      const first =
        sectorHigh >= SECTOR_HIGH_LIMIT
          ? -1
          : inRangeNumber(sectorHigh * 2 ** 32 + sectorLow, length / SECTOR_SIZE, limits.capacity);
      if (first < 0) {
        return reject(
          type,
          VIRTIO_BLK_S_IOERR,
          'BLK_OUT_OF_RANGE',
          `sectors ${sector64(sectorLow, sectorHigh)}+${length / SECTOR_SIZE} are not inside the capacity of ${limits.capacity}`,
        );
      }
      if (chain.descriptorCount > limits.segMax + NON_DATA_DESCRIPTORS) {
        return reject(
          type,
          VIRTIO_BLK_S_IOERR,
          'BLK_TOO_MANY_SEGMENTS',
          `${chain.descriptorCount} descriptors exceed seg_max ${limits.segMax} + header + status`,
        );
      }
      const data = write ? reader.views(length) : chain.writer().views(length);
      // One literal with every field (no spread): the data path builds this object per request.
      return {
        head,
        type,
        statusAddress,
        usedLength,
        op: write ? 'write' : 'read',
        offset: first * SECTOR_SIZE,
        length,
        data,
      };
    }

    case VIRTIO_BLK_T_FLUSH:
      return { head, type, statusAddress, usedLength, op: 'flush' };

    case VIRTIO_BLK_T_GET_ID:
      if (writableData === 0) {
        return reject(type, VIRTIO_BLK_S_IOERR, 'BLK_GET_ID_NO_ROOM', 'no room for the id before the status');
      }
      return {
        head,
        type,
        statusAddress,
        usedLength,
        op: 'get-id',
        data: chain.writer().views(writableData),
      };

    case VIRTIO_BLK_T_DISCARD:
    case VIRTIO_BLK_T_WRITE_ZEROES: {
      const discard = type === VIRTIO_BLK_T_DISCARD;
      const name = discard ? 'discard' : 'write zeroes';
      if (limits.readOnly) {
        return reject(type, VIRTIO_BLK_S_IOERR, 'BLK_READ_ONLY', `${name} on a read-only device`);
      }
      const rangeLimits = discard ? limits.discard : limits.writeZeroes;
      if (rangeLimits === undefined) {
        return reject(
          type,
          VIRTIO_BLK_S_UNSUPP,
          'BLK_FEATURE_NOT_NEGOTIATED',
          `${name} without its feature negotiated`,
        );
      }
      const bytes = reader.remaining;
      if (bytes === 0 || bytes % BLK_DWZ_SEGMENT_SIZE !== 0) {
        return reject(
          type,
          VIRTIO_BLK_S_IOERR,
          'BLK_SEGMENTS_INVALID',
          `${name} data of ${bytes} bytes is not a non-empty list of ${BLK_DWZ_SEGMENT_SIZE}-byte segments`,
        );
      }
      const count = bytes / BLK_DWZ_SEGMENT_SIZE;
      if (count > rangeLimits.maxSegments) {
        return reject(
          type,
          VIRTIO_BLK_S_IOERR,
          'BLK_TOO_MANY_SEGMENTS',
          `${count} ${name} segments exceed the maximum of ${rangeLimits.maxSegments}`,
        );
      }
      // Copy every segment out of guest memory first (read once), then check flags, then ranges.
      const sectors: bigint[] = [];
      const counts: number[] = [];
      const flags: number[] = [];
      for (let i = 0; i < count; i++) {
        sectors.push(reader.readU64());
        counts.push(reader.readU32());
        flags.push(reader.readU32());
      }
      const allowed = discard ? 0 : VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP;
      for (let i = 0; i < count; i++) {
        const f = flags[i] as number;
        if ((f & ~allowed) !== 0) {
          return reject(
            type,
            VIRTIO_BLK_S_UNSUPP,
            'BLK_SEGMENT_FLAGS',
            `${name} segment ${i} has flags 0x${f.toString(16)}; only 0x${allowed.toString(16)} is defined`,
          );
        }
      }
      const ranges: BlkRange[] = [];
      for (let i = 0; i < count; i++) {
        const n = counts[i] as number;
        const s = sectors[i] as bigint;
        if (n > rangeLimits.maxSectors) {
          return reject(
            type,
            VIRTIO_BLK_S_IOERR,
            'BLK_SEGMENT_TOO_LARGE',
            `${name} segment ${i} of ${n} sectors exceeds the maximum of ${rangeLimits.maxSectors}`,
          );
        }
        const first = inRange(s, n, limits.capacity);
        if (first < 0) {
          return reject(
            type,
            VIRTIO_BLK_S_IOERR,
            'BLK_OUT_OF_RANGE',
            `${name} segment ${i} (sectors ${s}+${n}) is not inside the capacity of ${limits.capacity}`,
          );
        }
        ranges.push({
          offset: first * SECTOR_SIZE,
          length: n * SECTOR_SIZE,
          unmap: ((flags[i] as number) & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP) !== 0,
        });
      }
      return { head, type, statusAddress, usedLength, op: discard ? 'discard' : 'write-zeroes', ranges };
    }

    default:
      return reject(type, VIRTIO_BLK_S_UNSUPP, 'BLK_UNSUPPORTED_TYPE', `unsupported request type ${type}`);
  }
}

/** The le64 sector from its halves, exactly (for messages). */
function sector64(low: number, high: number): bigint {
  return (BigInt(high) << 32n) | BigInt(low);
}

/**
 * High halves of the sector field from which the sector is 2^53 or more: past every capacity, which is at most
 * 2^53 / 512 sectors.
 */
const SECTOR_HIGH_LIMIT = 2 ** 21;

/** `sector` (a safe integer) when `[sector, sector + count)` lies inside `capacity` sectors, else -1. */
function inRangeNumber(sector: number, count: number, capacity: number): number {
  return sector <= capacity && sector + count <= capacity ? sector : -1;
}

/** A request answered at once with `status`; `error` says why. */
function rejected(
  head: number,
  statusAddress: number,
  usedLength: number,
  type: number,
  status: number,
  code: BlkRequestErrorCode,
  message: string,
): BlkRequest {
  return {
    head,
    type,
    statusAddress,
    usedLength,
    op: 'reject',
    status,
    error: new BlkRequestError(code, `request at head ${head}: ${message}`, { head, type }),
  };
}

/**
 * `sector` as a number when `[sector, sector + count)` lies inside `capacity` sectors, else -1. The le64 sector
 * is compared as a bigint, so huge values and `sector + count` overflow are caught before any conversion.
 */
function inRange(sector: bigint, count: number, capacity: number): number {
  if (sector > BigInt(capacity)) return -1;
  const first = Number(sector);
  return first + count <= capacity ? first : -1;
}
