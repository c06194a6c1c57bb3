/**
 * `StreamLink`: the {@link NetBackend} half shared by the stream-socket and passt back ends — one connected
 * stream socket at a time carrying length-prefixed frames ({@link StreamFrameParser}), with no virtio_net_hdr.
 * Subclasses decide where the socket comes from (listen, connect, a socketpair to a child) and call
 * `adopt(socket)`; the link is up exactly while a socket is adopted.
 *
 * - Receive: frames are queued as views of the chunks the socket delivered (no copy) and copied once, into the
 *   guest's buffers, by `receive`. When more than `receiveQueueBytes` are queued the socket is paused (the peer
 *   sees TCP/unix back-pressure) and resumed when the queue is half drained: nothing is ever dropped for lack
 *   of room.
 * - Transmit: each frame is copied once behind its length prefix; writes made in one turn of the event loop go
 *   out in one writev (cork until the next tick). While the socket's buffer is over its high-water mark
 *   `transmit` returns false and `writable()` follows the drain.
 * - A framing error from the peer (zero or oversize length) ends that connection: the stream cannot be
 *   resynchronised. It is counted in `stats.framingErrors`.
 */
import type { Socket } from 'node:net';
import { NetBackendError, type NetBackend, type NetBackendEvents } from '../../devices/net/net-backend.js';
import {
  STREAM_FRAME_HEADER_BYTES,
  STREAM_FRAME_MAX_BYTES,
  StreamFrameParser,
  writeFrameHeader,
} from './stream-framing.js';

/** Default bytes of received frames queued before the socket is paused. */
export const STREAM_RECEIVE_QUEUE_BYTES = 1 << 20;
/** Queue entries consumed before the array is compacted. */
const QUEUE_COMPACT_AFTER = 1024;

export interface StreamLinkOptions {
  /** Largest frame accepted either way (default QEMU's 69632). */
  readonly maxFrame?: number;
  /** Received bytes queued before the socket is paused (default 1 MiB). */
  readonly receiveQueueBytes?: number;
  /** Where log lines go from the start (also settable later through `onLog`). */
  readonly onLog?: (line: string) => void;
}

export interface StreamLinkStats {
  framesReceived: number;
  bytesReceived: number;
  framesTransmitted: number;
  bytesTransmitted: number;
  /** Frames longer than the guest's buffers (consumed, not delivered). */
  receiveTooLong: number;
  /** Connections ended because the peer broke the framing. */
  framingErrors: number;
  /** Connections adopted. */
  connections: number;
}

export abstract class StreamLink implements NetBackend {
  readonly vnetHdr = false;
  readonly maxFrame: number;
  readonly receiveQueueBytes: number;
  readonly stats: StreamLinkStats = {
    framesReceived: 0,
    bytesReceived: 0,
    framesTransmitted: 0,
    bytesTransmitted: 0,
    receiveTooLong: 0,
    framingErrors: 0,
    connections: 0,
  };
  /** Called with a line when something worth a log happens (framing error, peer gone). */
  onLog: ((line: string) => void) | undefined;

  #events: NetBackendEvents | undefined;
  #socket: Socket | undefined;
  readonly #parser: StreamFrameParser;
  #queue: Uint8Array[] = [];
  #queueHead = 0;
  #queuedBytes = 0;
  #socketPaused = false;
  /** The device saw `receive` return 0 (or has not been told yet): the next frame must be announced. */
  #announce = true;
  #wantWritable = false;
  #corked = false;
  protected closed = false;

  protected constructor(options: StreamLinkOptions = {}) {
    this.maxFrame = options.maxFrame ?? STREAM_FRAME_MAX_BYTES;
    this.receiveQueueBytes = options.receiveQueueBytes ?? STREAM_RECEIVE_QUEUE_BYTES;
    this.#parser = new StreamFrameParser(this.maxFrame);
    this.onLog = options.onLog;
  }

  get linkUp(): boolean {
    return this.#socket !== undefined;
  }

  /** Frames waiting for `receive`. */
  get queuedFrames(): number {
    return this.#queue.length - this.#queueHead;
  }

  start(events: NetBackendEvents): void {
    this.#events = events;
    if (this.queuedFrames > 0) this.#notifyReadable();
  }

  transmit(bufs: readonly Uint8Array[]): boolean {
    const socket = this.#socket;
    if (socket === undefined) throw new NetBackendError('LINK_DOWN', 'stream link has no peer', null);
    let length = 0;
    for (const b of bufs) length += b.length;
    if (length > this.maxFrame) {
      throw new NetBackendError(
        'FRAME_TOO_LONG',
        `frame of ${length} bytes exceeds the stream limit of ${this.maxFrame}`,
        length,
      );
    }
    if (socket.writableNeedDrain) {
      this.#wantWritable = true;
      return false;
    }
    const out = Buffer.allocUnsafe(STREAM_FRAME_HEADER_BYTES + length);
    writeFrameHeader(out, 0, length);
    let pos = STREAM_FRAME_HEADER_BYTES;
    for (const b of bufs) {
      out.set(b, pos);
      pos += b.length;
    }
    if (!this.#corked) {
      this.#corked = true;
      socket.cork();
      process.nextTick(() => {
        this.#corked = false;
        socket.uncork();
      });
    }
    socket.write(out);
    this.stats.framesTransmitted++;
    this.stats.bytesTransmitted += length;
    return true;
  }

  receive(bufs: readonly Uint8Array[]): number {
    const frame = this.#queue[this.#queueHead];
    if (frame === undefined) {
      this.#announce = true;
      return 0;
    }
    this.#queue[this.#queueHead] = EMPTY;
    this.#queueHead++;
    this.#queuedBytes -= frame.length;
    if (this.#queueHead >= QUEUE_COMPACT_AFTER && this.#queueHead * 2 >= this.#queue.length) {
      this.#queue = this.#queue.slice(this.#queueHead);
      this.#queueHead = 0;
    }
    if (this.#socketPaused && this.#queuedBytes <= this.receiveQueueBytes / 2) {
      this.#socketPaused = false;
      this.#socket?.resume();
    }
    let room = 0;
    for (const b of bufs) room += b.length;
    if (room < frame.length) {
      this.stats.receiveTooLong++;
      return -1;
    }
    let pos = 0;
    for (const b of bufs) {
      if (pos === frame.length) break;
      const n = Math.min(b.length, frame.length - pos);
      b.set(frame.subarray(pos, pos + n));
      pos += n;
    }
    return frame.length;
  }

  pendingLength(): number {
    const length = this.#queue[this.#queueHead]?.length ?? 0;
    // Found empty: the next frame is announced (the device stops at a 0 here without calling receive).
    if (length === 0) this.#announce = true;
    return length;
  }

  pauseReceive(): void {
    // Frames keep queueing up to receiveQueueBytes; then the socket itself is paused.
  }

  resumeReceive(): void {
    this.#announce = true;
    if (this.queuedFrames > 0) {
      queueMicrotask(() => {
        if (this.queuedFrames > 0) this.#notifyReadable();
      });
    }
  }

  close(): Promise<void> {
    this.closed = true;
    this.detach();
    return Promise.resolve();
  }

  /** Makes `socket` the link's connection (the link goes up). Refuses (false) while one is adopted. */
  protected adopt(socket: Socket): boolean {
    if (this.#socket !== undefined || this.closed) {
      socket.destroy();
      return false;
    }
    this.#socket = socket;
    this.#parser.reset();
    this.stats.connections++;
    socket.on('data', (chunk: Buffer) => {
      if (this.#socket === socket) this.#onData(socket, chunk);
    });
    socket.on('drain', () => {
      if (this.#socket === socket) this.#onDrain();
    });
    socket.on('error', (e: Error) => {
      this.onLog?.(`stream peer error: ${e.message}`);
    });
    socket.on('close', () => {
      if (this.#socket !== socket) return;
      this.detach();
    });
    this.#events?.linkChange?.(true);
    return true;
  }

  /** Ends the current connection, if any (the link goes down); queued received frames stay deliverable. */
  protected detach(): void {
    const socket = this.#socket;
    if (socket === undefined) return;
    this.#socket = undefined;
    socket.destroy();
    if (this.#socketPaused) this.#socketPaused = false;
    this.onDetach();
    this.#events?.linkChange?.(false);
    // A device waiting for room retries and finds the link down.
    this.#onDrain();
  }

  /** Hook: the connection ended (a client reconnects from here). */
  protected onDetach(): void {
    // Nothing by default.
  }

  #onData(socket: Socket, chunk: Buffer): void {
    const before = this.queuedFrames;
    try {
      this.#parser.push(chunk, (frame) => {
        this.#queue.push(frame);
        this.#queuedBytes += frame.length;
        this.stats.framesReceived++;
        this.stats.bytesReceived += frame.length;
      });
    } catch (e) {
      this.stats.framingErrors++;
      this.onLog?.(`stream peer broke the framing, dropping the connection: ${(e as Error).message}`);
      this.detach();
    }
    if (this.#queuedBytes > this.receiveQueueBytes && !this.#socketPaused && this.#socket === socket) {
      this.#socketPaused = true;
      socket.pause();
    }
    if (this.queuedFrames > before) this.#notifyReadable();
  }

  #notifyReadable(): void {
    if (!this.#announce || this.#events === undefined) return;
    this.#announce = false;
    this.#events.readable();
  }

  #onDrain(): void {
    if (!this.#wantWritable) return;
    this.#wantWritable = false;
    this.#events?.writable();
  }
}

const EMPTY = new Uint8Array(0);
