/**
 * Block I/O from a real guest: the UML guest's virtio_blk driver against `ringvm serve` (vhost-user-blk) and
 * against qemu-storage-daemon's vhost-user-blk export, both attached to one guest boot, same commands.
 *
 * The guest runs ringvm-blk-bench (scripts/guest/blk-bench.c, a static program built into the UML root) with
 * O_DIRECT, so every block is a virtio request and not a page-cache hit in the guest: 1 MiB sequential writes and
 * reads, and 4 KiB writes and reads at random offsets, one at a time (queue depth 1). Each phase alternates
 * between the two disks, round after round, and is timed inside the guest (see guestScript).
 * Also reported: the time from starting each server to its socket listening, and its resident memory after the run.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { run, runUml, script } from '../test/guest/guest-harness.js';
import { ratioSpread } from './round-stats.js';

const IMAGE_MIB = 256;
const SEQ_MIB = 192;
const SMALL_COUNT = 8192;
/** Guest runs per server (alternating); the best time per phase counts. `RINGVM_BENCH_ROUNDS` overrides. */
const ROUNDS = positiveInt(process.env.RINGVM_BENCH_ROUNDS) ?? 3;
/**
 * `RINGVM_BENCH_BASELINE=path/to/build/src/cli/main.js`: a second ringvm build (say, a copy of the previous
 * build) served in the same alternation, as a third column, so a change is compared within one run.
 */
const BASELINE_CLI = process.env.RINGVM_BENCH_BASELINE;

function positiveInt(text: string | undefined): number | undefined {
  const n = Number(text);
  return text !== undefined && Number.isInteger(n) && n > 0 ? n : undefined;
}

interface Phase {
  readonly name: string;
  /** ringvm-blk-bench's access pattern (scripts/guest/blk-bench.c). */
  readonly pattern: 'seqwrite' | 'seqread' | 'randwrite' | 'randread';
  readonly blockBytes: number;
  readonly count: number;
  /** Throughput (MiB/s) or IOPS in the table. */
  readonly unit: 'MiB/s' | 'IOPS';
}

/**
 * The phases, in the order each round runs them. A qcow2 or other disk kind is another contender (below), not
 * another phase; a new access pattern is one more line here.
 */
const PHASES: readonly Phase[] = [
  { name: '1 MiB sequential write', pattern: 'seqwrite', blockBytes: 1 << 20, count: SEQ_MIB, unit: 'MiB/s' },
  { name: '1 MiB sequential read', pattern: 'seqread', blockBytes: 1 << 20, count: SEQ_MIB, unit: 'MiB/s' },
  {
    name: '4 KiB random write, QD1',
    pattern: 'randwrite',
    blockBytes: 4096,
    count: SMALL_COUNT,
    unit: 'IOPS',
  },
  { name: '4 KiB random read, QD1', pattern: 'randread', blockBytes: 4096, count: SMALL_COUNT, unit: 'IOPS' },
];

/**
 * One guest boot with every disk attached: `ROUNDS` rounds of every phase on each disk, the disks alternating
 * (and swapping order every round) so all see the same guest, the same moment and the same noise. Each run is
 * one `ringvm-blk-bench` (O_DIRECT, queue depth 1, timed inside the guest with CLOCK_MONOTONIC), its result line
 * prefixed with `PHASE <disk> <phase>`. Random phases use a new seed each round (the same for every disk). The
 * disks are told apart by size (virtio_uml probes in no promised order): `sizes[k]` sectors is disk k.
 */
function guestScript(sizes: readonly number[]): string {
  const lines = sizes.map(
    (sectors, k) =>
      `for d in /sys/block/vd*; do [ "$(cat $d/size)" = ${sectors} ] && D${k}=/dev/\${d##*/}; done; [ -n "$D${k}" ] || exit 11`,
  );
  for (let round = 0; round < ROUNDS; round++) {
    PHASES.forEach((p, i) => {
      const order = round % 2 === 0 ? sizes.map((_, k) => k) : sizes.map((_, k) => sizes.length - 1 - k);
      for (const k of order) {
        lines.push(
          `r=$(ringvm-blk-bench $D${k} ${p.pattern} ${p.blockBytes} ${p.count} ${round + 1}) || exit 10; echo "PHASE ${k} ${i} $r"`,
        );
      }
    });
  }
  return lines.join('\n');
}

function mib(r: { total: number; anon: number; file: number }): string {
  return `${(r.total / 1024).toFixed(1)} MiB (${(r.anon / 1024).toFixed(1)} + ${(r.file / 1024).toFixed(1)})`;
}

/** Seconds per round, per phase, per disk: `times[disk][phase][round]`. */
function parsePhases(stdout: string, disks: number): number[][][] {
  const times: number[][][] = Array.from({ length: disks }, () =>
    PHASES.map(() => new Array<number>(ROUNDS)),
  );
  const seen = Array.from({ length: disks }, () => PHASES.map(() => 0));
  for (const m of stdout.matchAll(/^PHASE (\d+) (\d+) RESULT \S+ \d+ \d+ (\d+)$/gm)) {
    const disk = Number(m[1]);
    const phase = Number(m[2]);
    times[disk]![phase]![seen[disk]![phase]!++] = Number(m[3]) / 1e9;
  }
  if (seen.some((row) => row.some((n) => n !== ROUNDS))) {
    throw new Error(`the guest did not report every phase of every round:\n${stdout}`);
  }
  return times;
}

async function waitForPath(path: string, child: ChildProcess, timeoutMs: number): Promise<number> {
  const start = process.hrtime.bigint();
  const deadline = Date.now() + timeoutMs;
  while (!existsSync(path)) {
    if (child.exitCode !== null) throw new Error(`the server exited (${child.exitCode}) before listening`);
    if (Date.now() > deadline) throw new Error(`${path} did not appear in ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 2));
  }
  return Number(process.hrtime.bigint() - start) / 1e6;
}

/** Resident memory in KiB: total, anonymous (the process's own) and file-backed (its binary and libraries). */
function rssKiB(pid: number): { total: number; anon: number; file: number } {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const field = (name: string) => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? NaN);
  return { total: field('VmRSS'), anon: field('RssAnon'), file: field('RssFile') };
}

async function stop(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null) return;
  const exited = new Promise((r) => child.once('exit', r));
  child.kill('SIGTERM');
  await exited;
}

interface Server {
  readonly child: ChildProcess;
  readonly socket: string;
  readonly listenMs: number;
  stderr(): string;
}

async function startServer(argv: readonly string[], socket: string): Promise<Server> {
  const [cmd, ...args] = argv;
  if (cmd === undefined) throw new Error('no command');
  const t0 = process.hrtime.bigint();
  const child = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  await waitForPath(socket, child, 30_000);
  return { child, socket, listenMs: Number(process.hrtime.bigint() - t0) / 1e6, stderr: () => stderr };
}

export async function runBlkUmlBench(): Promise<void> {
  const build = await run(script('build-uml'), [], 20 * 60_000);
  if (build.code !== 0) throw new Error(`build-uml failed:\n${build.stderr}`);
  const work = mkdtempSync(join(tmpdir(), 'ringvm-bench-blk-'));
  const servers: Server[] = [];
  try {
    const cli = new URL('../src/cli/main.js', import.meta.url).pathname;
    const ringvmServe = (main: string, image: string, sock: string) => [
      process.execPath,
      main,
      'serve',
      '--blockdev',
      `driver=file,node-name=d0,filename=${image}`,
      '--export',
      `type=vhost-user-blk,id=e0,node-name=d0,addr.type=unix,addr.path=${sock},writable=on`,
    ];
    const contenders: { name: string; argv: (image: string, sock: string) => string[] }[] = [
      { name: 'ringvm', argv: (image, sock) => ringvmServe(cli, image, sock) },
      {
        name: 'qemu-sd',
        argv: (image, sock) => [
          'qemu-storage-daemon',
          '--blockdev',
          `driver=file,node-name=d0,filename=${image}`,
          '--export',
          `type=vhost-user-blk,id=e0,node-name=d0,addr.type=unix,addr.path=${sock},writable=on`,
        ],
      },
    ];
    if (BASELINE_CLI !== undefined) {
      contenders.push({ name: 'baseline', argv: (image, sock) => ringvmServe(BASELINE_CLI, image, sock) });
    }
    // One image per server (allocated, so both read real blocks), of slightly different sizes so the guest can
    // tell its disks apart.
    const sizes = contenders.map((_, k) => (IMAGE_MIB + k) << 11);
    for (const [k, c] of contenders.entries()) {
      const image = join(work, `disk${k}.img`);
      writeFileSync(image, new Uint8Array((IMAGE_MIB + k) << 20));
      servers.push(await startServer(c.argv(image, join(work, `s${k}.sock`)), join(work, `s${k}.sock`)));
    }
    // Too long for the kernel command line: the guest runs it from a shared host directory.
    const scriptDir = join(work, 'guest');
    mkdirSync(scriptDir);
    writeFileSync(join(scriptDir, 'bench.sh'), guestScript(sizes));
    const r = await runUml(
      [
        ...servers.flatMap((s) => ['--dev', `${s.socket}:2`]),
        '--modules',
        'virtio_blk',
        '--script',
        join(scriptDir, 'bench.sh'),
      ],
      1_800_000,
    );
    if (r.code !== 0) {
      throw new Error(
        `guest failed (${r.code}):\n${r.stdout}\n${r.stderr}\n${servers.map((s) => s.stderr()).join('\n')}`,
      );
    }
    const times = parsePhases(r.stdout, contenders.length);
    const rss = servers.map((s) => rssKiB(s.child.pid ?? 0));

    console.log(
      `\nUML guest block I/O (O_DIRECT, queue depth 1, ringvm-blk-bench): ringvm serve vs qemu-storage-daemon, one ` +
        `guest with both disks, phases alternating between them, ${ROUNDS} rounds; figures = best round, ` +
        `ratio = ringvm / qemu-sd (best rounds), per round = median [min–max] of each round's ratio`,
    );
    const extra = BASELINE_CLI === undefined ? '' : `  ${'baseline'.padStart(14)}  ${'vs base'.padStart(7)}`;
    console.log(
      `${'phase'.padEnd(24)}  ${'ringvm'.padStart(14)}  ${'qemu-sd'.padStart(14)}  ${'ratio'.padStart(6)}  ${'per round'.padStart(18)}${extra}`,
    );
    PHASES.forEach((p, i) => {
      const fmt = (s: number) =>
        p.unit === 'MiB/s'
          ? `${((p.blockBytes * p.count) / (1 << 20) / s).toFixed(1)} MiB/s`
          : `${Math.round(p.count / s)} IOPS`;
      const best = (disk: number) => Math.min(...times[disk]![i]!);
      const a = best(0);
      const b = best(1);
      const perRound = times[0]![i]!.map((t, round) => times[1]![i]![round]! / t);
      const rounds = ratioSpread(perRound);
      const c = times.length > 2 ? best(2) : undefined;
      const more = c === undefined ? '' : `  ${fmt(c).padStart(14)}  ${(c / a).toFixed(2).padStart(6)}×`;
      console.log(
        `${p.name.padEnd(24)}  ${fmt(a).padStart(14)}  ${fmt(b).padStart(14)}  ${(b / a).toFixed(2).padStart(5)}×  ${rounds.padStart(18)}${more}`,
      );
    });
    console.log(
      `time to listening: ringvm ${servers[0]!.listenMs.toFixed(0)} ms, qemu-storage-daemon ${servers[1]!.listenMs.toFixed(0)} ms; ` +
        `RSS after the run (anonymous + file-backed): ringvm ${mib(rss[0]!)}, qemu-storage-daemon ${mib(rss[1]!)}`,
    );
  } finally {
    await Promise.all(servers.map((s) => stop(s.child)));
    rmSync(work, { recursive: true, force: true });
  }
}
