/**
 * A network namespace a test (or benchmark) makes and always deletes: the host side of a guest's tap lives
 * there, with an address, a DHCP server (busybox udhcpd) and any TCP peers (socat), so nothing touches the
 * machine's own network and parallel runs cannot collide (names carry the pid and a counter).
 *
 * The tap itself is opened by ringvm in this process's namespace (a TapBackend creates it) and then moved in
 * with `ip link set IF netns NS`: a tap keeps its open fds across the move.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';

let counter = 0;

/** A unique short name: `PREFIX` + pid + counter, at most 15 bytes (an interface name's limit). */
export function uniqueName(prefix: string): string {
  return `${prefix}${process.pid % 100_000}${(counter++).toString(36)}`.slice(0, 15);
}

export function ip(...args: string[]): string {
  const r = spawnSync('ip', args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`ip ${args.join(' ')} failed: ${r.stderr}`);
  return r.stdout;
}

export class NetNamespace {
  readonly name: string;
  readonly #children: ChildProcess[] = [];
  #deleted = false;

  private constructor(name: string) {
    this.name = name;
  }

  static create(prefix = 'rvns'): NetNamespace {
    const ns = new NetNamespace(uniqueName(prefix));
    ip('netns', 'add', ns.name);
    try {
      ip('-n', ns.name, 'link', 'set', 'lo', 'up');
    } catch (e) {
      ns.delete();
      throw e;
    }
    return ns;
  }

  /** Runs `ip ARGS...` inside; returns its stdout. */
  ip(...args: string[]): string {
    return ip('-n', this.name, ...args);
  }

  /** The command prefix that runs a program inside (e.g. a QtestLink's `wrapper`). */
  get wrapper(): string[] {
    return ['ip', 'netns', 'exec', this.name];
  }

  /** Interface `dev`'s MAC address. */
  mac(dev: string): Uint8Array {
    const info = JSON.parse(this.ip('-j', 'link', 'show', dev)) as { address: string }[];
    return Uint8Array.from((info[0]?.address ?? '').split(':').map((h) => parseInt(h, 16)));
  }

  /** Moves interface `ifname` (a tap ringvm opened) in, gives it `cidr` and brings it up. */
  adopt(ifname: string, cidr: string): void {
    ip('link', 'set', ifname, 'netns', this.name);
    this.ip('addr', 'add', cidr, 'dev', ifname);
    this.ip('link', 'set', ifname, 'up');
  }

  /** Runs a command inside; throws with its stderr when it fails. */
  exec(args: readonly string[]): string {
    const r = spawnSync('ip', ['netns', 'exec', this.name, ...args], { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`${args.join(' ')} in ${this.name} failed: ${r.stderr}`);
    return r.stdout;
  }

  /** Starts a long-running command inside (its own process group, killed by {@link delete}). */
  spawn(args: readonly string[]): ChildProcess {
    const child = spawn('ip', ['netns', 'exec', this.name, ...args], {
      detached: true,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    child.stdout.resume();
    child.stderr.resume();
    this.#children.push(child);
    return child;
  }

  /**
   * A DHCP server on `ifname` handing out `prefix.10`–`prefix.20` (/24, router `prefix.1`); its files go in
   * `dir`.
   */
  startDhcp(ifname: string, prefix: string, dir: string): ChildProcess {
    const conf = join(dir, `udhcpd-${ifname}.conf`);
    writeFileSync(
      conf,
      [
        `start ${prefix}.10`,
        `end ${prefix}.20`,
        `interface ${ifname}`,
        `lease_file ${join(dir, `udhcpd-${ifname}.leases`)}`,
        `pidfile ${join(dir, `udhcpd-${ifname}.pid`)}`,
        'option subnet 255.255.255.0',
        `option router ${prefix}.1`,
        'option lease 3600',
        '',
      ].join('\n'),
    );
    writeFileSync(join(dir, `udhcpd-${ifname}.leases`), '');
    return this.spawn(['busybox', 'udhcpd', '-f', conf]);
  }

  /** Kills what was spawned inside and deletes the namespace (its interfaces go with it). Idempotent. */
  delete(): void {
    if (this.#deleted) return;
    this.#deleted = true;
    for (const child of this.#children) {
      if (child.pid !== undefined && child.exitCode === null && child.signalCode === null) {
        try {
          process.kill(-child.pid, 'SIGKILL');
        } catch {
          // already gone
        }
      }
    }
    spawnSync('ip', ['netns', 'del', this.name]);
  }
}
