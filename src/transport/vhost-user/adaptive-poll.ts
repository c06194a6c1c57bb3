/**
 * Adaptive polling before sleeping, as QEMU's iothreads (`poll-max-ns`) and SPDK do: after serving a kick the
 * export worker keeps looking at the ring for a while instead of going back to epoll at once, so a request the
 * driver makes available soon after costs no wake-up of this thread (on a virtual CPU that halts when idle, the
 * wake-up is the largest part of a round trip). The window tunes itself from how long each wait really was, as
 * QEMU's aio_poll does: a wake-up that came after sleeping, but within `maxNs` of the end of the work, doubles
 * the window (from {@link POLL_GROW_START_NS}); a wait longer than `maxNs` drops it to 0 (polling would only burn
 * the CPU); a request found while polling leaves it as it is. `maxNs` 0 turns polling off.
 */
import { performance } from 'node:perf_hooks';

/** The first window after a miss, as QEMU's 4 µs. */
export const POLL_GROW_START_NS = 4_000;
/**
 * Longest time one spin keeps the worker's own event loop waiting while requests keep coming (the vhost-user
 * socket, asynchronous I/O completions and the stop message are served between spins).
 */
export const POLL_MAX_SPIN_NS = 2_000_000;

const NS_PER_MS = 1e6;

export interface PollStats {
  /** Requests found by polling (each one a wake-up saved). */
  hits: number;
  /** Spins that ended without finding anything. */
  misses: number;
  /** Wake-ups from sleep that the window was tuned on. */
  wakes: number;
}

export class AdaptivePoll {
  readonly maxNs: number;
  readonly stats: PollStats = { hits: 0, misses: 0, wakes: 0 };
  #windowNs = 0;
  /** When the worker last went back to its event loop (ms, performance.now), 0 before the first spin. */
  #idleSince = 0;
  readonly #now: () => number;

  /** `now`: a clock in milliseconds (default performance.now; tests pass their own). */
  constructor(maxNs: number, now: () => number = () => performance.now()) {
    this.maxNs = maxNs;
    this.#now = now;
  }

  /** The current window (ns). */
  get windowNs(): number {
    return this.#windowNs;
  }

  /** A kick woke the worker from its event loop: tune the window on how long it waited (window included). */
  woke(): void {
    if (this.maxNs === 0 || this.#idleSince === 0) return;
    this.stats.wakes++;
    const waitedNs = (this.#now() - this.#idleSince) * NS_PER_MS + this.#windowNs;
    if (waitedNs > this.maxNs) this.#windowNs = 0;
    else if (this.#windowNs < this.maxNs)
      this.#windowNs = Math.min(this.maxNs, this.#windowNs === 0 ? POLL_GROW_START_NS : this.#windowNs * 2);
  }

  /**
   * After work: while `ready()` turns true within the window, `serve()` and look again; returns when a whole
   * window passed with nothing to do, after {@link POLL_MAX_SPIN_NS} of serving, or as soon as `blocked()`
   * (the device waits for host I/O that completes on the event loop this spin would hold up).
   */
  spin(ready: () => boolean, serve: () => void, blocked: () => boolean = () => false): void {
    const windowMs = this.#windowNs / NS_PER_MS;
    if (windowMs > 0 && !blocked()) {
      const start = this.#now();
      const end = start + POLL_MAX_SPIN_NS / NS_PER_MS;
      let deadline = start + windowMs;
      for (;;) {
        if (ready()) {
          this.stats.hits++;
          serve();
          const t = this.#now();
          if (t >= end || blocked()) break;
          deadline = t + windowMs;
          continue;
        }
        if (this.#now() >= deadline) {
          this.stats.misses++;
          break;
        }
      }
    }
    this.#idleSince = this.#now();
  }
}
