/**
 * Incremental vhost-user parser: bytes and fds as a unix stream socket delivers them → whole messages.
 *
 * A small state machine (header → payload → header ...) over one reusable byte buffer: `push` copies each
 * chunk in (the caller's receive buffer can be reused at once), `next` hands out whole messages. A chunk may
 * hold several messages, and a message may be split anywhere across chunks. The only allocations per message
 * are the message object, its payload copy and its fd array.
 *
 * ```ts
 * const parser = new VhostUserMessageParser();
 * parser.push(bytes, fdsReceivedWithThem);
 * try {
 *   for (let m = parser.next(); m !== null; m = parser.next()) handle(m);
 * } catch (e) {
 *   // a VhostUserProtocolError: log it, close every fd still held, close the connection
 *   for (const fd of parser.drainFds()) closeFd(fd);
 * }
 * ```
 *
 * **Which message gets the fds.** The fds given with a chunk belong to the message that holds the chunk's last
 * byte. A sender passes each message's fds in the same sendmsg as the message (QEMU, UML and libvhost-user all
 * do), and Linux's unix stream receive may glue earlier fd-less messages in front of it in one read, but stops
 * right after the data that carried fds (or inside it, when the buffer fills, having already handed the fds
 * over): so the message being read when the chunk ends is the one that was sent with them. (Seen for real: a
 * front end that sends SET_OWNER, SET_FEATURES and SET_MEM_TABLE back to back is read as one chunk whose fd
 * is SET_MEM_TABLE's.)
 *
 * **Payload.** `message.payload` is a fresh copy owned by the message, not a view of the parser's buffer.
 *
 * **Errors.** A malformed message makes `next()` throw a {@link VhostUserProtocolError}, checked as soon as
 * the header is in (an oversized payload is refused before it is buffered). The parser then stays failed:
 * every later `next()` throws the same error. The fds it holds — the bad message's and any not yet handed out
 * — are returned by {@link VhostUserMessageParser.drainFds}; the caller closes them. `push` never throws.
 */
import { VhostUserProtocolError } from './errors.js';
import {
  FLAG_KNOWN_MASK,
  FLAG_NEED_REPLY,
  FLAG_REPLY,
  FLAG_VERSION_MASK,
  FRONTEND_REQUEST_LAYOUTS,
  HEADER_FLAGS_OFFSET,
  HEADER_REQUEST_OFFSET,
  HEADER_SIZE,
  HEADER_SIZE_OFFSET,
  MAX_FDS_PER_MESSAGE,
  MAX_PAYLOAD_SIZE,
  VHOST_USER_VERSION,
  describePayloadRule,
  frontendRequestName,
  payloadSizeMatches,
} from './protocol.js';

export interface VhostUserMessage {
  readonly request: number;
  readonly flags: number;
  /** The payload bytes: a copy owned by this message. */
  readonly payload: Uint8Array;
  /** Fds received with the message, in order; whoever takes the message owns (and must close) them. */
  readonly fds: readonly number[];
}

/**
 * What the parser reads: `requests` (a back-end reading the front-end: known request codes, layouts checked,
 * REPLY must be clear) or `replies` (a front-end reading the back-end's replies: REPLY must be set, NEED_REPLY
 * clear; payload sizes depend on the request that was sent, so only the maximum is checked).
 */
export type VhostUserParserMode = 'requests' | 'replies';

export interface VhostUserParserOptions {
  readonly mode?: VhostUserParserMode;
}

interface FdBatch {
  /** Stream offset of the last byte of the chunk the fds came with. */
  readonly at: number;
  readonly fds: readonly number[];
}

/** Parser states: waiting for a header, for the payload of the header read, or stopped by an error. */
const State = { Header: 0, Payload: 1, Failed: 2 } as const;
type State = (typeof State)[keyof typeof State];

const INITIAL_BUFFER = 1024;

export class VhostUserMessageParser {
  readonly mode: VhostUserParserMode;

  #buf = new Uint8Array(INITIAL_BUFFER);
  #view = new DataView(this.#buf.buffer);
  /** Unread bytes are #buf[#start, #end). */
  #start = 0;
  #end = 0;
  /** Stream offset of #buf[#start]. */
  #consumed = 0;
  /** Stream offset one past the last byte pushed. */
  #received = 0;
  #batches: FdBatch[] = [];

  #state: State = State.Header;
  #request = 0;
  #flags = 0;
  #size = 0;
  /** Fds of the message whose header was read and whose payload is awaited. */
  #fds: number[] = [];
  /** Fds of a rejected message, until drained. */
  #orphans: number[] = [];
  #error: VhostUserProtocolError | null = null;

  constructor(options: VhostUserParserOptions = {}) {
    this.mode = options.mode ?? 'requests';
  }

  /** Bytes buffered and not yet returned in a message. */
  get buffered(): number {
    return this.#end - this.#start;
  }

  /** The error that stopped the parser, or null. */
  get error(): VhostUserProtocolError | null {
    return this.#error;
  }

  /** Appends bytes received from the socket, with the fds that came with them. Never throws. */
  push(chunk: Uint8Array, fds: readonly number[] = []): void {
    if (fds.length > 0) {
      if (this.#state === State.Failed) this.#orphans.push(...fds);
      else this.#batches.push({ at: this.#received + Math.max(chunk.length, 1) - 1, fds: [...fds] });
    }
    this.#received += chunk.length;
    if (this.#state === State.Failed || chunk.length === 0) return;
    this.#reserve(chunk.length);
    this.#buf.set(chunk, this.#end);
    this.#end += chunk.length;
  }

  /** The next whole message, or null if more bytes are needed. Throws {@link VhostUserProtocolError}. */
  next(): VhostUserMessage | null {
    if (this.#state === State.Failed) throw this.#error as VhostUserProtocolError;
    if (this.#state === State.Header) {
      if (this.#end - this.#start < HEADER_SIZE) return null;
      const at = this.#start;
      this.#request = this.#view.getUint32(at + HEADER_REQUEST_OFFSET, true);
      this.#flags = this.#view.getUint32(at + HEADER_FLAGS_OFFSET, true);
      this.#size = this.#view.getUint32(at + HEADER_SIZE_OFFSET, true);
      this.#fds = this.#claimFds(this.#consumed + HEADER_SIZE + this.#size);
      this.#start += HEADER_SIZE;
      this.#consumed += HEADER_SIZE;
      this.#state = State.Payload;
      const problem = this.#checkHeader();
      if (problem !== null) this.#fail(problem);
    }
    if (this.#end - this.#start < this.#size) return null;
    const payload = this.#buf.slice(this.#start, this.#start + this.#size);
    this.#start += this.#size;
    this.#consumed += this.#size;
    if (this.#start === this.#end) {
      this.#start = 0;
      this.#end = 0;
    }
    const message: VhostUserMessage = { request: this.#request, flags: this.#flags, payload, fds: this.#fds };
    this.#fds = [];
    this.#state = State.Header;
    return message;
  }

  /**
   * Every fd the parser holds and has not handed out in a message (a rejected message's, a partial
   * message's, fds waiting for their message). The caller now owns them and must close them. Used on error and
   * when the connection closes.
   */
  drainFds(): number[] {
    const out = [...this.#orphans, ...this.#fds];
    for (const b of this.#batches) out.push(...b.fds);
    this.#orphans = [];
    this.#fds = [];
    this.#batches = [];
    return out;
  }

  /** Forgets everything (a new connection); returns the fds it held, which the caller must close. */
  reset(): number[] {
    const fds = this.drainFds();
    this.#start = 0;
    this.#end = 0;
    this.#consumed = 0;
    this.#received = 0;
    this.#state = State.Header;
    this.#error = null;
    return fds;
  }

  /** Takes every fd batch whose chunk ended before `messageEnd` (the offset just past this message). */
  #claimFds(messageEnd: number): number[] {
    let n = 0;
    while (n < this.#batches.length && (this.#batches[n] as FdBatch).at < messageEnd) n++;
    if (n === 0) return [];
    const claimed: number[] = [];
    for (const b of this.#batches.splice(0, n)) claimed.push(...b.fds);
    return claimed;
  }

  #checkHeader(): VhostUserProtocolError | null {
    const request = this.#request;
    const flags = this.#flags;
    const size = this.#size;
    const name = frontendRequestName(request);
    const value = { request, flags, size, fds: this.#fds.length };
    if ((flags & FLAG_VERSION_MASK) !== VHOST_USER_VERSION) {
      return new VhostUserProtocolError(
        'BAD_VERSION',
        `${name}: protocol version ${flags & FLAG_VERSION_MASK} in flags 0x${flags.toString(16)} (only ${VHOST_USER_VERSION} exists)`,
        value,
      );
    }
    if ((flags & ~FLAG_KNOWN_MASK) !== 0) {
      return new VhostUserProtocolError(
        'BAD_FLAGS',
        `${name}: undefined flag bits 0x${(flags & ~FLAG_KNOWN_MASK).toString(16)}`,
        value,
      );
    }
    if (size > MAX_PAYLOAD_SIZE) {
      return new VhostUserProtocolError(
        'PAYLOAD_TOO_LARGE',
        `${name}: payload of ${size} bytes exceeds the ${MAX_PAYLOAD_SIZE}-byte limit`,
        value,
      );
    }
    if (this.mode === 'replies') {
      if ((flags & FLAG_REPLY) === 0 || (flags & FLAG_NEED_REPLY) !== 0) {
        return new VhostUserProtocolError(
          'BAD_FLAGS',
          `reply to ${name}: flags 0x${flags.toString(16)} (a reply has REPLY and not NEED_REPLY)`,
          value,
        );
      }
      if (this.#fds.length > MAX_FDS_PER_MESSAGE) {
        return new VhostUserProtocolError(
          'WRONG_FD_COUNT',
          `reply to ${name}: ${this.#fds.length} fds (at most ${MAX_FDS_PER_MESSAGE})`,
          value,
        );
      }
      return null;
    }
    if ((flags & FLAG_REPLY) !== 0) {
      return new VhostUserProtocolError('BAD_FLAGS', `${name}: a request with the REPLY flag`, value);
    }
    const layout = FRONTEND_REQUEST_LAYOUTS.get(request);
    if (layout === undefined) {
      return new VhostUserProtocolError('UNKNOWN_REQUEST', `unknown request code ${request}`, value);
    }
    if (!payloadSizeMatches(layout.payload, size)) {
      return new VhostUserProtocolError(
        'BAD_PAYLOAD_SIZE',
        `${name}: payload of ${size} bytes (the layout is ${describePayloadRule(layout.payload)})`,
        value,
      );
    }
    const nfds = this.#fds.length;
    if (nfds < layout.minFds || nfds > layout.maxFds) {
      return new VhostUserProtocolError(
        'WRONG_FD_COUNT',
        `${name}: ${nfds} fds received (${layout.minFds === layout.maxFds ? `exactly ${layout.minFds}` : `${layout.minFds} to ${layout.maxFds}`} expected)`,
        value,
      );
    }
    return null;
  }

  #fail(error: VhostUserProtocolError): never {
    this.#state = State.Failed;
    this.#error = error;
    this.#orphans.push(...this.#fds);
    this.#fds = [];
    this.#start = 0;
    this.#end = 0;
    throw error;
  }

  /** Room for `n` more bytes: compact, then grow (doubling) if still short. */
  #reserve(n: number): void {
    if (this.#end + n <= this.#buf.length) return;
    const live = this.#end - this.#start;
    if (live + n <= this.#buf.length) {
      this.#buf.copyWithin(0, this.#start, this.#end);
    } else {
      let cap = this.#buf.length * 2;
      while (cap < live + n) cap *= 2;
      const next = new Uint8Array(cap);
      next.set(this.#buf.subarray(this.#start, this.#end));
      this.#buf = next;
      this.#view = new DataView(next.buffer);
    }
    this.#start = 0;
    this.#end = live;
  }
}
