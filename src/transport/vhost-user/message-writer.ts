/**
 * Serializer: vhost-user messages → bytes, for the back-end's replies and for a front-end's requests (the
 * driver side and the tests). The parser lives apart (message-parser.ts), as pg-protocol keeps them.
 *
 * Every function returns a new `Uint8Array` holding one whole message (header + payload) that the caller
 * owns: the socket layer may hold it until the write completes. Fds are not part of the bytes: a front-end
 * passes them to sendmsg with these bytes, in one call.
 *
 * ```ts
 * const bytes = encodeRequest(FrontendRequest.SET_VRING_NUM, encodeVringState({ index: 0, num: 256 }));
 * const ack = encodeReplyU64(FrontendRequest.SET_VRING_NUM, 0n); // REPLY_ACK success
 * ```
 */
import { encodeU64, encodeVringState } from './payloads.js';
import {
  FLAG_NEED_REPLY,
  FLAG_REPLY,
  HEADER_FLAGS_OFFSET,
  HEADER_REQUEST_OFFSET,
  HEADER_SIZE,
  HEADER_SIZE_OFFSET,
  VHOST_USER_VERSION,
} from './protocol.js';

const EMPTY = new Uint8Array(0);

/** A message with `flags` exactly as given (the version bits included by the caller). */
export function encodeMessage(request: number, flags: number, payload: Uint8Array = EMPTY): Uint8Array {
  const out = new Uint8Array(HEADER_SIZE + payload.length);
  const v = new DataView(out.buffer);
  v.setUint32(HEADER_REQUEST_OFFSET, request >>> 0, true);
  v.setUint32(HEADER_FLAGS_OFFSET, flags >>> 0, true);
  v.setUint32(HEADER_SIZE_OFFSET, payload.length, true);
  out.set(payload, HEADER_SIZE);
  return out;
}

/** A front-end request: version 1, NEED_REPLY when `needReply`. */
export function encodeRequest(request: number, payload: Uint8Array = EMPTY, needReply = false): Uint8Array {
  return encodeMessage(request, VHOST_USER_VERSION | (needReply ? FLAG_NEED_REPLY : 0), payload);
}

/**
 * A back-end reply to `request`: version 1 and REPLY, nothing else (UML checks the flags are exactly that).
 */
export function encodeReply(request: number, payload: Uint8Array = EMPTY): Uint8Array {
  return encodeMessage(request, VHOST_USER_VERSION | FLAG_REPLY, payload);
}

/** A reply carrying a u64: GET_FEATURES, GET_PROTOCOL_FEATURES, GET_QUEUE_NUM..., or a REPLY_ACK status. */
export function encodeReplyU64(request: number, value: bigint): Uint8Array {
  return encodeReply(request, encodeU64(value));
}

/** A reply carrying a vring state (GET_VRING_BASE). */
export function encodeReplyVringState(request: number, index: number, num: number): Uint8Array {
  return encodeReply(request, encodeVringState({ index, num }));
}
