/**
 * A network namespace for one test run (`ringvm-<tag>-<pid>`), made and deleted by the test, with `ip` commands
 * run inside it. Anything left by a crashed earlier run with the same name is deleted first.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';

export class NetNamespace {
  readonly name: string;

  private constructor(name: string) {
    this.name = name;
  }

  static create(tag: string): NetNamespace {
    const name = `ringvm-${tag}-${process.pid}`;
    try {
      execFileSync('ip', ['netns', 'del', name], { stdio: 'ignore' });
    } catch {
      // there was none
    }
    execFileSync('ip', ['netns', 'add', name]);
    const ns = new NetNamespace(name);
    ns.ip('link', 'set', 'lo', 'up');
    return ns;
  }

  /** Runs `ip ARGS...` in the namespace; returns stdout. */
  ip(...args: string[]): string {
    return execFileSync('ip', ['-n', this.name, ...args], { encoding: 'utf8' });
  }

  /** The prefix that runs a command in the namespace (for QtestLink's `wrapper`). */
  get wrapper(): string[] {
    return ['ip', 'netns', 'exec', this.name];
  }

  /** Starts `command` in the namespace. */
  spawn(command: string, args: readonly string[]): ChildProcess {
    return spawn('ip', ['netns', 'exec', this.name, command, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  }

  /** A device's MAC address. */
  mac(dev: string): Uint8Array {
    const info = JSON.parse(this.ip('-j', 'link', 'show', dev)) as { address: string }[];
    return Uint8Array.from((info[0]?.address ?? '').split(':').map((h) => parseInt(h, 16)));
  }

  delete(): void {
    try {
      execFileSync('ip', ['netns', 'del', this.name], { stdio: 'ignore' });
    } catch {
      // already gone
    }
  }
}
