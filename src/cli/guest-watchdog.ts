/**
 * What `ringvm run` leaves behind if it is killed outright (SIGKILL, the OOM killer, a crash in native code): the
 * guest engine is its child in another process group (command mode), and linux.uml makes itself a session
 * leader whose helper processes outlive it, so without help the guest keeps running with its devices gone and its
 * temporary directory stays. The watchdog is a small shell process holding the read end of a pipe whose write end
 * only ringvm has: ringvm dying in any way closes it, and the watchdog then kills the guest (its process group
 * when it has one), every process carrying the guest's `uml_dir` (UML's helpers, as scripts/guest/run-uml does
 * when linux.uml returns), and removes the run's temporary directory. On a normal stop ringvm disarms it first
 * (the guest has exited by then and its pid may be reused).
 *
 * The watchdog ignores the terminal's signals (a Ctrl-C that reaches ringvm's process group must not take it
 * along) and runs in its own process group; ringvm's own exit handling is unchanged.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { Socket } from 'node:net';

/** sh script: `$1` guest pid, `$2` `group` or `pid`, `$3` uml_dir ('' for none), `$4` directory to remove. */
const WATCHDOG_SCRIPT = [
  "trap '' HUP INT TERM QUIT",
  // Returns at EOF: ringvm is gone without disarming.
  'read -r _',
  'if [ "$2" = group ]; then kill -KILL -- "-$1" 2>/dev/null; fi',
  'kill -KILL "$1" 2>/dev/null',
  'if [ -n "$3" ] && command -v pkill >/dev/null; then pkill -KILL -f "uml_dir=$3( |\\$)"; fi',
  'rm -rf -- "$4"',
].join('\n');

export interface GuestWatchdogOptions {
  /** The engine's pid. */
  readonly pid: number;
  /** The engine leads its own process group (spawned detached): kill the group. */
  readonly processGroup: boolean;
  /** The UML guest's uml_dir (its helpers carry it on their command line). */
  readonly umlDir?: string;
  /** The run's temporary directory (export sockets, uml_dir). */
  readonly tmp: string;
}

export class GuestWatchdog {
  readonly #child: ChildProcess;

  private constructor(child: ChildProcess) {
    this.#child = child;
  }

  static start(options: GuestWatchdogOptions): GuestWatchdog {
    const child = spawn(
      '/bin/sh',
      [
        '-c',
        WATCHDOG_SCRIPT,
        'ringvm-watchdog',
        String(options.pid),
        options.processGroup ? 'group' : 'pid',
        options.umlDir ?? '',
        options.tmp,
      ],
      { stdio: ['pipe', 'ignore', 'ignore'], detached: true },
    );
    // Nothing is ever written: the pipe only says that ringvm is alive. An error (sh missing) leaves the run
    // as it was before watchdogs existed; it is not a reason to fail the guest.
    child.on('error', () => undefined);
    child.stdin.on('error', () => undefined);
    child.unref();
    if (child.stdin instanceof Socket) child.stdin.unref();
    return new GuestWatchdog(child);
  }

  /** The guest was stopped by ringvm itself: the watchdog goes without acting. */
  disarm(): void {
    if (this.#child.exitCode === null && this.#child.signalCode === null) this.#child.kill('SIGKILL');
    this.#child.stdin?.destroy();
  }
}
