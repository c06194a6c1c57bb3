// The stream framing parser against an independent encoder (Node's Buffer.writeUInt32BE): any sequence of frames
// cut at every byte position, and in random chunkings, decodes to the same frames; zero and oversize lengths are
// typed errors at exactly the frame where they occur, after every good frame before it.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import {
  STREAM_FRAME_MAX_BYTES,
  StreamFrameParser,
  StreamFramingError,
  writeFrameHeader,
} from '../../../src/backends/net/stream-framing.js';

/** Independent encoder: length prefix with Buffer's own big-endian writer. */
function encode(frames: readonly Uint8Array[]): Buffer {
  return Buffer.concat(
    frames.flatMap((f) => {
      const h = Buffer.alloc(4);
      h.writeUInt32BE(f.length);
      return [h, Buffer.from(f)];
    }),
  );
}

function decode(parser: StreamFrameParser, chunks: readonly Uint8Array[]): Buffer[] {
  const out: Buffer[] = [];
  for (const c of chunks) parser.push(c, (f) => out.push(Buffer.from(f)));
  return out;
}

const frameArb = fc.uint8Array({ minLength: 1, maxLength: 300 });

describe('StreamFrameParser', () => {
  test('every split point of a three-frame stream decodes the same frames', () => {
    const frames = [
      Uint8Array.of(1),
      new Uint8Array(60).fill(7),
      Uint8Array.from({ length: 1514 }, (_, i) => i & 0xff),
    ];
    const wire = encode(frames);
    for (let a = 0; a <= wire.length; a++) {
      const parser = new StreamFrameParser();
      const got = decode(parser, [wire.subarray(0, a), wire.subarray(a)]);
      assert.deepEqual(
        got,
        frames.map((f) => Buffer.from(f)),
        `split at ${a}`,
      );
      assert.equal(parser.buffered, 0);
    }
    // And byte by byte.
    const parser = new StreamFrameParser();
    const got = decode(
      parser,
      [...wire].map((b) => Uint8Array.of(b)),
    );
    assert.deepEqual(
      got,
      frames.map((f) => Buffer.from(f)),
    );
  });

  test('property: any frames, any chunking', () => {
    fc.assert(
      fc.property(
        fc.array(frameArb, { maxLength: 12 }),
        fc.array(fc.nat(), { maxLength: 20 }),
        (frames, cuts) => {
          const wire = encode(frames);
          const points = [...new Set(cuts.map((c) => (wire.length === 0 ? 0 : c % (wire.length + 1))))].sort(
            (x, y) => x - y,
          );
          const chunks: Uint8Array[] = [];
          let prev = 0;
          for (const p of points) {
            chunks.push(wire.subarray(prev, p));
            prev = p;
          }
          chunks.push(wire.subarray(prev));
          const parser = new StreamFrameParser();
          assert.deepEqual(
            decode(parser, chunks),
            frames.map((f) => Buffer.from(f)),
          );
          assert.equal(parser.buffered, 0);
        },
      ),
    );
  });

  test('writeFrameHeader matches the big-endian encoder', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 0xffff_ffff }), fc.nat(8), (n, off) => {
        const out = new Uint8Array(off + 4);
        writeFrameHeader(out, off, n);
        const ref = Buffer.alloc(4);
        ref.writeUInt32BE(n);
        assert.deepEqual(Buffer.from(out.subarray(off)), ref);
      }),
    );
  });

  for (const [name, length, code] of [
    ['0', 0, 'FRAME_ZERO_LENGTH'],
    ['max + 1', STREAM_FRAME_MAX_BYTES + 1, 'FRAME_TOO_LONG'],
    ['2^32-1', 0xffff_ffff, 'FRAME_TOO_LONG'],
  ] as const) {
    test(`a frame of length ${name} is a typed error at any split, after the good frames before it`, () => {
      const good = [new Uint8Array(64).fill(1), new Uint8Array(3).fill(2)];
      const bad = Buffer.alloc(4);
      bad.writeUInt32BE(length);
      const wire = Buffer.concat([encode(good), bad, Buffer.alloc(16)]);
      for (let a = 0; a <= wire.length; a++) {
        const parser = new StreamFrameParser();
        const got: Buffer[] = [];
        let error: unknown;
        try {
          for (const c of [wire.subarray(0, a), wire.subarray(a)])
            parser.push(c, (f) => got.push(Buffer.from(f)));
        } catch (e) {
          error = e;
        }
        assert.ok(error instanceof StreamFramingError, `split ${a}: ${String(error)}`);
        assert.equal(error.code, code);
        assert.equal(error.value, length);
        assert.deepEqual(
          got,
          good.map((f) => Buffer.from(f)),
        );
        // The stream cannot be resynchronised: the parser stays failed until reset.
        assert.throws(
          () => {
            parser.push(Uint8Array.of(0, 0, 0, 1, 9), () => undefined);
          },
          (e: unknown) => e instanceof StreamFramingError && e.code === 'PARSER_FAILED',
        );
        parser.reset();
        assert.deepEqual(
          decode(parser, [encode(good)]),
          good.map((f) => Buffer.from(f)),
        );
      }
    });
  }

  test('a custom limit applies to the frame, not the prefix', () => {
    const parser = new StreamFrameParser(100);
    assert.equal(decode(parser, [encode([new Uint8Array(100)])]).length, 1);
    assert.throws(
      () => decode(parser, [encode([new Uint8Array(101)])]),
      (e: unknown) => e instanceof StreamFramingError && e.code === 'FRAME_TOO_LONG' && e.value === 101,
    );
    assert.throws(() => new StreamFrameParser(0), RangeError);
  });

  test('a frame inside one chunk is a view of that chunk (no copy)', () => {
    const wire = encode([new Uint8Array(10).fill(5)]);
    let view: Uint8Array | undefined;
    new StreamFrameParser().push(wire, (f) => (view = f));
    assert.equal(view?.buffer, wire.buffer);
  });
});
