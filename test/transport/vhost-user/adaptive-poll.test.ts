import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  AdaptivePoll,
  POLL_GROW_START_NS,
  POLL_MAX_SPIN_NS,
} from '../../../src/transport/vhost-user/adaptive-poll.js';
import {
  VhostUserExport,
  VhostUserExportError,
} from '../../../src/transport/vhost-user/vhost-user-export.js';

/** A clock (ms) that moves only when told, plus `tick` ms on every read (a spin must see time pass). */
function fakeClock(tick: number): { now: () => number; advance: (ms: number) => void } {
  let t = 1000;
  return {
    now: () => (t += tick),
    advance: (ms) => {
      t += ms;
    },
  };
}

const US = 1 / 1000; // one microsecond in ms

/** A spin that finds nothing: the worker goes back to its event loop. */
function goIdle(poll: AdaptivePoll): void {
  poll.spin(
    () => false,
    () => {},
  );
}

describe('AdaptivePoll', () => {
  test('maxNs 0 never polls', () => {
    const clock = fakeClock(US);
    const poll = new AdaptivePoll(0, clock.now);
    for (let i = 0; i < 5; i++) {
      poll.woke();
      poll.spin(
        () => assert.fail('polled with polling off'),
        () => assert.fail('served with polling off'),
      );
    }
    assert.equal(poll.windowNs, 0);
  });

  test('wake-ups soon after the work grow the window by doubling up to maxNs; a miss at maxNs stops it', () => {
    const clock = fakeClock(US);
    const poll = new AdaptivePoll(100_000, clock.now);
    goIdle(poll);
    const windows: number[] = [];
    for (let i = 0; i < 7; i++) {
      clock.advance(10 * US); // the next kick comes 10 µs after the worker went idle (the window included)
      poll.woke();
      windows.push(poll.windowNs);
      goIdle(poll);
    }
    // At 100 µs the wait (window + 10 µs) is beyond maxNs: polling could not have caught it, so it stops.
    assert.deepEqual(windows, [POLL_GROW_START_NS, 8_000, 16_000, 32_000, 64_000, 100_000, 0]);
  });

  test('a wait longer than maxNs turns polling off until waits are short again', () => {
    const clock = fakeClock(US);
    const poll = new AdaptivePoll(50_000, clock.now);
    goIdle(poll);
    clock.advance(10 * US);
    poll.woke();
    assert.equal(poll.windowNs, POLL_GROW_START_NS);
    goIdle(poll);
    clock.advance(1); // 1 ms idle: far beyond maxNs
    poll.woke();
    assert.equal(poll.windowNs, 0);
  });

  test('requests found while polling are served, then the spin ends after an empty window', () => {
    const clock = fakeClock(US);
    const poll = new AdaptivePoll(100_000, clock.now);
    goIdle(poll);
    poll.woke(); // 1 µs later: the window opens at 4 µs
    let available = 3;
    let served = 0;
    let looks = 0;
    poll.spin(
      () => {
        looks++;
        return available > 0;
      },
      () => {
        available--;
        served++;
      },
    );
    assert.equal(served, 3);
    assert.equal(poll.stats.hits, 3);
    assert.equal(poll.stats.misses, 1);
    // Each look costs 1 µs on this clock: the empty window after the last request lasted about 4 µs.
    assert.ok(looks >= 3 + 3 && looks <= 3 + 6, `looks ${looks}`);
  });

  test('a stream of requests is cut after POLL_MAX_SPIN_NS so the event loop runs', () => {
    const clock = fakeClock(US);
    const poll = new AdaptivePoll(100_000, clock.now);
    goIdle(poll);
    poll.woke();
    let served = 0;
    poll.spin(
      () => true,
      () => {
        served++;
        clock.advance(10 * US);
      },
    );
    const perRequestNs = 11_000; // 10 µs of work + 1 µs per clock read
    assert.ok(served > 0 && served <= POLL_MAX_SPIN_NS / perRequestNs + 2, `served ${served}`);
    assert.equal(poll.stats.misses, 0);
  });
});

describe('VhostUserExport pollMaxNs', () => {
  for (const bad of [-1, 1.5, Number.NaN]) {
    test(`refuses ${bad} before starting a worker`, async () => {
      await assert.rejects(
        VhostUserExport.start({
          socketPath: '/nonexistent/never-bound.sock',
          device: { module: 'file:///nonexistent.js', name: 'none', args: null },
          pollMaxNs: bad,
        }),
        (e: unknown) => e instanceof VhostUserExportError && e.code === 'EXPORT_BAD_OPTION',
      );
    });
  }
});
