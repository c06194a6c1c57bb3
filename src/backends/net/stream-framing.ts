/**
 * The frame format of QEMU's `-netdev stream` and `-netdev socket` (net/stream.c, net/socket.c) and of passt's
 * qemu-mode unix socket (tap.c): every Ethernet frame is preceded by its length as a 4-byte big-endian integer,
 * with no virtio_net_hdr. `StreamFrameParser` is the incremental decoder (bytes arrive split anywhere) and
 * `writeFrameHeader` the encoder.
 *
 * A zero length, or a length above the parser's limit, cannot be resynchronised (the stream has no markers): the
 * parser throws {@link StreamFramingError} and stays failed; the owner drops the connection.
 *
 * ```ts
 * const parser = new StreamFrameParser();
 * parser.push(chunk, (frame) => deliver(frame)); // frame aliases `chunk` or the parser's buffer: copy to keep
 * ```
 */
import { VirtioError } from '../../virtio/errors.js';

/** Bytes of the length prefix. */
export const STREAM_FRAME_HEADER_BYTES = 4;
/**
 * Largest frame QEMU's stream netdev sends or accepts (NET_BUFSIZE: 4096 + 65536), the default limit: an MTU of
 * 65535 plus the Ethernet header fits.
 */
export const STREAM_FRAME_MAX_BYTES = 4096 + 65536;

export type StreamFramingErrorCode = 'FRAME_ZERO_LENGTH' | 'FRAME_TOO_LONG' | 'PARSER_FAILED';

/** The peer sent a length prefix that cannot be a frame; `value` is the length. */
export class StreamFramingError extends VirtioError<StreamFramingErrorCode> {}

/** Writes the 4-byte big-endian length prefix of a `length`-byte frame into `out` at `offset`. */
export function writeFrameHeader(out: Uint8Array, offset: number, length: number): void {
  new DataView(out.buffer, out.byteOffset + offset, STREAM_FRAME_HEADER_BYTES).setUint32(0, length, false);
}

/** Incremental decoder of length-prefixed frames. */
export class StreamFrameParser {
  readonly maxFrame: number;
  /** The header bytes seen so far (a prefix split across chunks). */
  readonly #header = new Uint8Array(STREAM_FRAME_HEADER_BYTES);
  #headerFill = 0;
  /** The frame being assembled across chunks, or null while reading a header. */
  #partial: Uint8Array | null = null;
  #partialFill = 0;
  #failed: StreamFramingError | null = null;

  constructor(maxFrame: number = STREAM_FRAME_MAX_BYTES) {
    if (!Number.isInteger(maxFrame) || maxFrame < 1 || maxFrame > 0xffff_ffff) {
      throw new RangeError(`maxFrame must be an integer in 1..2^32-1, got ${maxFrame}`);
    }
    this.maxFrame = maxFrame;
  }

  /** Bytes of an incomplete frame (or header) held since the last complete frame. */
  get buffered(): number {
    return this.#headerFill + this.#partialFill;
  }

  /**
   * Decodes `chunk`, calling `onFrame` once per complete frame in order. A frame wholly inside `chunk` is passed
   * as a view of `chunk`; one split across chunks as a view of a buffer the parser allocated for it. Either way the
   * callee must copy what it keeps beyond the call. Throws {@link StreamFramingError} at a bad length (frames
   * before it were delivered); every later call throws PARSER_FAILED.
   */
  push(chunk: Uint8Array, onFrame: (frame: Uint8Array) => void): void {
    if (this.#failed !== null) {
      throw new StreamFramingError(
        'PARSER_FAILED',
        `stream framing failed earlier: ${this.#failed.message}`,
        0,
        {
          cause: this.#failed,
        },
      );
    }
    let pos = 0;
    const end = chunk.length;
    while (pos < end) {
      const partial = this.#partial;
      if (partial !== null) {
        const take = Math.min(partial.length - this.#partialFill, end - pos);
        partial.set(chunk.subarray(pos, pos + take), this.#partialFill);
        this.#partialFill += take;
        pos += take;
        if (this.#partialFill === partial.length) {
          this.#partial = null;
          this.#partialFill = 0;
          onFrame(partial);
        }
        continue;
      }
      let length: number;
      if (this.#headerFill === 0 && end - pos >= STREAM_FRAME_HEADER_BYTES) {
        length =
          ((chunk[pos] as number) * 0x100_0000 +
            (((chunk[pos + 1] as number) << 16) |
              ((chunk[pos + 2] as number) << 8) |
              (chunk[pos + 3] as number))) >>>
          0;
        pos += STREAM_FRAME_HEADER_BYTES;
      } else {
        const take = Math.min(STREAM_FRAME_HEADER_BYTES - this.#headerFill, end - pos);
        this.#header.set(chunk.subarray(pos, pos + take), this.#headerFill);
        this.#headerFill += take;
        pos += take;
        if (this.#headerFill < STREAM_FRAME_HEADER_BYTES) return;
        this.#headerFill = 0;
        length = new DataView(this.#header.buffer).getUint32(0, false);
      }
      this.#check(length);
      if (end - pos >= length) {
        const frame = chunk.subarray(pos, pos + length);
        pos += length;
        onFrame(frame);
      } else {
        this.#partial = new Uint8Array(length);
        this.#partialFill = 0;
      }
    }
  }

  /** Forgets any partial frame and a failure (a new connection starts a new stream). */
  reset(): void {
    this.#headerFill = 0;
    this.#partial = null;
    this.#partialFill = 0;
    this.#failed = null;
  }

  #check(length: number): void {
    if (length === 0) {
      this.#failed = new StreamFramingError('FRAME_ZERO_LENGTH', 'stream frame of length 0', length);
    } else if (length > this.maxFrame) {
      this.#failed = new StreamFramingError(
        'FRAME_TOO_LONG',
        `stream frame of ${length} bytes exceeds the limit of ${this.maxFrame}`,
        length,
      );
    } else {
      return;
    }
    throw this.#failed;
  }
}
