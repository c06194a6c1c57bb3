import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { needEvent, ringAdd, ringDistance } from '../../src/virtio/ring-index.js';

/** The spec's definition, written with explicit u16 casts as in the C source it quotes. */
function specNeedEvent(event: number, next: number, old: number): boolean {
  const u16 = (x: number) => ((x % 65536) + 65536) % 65536;
  return u16(next - event - 1) < u16(next - old);
}

describe('ring index arithmetic', () => {
  test('wraps at 2^16', () => {
    assert.equal(ringAdd(0xffff, 1), 0);
    assert.equal(ringAdd(0xfffe, 5), 3);
    assert.equal(ringDistance(0xfffe, 2), 4);
    assert.equal(ringDistance(5, 5), 0);
  });

  test('needEvent: notify exactly when the event index is crossed', () => {
    assert.equal(needEvent(0, 1, 0), true, 'event 0, moved 0 → 1');
    assert.equal(needEvent(1, 1, 0), false, 'event 1 not yet passed');
    assert.equal(needEvent(5, 10, 0), true);
    assert.equal(needEvent(10, 10, 0), false);
    assert.equal(needEvent(0xffff, 0, 0xfffe), true, 'crossing across the wrap');
    assert.equal(needEvent(3, 3, 3), false, 'no movement, no event');
  });

  test('needEvent matches the spec formula', () => {
    const u16 = fc.integer({ min: 0, max: 0xffff });
    fc.assert(
      fc.property(u16, u16, u16, (e, n, o) => {
        assert.equal(needEvent(e, n, o), specNeedEvent(e, n, o));
      }),
    );
  });
});
