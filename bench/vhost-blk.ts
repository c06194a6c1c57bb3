/**
 * Host-only vhost-user block benchmark: no guest CPU in the loop. ringvm's own virtio-blk driver
 * (VirtioBlkDriver on a VhostUserFrontend) is the client; the servers are qemu-storage-daemon's vhost-user-blk
 * export and `ringvm serve`, on the same fully allocated raw image (page-cached on the host, as both servers
 * open it without O_DIRECT). Raw host pread/pwrite of the same file (fs.readSync/writeSync, synchronous, one
 * request at a time) is the physical limit. A write line's work includes making the data durable: the driver
 * ends each write pass with a FLUSH, so the raw write pass ends with fdatasync, the same work on the host.
 *
 * Phases (PHASES): 4 KiB random reads at queue depth 1 and 32 (IOPS), 1 MiB sequential reads and writes at
 * queue depth 1 and 4 (MiB/s), all through the driver's zero-copy readInto / writeFrom on buffers allocated once
 * per loop, so the client copies nothing. Each round starts each server in turn (the order alternating),
 * attaches, runs every phase, detaches and stops it; the best figure of the rounds is printed, and the median
 * and range of the per-round ratios (ringvm/QSD, and each server over that round's raw pass).
 * `RINGVM_BENCH_BASELINE=path/to/main.js` adds another ringvm build as a third server (and a "vs base" column).
 * Everything runs twice, in each {@link POLL_MODES} entry: with interrupts only, and polled (the driver spins on
 * the used ring after a kick, both servers poll their rings). `RINGVM_BENCH_POLL_NS=N` (both servers'
 * `poll-max-ns`: ringvm's export option, an iothread's for qemu-storage-daemon) and/or
 * `RINGVM_BENCH_CLIENT_POLL_NS=N` (the driver's `pollNs`) run one mode with those windows instead.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import {
  closeSync,
  existsSync,
  fdatasyncSync,
  mkdtempSync,
  openSync,
  readSync,
  rmSync,
  writeSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  VirtioBlkDriver,
  type BlkBuffer,
  type VirtioBlkDisk,
  type VirtioBlkDriverOptions,
} from '../src/drivers/blk/blk-driver.js';
import { VhostUserFrontend } from '../src/transport/vhost-user/frontend.js';
import { VirtioBus } from '../src/virtio/driver/virtio-bus.js';
import { hostConditions } from './host-conditions.js';
import { ratioSpread } from './round-stats.js';

const MiB = 1 << 20;
const SECTOR = 512;

export interface Sizes {
  readonly imageBytes: number;
  readonly qd1Ops: number;
  readonly qd32Ops: number;
  readonly seqBytes: number;
}

/**
 * One line of the table: how ringvm's driver runs it against a server, and how the same pattern runs as raw
 * synchronous I/O on the host file (the physical limit). Both return the figure in `unit`. A new pattern is
 * one more entry; a new server (say a qcow2 image) is one more entry of `servers` in runVhostBlkBench.
 */
export interface Phase {
  readonly label: string;
  readonly unit: 'IOPS' | 'MiB/s';
  /** Whether the ≥ 0.7× of raw target applies. */
  readonly rawTarget: boolean;
  readonly run: (disk: VirtioBlkDisk, s: Sizes, seed: number) => Promise<number>;
  readonly raw: (fd: number, s: Sizes, seed: number) => number;
}

/** `depth` loops sharing one operation count, each with its own zero-copy guest buffer. */
async function atDepth(
  disk: VirtioBlkDisk,
  depth: number,
  ops: number,
  bytes: number,
  op: (buffer: BlkBuffer, i: number) => Promise<void>,
): Promise<number> {
  const buffers = Array.from({ length: depth }, () => disk.allocBuffer(bytes));
  for (const b of buffers) b.bytes.fill(0xa5);
  let issued = 0;
  const t = now();
  await Promise.all(
    buffers.map(async (buffer) => {
      while (issued < ops) await op(buffer, issued++);
    }),
  );
  const seconds = now() - t;
  for (const b of buffers) disk.freeBuffer(b);
  return seconds;
}

/** 4 KiB reads or writes (of a constant pattern, no flush) at random 4 KiB-aligned offsets (IOPS). */
export const random4k = (write: boolean, depth: number): Phase => ({
  label: `4 KiB random ${write ? 'write' : 'read'}, QD ${depth}`,
  unit: 'IOPS',
  rawTarget: false,
  run: async (disk, s, seed) => {
    const r = rng(seed + (write ? 2 : 1));
    const blocks = s.imageBytes / 4096;
    const ops = depth === 1 ? s.qd1Ops : s.qd32Ops;
    return (
      ops /
      (await atDepth(disk, depth, ops, 4096, (b) =>
        write ? disk.writeFrom(r(blocks) * 8, b) : disk.readInto(r(blocks) * 8, b),
      ))
    );
  },
  // Synchronous I/O has no queue: the same loop is the limit for every depth.
  raw: (fd, s, seed) => {
    const r = rng(seed + (write ? 2 : 1));
    const blocks = s.imageBytes / 4096;
    const ops = depth === 1 ? s.qd1Ops : s.qd32Ops;
    const small = Buffer.alloc(4096, 0xa5);
    const t = now();
    for (let i = 0; i < ops; i++) {
      if (write) writeSync(fd, small, 0, 4096, r(blocks) * 4096);
      else readSync(fd, small, 0, 4096, r(blocks) * 4096);
    }
    return ops / (now() - t);
  },
});

export const sequential = (write: boolean, depth: number): Phase => ({
  label: `1 MiB sequential ${write ? 'write' : 'read'}, QD ${depth}`,
  unit: 'MiB/s',
  rawTarget: true,
  run: async (disk, s) => {
    const ops = s.seqBytes / MiB;
    const seconds = await atDepth(disk, depth, ops, MiB, (b, i) =>
      write ? disk.writeFrom((i * MiB) / SECTOR, b) : disk.readInto((i * MiB) / SECTOR, b),
    );
    if (!write) return ops / seconds;
    const t = now();
    await disk.flush();
    return ops / (seconds + now() - t);
  },
  raw: (fd, s) => {
    const big = Buffer.alloc(MiB, 0xa5);
    const t = now();
    for (let off = 0; off < s.seqBytes; off += MiB) {
      if (write) writeSync(fd, big, 0, MiB, off);
      else readSync(fd, big, 0, MiB, off);
    }
    // The servers' write pass ends with the driver's FLUSH (their fdatasync): the limit does the same work.
    if (write) fdatasyncSync(fd);
    return s.seqBytes / MiB / (now() - t);
  },
});

const ALL_PHASES: readonly Phase[] = [
  random4k(false, 1),
  random4k(false, 32),
  sequential(false, 1),
  sequential(true, 1),
  sequential(false, 4),
  sequential(true, 4),
];
/**
 * The phases to run: all, or those whose label contains one of `RINGVM_BENCH_PHASES`'s `|`-separated parts
 * (`RINGVM_BENCH_PHASES='sequential read, QD 4|random read, QD 1'`: many rounds of a few lines in the time of
 * a full run).
 */
const PHASES: readonly Phase[] = selectPhases(ALL_PHASES, process.env.RINGVM_BENCH_PHASES);

function selectPhases(all: readonly Phase[], filter: string | undefined): readonly Phase[] {
  if (filter === undefined || filter.trim() === '') return all;
  const parts = filter.split('|').map((p) => p.trim());
  const chosen = all.filter((p) => parts.some((part) => part !== '' && p.label.includes(part)));
  if (chosen.length === 0) {
    throw new Error(`RINGVM_BENCH_PHASES=${filter} matches none of: ${all.map((p) => p.label).join('; ')}`);
  }
  return chosen;
}
export type Result = number[];

export function rng(seed: number): (n: number) => number {
  let x = seed >>> 0 || 1;
  return (n) => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x % n;
  };
}

export const now = () => Number(process.hrtime.bigint()) / 1e9;

async function measureDisk(
  disk: VirtioBlkDisk,
  s: Sizes,
  seed: number,
  phases: readonly Phase[],
): Promise<Result> {
  // Warm-up: a few requests so first-use costs are not timed.
  const warm = disk.allocBuffer(4096);
  const r = rng(seed);
  for (let i = 0; i < 64; i++) await disk.readInto(r(s.imageBytes / 4096) * 8, warm);
  disk.freeBuffer(warm);
  const out: Result = [];
  for (const p of phases) out.push(await p.run(disk, s, seed));
  return out;
}

function measureRaw(image: string, s: Sizes, seed: number): Result {
  const fd = openSync(image, 'r+');
  try {
    return PHASES.map((p) => p.raw(fd, s, seed));
  } finally {
    closeSync(fd);
  }
}

async function startServer(argv: readonly string[], socket: string): Promise<ChildProcess> {
  const [cmd, ...args] = argv as [string, ...string[]];
  rmSync(socket, { force: true });
  const child = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  const deadline = Date.now() + 30_000;
  while (!existsSync(socket)) {
    if (child.exitCode !== null)
      throw new Error(`${cmd} exited (${child.exitCode}) before listening:\n${stderr}`);
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`${socket} did not appear:\n${stderr}`);
    }
    await new Promise((res) => setTimeout(res, 5));
  }
  return child;
}

async function stopServer(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((res) => child.once('exit', res));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
  await exited;
  clearTimeout(timer);
}

/** Starts the server `argv` listening on `socket`, attaches ringvm's blk driver, runs `phases`, stops it. */
export async function runOne(
  argv: readonly string[],
  socket: string,
  s: Sizes,
  seed: number,
  phases: readonly Phase[] = PHASES,
  driverOptions: VirtioBlkDriverOptions = {},
): Promise<Result> {
  const child = await startServer(argv, socket);
  try {
    const frontend = await VhostUserFrontend.connect(socket, {
      deviceId: 2,
      connectTimeoutMs: 10_000,
    });
    const bus = new VirtioBus();
    const driver = new VirtioBlkDriver(driverOptions);
    await bus.registerDriver(driver);
    const dev = await bus.addDevice(frontend);
    try {
      return await measureDisk(driver.disk(dev), s, seed, phases);
    } finally {
      await bus.removeDevice(dev);
      await frontend.close();
    }
  } finally {
    await stopServer(child);
  }
}

export function fmt(v: number, unit: 'IOPS' | 'MiB/s'): string {
  return unit === 'IOPS' ? `${(v / 1000).toFixed(1)} k` : v.toFixed(0);
}

/** Writes `bytes` of nonzero data to a new file at `path`, so every block of it is allocated. */
export function writeFilledImage(path: string, bytes: number): void {
  const fd = openSync(path, 'w');
  try {
    const chunk = Buffer.alloc(16 * MiB, 0x5a);
    for (let off = 0; off < bytes; off += chunk.length) writeSync(fd, chunk, 0, chunk.length, off);
  } finally {
    closeSync(fd);
  }
}

/** A vhost-user-blk server: its name in the table and its command line listening on a socket. */
export interface BlkServer {
  readonly name: string;
  readonly argv: (socket: string) => string[];
}

/**
 * `rounds` rounds; each starts every server in turn (the order reversed on odd rounds, so neither always runs
 * on a warmer machine) and runs `phases` against it; `afterRound` runs once per round after the servers.
 * Returns results[server][round][phase].
 */
export async function runRounds(
  servers: readonly BlkServer[],
  work: string,
  s: Sizes,
  rounds: number,
  phases: readonly Phase[],
  afterRound: (round: number) => void = () => {},
  driverOptions: VirtioBlkDriverOptions = {},
): Promise<Result[][]> {
  const results: Result[][] = servers.map(() => []);
  for (let round = 0; round < rounds; round++) {
    const order = servers.map((_, k) => k);
    if (round % 2 === 1) order.reverse();
    for (const k of order) {
      const server = servers[k]!;
      const sock = join(work, `${server.name}.sock`);
      results[k]!.push(await runOne(server.argv(sock), sock, s, round, phases, driverOptions));
    }
    afterRound(round);
  }
  return results;
}

/** The best round's figure of `phase`. */
export function best(rows: readonly Result[], phase: number): number {
  return Math.max(...rows.map((r) => r[phase]!));
}

/** "median [min–max]" of the per-round ratios of server `a` over server `b` on `phase`. */
export function perRoundRatios(results: readonly Result[][], phase: number, a = 0, b = 1): string {
  const perRound = results[a]!.map((r, round) => r[phase]! / results[b]![round]![phase]!);
  return ratioSpread(perRound);
}

/** "median [min–max]" of one server's per-round figures of `phase` over that round's raw figure. */
export function overRaw(rows: readonly Result[], raw: readonly Result[], phase: number): string {
  return ratioSpread(rows.map((r, round) => r[phase]! / raw[round]![phase]!));
}

/** Prints an aligned table: the first column left-aligned, the others right-aligned. */
export function printTable(head: readonly string[], rows: readonly (readonly string[])[]): void {
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: readonly string[]) =>
    cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ');
  console.log(line(head));
  for (const r of rows) console.log(line(r));
}

/**
 * How the two ends wait for each other. `interrupts`: neither polls (ringvm's export sleeps in epoll when
 * idle, QSD serves the export from its main loop, the driver waits for the call eventfd). `polled`: the driver
 * spins on the used ring after each kick (`pollNs`), ringvm's export polls its rings (`poll-max-ns`), and QSD's
 * export runs in an iothread with the same `poll-max-ns`.
 */
export interface PollMode {
  readonly name: string;
  /** poll-max-ns for both servers; undefined: no polling. */
  readonly serverPollNs: number | undefined;
  /** The driver's pollNs (0: interrupts only). */
  readonly clientPollNs: number;
}

/** The polled mode's windows: long enough for a 1 MiB request (~110 µs here), short of a second's CPU. */
export const POLL_MODES: readonly PollMode[] = [
  { name: 'interrupts', serverPollNs: undefined, clientPollNs: 0 },
  { name: 'polled', serverPollNs: 200_000, clientPollNs: 500_000 },
];

/** The modes to run: both, or the one that RINGVM_BENCH_POLL_NS / RINGVM_BENCH_CLIENT_POLL_NS describe. */
function pollModes(): readonly PollMode[] {
  const server = process.env.RINGVM_BENCH_POLL_NS;
  const client = process.env.RINGVM_BENCH_CLIENT_POLL_NS;
  if (server === undefined && client === undefined) return POLL_MODES;
  return [
    {
      name: 'custom',
      serverPollNs: server === undefined ? undefined : Number(server),
      clientPollNs: client === undefined ? 0 : Number(client),
    },
  ];
}

export async function runVhostBlkBench(options: { quick?: boolean } = {}): Promise<void> {
  const quick = options.quick === true;
  const rounds = Number(process.env.RINGVM_BENCH_ROUNDS ?? (quick ? 1 : 3));
  const s: Sizes = quick
    ? { imageBytes: 64 * MiB, qd1Ops: 2000, qd32Ops: 10_000, seqBytes: 32 * MiB }
    : { imageBytes: 256 * MiB, qd1Ops: 20_000, qd32Ops: 100_000, seqBytes: 128 * MiB };
  const work = mkdtempSync(join(tmpdir(), 'ringvm-bench-vhost-'));
  try {
    const image = join(work, 'disk.img');
    // Fully allocated: every block written once with nonzero data.
    writeFilledImage(image, s.imageBytes);
    for (const mode of pollModes()) await runPollMode(mode, image, work, s, rounds);
    console.log(
      'Targets: ringvm/QSD ≥ 1.0× on every line; ≥ 0.7× of raw for 1 MiB sequential (raw is one synchronous ' +
        'thread, so the QD 4 lines can pass it; raw writes end with fdatasync, as the servers end with FLUSH).',
    );
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

/** Every round of every phase against every server in one {@link PollMode}, and its table. */
async function runPollMode(
  mode: PollMode,
  image: string,
  work: string,
  s: Sizes,
  rounds: number,
): Promise<void> {
  const cli = new URL('../src/cli/main.js', import.meta.url).pathname;
  const pollNs = mode.serverPollNs;
  const exportArgs = (sock: string, extra = '') => [
    '--blockdev',
    `driver=file,node-name=d0,filename=${image}`,
    '--export',
    `type=vhost-user-blk,id=e0,node-name=d0,addr.type=unix,addr.path=${sock},writable=on${extra}`,
  ];
  const ringvmArgs = (sock: string) => exportArgs(sock, pollNs === undefined ? '' : `,poll-max-ns=${pollNs}`);
  const qsdArgs = (sock: string) =>
    pollNs === undefined
      ? exportArgs(sock)
      : ['--object', `iothread,id=io0,poll-max-ns=${pollNs}`, ...exportArgs(sock, ',iothread=io0')];
  // ringvm first, qemu-storage-daemon second: the ratios compare these two; more servers add columns.
  const servers: BlkServer[] = [
    { name: 'ringvm', argv: (sock: string) => [process.execPath, cli, 'serve', ...ringvmArgs(sock)] },
    { name: 'qemu-sd', argv: (sock: string) => ['qemu-storage-daemon', ...qsdArgs(sock)] },
  ];
  const baseline = process.env.RINGVM_BENCH_BASELINE;
  if (baseline !== undefined) {
    servers.push({
      name: 'baseline',
      argv: (sock: string) => [process.execPath, baseline, 'serve', ...ringvmArgs(sock)],
    });
  }
  /** raw[round][phase] */
  const raw: Result[] = [];
  const results = await runRounds(
    servers,
    work,
    s,
    rounds,
    PHASES,
    (round) => raw.push(measureRaw(image, s, round)),
    { pollNs: mode.clientPollNs },
  );
  console.log(
    `\nHost-only vhost-user block I/O, ${mode.name}: ringvm's virtio-blk driver (zero-copy readInto/writeFrom) ` +
      `over VhostUserFrontend, against ${servers.map((x) => x.name).join(', ')} (${s.imageBytes / MiB} MiB ` +
      `allocated raw image, page-cached; ${rounds} rounds, figures = best round; per round = median [min–max] ` +
      `of each round's ringvm/QSD, and of each server over that round's raw; raw = synchronous ` +
      `fs.readSync/writeSync of the same file; servers poll: ` +
      `${pollNs === undefined ? 'no' : `poll-max-ns=${pollNs}`}; driver polls: ` +
      `${mode.clientPollNs === 0 ? 'no' : `pollNs=${mode.clientPollNs}`}; ${hostConditions()})`,
  );
  const head = [
    'phase',
    ...servers.map((x) => x.name),
    'raw host',
    'ringvm/QSD',
    'per round',
    'ringvm/raw',
    'per round',
    'QSD/raw',
    'per round',
    ...(baseline === undefined ? [] : ['vs base']),
  ];
  const rows = PHASES.map((p, i) => {
    const figures = results.map((r) => best(r, i));
    const [a, b] = figures as [number, number];
    const h = best(raw, i);
    return [
      `${p.label} (${p.unit})`,
      ...figures.map((v) => fmt(v, p.unit)),
      fmt(h, p.unit),
      `${(a / b).toFixed(2)}×`,
      perRoundRatios(results, i),
      `${(a / h).toFixed(2)}×`,
      overRaw(results[0]!, raw, i),
      `${(b / h).toFixed(2)}×`,
      overRaw(results[1]!, raw, i),
      ...(figures[2] === undefined ? [] : [`${(a / figures[2]).toFixed(2)}×`]),
    ];
  });
  printTable(head, rows);
}
