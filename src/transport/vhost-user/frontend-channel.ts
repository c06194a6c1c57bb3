/**
 * The front end's side of one vhost-user connection: requests out (with their fds, one sendmsg each), replies in
 * (read with the parser in `replies` mode when the socket is readable, on this thread's event loop).
 *
 * Requests are written as they are made and their replies are matched in order (the back end answers requests
 * one at a time, in the order received). A request either has a reply body (GET_*), an acknowledgement
 * (NEED_REPLY, when REPLY_ACK was negotiated: a u64, 0 = success), or nothing.
 *
 * The socket stays blocking: it is read only when it is readable (one recvmsg per readiness event, so the read
 * never blocks), and requests are at most a few hundred bytes, far below the socket buffer.
 *
 * When the back end hangs up (end of stream, a socket error, a malformed reply) every pending call rejects with a
 * {@link VhostUserFrontendError} `DISCONNECTED` (or `BAD_REPLY`), so do all later calls, and `onHangUp` runs once.
 */
import { closeFd, recvWithFds, sendWithFds, watchReadable, type FdWatch } from '../../sys/index.js';
import { VhostUserFrontendError } from './frontend-errors.js';
import { VhostUserMessageParser, type VhostUserMessage } from './message-parser.js';
import { encodeRequest } from './message-writer.js';
import { decodeU64 } from './payloads.js';
import { U64_SIZE, frontendRequestName } from './protocol.js';

/** What a request waits for. */
export type ReplyKind = 'none' | 'body' | 'ack';

interface Waiter {
  readonly request: number;
  readonly kind: ReplyKind;
  readonly resolve: (m: VhostUserMessage) => void;
  readonly reject: (e: Error) => void;
  /** The reply deadline (with a reply timeout). */
  timer: ReturnType<typeof setTimeout> | undefined;
}

const RECV_BYTES = 4096;

export class FrontendChannel {
  readonly fd: number;
  readonly #parser = new VhostUserMessageParser({ mode: 'replies' });
  readonly #buf = new Uint8Array(RECV_BYTES);
  readonly #waiters: Waiter[] = [];
  readonly #onHangUp: (error: VhostUserFrontendError) => void;
  readonly #location: string;
  readonly #replyTimeoutMs: number | undefined;
  #watch: FdWatch | undefined;
  #error: VhostUserFrontendError | undefined;

  /** `replyTimeoutMs`: how long a reply may take before the connection is dropped (REPLY_TIMEOUT); none: forever. */
  constructor(
    fd: number,
    location: string,
    onHangUp: (error: VhostUserFrontendError) => void,
    replyTimeoutMs?: number,
  ) {
    this.fd = fd;
    this.#location = location;
    this.#onHangUp = onHangUp;
    this.#replyTimeoutMs = replyTimeoutMs;
    this.#watch = watchReadable(fd, () => {
      this.#onReadable();
    });
  }

  /** Where the channel goes (`vhost-user:PATH`), for messages. */
  get location(): string {
    return this.#location;
  }

  /** Why the channel is down, or undefined while it is up. */
  get error(): VhostUserFrontendError | undefined {
    return this.#error;
  }

  /**
   * Sends a request and resolves with its reply (`body`), or after its acknowledgement (`ack`, rejecting with
   * `REQUEST_REFUSED` when nonzero), or at once (`none`, resolving null).
   */
  call(
    request: number,
    payload: Uint8Array | undefined,
    kind: ReplyKind,
    fds: readonly number[] = [],
  ): Promise<VhostUserMessage | null> {
    if (this.#error !== undefined) return Promise.reject(this.#error);
    const bytes = encodeRequest(request, payload, kind === 'ack');
    try {
      this.#send(bytes, fds);
    } catch (e) {
      const error = this.#fail(
        'DISCONNECTED',
        `${this.#location}: sending ${frontendRequestName(request)} failed: ${e instanceof Error ? e.message : String(e)}`,
        e,
      );
      return Promise.reject(error);
    }
    if (kind === 'none') return Promise.resolve(null);
    return new Promise<VhostUserMessage>((resolve, reject) => {
      const waiter: Waiter = { request, kind, resolve, reject, timer: undefined };
      const ms = this.#replyTimeoutMs;
      if (ms !== undefined) {
        // Replies come in order, so a late one leaves the stream unusable: the whole connection goes.
        waiter.timer = setTimeout(() => {
          this.#fail(
            'REPLY_TIMEOUT',
            `${this.#location}: no reply to ${frontendRequestName(request)} within ${ms} ms`,
            undefined,
          );
        }, ms);
      }
      this.#waiters.push(waiter);
    }).then((m) => {
      if (kind !== 'ack') return m;
      const status = m.payload.length === U64_SIZE ? decodeU64(m.payload) : -1n;
      if (status !== 0n) {
        throw new VhostUserFrontendError(
          'REQUEST_REFUSED',
          `${this.#location}: the back end refused ${frontendRequestName(request)} (status ${status})`,
          request,
        );
      }
      return m;
    });
  }

  /** Closes the connection: pending calls reject with `CLOSED`. Idempotent. */
  close(): void {
    if (this.#error === undefined) {
      this.#fail('CLOSED', `${this.#location}: the front end was closed`, undefined, false);
    }
  }

  #send(bytes: Uint8Array, fds: readonly number[]): void {
    let sent = sendWithFds(this.fd, bytes, fds);
    while (sent < bytes.length) {
      // A blocking socket returns short only when a signal interrupted it: send the rest, without the fds.
      const n = sendWithFds(this.fd, bytes.subarray(Math.max(sent, 0)));
      sent = Math.max(sent, 0) + n;
    }
  }

  #onReadable(): void {
    if (this.#error !== undefined) return;
    let got;
    try {
      got = recvWithFds(this.fd, this.#buf, 8);
    } catch (e) {
      this.#fail('DISCONNECTED', `${this.#location}: the connection failed: ${(e as Error).message}`, e);
      return;
    }
    if (got.bytes === 0) {
      for (const fd of got.fds) closeFd(fd);
      this.#fail('DISCONNECTED', `${this.#location}: the back end hung up`, undefined);
      return;
    }
    if (got.bytes < 0) return;
    this.#parser.push(this.#buf.subarray(0, got.bytes), got.fds);
    try {
      for (let m = this.#parser.next(); m !== null; m = this.#parser.next()) this.#reply(m);
    } catch (e) {
      // #fail keeps the first error when #reply already failed the channel.
      this.#fail('BAD_REPLY', `${this.#location}: ${(e as Error).message}`, e);
    }
  }

  #reply(m: VhostUserMessage): void {
    for (const fd of m.fds) closeFd(fd); // no reply this front end asks for carries fds
    const waiter = this.#waiters.shift();
    if (waiter?.timer !== undefined) clearTimeout(waiter.timer);
    if (waiter === undefined) {
      this.#fail('BAD_REPLY', `${this.#location}: an unsolicited ${frontendRequestName(m.request)} reply`, m);
      return;
    }
    if (m.request !== waiter.request) {
      const error = this.#fail(
        'BAD_REPLY',
        `${this.#location}: a ${frontendRequestName(m.request)} reply to ${frontendRequestName(waiter.request)}`,
        m,
      );
      waiter.reject(error);
      return;
    }
    waiter.resolve(m);
  }

  #fail(
    code: 'DISCONNECTED' | 'BAD_REPLY' | 'CLOSED' | 'REPLY_TIMEOUT',
    message: string,
    cause: unknown,
    notify = true,
  ): VhostUserFrontendError {
    if (this.#error !== undefined) return this.#error;
    const error = new VhostUserFrontendError(
      code,
      message,
      this.#location,
      cause === undefined ? undefined : { cause },
    );
    this.#error = error;
    this.#watch?.close();
    this.#watch = undefined;
    for (const fd of this.#parser.drainFds()) closeFd(fd);
    try {
      closeFd(this.fd);
    } catch {
      // already gone
    }
    for (const w of this.#waiters.splice(0)) {
      if (w.timer !== undefined) clearTimeout(w.timer);
      w.reject(error);
    }
    if (notify) this.#onHangUp(error);
    return error;
  }
}
