/**
 * vhost-user payloads as values: decode from a message's payload bytes, encode into a payload. Offsets come
 * from protocol.ts; 64-bit fields are `bigint` (addresses and feature bitmaps span all 64 bits on the wire —
 * the session decides which values it can use as JavaScript numbers).
 *
 * Decoders assume the parser already checked the payload size against the request's layout; they still never
 * read outside `payload` (a DataView throws a RangeError there).
 */
import {
  CONFIG_FLAGS_OFFSET,
  CONFIG_HEADER_SIZE,
  CONFIG_OFFSET_OFFSET,
  CONFIG_PAYLOAD_OFFSET,
  CONFIG_SIZE_OFFSET,
  MEM_REGION_GUEST_ADDR_OFFSET,
  MEM_REGION_MMAP_OFFSET_OFFSET,
  MEM_REGION_SIZE,
  MEM_REGION_SIZE_OFFSET,
  MEM_REGION_USER_ADDR_OFFSET,
  MEM_TABLE_HEADER_SIZE,
  MEM_TABLE_NREGIONS_OFFSET,
  MEM_TABLE_REGIONS_OFFSET,
  SINGLE_MEM_REGION_REGION_OFFSET,
  SINGLE_MEM_REGION_SIZE,
  U64_SIZE,
  VRING_ADDR_AVAIL_OFFSET,
  VRING_ADDR_DESC_OFFSET,
  VRING_ADDR_FLAGS_OFFSET,
  VRING_ADDR_INDEX_OFFSET,
  VRING_ADDR_LOG_OFFSET,
  VRING_ADDR_SIZE,
  VRING_ADDR_USED_OFFSET,
  VRING_STATE_INDEX_OFFSET,
  VRING_STATE_NUM_OFFSET,
  VRING_STATE_SIZE,
} from './protocol.js';

export interface VringState {
  readonly index: number;
  readonly num: number;
}

export interface VringAddr {
  readonly index: number;
  readonly flags: number;
  /** Front-end user address of the descriptor table. */
  readonly desc: bigint;
  /** Front-end user address of the used ring. */
  readonly used: bigint;
  /** Front-end user address of the available ring. */
  readonly avail: bigint;
  /** Guest address for used-ring logging (VHOST_VRING_F_LOG); UML sends all ones. */
  readonly log: bigint;
}

export interface MemRegion {
  readonly guestAddr: bigint;
  readonly size: bigint;
  readonly userAddr: bigint;
  readonly mmapOffset: bigint;
}

export interface ConfigAccess {
  readonly offset: number;
  /** The `size` field (bytes of config space). */
  readonly size: number;
  readonly flags: number;
  /** The bytes after the 12-byte header (a view into the message payload). */
  readonly data: Uint8Array;
}

function view(payload: Uint8Array): DataView {
  return new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
}

// ---- decode ----

export function decodeU64(payload: Uint8Array): bigint {
  return view(payload).getBigUint64(0, true);
}

export function decodeVringState(payload: Uint8Array): VringState {
  const v = view(payload);
  return {
    index: v.getUint32(VRING_STATE_INDEX_OFFSET, true),
    num: v.getUint32(VRING_STATE_NUM_OFFSET, true),
  };
}

export function decodeVringAddr(payload: Uint8Array): VringAddr {
  const v = view(payload);
  return {
    index: v.getUint32(VRING_ADDR_INDEX_OFFSET, true),
    flags: v.getUint32(VRING_ADDR_FLAGS_OFFSET, true),
    desc: v.getBigUint64(VRING_ADDR_DESC_OFFSET, true),
    used: v.getBigUint64(VRING_ADDR_USED_OFFSET, true),
    avail: v.getBigUint64(VRING_ADDR_AVAIL_OFFSET, true),
    log: v.getBigUint64(VRING_ADDR_LOG_OFFSET, true),
  };
}

function decodeRegionAt(v: DataView, at: number): MemRegion {
  return {
    guestAddr: v.getBigUint64(at + MEM_REGION_GUEST_ADDR_OFFSET, true),
    size: v.getBigUint64(at + MEM_REGION_SIZE_OFFSET, true),
    userAddr: v.getBigUint64(at + MEM_REGION_USER_ADDR_OFFSET, true),
    mmapOffset: v.getBigUint64(at + MEM_REGION_MMAP_OFFSET_OFFSET, true),
  };
}

/** The `nregions` field of a memory table. */
export function memTableRegionCount(payload: Uint8Array): number {
  return view(payload).getUint32(MEM_TABLE_NREGIONS_OFFSET, true);
}

/** The first `count` regions of a memory table (the caller checked that they fit in the payload). */
export function decodeMemTable(payload: Uint8Array, count: number): MemRegion[] {
  const v = view(payload);
  const regions: MemRegion[] = [];
  for (let i = 0; i < count; i++)
    regions.push(decodeRegionAt(v, MEM_TABLE_REGIONS_OFFSET + i * MEM_REGION_SIZE));
  return regions;
}

/** ADD_MEM_REG / REM_MEM_REG: the region after the u64 padding. */
export function decodeSingleMemRegion(payload: Uint8Array): MemRegion {
  return decodeRegionAt(view(payload), SINGLE_MEM_REGION_REGION_OFFSET);
}

export function decodeConfig(payload: Uint8Array): ConfigAccess {
  const v = view(payload);
  return {
    offset: v.getUint32(CONFIG_OFFSET_OFFSET, true),
    size: v.getUint32(CONFIG_SIZE_OFFSET, true),
    flags: v.getUint32(CONFIG_FLAGS_OFFSET, true),
    data: payload.subarray(CONFIG_PAYLOAD_OFFSET),
  };
}

// ---- encode ----

export function encodeU64(value: bigint): Uint8Array {
  const out = new Uint8Array(U64_SIZE);
  view(out).setBigUint64(0, BigInt.asUintN(64, value), true);
  return out;
}

export function encodeVringState(state: VringState): Uint8Array {
  const out = new Uint8Array(VRING_STATE_SIZE);
  const v = view(out);
  v.setUint32(VRING_STATE_INDEX_OFFSET, state.index >>> 0, true);
  v.setUint32(VRING_STATE_NUM_OFFSET, state.num >>> 0, true);
  return out;
}

export function encodeVringAddr(addr: VringAddr): Uint8Array {
  const out = new Uint8Array(VRING_ADDR_SIZE);
  const v = view(out);
  v.setUint32(VRING_ADDR_INDEX_OFFSET, addr.index >>> 0, true);
  v.setUint32(VRING_ADDR_FLAGS_OFFSET, addr.flags >>> 0, true);
  v.setBigUint64(VRING_ADDR_DESC_OFFSET, BigInt.asUintN(64, addr.desc), true);
  v.setBigUint64(VRING_ADDR_USED_OFFSET, BigInt.asUintN(64, addr.used), true);
  v.setBigUint64(VRING_ADDR_AVAIL_OFFSET, BigInt.asUintN(64, addr.avail), true);
  v.setBigUint64(VRING_ADDR_LOG_OFFSET, BigInt.asUintN(64, addr.log), true);
  return out;
}

function encodeRegionAt(v: DataView, at: number, r: MemRegion): void {
  v.setBigUint64(at + MEM_REGION_GUEST_ADDR_OFFSET, BigInt.asUintN(64, r.guestAddr), true);
  v.setBigUint64(at + MEM_REGION_SIZE_OFFSET, BigInt.asUintN(64, r.size), true);
  v.setBigUint64(at + MEM_REGION_USER_ADDR_OFFSET, BigInt.asUintN(64, r.userAddr), true);
  v.setBigUint64(at + MEM_REGION_MMAP_OFFSET_OFFSET, BigInt.asUintN(64, r.mmapOffset), true);
}

/**
 * A memory table with `regions`. `slots` (default: as many as regions, QEMU's way) sets how many region slots
 * the payload has room for: UML always sends 2.
 */
export function encodeMemTable(regions: readonly MemRegion[], slots = regions.length): Uint8Array {
  const out = new Uint8Array(MEM_TABLE_HEADER_SIZE + Math.max(slots, regions.length) * MEM_REGION_SIZE);
  const v = view(out);
  v.setUint32(MEM_TABLE_NREGIONS_OFFSET, regions.length, true);
  regions.forEach((r, i) => {
    encodeRegionAt(v, MEM_TABLE_REGIONS_OFFSET + i * MEM_REGION_SIZE, r);
  });
  return out;
}

export function encodeSingleMemRegion(region: MemRegion): Uint8Array {
  const out = new Uint8Array(SINGLE_MEM_REGION_SIZE);
  encodeRegionAt(view(out), SINGLE_MEM_REGION_REGION_OFFSET, region);
  return out;
}

/** A config message: header with `size` = `data.length` (or `size` when given), then `data`. */
export function encodeConfig(
  offset: number,
  flags: number,
  data: Uint8Array,
  size = data.length,
): Uint8Array {
  const out = new Uint8Array(CONFIG_HEADER_SIZE + data.length);
  const v = view(out);
  v.setUint32(CONFIG_OFFSET_OFFSET, offset >>> 0, true);
  v.setUint32(CONFIG_SIZE_OFFSET, size >>> 0, true);
  v.setUint32(CONFIG_FLAGS_OFFSET, flags >>> 0, true);
  out.set(data, CONFIG_PAYLOAD_OFFSET);
  return out;
}
