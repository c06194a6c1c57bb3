/**
 * The vhost-user wire protocol (QEMU docs/interop/vhost-user.rst): message header, request codes, feature bits
 * and payload layouts — every byte offset declared once, here.
 *
 * ```
 * header   0  u32 request
 *          4  u32 flags     bits 0–1 version (1), bit 2 REPLY, bit 3 NEED_REPLY; other bits reserved
 *          8  u32 size      payload bytes that follow
 * payload  12 ...           layout chosen by the request (below)
 * ```
 *
 * "All numbers are in the machine native byte order" (spec, Message Specification). ringvm runs on
 * little-endian hosts only (x86-64, arm64), so every field is read and written little-endian.
 *
 * File descriptors never appear in the bytes: they travel as SCM_RIGHTS ancillary data with the message.
 */

// ---- header ----

export const HEADER_SIZE = 12;
export const HEADER_REQUEST_OFFSET = 0;
export const HEADER_FLAGS_OFFSET = 4;
export const HEADER_SIZE_OFFSET = 8;

/** Bits 0–1 of flags: the protocol version. */
export const FLAG_VERSION_MASK = 0x3;
/** The only version defined ("currently 0x01"). */
export const VHOST_USER_VERSION = 0x1;
/** Bit 2: set on every reply from the back-end. */
export const FLAG_REPLY = 0x4;
/** Bit 3: the sender wants an acknowledgement (REPLY_ACK). */
export const FLAG_NEED_REPLY = 0x8;
/** Every flag bit the spec defines; any other bit set is a malformed header. */
export const FLAG_KNOWN_MASK = FLAG_VERSION_MASK | FLAG_REPLY | FLAG_NEED_REPLY;

/**
 * Largest payload accepted. The spec sets no limit; QEMU sizes its receive buffer by the largest payload
 * union member (a memory table, 264 bytes; a config message with up to 256 bytes of space) and rust-vmm's
 * vhost crate caps messages at 0x1000. A larger size is refused before anything is buffered, so a hostile
 * header cannot make the back-end allocate.
 */
export const MAX_PAYLOAD_SIZE = 4096;

/** At most this many fds travel with one message (a memory table of 8 regions). */
export const MAX_FDS_PER_MESSAGE = 8;

// ---- request codes ----

/** Requests the front-end sends to the back-end (the spec's "Front-end message types"). */
export const FrontendRequest = {
  GET_FEATURES: 1,
  SET_FEATURES: 2,
  SET_OWNER: 3,
  RESET_OWNER: 4,
  SET_MEM_TABLE: 5,
  SET_LOG_BASE: 6,
  SET_LOG_FD: 7,
  SET_VRING_NUM: 8,
  SET_VRING_ADDR: 9,
  SET_VRING_BASE: 10,
  GET_VRING_BASE: 11,
  SET_VRING_KICK: 12,
  SET_VRING_CALL: 13,
  SET_VRING_ERR: 14,
  GET_PROTOCOL_FEATURES: 15,
  SET_PROTOCOL_FEATURES: 16,
  GET_QUEUE_NUM: 17,
  SET_VRING_ENABLE: 18,
  SEND_RARP: 19,
  NET_SET_MTU: 20,
  SET_BACKEND_REQ_FD: 21,
  IOTLB_MSG: 22,
  SET_VRING_ENDIAN: 23,
  GET_CONFIG: 24,
  SET_CONFIG: 25,
  CREATE_CRYPTO_SESSION: 26,
  CLOSE_CRYPTO_SESSION: 27,
  POSTCOPY_ADVISE: 28,
  POSTCOPY_LISTEN: 29,
  POSTCOPY_END: 30,
  GET_INFLIGHT_FD: 31,
  SET_INFLIGHT_FD: 32,
  GPU_SET_SOCKET: 33,
  RESET_DEVICE: 34,
  VRING_KICK: 35,
  GET_MAX_MEM_SLOTS: 36,
  ADD_MEM_REG: 37,
  REM_MEM_REG: 38,
  SET_STATUS: 39,
  GET_STATUS: 40,
  GET_SHARED_OBJECT: 41,
  SET_DEVICE_STATE_FD: 42,
  CHECK_DEVICE_STATE: 43,
} as const;

export type FrontendRequestName = keyof typeof FrontendRequest;

/** Requests the back-end sends to the front-end over the back-end channel (SET_BACKEND_REQ_FD). */
export const BackendRequest = {
  IOTLB_MSG: 1,
  CONFIG_CHANGE_MSG: 2,
  VRING_HOST_NOTIFIER_MSG: 3,
  VRING_CALL: 4,
  VRING_ERR: 5,
  SHARED_OBJECT_ADD: 6,
  SHARED_OBJECT_REMOVE: 7,
  SHARED_OBJECT_LOOKUP: 8,
} as const;

export type BackendRequestName = keyof typeof BackendRequest;

const FRONTEND_NAMES = new Map<number, FrontendRequestName>(
  Object.entries(FrontendRequest).map(([name, code]) => [code, name as FrontendRequestName]),
);

/** `SET_VRING_ADDR`-style name of a front-end request code, or `request 99` when unknown (for messages). */
export function frontendRequestName(request: number): string {
  return FRONTEND_NAMES.get(request) ?? `request ${request}`;
}

// ---- feature bits ----

/**
 * Virtio feature bit 30 (UNUSED in VIRTIO 1.x, §6.3): set in GET_FEATURES when the back-end supports
 * GET/SET_PROTOCOL_FEATURES; acked in SET_FEATURES, it also makes rings start disabled (Ring states).
 */
export const VHOST_USER_F_PROTOCOL_FEATURES = 30;

/** Protocol feature bits (GET/SET_PROTOCOL_FEATURES). */
export const VhostUserProtocolFeature = {
  MQ: 0,
  LOG_SHMFD: 1,
  RARP: 2,
  REPLY_ACK: 3,
  MTU: 4,
  BACKEND_REQ: 5,
  CROSS_ENDIAN: 6,
  CRYPTO_SESSION: 7,
  PAGEFAULT: 8,
  CONFIG: 9,
  BACKEND_SEND_FD: 10,
  HOST_NOTIFIER: 11,
  INFLIGHT_SHMFD: 12,
  RESET_DEVICE: 13,
  INBAND_NOTIFICATIONS: 14,
  CONFIGURE_MEM_SLOTS: 15,
  STATUS: 16,
  XEN_MMAP: 17,
  SHARED_OBJECT: 18,
  DEVICE_STATE: 19,
} as const;

// ---- payload layouts ----

/** A single u64. */
export const U64_SIZE = 8;

/** Vring state / split-ring descriptor index: {u32 index, u32 num}. */
export const VRING_STATE_SIZE = 8;
export const VRING_STATE_INDEX_OFFSET = 0;
export const VRING_STATE_NUM_OFFSET = 4;
/** For split rings only the low 16 bits of num carry the avail index; bits 16–31 are reserved (zero). */
export const VRING_BASE_SPLIT_MASK = 0xffff;

/**
 * Vring addresses: {u32 index, u32 flags, u64 desc, u64 used, u64 avail, u64 log} — note the order: used
 * comes BEFORE avail (Linux's struct vhost_vring_addr). The addresses are front-end user addresses (or IOVAs
 * with VIRTIO_F_IOMMU_PLATFORM).
 */
export const VRING_ADDR_SIZE = 40;
export const VRING_ADDR_INDEX_OFFSET = 0;
export const VRING_ADDR_FLAGS_OFFSET = 4;
export const VRING_ADDR_DESC_OFFSET = 8;
export const VRING_ADDR_USED_OFFSET = 16;
export const VRING_ADDR_AVAIL_OFFSET = 24;
export const VRING_ADDR_LOG_OFFSET = 32;
/** vring addr flags bit 0: log used-ring writes at `log` (migration); the only flag defined. */
export const VHOST_VRING_F_LOG = 0x1;

/** Memory region: {u64 guest_phys_addr, u64 memory_size, u64 userspace_addr, u64 mmap_offset}. */
export const MEM_REGION_SIZE = 32;
export const MEM_REGION_GUEST_ADDR_OFFSET = 0;
export const MEM_REGION_SIZE_OFFSET = 8;
export const MEM_REGION_USER_ADDR_OFFSET = 16;
export const MEM_REGION_MMAP_OFFSET_OFFSET = 24;

/**
 * Memory table (SET_MEM_TABLE): {u32 nregions, u32 padding, region[...]}. QEMU sends 8 + 32·nregions bytes;
 * Linux UML always sends its whole struct (room for 2 regions: 72 bytes) whatever nregions is. Accepted:
 * 8 + 32·k bytes for k from nregions up to {@link MEM_TABLE_MAX_REGIONS}.
 */
export const MEM_TABLE_HEADER_SIZE = 8;
export const MEM_TABLE_NREGIONS_OFFSET = 0;
export const MEM_TABLE_REGIONS_OFFSET = 8;
/** VHOST_MEMORY_BASELINE_NREGIONS: regions (and fds) in one SET_MEM_TABLE. */
export const MEM_TABLE_MAX_REGIONS = 8;
export const MEM_TABLE_MAX_SIZE = MEM_TABLE_HEADER_SIZE + MEM_TABLE_MAX_REGIONS * MEM_REGION_SIZE;

/** Single memory region (ADD_MEM_REG / REM_MEM_REG): {u64 padding, region}. */
export const SINGLE_MEM_REGION_SIZE = 8 + MEM_REGION_SIZE;
export const SINGLE_MEM_REGION_REGION_OFFSET = 8;

/** Device config space access: {u32 offset, u32 size, u32 flags, u8 payload[size]}. */
export const CONFIG_HEADER_SIZE = 12;
export const CONFIG_OFFSET_OFFSET = 0;
export const CONFIG_SIZE_OFFSET = 4;
export const CONFIG_FLAGS_OFFSET = 8;
export const CONFIG_PAYLOAD_OFFSET = 12;
/** Config flags: 0 = a guest write of writable fields, 1 = live migration (may write read-only fields). */
export const VHOST_SET_CONFIG_TYPE_FRONTEND = 0;
export const VHOST_SET_CONFIG_TYPE_MIGRATION = 1;
/**
 * Largest config access (QEMU's VHOST_USER_MAX_CONFIG_SIZE). Virtio config spaces are tens of bytes; the
 * bound keeps a hostile size from allocating.
 */
export const MAX_CONFIG_SIZE = 256;

/** Vring area (back-end → front-end HOST_NOTIFIER): {u64 index and flags, u64 size, u64 offset}. */
export const VRING_AREA_SIZE = 24;

/** Inflight description: {u64 mmap_size, u64 mmap_offset, u16 num_queues, u16 queue_size}. */
export const INFLIGHT_SIZE = 20;

/** Log description (SET_LOG_BASE with LOG_SHMFD): {u64 mmap_size, u64 mmap_offset}. */
export const LOG_SIZE = 16;

/**
 * SET_VRING_KICK / CALL / ERR payload (a u64): bits 0–7 the vring index, bit 8 "no fd: poll instead";
 * the other bits are not defined.
 */
export const VRING_FD_INDEX_MASK = 0xff;
export const VRING_FD_NOFD_MASK = 0x100;

// ---- what each front-end request carries ----

/** Payload size rule: exactly `min` bytes when `min === max`; else `min + step·k` up to `max`. */
export interface PayloadRule {
  readonly min: number;
  readonly max: number;
  readonly step: number;
}

export interface RequestLayout {
  readonly payload: PayloadRule;
  /** How many fds may come with the request (the session checks exact counts where they depend on content). */
  readonly minFds: number;
  readonly maxFds: number;
}

const fixed = (size: number): PayloadRule => ({ min: size, max: size, step: 0 });
const anySize: PayloadRule = { min: 0, max: MAX_PAYLOAD_SIZE, step: 1 };
const layout = (payload: PayloadRule, minFds = 0, maxFds = minFds): RequestLayout => ({
  payload,
  minFds,
  maxFds,
});

const R = FrontendRequest;

/**
 * Payload size and fd count of every front-end request, from the spec's request list. Requests ringvm never
 * enables (their protocol feature is not offered) still get a rule so a malformed one is reported as such;
 * the session refuses them anyway.
 */
export const FRONTEND_REQUEST_LAYOUTS: ReadonlyMap<number, RequestLayout> = new Map<number, RequestLayout>([
  [R.GET_FEATURES, layout(fixed(0))],
  [R.SET_FEATURES, layout(fixed(U64_SIZE))],
  [R.SET_OWNER, layout(fixed(0))],
  [R.RESET_OWNER, layout(fixed(0))],
  [
    R.SET_MEM_TABLE,
    layout(
      { min: MEM_TABLE_HEADER_SIZE, max: MEM_TABLE_MAX_SIZE, step: MEM_REGION_SIZE },
      0,
      MEM_TABLE_MAX_REGIONS,
    ),
  ],
  [R.SET_LOG_BASE, layout(anySize, 0, 1)],
  [R.SET_LOG_FD, layout(fixed(0), 1)],
  [R.SET_VRING_NUM, layout(fixed(VRING_STATE_SIZE))],
  [R.SET_VRING_ADDR, layout(fixed(VRING_ADDR_SIZE))],
  [R.SET_VRING_BASE, layout(fixed(VRING_STATE_SIZE))],
  [R.GET_VRING_BASE, layout(fixed(VRING_STATE_SIZE))],
  [R.SET_VRING_KICK, layout(fixed(U64_SIZE), 0, 1)],
  [R.SET_VRING_CALL, layout(fixed(U64_SIZE), 0, 1)],
  [R.SET_VRING_ERR, layout(fixed(U64_SIZE), 0, 1)],
  [R.GET_PROTOCOL_FEATURES, layout(fixed(0))],
  [R.SET_PROTOCOL_FEATURES, layout(fixed(U64_SIZE))],
  [R.GET_QUEUE_NUM, layout(fixed(0))],
  [R.SET_VRING_ENABLE, layout(fixed(VRING_STATE_SIZE))],
  [R.SEND_RARP, layout(fixed(U64_SIZE))],
  [R.NET_SET_MTU, layout(fixed(U64_SIZE))],
  [R.SET_BACKEND_REQ_FD, layout(fixed(0), 1)],
  [R.IOTLB_MSG, layout(anySize)],
  [R.SET_VRING_ENDIAN, layout(fixed(VRING_STATE_SIZE))],
  [R.GET_CONFIG, layout({ min: CONFIG_HEADER_SIZE, max: CONFIG_HEADER_SIZE + MAX_CONFIG_SIZE, step: 1 })],
  [R.SET_CONFIG, layout({ min: CONFIG_HEADER_SIZE, max: CONFIG_HEADER_SIZE + MAX_CONFIG_SIZE, step: 1 })],
  [R.CREATE_CRYPTO_SESSION, layout(anySize)],
  [R.CLOSE_CRYPTO_SESSION, layout(fixed(U64_SIZE))],
  [R.POSTCOPY_ADVISE, layout(fixed(0))],
  [R.POSTCOPY_LISTEN, layout(fixed(0))],
  [R.POSTCOPY_END, layout(fixed(0))],
  [R.GET_INFLIGHT_FD, layout(anySize)],
  [R.SET_INFLIGHT_FD, layout(anySize, 1)],
  [R.GPU_SET_SOCKET, layout(fixed(0), 1)],
  [R.RESET_DEVICE, layout(fixed(0))],
  [R.VRING_KICK, layout(fixed(VRING_STATE_SIZE))],
  [R.GET_MAX_MEM_SLOTS, layout(fixed(0))],
  [R.ADD_MEM_REG, layout(fixed(SINGLE_MEM_REGION_SIZE), 1)],
  // "No file descriptors SHOULD be passed ... the back-end MAY accept messages with one file descriptor."
  [R.REM_MEM_REG, layout(fixed(SINGLE_MEM_REGION_SIZE), 0, 1)],
  [R.SET_STATUS, layout(fixed(U64_SIZE))],
  [R.GET_STATUS, layout(fixed(0))],
  [R.GET_SHARED_OBJECT, layout(fixed(16))],
  [R.SET_DEVICE_STATE_FD, layout(fixed(8), 1)],
  [R.CHECK_DEVICE_STATE, layout(fixed(0))],
]);

/** Whether `size` satisfies `rule`. */
export function payloadSizeMatches(rule: PayloadRule, size: number): boolean {
  if (size < rule.min || size > rule.max) return false;
  if (rule.min === rule.max) return true;
  return (size - rule.min) % rule.step === 0;
}

/** The rule as text for messages: `40 bytes`, `8 + 32·k bytes (≤ 264)`, `12..268 bytes`. */
export function describePayloadRule(rule: PayloadRule): string {
  if (rule.min === rule.max) return `${rule.min} bytes`;
  if (rule.step === 1) return `${rule.min}..${rule.max} bytes`;
  return `${rule.min} + ${rule.step}·k bytes (≤ ${rule.max})`;
}
