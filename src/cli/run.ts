/**
 * `ringvm run`: boots a ringvm guest (docs/guest.md) with ringvm's devices attached and gives the user its
 * console — the main command. Two engines:
 *
 * - `uml` (default): user-mode Linux; each export is `virtio_uml.device=SOCK:ID` (net 1, blk 2, console 3, rng 4).
 * - `qemu`: QEMU TCG (PC machine) booting Debian's kernel with the busybox initramfs of scripts/guest/build-qemu;
 *   each export is a `vhost-user-*-pci` device (blk with the export's queue count, rng); guest memory is a shared
 *   memfd so the exports can map it. QEMU 7.2 has no vhost-user console device: console exports are refused.
 *
 * 1. Validate everything (the device options as `ringvm serve` takes them, `--engine`, `--kernel`, `--root`,
 *    `--mem`...): a mistake exits 2 before anything starts. Exports without `addr.path` get a socket in a private
 *    temporary directory.
 * 2. Build the guest on first use (scripts/guest/build-uml or build-qemu, which install the Debian packages).
 * 3. Start every export in this process (worker threads), then spawn the engine directly (linux.uml or
 *    qemu-system-x86_64, with the conventions of scripts/guest/run-uml and run-qemu): the console on a pipe that
 *    this process filters (guest-console.ts), the command in `ringvm.cmd`. The run-* scripts are not used: they
 *    filter the console themselves (run-qemu through an awk pipeline) and run the engine behind a shell, so
 *    neither the exit status, nor the boot log, nor a clean stop of the engine on Ctrl-C would be ours.
 * 4. With a COMMAND: its output (the boot messages are hidden unless --verbose, or shown on stderr if the guest
 *    never got to the command), exit status = the command's (125 if the guest ended without reporting one).
 *    Without: an interactive shell on this terminal; exit status = the shell's.
 * 5. SIGINT/SIGTERM: the guest is stopped (SIGTERM to the engine, SIGKILL to its process group after 5 s; a
 *    command-mode UML guest gets SIGKILL at once), then the exports; exit status 130/143. When the guest ends,
 *    the exports are stopped.
 */
import { spawn, spawnSync } from 'node:child_process';
import { constants, promises as fs } from 'node:fs';
import { tmpdir, totalmem } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgv } from './argv.js';
import { GuestWatchdog } from './guest-watchdog.js';
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

Boots a ringvm Linux guest with ringvm's devices attached over vhost-user and runs COMMAND in it (/bin/sh -c,
the words joined with spaces), or an interactive shell on this terminal when there is none.

Device options: as 'ringvm serve' (see 'ringvm serve --help'); addr.path may be left out (a private socket
is made). The guest sees blk exports as /dev/vda, /dev/vdb... in command-line order.
  --engine uml   each export is virtio_uml.device=SOCK:ID (net 1, blk 2, console 3, rng 4); console ports are hvc0 and
                 /dev/virtio-ports/NAME. UML has no virtio-rng driver: an rng export is attached but unused.
                 A net export is eth0, eth1... in command-line order.
  --engine qemu  net exports are virtio-net-pci devices on a vhost-user netdev (mq=on for queues>1),
                 blk exports are vhost-user-blk-pci devices (num-queues from the export), rng exports
                 vhost-user-rng-pci (/dev/hwrng); guest memory is a shared memfd. QEMU has no vhost-user
                 console device: console exports are refused (use --engine uml).

Run options:
  --engine uml|qemu  user-mode Linux (default), or QEMU TCG (PC machine, virtio over PCI)
  --kernel PATH      uml: the UML kernel (default: linux.uml from Debian's user-mode-linux);
                     qemu: a PVH vmlinux or a bzImage (default: scripts/guest/build-qemu's vmlinux)
  --initrd PATH      qemu only: the initramfs (default: scripts/guest/build-qemu's); its /init must follow the
                     ringvm console protocol for COMMAND (docs/guest.md)
  --root DIR         uml only: the guest root directory, booted on hostfs (default: scripts/guest/build-uml's,
                     built on first use); its /init must follow the ringvm console protocol for COMMAND
  --mem SIZE         guest memory (default 256M; at most the host's memory)
  --share DIR        host directory mounted at /host (read-write; uml: hostfs, qemu: virtio-9p); the command
                     runs there
  --rw               uml only: mount the root read-write (default read-only)
  --append ARG       one more kernel parameter (repeatable)
  --verbose          show the kernel and boot messages

Examples:
  ringvm run --blockdev driver=memory,node-name=d0,size=64M \\
    --export type=vhost-user-blk,id=e0,node-name=d0,writable=on -- 'mkfs.ext2 -q /dev/vda && echo ok'
  ringvm run --blockdev driver=file,node-name=d0,filename=disk.img \\
    --export type=vhost-user-blk,id=e0,node-name=d0          # a shell; /dev/vda is read-only
  ringvm run --engine qemu --export type=vhost-user-rng,id=r0 -- 'head -c 16 /dev/hwrng | od -An -tx1'

Interactive QEMU: Ctrl-C goes to the guest; 'exit' (or Ctrl-A x) ends the guest.

Exit status: the command's (or the shell's); 125 when the guest ended without reporting one; 130/143 after
SIGINT/SIGTERM; 1 when a device or the guest cannot start; 2 for a bad command line.
`;

const RUN_VALUES = [
  ...DEVICE_OPTIONS,
  '--engine',
  '--kernel',
  '--initrd',
  '--root',
  '--mem',
  '--share',
  '--append',
] as const;
const SINGLE = ['--engine', '--kernel', '--initrd', '--root', '--mem', '--share'];
export const ENGINES = ['uml', 'qemu'] as const;
export type Engine = (typeof ENGINES)[number];
/** The QEMU binary of the qemu engine (Debian's qemu-system-x86, installed by scripts/guest/install-packages). */
export const QEMU_BINARY = 'qemu-system-x86_64';
/** The virtio-9p mount tag of `--share` with the qemu engine (what the QEMU guest's /init mounts at /host). */
const QEMU_SHARE_TAG = 'ringvm-share';
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
  readonly engine: Engine;
  readonly kernel: string | undefined;
  /** qemu only. */
  readonly initrd: string | undefined;
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
    // UML and QEMU would both try (UML sets up page structures for all of it, for minutes): say so now.
    if (bytes > totalmem()) {
      throw new CliUsageError(
        `--mem '${memText}': more than this host's ${Math.floor(totalmem() / (1 << 20))} MiB of memory`,
        memText,
        { option: '--mem' },
      );
    }
    mem = bytes;
  }
  const engineText = single.get('--engine') ?? 'uml';
  if (!(ENGINES as readonly string[]).includes(engineText)) {
    throw new CliUsageError(`--engine '${engineText}': expected uml or qemu`, engineText, {
      option: '--engine',
    });
  }
  const engine = engineText as Engine;
  const onlyFor = (option: string, only: Engine, given: boolean): void => {
    if (given && engine !== only) {
      throw new CliUsageError(`${option} is for --engine ${only} only (this is --engine ${engine})`, option, {
        option,
      });
    }
  };
  onlyFor('--root', 'uml', single.has('--root'));
  onlyFor('--rw', 'uml', args.flags.has('--rw'));
  onlyFor('--initrd', 'qemu', single.has('--initrd'));
  const devices = buildDevicePlan(args.options, { defaultSocketDir: socketDir });
  for (const e of devices.exports) {
    if (engine === 'qemu') {
      if (e.type === 'vhost-user-console') {
        throw new CliUsageError(
          `${e.label}: a vhost-user-console cannot be attached to the QEMU guest (QEMU 7.2 has no vhost-user console device); use --engine uml for console exports`,
          e.id,
          { option: '--export', key: 'type' },
        );
      }
    } else if (/[\s:]/.test(e.socketPath)) {
      throw new CliUsageError(
        `${e.label}: addr.path: '${e.socketPath}' cannot be passed to UML (virtio_uml.device=SOCK:ID takes no spaces or ':')`,
        e.socketPath,
        { option: '--export', key: 'addr.path' },
      );
    }
  }
  const kernel = single.get('--kernel');
  const initrd = single.get('--initrd');
  const root = single.get('--root');
  const share = single.get('--share');
  return {
    devices,
    guest: {
      engine,
      kernel: kernel === undefined ? undefined : resolve(kernel),
      initrd: initrd === undefined ? undefined : resolve(initrd),
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
  const { engine, kernel, initrd, root, share } = plan.guest;
  // The UML kernel is a program; QEMU's -kernel and -initrd are files it reads.
  const checkFile = async (option: string, path: string, mode: number, what: string): Promise<void> => {
    try {
      await fs.access(path, mode);
      if (!(await fs.stat(path)).isFile()) throw new Error('not a regular file');
    } catch (e) {
      throw new CliUsageError(`${option} '${path}': not ${what} (${describe(e)})`, path, { option });
    }
  };
  if (kernel !== undefined) {
    if (engine === 'uml') await checkFile('--kernel', kernel, constants.X_OK, 'an executable file');
    else await checkFile('--kernel', kernel, constants.R_OK, 'a readable file');
  }
  if (initrd !== undefined) await checkFile('--initrd', initrd, constants.R_OK, 'a readable file');
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
    if (engine === 'uml' && /\s/.test(share)) {
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
    `mem=${mebibytes(g.mem)}M`,
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

/** `n` bytes in MiB (whole: `--mem` is checked); not `>> 20`, which wraps at 2 GiB. */
function mebibytes(n: number): number {
  return Math.floor(n / (1 << 20));
}

/** A path in a QEMU option value (`key=value,key=value`): a comma is written twice. */
function qemuValue(s: string): string {
  return s.replaceAll(',', ',,');
}

/**
 * The QEMU command line (after the binary) of the qemu engine: scripts/guest/run-qemu's, with one
 * `vhost-user-*-pci` device per export (chardev and device named after the export's id).
 */
export function qemuCommandLine(plan: RunPlan, kernel: string, initrd: string): string[] {
  const g = plan.guest;
  const mem = `${mebibytes(g.mem)}M`;
  const args = [
    '-nodefaults',
    '-no-user-config',
    '-accel',
    'tcg',
    '-machine',
    'pc,memory-backend=mem',
    '-m',
    mem,
    '-object',
    `memory-backend-memfd,id=mem,size=${mem},share=on`,
    '-display',
    'none',
    '-no-reboot',
    '-kernel',
    kernel,
    '-initrd',
    initrd,
  ];
  for (const e of plan.devices.exports) {
    if (e.type === 'vhost-user-net') {
      // QEMU's virtio-net-pci with a vhost-user netdev: the data path is the export's; QEMU keeps the
      // control queue itself. INTx (vectors=0): QEMU 7.2 under TCG dereferences a NULL irqfd table when
      // MSI-X vectors of a vhost-user virtio-net are unmasked (docs/networking.md, "QEMU guests").
      const mq = e.queues > 1 ? ',mq=on' : '';
      args.push(
        '-chardev',
        `socket,id=${e.id},path=${qemuValue(e.socketPath)}`,
        '-netdev',
        `vhost-user,id=${e.id}-netdev,chardev=${e.id}${e.queues > 1 ? `,queues=${e.queues}` : ''}`,
        '-device',
        `virtio-net-pci,netdev=${e.id}-netdev,id=${e.id},mac=${e.mac}${mq},vectors=0`,
      );
      continue;
    }
    const device =
      e.type === 'vhost-user-blk'
        ? `vhost-user-blk-pci,num-queues=${e.numQueues ?? 1}`
        : e.type === 'vhost-user-rng'
          ? 'vhost-user-rng-pci'
          : undefined;
    if (device === undefined) throw new Error(`internal: ${e.label} cannot be attached to QEMU`);
    args.push(
      '-chardev',
      `socket,id=${e.id},path=${qemuValue(e.socketPath)}`,
      '-device',
      `${device},chardev=${e.id},id=${e.id}`,
    );
  }
  if (g.share !== undefined) {
    args.push(
      '-fsdev',
      `local,id=share,path=${qemuValue(g.share)},security_model=none`,
      '-device',
      `virtio-9p-pci,fsdev=share,mount_tag=${QEMU_SHARE_TAG}`,
    );
  }
  // Interactive: the serial console multiplexed with the monitor on this terminal, as run-qemu (QEMU then
  // leaves the terminal's signal keys off: Ctrl-C goes to the guest; Ctrl-A x quits). A command: the console
  // only, stdin /dev/null.
  args.push('-serial', g.command === undefined ? 'mon:stdio' : 'stdio');
  const append = ['console=ttyS0', 'reboot=k', 'panic=-1'];
  if (!g.verbose) append.push('quiet');
  if (g.share !== undefined) append.push(`ringvm.share=${QEMU_SHARE_TAG}`);
  append.push(...g.append);
  if (g.command !== undefined) append.push(`ringvm.cmd=${Buffer.from(g.command).toString('base64')}`);
  args.push('-append', append.join(' '));
  return args;
}

/** How to start the guest: a program, its arguments, and how its console reaches this terminal. */
interface GuestLaunch {
  readonly file: string;
  readonly args: readonly string[];
  /** For messages: `linux.uml`, `qemu-system-x86_64`. */
  readonly name: string;
  /** Variables added to this process's environment for the engine. */
  readonly env?: Readonly<Record<string, string>>;
  /**
   * Interactive console output needs `\r\n` added: UML puts the terminal in raw mode (no output processing)
   * while the guest console sends `\n`; QEMU's stdio keeps the terminal's output processing (OPOST).
   */
  readonly crlf: boolean;
  /** UML's uml_dir: its helper processes carry it on their command line. */
  readonly umlDir?: string;
}

function runScript(scripts: string, name: string, stdout: 'inherit' | 'pipe'): string {
  const r = spawnSync(join(scripts, name), [], { stdio: ['ignore', stdout, 'inherit'], encoding: 'utf8' });
  if (r.status !== 0)
    throw new Error(`scripts/guest/${name} failed (${r.error?.message ?? `exit ${r.status}`})`);
  return stdout === 'pipe' ? r.stdout.trim() : '';
}

/**
 * The guest of `plan.guest.engine`: uml: `--root`, or scripts/guest/build-uml's (built, with its packages, on
 * first use); qemu: `--kernel`/`--initrd`, the rest from scripts/guest/build-qemu (built on first use).
 */
function prepareGuest(plan: RunPlan, tmp: string, io: RunIo): GuestLaunch {
  const scripts = join(ringvmPackage().root, 'scripts', 'guest');
  const g = plan.guest;
  if (g.engine === 'qemu') {
    let kernel = g.kernel;
    let initrd = g.initrd;
    if (kernel === undefined || initrd === undefined) {
      const dir = runScript(scripts, 'build-qemu', 'pipe');
      if (g.verbose) io.err(`ringvm: QEMU guest ${dir}\n`);
      kernel ??= join(dir, 'vmlinux');
      initrd ??= join(dir, 'initramfs.cpio.gz');
    } else {
      runScript(scripts, 'install-packages', 'inherit');
    }
    return { file: QEMU_BINARY, args: qemuCommandLine(plan, kernel, initrd), name: QEMU_BINARY, crlf: false };
  }
  let root = g.root;
  if (root !== undefined) {
    if (g.kernel === undefined) runScript(scripts, 'install-packages', 'inherit');
  } else {
    root = runScript(scripts, 'build-uml', 'pipe');
    if (g.verbose) io.err(`ringvm: guest root ${root}\n`);
  }
  // linux.uml runs with the XSAVE shim preloaded (scripts/guest/uml-xstate-preload.c explains why).
  const preload = runScript(scripts, 'build-uml-preload', 'pipe');
  return {
    file: g.kernel ?? 'linux.uml',
    args: umlCommandLine(plan, root, join(tmp, 'uml')),
    name: 'linux.uml',
    env: { LD_PRELOAD: preload },
    crlf: true,
    umlDir: join(tmp, 'uml'),
  };
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
    let launch: GuestLaunch;
    try {
      launch = prepareGuest(plan, tmp, io);
    } catch (e) {
      io.err(`ringvm: ${describe(e)}\n`);
      return 1;
    }
    if (plan.guest.engine === 'uml') {
      await fs.mkdir(join(tmp, 'uml'));
      if (plan.devices.exports.some((e) => e.type === 'vhost-user-rng')) {
        io.err(
          'ringvm: note: the UML kernel has no virtio-rng driver; the rng export is attached but unused (--engine qemu has one)\n',
        );
      }
    }
    return await boot(plan, launch, tmp, io);
  } finally {
    await fs.rm(tmp, { recursive: true, force: true });
  }
}

async function boot(plan: RunPlan, launch: GuestLaunch, tmp: string, io: RunIo): Promise<number> {
  const stop = stopSource({
    processSignals: io.processSignals ?? true,
    ...(io.signal !== undefined && { signal: io.signal }),
  });
  let running: RunningExport[] = [];
  let watchdog: GuestWatchdog | undefined;
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

    const interactive = plan.guest.command === undefined;
    if (plan.guest.verbose) io.err(`ringvm: ${[launch.file, ...launch.args].map(shellWord).join(' ')}\n`);
    const child = spawn(launch.file, launch.args, {
      // Command mode: stdin /dev/null (UML's console stops at EOF of a pipe) and the guest in its own process
      // group, so a terminal's Ctrl-C reaches only ringvm, which stops the guest and then the devices.
      // Interactive: the guest reads this terminal (UML and QEMU put it in raw mode without signal keys:
      // Ctrl-C goes to the guest).
      stdio: [interactive ? 'inherit' : 'ignore', 'pipe', 'pipe'],
      detached: !interactive,
      env: { ...process.env, ...launch.env },
    });
    // If this process is killed outright, the watchdog stops the guest and removes `tmp` (guest-watchdog.ts).
    watchdog =
      child.pid === undefined
        ? undefined
        : GuestWatchdog.start({
            pid: child.pid,
            processGroup: !interactive,
            ...(launch.umlDir !== undefined && { umlDir: launch.umlDir }),
            tmp,
          });
    const filter = new GuestConsoleFilter({
      out: (s) => {
        process.stdout.write(Buffer.from(s, 'latin1'));
      },
      holdBoot: !interactive && !plan.guest.verbose,
      verbose: plan.guest.verbose,
      crlf: launch.crlf && interactive && process.stdout.isTTY,
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

    // SIGTERM goes to the engine itself (QEMU stops its devices, disconnecting from the exports, and exits;
    // linux.uml's handler kills its helper processes and exits, when it does not panic); SIGKILL to its whole
    // process group.
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
        io.err(`ringvm: cannot start '${launch.file}': ${event.error.message}\n`);
        status = 1;
      } else if (filter.status !== undefined) {
        status = filter.status;
      } else if (interactive) {
        // The engine's own complaint (QEMU refusing an option or a device) when the guest never started.
        if (!plan.guest.verbose && !filter.started && event.code !== 0) io.err(hostStderr);
        status = event.code ?? 125;
      } else {
        if (!plan.guest.verbose) io.err(filter.bootLog + hostStderr);
        io.err(
          `ringvm: the guest ended without reporting a status (${launch.name} ${event.code !== null ? `exit ${event.code}` : `signal ${event.signal ?? '?'}`})\n`,
        );
        status = 125;
      }
    } else {
      if (event.kind === 'device')
        io.err(`ringvm: ${event.r.plan.label}: stopped unexpectedly; stopping the guest\n`);
      // What the guest prints while dying (UML's SIGTERM handler, a panic) is not the command's output.
      if (!plan.guest.verbose) child.stdout.removeAllListeners('data').resume();
      // A command-mode UML guest is killed outright, helpers and all: linux.uml's SIGTERM handler (6.1,
      // last_ditch_exit) removes its virtio_uml devices from the idle thread, which may not sleep, so it panics and
      // sometimes hangs. An interactive one gets SIGTERM, which gives the terminal back from raw mode when it works.
      const outright = launch.umlDir !== undefined && !interactive;
      kill(outright ? 'SIGKILL' : 'SIGTERM');
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
    watchdog?.disarm();
    const problems = await stopExports(running);
    for (const p of problems) io.err(`ringvm: ${p}\n`);
    stop.dispose();
  }
}

/** `w` as a shell word (for showing a command line). */
function shellWord(w: string): string {
  return /^[\w@%+=:,./-]+$/.test(w) ? w : `'${w.replaceAll("'", `'\\''`)}'`;
}

function exitStatusFor(signal: string): number {
  return signal === 'SIGTERM' ? 143 : 130;
}
