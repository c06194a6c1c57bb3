/**
 * `ringvm run`: boots the ringvm UML guest (docs/guest.md) with ringvm's devices attached and gives the user its
 * console — the main command.
 *
 * 1. Validate everything (the device options as `ringvm serve` takes them, `--kernel`, `--root`, `--mem`...):
 *    a mistake exits 2 before anything starts. Exports without `addr.path` get a socket in a private temporary
 *    directory.
 * 2. Build the guest root on first use (scripts/guest/build-uml, which installs the Debian packages).
 * 3. Start every export in this process (worker threads), then boot `linux.uml` with one
 *    `virtio_uml.device=SOCK:ID` per export (blk 2, console 3, rng 4) and the conventions of scripts/guest/run-uml:
 *    root on hostfs, console on this process's stdio (`con0=fd:0,fd:1`), the command in `ringvm.cmd`.
 * 4. With a COMMAND: its output (the boot messages are hidden unless --verbose, or shown on stderr if the guest
 *    never got to the command), exit status = the command's (125 if the guest ended without reporting one).
 *    Without: an interactive shell on this terminal; exit status = the shell's.
 * 5. SIGINT/SIGTERM: the guest is stopped (SIGTERM to its process group, SIGKILL after 5 s), then the exports;
 *    exit status 130/143. When the guest ends, the exports are stopped.
 */
import { spawn, spawnSync } from 'node:child_process';
import { constants, promises as fs } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgv } from './argv.js';
import { CliUsageError } from './cli-error.js';
import {
  firstClosed,
  startExports,
  stopExports,
  ExportStartError,
  type ExportStarter,
  type RunningExport,
} from './export-runner.js';
import { GuestConsoleFilter } from './guest-console.js';
import { parseSize } from './options.js';
import { ringvmPackage } from './package-root.js';
import {
  buildDevicePlan,
  checkHostResources,
  DEVICE_OPTIONS,
  VIRTIO_DEVICE_ID,
  type DevicePlan,
} from './serve-options.js';
import { stopSource } from './stop-signals.js';

export const RUN_USAGE = `Usage: ringvm run [device options] [run options] [--] [COMMAND...]

Boots the ringvm user-mode Linux guest with ringvm's devices attached over vhost-user and runs COMMAND in it
(/bin/sh -c, the words joined with spaces), or an interactive shell on this terminal when there is none.

Device options: as 'ringvm serve' (see 'ringvm serve --help'); addr.path may be left out (a private socket
is made). Each export is attached as virtio_uml.device=SOCK:ID (blk 2, console 3, rng 4). The guest sees
blk exports as /dev/vda, /dev/vdb... in command-line order, console ports as hvc0 and /dev/virtio-ports/NAME.
UML has no virtio-rng driver: an rng export is attached but unused.

Run options:
  --kernel PATH     the UML kernel (default: linux.uml from Debian's user-mode-linux)
  --root DIR        the guest root directory, booted on hostfs (default: scripts/guest/build-uml's, built on
                    first use); its /init must follow the ringvm console protocol for COMMAND (docs/guest.md)
  --mem SIZE        guest memory (default 256M)
  --share DIR       host directory mounted at /host (read-write); the command runs there
  --rw              mount the root read-write (default read-only)
  --append ARG      one more kernel parameter (repeatable)
  --verbose         show the kernel and boot messages

Examples:
  ringvm run --blockdev driver=memory,node-name=d0,size=64M \\
    --export type=vhost-user-blk,id=e0,node-name=d0,writable=on -- 'mkfs.ext2 -q /dev/vda && echo ok'
  ringvm run --blockdev driver=file,node-name=d0,filename=disk.img \\
    --export type=vhost-user-blk,id=e0,node-name=d0          # a shell; /dev/vda is read-only

Exit status: the command's (or the shell's); 125 when the guest ended without reporting one; 130/143 after
SIGINT/SIGTERM; 1 when a device or the guest cannot start; 2 for a bad command line.
`;

const RUN_VALUES = [...DEVICE_OPTIONS, '--kernel', '--root', '--mem', '--share', '--append'] as const;
const SINGLE = ['--kernel', '--root', '--mem', '--share'];
/** Time the guest gets to end after SIGTERM before SIGKILL. */
const KILL_AFTER_MS = 5000;
const MIN_MEM = 32 << 20;

export interface RunIo {
  readonly out: (s: string) => void;
  readonly err: (s: string) => void;
  readonly signal?: AbortSignal;
  readonly processSignals?: boolean;
  readonly starter?: ExportStarter;
}

export interface GuestOptions {
  readonly kernel: string | undefined;
  readonly root: string | undefined;
  /** Memory in bytes. */
  readonly mem: number;
  readonly share: string | undefined;
  readonly rw: boolean;
  readonly append: readonly string[];
  readonly verbose: boolean;
  /** The shell command (words joined with spaces); undefined: interactive. */
  readonly command: string | undefined;
}

export interface RunPlan {
  readonly devices: DevicePlan;
  readonly guest: GuestOptions;
}

/** Parses and validates `ringvm run` (without touching the host; see {@link checkRunPlan}). */
export function parseRunArgv(argv: readonly string[], socketDir: string): RunPlan | 'help' {
  const args = parseArgv(argv, {
    command: 'ringvm run',
    values: RUN_VALUES,
    flags: ['--help', '-h', '--rw', '--verbose'],
    positionals: 'rest',
  });
  if (args.flags.has('--help') || args.flags.has('-h')) return 'help';
  const single = new Map<string, string>();
  const append: string[] = [];
  for (const { name, value } of args.options) {
    if (name === '--append') {
      if (value === '' || /\s/.test(value)) {
        throw new CliUsageError(`--append '${value}': one kernel parameter, without spaces`, value, {
          option: name,
        });
      }
      append.push(value);
    } else if (SINGLE.includes(name)) {
      if (single.has(name)) throw new CliUsageError(`${name} given twice`, value, { option: name });
      if (value === '') throw new CliUsageError(`${name}: empty value`, value, { option: name });
      single.set(name, value);
    }
  }
  let mem = 256 << 20;
  const memText = single.get('--mem');
  if (memText !== undefined) {
    const bytes = parseSize(memText);
    if (bytes === undefined || bytes < MIN_MEM || bytes % (1 << 20) !== 0) {
      throw new CliUsageError(
        `--mem '${memText}': expected a size of at least 32M in whole MiB (e.g. 512M, 1G)`,
        memText,
        {
          option: '--mem',
        },
      );
    }
    mem = bytes;
  }
  const devices = buildDevicePlan(args.options, { defaultSocketDir: socketDir });
  for (const e of devices.exports) {
    if (/[\s:]/.test(e.socketPath)) {
      throw new CliUsageError(
        `${e.label}: addr.path: '${e.socketPath}' cannot be passed to UML (virtio_uml.device=SOCK:ID takes no spaces or ':')`,
        e.socketPath,
        { option: '--export', key: 'addr.path' },
      );
    }
  }
  const kernel = single.get('--kernel');
  const root = single.get('--root');
  const share = single.get('--share');
  return {
    devices,
    guest: {
      kernel: kernel === undefined ? undefined : resolve(kernel),
      root: root === undefined ? undefined : resolve(root),
      mem,
      share: share === undefined ? undefined : resolve(share),
      rw: args.flags.has('--rw'),
      append,
      verbose: args.flags.has('--verbose'),
      command: args.positionals.length > 0 ? args.positionals.join(' ') : undefined,
    },
  };
}

/** Checks the host: devices ({@link checkHostResources}), kernel, root, share. */
export async function checkRunPlan(plan: RunPlan): Promise<void> {
  await checkHostResources(plan.devices);
  const { kernel, root, share } = plan.guest;
  if (kernel !== undefined) {
    try {
      await fs.access(kernel, constants.X_OK);
      if (!(await fs.stat(kernel)).isFile()) throw new Error('not a regular file');
    } catch (e) {
      throw new CliUsageError(`--kernel '${kernel}': not an executable file (${describe(e)})`, kernel, {
        option: '--kernel',
      });
    }
  }
  if (root !== undefined) {
    if (/[\s,]/.test(root)) {
      throw new CliUsageError(
        `--root '${root}': the path must not contain spaces or commas (kernel command line)`,
        root,
        {
          option: '--root',
        },
      );
    }
    try {
      if (!(await fs.stat(root)).isDirectory()) throw new Error('not a directory');
      await fs.access(join(root, 'init'), constants.X_OK);
    } catch (e) {
      throw new CliUsageError(
        `--root '${root}': not a directory with an executable /init (${describe(e)})`,
        root,
        {
          option: '--root',
        },
      );
    }
  }
  if (share !== undefined) {
    if (/\s/.test(share)) {
      throw new CliUsageError(`--share '${share}': the path must not contain spaces`, share, {
        option: '--share',
      });
    }
    const st = await fs.stat(share).catch(() => undefined);
    if (st?.isDirectory() !== true) {
      throw new CliUsageError(`--share '${share}': not a directory`, share, { option: '--share' });
    }
  }
}

function describe(e: unknown): string {
  const code = (e as NodeJS.ErrnoException | undefined)?.code;
  if (code === 'ENOENT') return 'does not exist';
  return e instanceof Error ? e.message : String(e);
}

/** The kernel command line of scripts/guest/run-uml. */
export function umlCommandLine(plan: RunPlan, root: string, umlDir: string): string[] {
  const g = plan.guest;
  const args = [
    `mem=${g.mem >> 20}M`,
    'root=/dev/root',
    'rootfstype=hostfs',
    `rootflags=${root}`,
    g.rw ? 'rw' : 'ro',
    'init=/init',
    'con=null',
    'con0=fd:0,fd:1',
    `uml_dir=${umlDir}`,
  ];
  if (!g.verbose) args.push('quiet');
  for (const e of plan.devices.exports)
    args.push(`virtio_uml.device=${e.socketPath}:${VIRTIO_DEVICE_ID[e.type]}`);
  if (g.share !== undefined) args.push(`ringvm.share=${g.share}`);
  args.push(...g.append);
  if (g.command !== undefined) args.push(`ringvm.cmd=${Buffer.from(g.command).toString('base64')}`);
  return args;
}

/** The guest root: `--root`, or scripts/guest/build-uml's (built, with its packages, on first use). */
function prepareGuest(plan: RunPlan, io: RunIo): string {
  const scripts = join(ringvmPackage().root, 'scripts', 'guest');
  if (plan.guest.root !== undefined) {
    if (plan.guest.kernel === undefined) {
      const r = spawnSync(join(scripts, 'install-packages'), [], { stdio: ['ignore', 'inherit', 'inherit'] });
      if (r.status !== 0)
        throw new Error(`scripts/guest/install-packages failed (${r.error?.message ?? `exit ${r.status}`})`);
    }
    return plan.guest.root;
  }
  const r = spawnSync(join(scripts, 'build-uml'), [], {
    stdio: ['ignore', 'pipe', 'inherit'],
    encoding: 'utf8',
  });
  if (r.status !== 0) {
    throw new Error(`scripts/guest/build-uml failed (${r.error?.message ?? `exit ${r.status}`})`);
  }
  const root = r.stdout.trim();
  if (plan.guest.verbose) io.err(`ringvm: guest root ${root}\n`);
  return root;
}

/** Runs `ringvm run ARGV`; resolves with the exit status. */
export async function runRun(argv: readonly string[], io: RunIo): Promise<number> {
  const tmp = await fs.mkdtemp(join(tmpdir(), 'ringvm-run.'));
  try {
    let plan: RunPlan;
    try {
      const parsed = parseRunArgv(argv, tmp);
      if (parsed === 'help') {
        io.out(RUN_USAGE);
        return 0;
      }
      plan = parsed;
      await checkRunPlan(plan);
    } catch (e) {
      if (e instanceof CliUsageError) {
        io.err(`ringvm: ${e.message}\nTry 'ringvm run --help'.\n`);
        return 2;
      }
      throw e;
    }
    let root: string;
    try {
      root = prepareGuest(plan, io);
    } catch (e) {
      io.err(`ringvm: ${describe(e)}\n`);
      return 1;
    }
    if (plan.devices.exports.some((e) => e.type === 'vhost-user-rng')) {
      io.err(
        'ringvm: note: the UML kernel has no virtio-rng driver; the rng export is attached but unused\n',
      );
    }
    return await boot(plan, root, tmp, io);
  } finally {
    await fs.rm(tmp, { recursive: true, force: true });
  }
}

async function boot(plan: RunPlan, root: string, tmp: string, io: RunIo): Promise<number> {
  const stop = stopSource({
    processSignals: io.processSignals ?? true,
    ...(io.signal !== undefined && { signal: io.signal }),
  });
  let running: RunningExport[] = [];
  try {
    try {
      running = await startExports(plan.devices, {
        ...(io.starter !== undefined && { starter: io.starter }),
        onLog: (line) => {
          if (plan.guest.verbose) io.err(`ringvm: ${line}\n`);
        },
      });
    } catch (e) {
      if (e instanceof ExportStartError) {
        io.err(`ringvm: ${e.message}\n`);
        return 1;
      }
      throw e;
    }
    if (stop.isRequested) return exitStatusFor(await stop.requested);
    if (plan.guest.verbose) {
      for (const r of running)
        io.err(`ringvm: ${r.plan.type} '${r.plan.id}' listening on ${r.handle.socketPath}\n`);
    }

    const umlDir = join(tmp, 'uml');
    await fs.mkdir(umlDir);
    const interactive = plan.guest.command === undefined;
    const kernel = plan.guest.kernel ?? 'linux.uml';
    const child = spawn(kernel, umlCommandLine(plan, root, umlDir), {
      // Command mode: stdin /dev/null (UML's console stops at EOF of a pipe) and the guest in its own process
      // group, so a terminal's Ctrl-C reaches only ringvm, which stops the guest and then the devices.
      // Interactive: the guest reads this terminal (it puts it in raw mode: Ctrl-C goes to the guest).
      stdio: [interactive ? 'inherit' : 'ignore', 'pipe', 'pipe'],
      detached: !interactive,
    });
    const filter = new GuestConsoleFilter({
      out: (s) => {
        process.stdout.write(Buffer.from(s, 'latin1'));
      },
      holdBoot: !interactive && !plan.guest.verbose,
      verbose: plan.guest.verbose,
      crlf: interactive && process.stdout.isTTY,
    });
    let hostStderr = '';
    child.stdout.on('data', (chunk: Buffer) => {
      filter.push(chunk);
    });
    child.stderr.on('data', (chunk: Buffer) => {
      if (plan.guest.verbose) process.stderr.write(chunk);
      else hostStderr += chunk.toString('latin1');
    });
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null; error?: Error }>(
      (resolveExit) => {
        child.once('error', (error) => {
          resolveExit({ code: null, signal: null, error });
        });
        child.once('close', (code, signal) => {
          resolveExit({ code, signal });
        });
      },
    );

    // SIGTERM goes to linux.uml itself (its handler kills its helper processes and exits); SIGKILL, if it comes
    // to that, to its whole process group.
    const kill = (signal: NodeJS.Signals): void => {
      if (child.pid === undefined || child.exitCode !== null || child.signalCode !== null) return;
      try {
        if (signal === 'SIGKILL' && !interactive) process.kill(-child.pid, signal);
        else child.kill(signal);
      } catch {
        // already gone
      }
    };
    const event = await Promise.race([
      exited.then((r) => ({ kind: 'exit' as const, ...r })),
      stop.requested.then((signal) => ({ kind: 'stop' as const, signal })),
      firstClosed(running).then((r) => ({ kind: 'device' as const, r })),
    ]);
    let status: number;
    if (event.kind === 'exit') {
      filter.end();
      if (event.error !== undefined) {
        io.err(`ringvm: cannot start the guest kernel '${kernel}': ${event.error.message}\n`);
        status = 1;
      } else if (filter.status !== undefined) {
        status = filter.status;
      } else if (interactive) {
        status = event.code ?? 125;
      } else {
        if (!plan.guest.verbose) io.err(filter.bootLog + hostStderr);
        io.err(
          `ringvm: the guest ended without reporting a status (linux.uml ${event.code !== null ? `exit ${event.code}` : `signal ${event.signal ?? '?'}`})\n`,
        );
        status = 125;
      }
    } else {
      if (event.kind === 'device')
        io.err(`ringvm: ${event.r.plan.label}: stopped unexpectedly; stopping the guest\n`);
      // What the guest prints while dying (UML's SIGTERM handler, a panic) is not the command's output.
      if (!plan.guest.verbose) child.stdout.removeAllListeners('data').resume();
      kill('SIGTERM');
      const timer = setTimeout(() => {
        kill('SIGKILL');
      }, KILL_AFTER_MS);
      await exited;
      clearTimeout(timer);
      filter.end();
      status = event.kind === 'stop' ? exitStatusFor(event.signal) : 1;
    }
    return status;
  } finally {
    const problems = await stopExports(running);
    for (const p of problems) io.err(`ringvm: ${p}\n`);
    stop.dispose();
  }
}

function exitStatusFor(signal: string): number {
  return signal === 'SIGTERM' ? 143 : 130;
}
