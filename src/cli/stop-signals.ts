/**
 * "Stop now" for the long-running commands: SIGINT and SIGTERM (or an AbortSignal, for tests and embedding).
 * The first signal asks for a clean stop; a second one while stopping exits at once — unless it comes within
 * {@link STOP_REPEAT_GRACE_MS} of the first: that is the same request delivered twice (coreutils `timeout`
 * signals its child and then its own process group, a terminal's Ctrl-C or `kill -- -PGID` reaches every process
 * of a group), not someone insisting.
 */

/** A repeated stop signal this soon after the first is the same request, not a demand to exit at once. */
export const STOP_REPEAT_GRACE_MS = 500;
export interface StopSource {
  /** Resolves with the signal's name when a stop is asked for. */
  readonly requested: Promise<string>;
  /** Whether a stop was asked for. */
  readonly isRequested: boolean;
  /** Removes the signal handlers. */
  dispose(): void;
}

export interface StopSourceOptions {
  /** Listen to SIGINT/SIGTERM (default true). */
  readonly processSignals?: boolean;
  readonly signal?: AbortSignal;
  /** Called on a second signal while stopping (default: process.exit(130)). */
  readonly onForce?: (signal: string) => void;
  /** A clock in ms (default performance.now; tests pass their own). */
  readonly now?: () => number;
}

export function stopSource(options: StopSourceOptions = {}): StopSource {
  let requested = false;
  let requestedAt = 0;
  const now = options.now ?? (() => performance.now());
  let resolveRequested!: (signal: string) => void;
  const promise = new Promise<string>((resolve) => {
    resolveRequested = resolve;
  });
  const onForce =
    options.onForce ??
    ((signal: string) => {
      process.stderr.write(`ringvm: ${signal} again: exiting without cleaning up\n`);
      process.exit(130);
    });
  const request = (signal: string): void => {
    if (requested) {
      if (now() - requestedAt >= STOP_REPEAT_GRACE_MS) onForce(signal);
      return;
    }
    requested = true;
    requestedAt = now();
    resolveRequested(signal);
  };
  const onSigint = (): void => {
    request('SIGINT');
  };
  const onSigterm = (): void => {
    request('SIGTERM');
  };
  const onAbort = (): void => {
    request('abort');
  };
  const processSignals = options.processSignals ?? true;
  if (processSignals) {
    process.on('SIGINT', onSigint);
    process.on('SIGTERM', onSigterm);
  }
  if (options.signal?.aborted === true) request('abort');
  else options.signal?.addEventListener('abort', onAbort, { once: true });
  return {
    requested: promise,
    get isRequested() {
      return requested;
    },
    dispose() {
      if (processSignals) {
        process.off('SIGINT', onSigint);
        process.off('SIGTERM', onSigterm);
      }
      options.signal?.removeEventListener('abort', onAbort);
    },
  };
}
