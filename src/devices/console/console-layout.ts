/**
 * virtio-console layout (VIRTIO 1.2 §5.3; Linux include/uapi/linux/virtio_console.h): feature bits, the
 * configuration space, the queue numbering and the control message — each declared once.
 *
 * ```
 * Configuration space (§5.3.4), 12 bytes:
 *   0  le16 cols          valid with VIRTIO_CONSOLE_F_SIZE
 *   2  le16 rows          valid with VIRTIO_CONSOLE_F_SIZE
 *   4  le32 max_nr_ports  valid with VIRTIO_CONSOLE_F_MULTIPORT
 *   8  le32 emerg_wr      write-only, with VIRTIO_CONSOLE_F_EMERG_WRITE
 *
 * Queues (§5.3.2):
 *   0 receiveq(port 0)   1 transmitq(port 0)        — always
 *   2 control receiveq   3 control transmitq        — MULTIPORT only
 *   2 + 2N receiveq(port N), 3 + 2N transmitq(port N), N ≥ 1 — MULTIPORT only
 *
 * Control message (§5.3.6.2), 8 bytes, optionally followed by a payload:
 *   0 le32 id | 4 le16 event | 6 le16 value
 * ```
 *
 * Field order of cols/rows: the spec's listing of `struct virtio_console_config` has varied between versions;
 * Linux's uapi header and QEMU put `cols` first, and that is what every driver in the field reads, so ringvm
 * follows them. The RESIZE payload is `{ le16 cols; le16 rows }` as the spec says (Linux read it the other way
 * round until its 2025 fix, "virtio_console: fix order of fields cols and rows").
 */

/** Virtio device id of the console (§5). */
export const VIRTIO_ID_CONSOLE = 3;

/** Console feature bits (§5.3.3). */
export const ConsoleFeature = {
  /** `cols` and `rows` in the configuration space are valid. */
  VIRTIO_CONSOLE_F_SIZE: 0,
  /** Several ports; `max_nr_ports` is valid and the control queues are used. */
  VIRTIO_CONSOLE_F_MULTIPORT: 1,
  /** `emerg_wr` is valid: the driver may write single characters without any queue. */
  VIRTIO_CONSOLE_F_EMERG_WRITE: 2,
} as const;

export const CONSOLE_CONFIG_COLS = 0;
export const CONSOLE_CONFIG_ROWS = 2;
export const CONSOLE_CONFIG_MAX_NR_PORTS = 4;
export const CONSOLE_CONFIG_EMERG_WR = 8;
export const CONSOLE_CONFIG_SIZE = 12;

/** Port 0's queues, present with or without MULTIPORT. */
export const CONSOLE_PORT0_RX_QUEUE = 0;
export const CONSOLE_PORT0_TX_QUEUE = 1;
/** The control receiveq (device → driver, Linux `c_ivq`). */
export const CONSOLE_CONTROL_RX_QUEUE = 2;
/** The control transmitq (driver → device, Linux `c_ovq`). */
export const CONSOLE_CONTROL_TX_QUEUE = 3;

/** The receiveq of port `port` (§5.3.2). */
export function consoleRxQueue(port: number): number {
  return port === 0 ? CONSOLE_PORT0_RX_QUEUE : 2 + 2 * port;
}

/** The transmitq of port `port` (§5.3.2). */
export function consoleTxQueue(port: number): number {
  return port === 0 ? CONSOLE_PORT0_TX_QUEUE : 3 + 2 * port;
}

/** How many queues a device with `maxPorts` ports has when MULTIPORT is offered (Linux: (nr_ports + 1) × 2). */
export function consoleQueueCount(maxPorts: number, multiport: boolean): number {
  return multiport ? 2 * (maxPorts + 1) : 2;
}

/** What queue `queue` is: a port's receiveq or transmitq, or a control queue. */
export type ConsoleQueueRole =
  { readonly kind: 'rx' | 'tx'; readonly port: number } | { readonly kind: 'control-rx' | 'control-tx' };

/** The role of queue `queue` in a multiport device (undefined for a negative index). */
export function consoleQueueRole(queue: number): ConsoleQueueRole | undefined {
  if (!Number.isInteger(queue) || queue < 0) return undefined;
  if (queue === CONSOLE_PORT0_RX_QUEUE) return { kind: 'rx', port: 0 };
  if (queue === CONSOLE_PORT0_TX_QUEUE) return { kind: 'tx', port: 0 };
  if (queue === CONSOLE_CONTROL_RX_QUEUE) return { kind: 'control-rx' };
  if (queue === CONSOLE_CONTROL_TX_QUEUE) return { kind: 'control-tx' };
  return { kind: queue % 2 === 0 ? 'rx' : 'tx', port: (queue - 2) >> 1 };
}

/** Control message header (§5.3.6.2). */
export const CONTROL_ID_OFFSET = 0;
export const CONTROL_EVENT_OFFSET = 4;
export const CONTROL_VALUE_OFFSET = 6;
export const CONTROL_HEADER_SIZE = 8;
/** RESIZE payload after the header: le16 cols, le16 rows. */
export const CONTROL_RESIZE_COLS_OFFSET = 8;
export const CONTROL_RESIZE_ROWS_OFFSET = 10;
export const CONTROL_RESIZE_SIZE = 12;

/** `id` of messages that are about no port (Linux VIRTIO_CONSOLE_BAD_ID: DEVICE_READY carries it). */
export const VIRTIO_CONSOLE_BAD_ID = 0xffff_ffff;

/** Control events (§5.3.6.2). Spec names; Linux calls ADD/REMOVE PORT_ADD/PORT_REMOVE. */
export const ConsoleControlEvent = {
  /** Driver → device: ready for control messages (value 1) or failed (0). */
  DEVICE_READY: 0,
  /** Device → driver: create port `id`. */
  DEVICE_ADD: 1,
  /** Device → driver: remove port `id`. */
  DEVICE_REMOVE: 2,
  /** Driver → device: port `id` is set up (value 1) or failed (0). */
  PORT_READY: 3,
  /** Device → driver: port `id` is a console (value 1). */
  CONSOLE_PORT: 4,
  /** Device → driver: console size of port `id`, followed by le16 cols, le16 rows. */
  RESIZE: 5,
  /** Both ways: port `id` opened (value 1) or closed (0) on the sender's side. */
  PORT_OPEN: 6,
  /** Device → driver: the port's name follows the header, UTF-8, no NUL. */
  PORT_NAME: 7,
} as const;

export type ConsoleControlEventName = keyof typeof ConsoleControlEvent;

/** A decoded control message. */
export interface ConsoleControlMessage {
  readonly id: number;
  readonly event: number;
  readonly value: number;
  /** Bytes after the header (PORT_NAME's name, RESIZE's size); empty otherwise. */
  readonly payload: Uint8Array;
}

/** Encodes a control message: header, then `payload`. */
export function encodeControlMessage(
  id: number,
  event: number,
  value: number,
  payload: Uint8Array = new Uint8Array(0),
): Uint8Array {
  const out = new Uint8Array(CONTROL_HEADER_SIZE + payload.length);
  const view = new DataView(out.buffer);
  view.setUint32(CONTROL_ID_OFFSET, id >>> 0, true);
  view.setUint16(CONTROL_EVENT_OFFSET, event & 0xffff, true);
  view.setUint16(CONTROL_VALUE_OFFSET, value & 0xffff, true);
  out.set(payload, CONTROL_HEADER_SIZE);
  return out;
}

/** Decodes a control message; undefined when `bytes` is shorter than the header. The payload is a copy. */
export function decodeControlMessage(bytes: Uint8Array): ConsoleControlMessage | undefined {
  if (bytes.length < CONTROL_HEADER_SIZE) return undefined;
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return {
    id: view.getUint32(CONTROL_ID_OFFSET, true),
    event: view.getUint16(CONTROL_EVENT_OFFSET, true),
    value: view.getUint16(CONTROL_VALUE_OFFSET, true),
    payload: bytes.slice(CONTROL_HEADER_SIZE),
  };
}

/** The RESIZE payload: le16 cols, le16 rows (§5.3.6.2 struct virtio_console_resize). */
export function encodeResizePayload(cols: number, rows: number): Uint8Array {
  const out = new Uint8Array(CONTROL_RESIZE_SIZE - CONTROL_HEADER_SIZE);
  const view = new DataView(out.buffer);
  view.setUint16(CONTROL_RESIZE_COLS_OFFSET - CONTROL_HEADER_SIZE, cols & 0xffff, true);
  view.setUint16(CONTROL_RESIZE_ROWS_OFFSET - CONTROL_HEADER_SIZE, rows & 0xffff, true);
  return out;
}
