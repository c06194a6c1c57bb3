/** src/backends/net: the host ends of a virtio-net link (stream sockets, passt) and the in-process L2 switch. */
export {
  STREAM_FRAME_HEADER_BYTES,
  STREAM_FRAME_MAX_BYTES,
  StreamFrameParser,
  StreamFramingError,
  writeFrameHeader,
} from './stream-framing.js';
export type { StreamFramingErrorCode } from './stream-framing.js';
export { StreamBackendError } from './stream-backend-error.js';
export type { StreamBackendErrorCode } from './stream-backend-error.js';
export { StreamLink, STREAM_RECEIVE_QUEUE_BYTES } from './stream-link.js';
export type { StreamLinkOptions, StreamLinkStats } from './stream-link.js';
export { StreamNetBackend, describeAddress } from './stream-backend.js';
export type { StreamAddress, StreamNetBackendOptions } from './stream-backend.js';
export { PasstNetBackend } from './passt-backend.js';
export type { PasstNetBackendOptions } from './passt-backend.js';
export { NetSwitch } from './net-switch.js';
export type { NetSwitchOptions, SwitchFrameCallback, SwitchMacEntry } from './net-switch.js';
export {
  SwitchPort,
  BackendSwitchPort,
  SharedSwitchPort,
  EndpointSwitchPort,
  SWITCH_BACKLOG_DEFAULT_FRAMES,
} from './switch-ports.js';
export type { SwitchPortStats } from './switch-ports.js';
export { SwitchPortBackend } from './switch-port-backend.js';
export type { SwitchPortHandle } from './switch-port-backend.js';
export {
  SwitchFrameRing,
  createFrameRingBuffer,
  FRAME_RING_DEFAULT_BYTES,
  FRAME_RING_MIN_BYTES,
  FRAME_RING_MAX_BYTES,
} from './switch-frame-ring.js';
export {
  SwitchMacTable,
  MAC_AGEING_DEFAULT_MS,
  MAC_TABLE_DEFAULT_ENTRIES,
  formatMac,
  macKey,
} from './switch-mac-table.js';
export { NetBackendError } from '../../devices/net/net-backend.js';
export type { NetBackend, NetBackendEvents, NetOffloads } from '../../devices/net/net-backend.js';
