/**
 * Block I/O from a real guest: the UML guest's virtio_blk driver against `ringvm serve` (vhost-user-blk) and
 * against qemu-storage-daemon's vhost-user-blk export, on the same raw image, same guest, same commands.
 *
 * The guest runs busybox dd with O_DIRECT (so every block is a virtio request, not a page-cache hit in the
 * guest): 1 MiB sequential writes and reads, and 4 KiB writes and reads one at a time (queue depth 1). Each
 * phase is timed inside the guest from /proc/uptime (10 ms resolution; phases last seconds). Also reported:
 * the time from starting `ringvm serve` to its socket listening, and its resident memory after the run.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { run, runUml, script } from '../test/guest/guest-harness.js';

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
  readonly command: string;
  /** Bytes moved, for throughput; ops for IOPS. */
  readonly bytes: number;
  readonly ops: number;
}

const PHASES: readonly Phase[] = [
  {
    name: '1 MiB sequential write',
    command: `dd if=/dev/zero of=/dev/vda bs=1M count=${SEQ_MIB} oflag=direct`,
    bytes: SEQ_MIB << 20,
    ops: SEQ_MIB,
  },
  {
    name: '1 MiB sequential read',
    command: `dd if=/dev/vda of=/dev/null bs=1M count=${SEQ_MIB} iflag=direct`,
    bytes: SEQ_MIB << 20,
    ops: SEQ_MIB,
  },
  {
    name: '4 KiB write, QD1',
    command: `dd if=/dev/zero of=/dev/vda bs=4k count=${SMALL_COUNT} oflag=direct`,
    bytes: SMALL_COUNT * 4096,
    ops: SMALL_COUNT,
  },
  {
    name: '4 KiB read, QD1',
    command: `dd if=/dev/vda of=/dev/null bs=4k count=${SMALL_COUNT} iflag=direct`,
    bytes: SMALL_COUNT * 4096,
    ops: SMALL_COUNT,
  },
];

/**
 * One guest boot that runs every phase and prints `PHASE <i> <start> <end>` for each, in nanoseconds of the guest's
 * monotonic clock (the "now at" line of /proc/timer_list: /proc/uptime's 10 ms steps are too coarse for the 1 MiB
 * phases, which last about 100 ms).
 */
function guestScript(): string {
  const lines = [`t() { head -3 /proc/timer_list | sed -n 's/^now at \\([0-9]*\\) nsecs$/\\1/p'; }`];
  PHASES.forEach((p, i) => {
    lines.push(`a=$(t); ${p.command} 2>/dev/null || exit 10; b=$(t); echo "PHASE ${i} $a $b"`);
  });
  return lines.join('\n');
}

function parsePhases(stdout: string): number[] {
  const seconds: number[] = [];
  for (const m of stdout.matchAll(/^PHASE (\d+) ([\d.]+) ([\d.]+)$/gm)) {
    seconds[Number(m[1])] = (Number(m[3]) - Number(m[2])) / 1e9;
  }
  if (seconds.length !== PHASES.length || seconds.some((s) => !(s > 0))) {
    throw new Error(`the guest did not report every phase:\n${stdout}`);
  }
  return seconds;
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

function rssKiB(pid: number): number {
  const m = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m === null ? NaN : Number(m[1]);
}

async function stop(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null) return;
  const exited = new Promise((r) => child.once('exit', r));
  child.kill('SIGTERM');
  await exited;
}

interface ServerResult {
  readonly seconds: number[];
  readonly listenMs: number;
  readonly rssKiB: number;
}

async function measure(name: string, argv: readonly string[], socket: string): Promise<ServerResult> {
  const [cmd, ...args] = argv;
  if (cmd === undefined) throw new Error('no command');
  const t0 = process.hrtime.bigint();
  const child = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  try {
    await waitForPath(socket, child, 30_000);
    const listenMs = Number(process.hrtime.bigint() - t0) / 1e6;
    const r = await runUml(['--dev', `${socket}:2`, '--modules', 'virtio_blk', '--', guestScript()], 600_000);
    if (r.code !== 0)
      throw new Error(`${name}: guest failed (${r.code}):\n${r.stdout}\n${r.stderr}\n${stderr}`);
    return { seconds: parsePhases(r.stdout), listenMs, rssKiB: rssKiB(child.pid ?? 0) };
  } finally {
    await stop(child);
  }
}

function best(results: readonly ServerResult[]): ServerResult {
  const first = results[0];
  if (first === undefined) throw new Error('no results');
  return {
    seconds: first.seconds.map((_, i) => Math.min(...results.map((r) => r.seconds[i]!))),
    listenMs: Math.min(...results.map((r) => r.listenMs)),
    rssKiB: Math.max(...results.map((r) => r.rssKiB)),
  };
}

export async function runBlkUmlBench(): Promise<void> {
  const build = await run(script('build-uml'), [], 20 * 60_000);
  if (build.code !== 0) throw new Error(`build-uml failed:\n${build.stderr}`);
  const work = mkdtempSync(join(tmpdir(), 'ringvm-bench-blk-'));
  try {
    const image = join(work, 'disk.img');
    writeFileSync(image, new Uint8Array(IMAGE_MIB << 20)); // allocated, so both servers read real blocks
    const cli = new URL('../src/cli/main.js', import.meta.url).pathname;
    const ringvmSock = join(work, 'ringvm.sock');
    const qsdSock = join(work, 'qsd.sock');
    const ringvmArgv = [
      process.execPath,
      cli,
      'serve',
      '--blockdev',
      `driver=file,node-name=d0,filename=${image}`,
      '--export',
      `type=vhost-user-blk,id=e0,node-name=d0,addr.type=unix,addr.path=${ringvmSock},writable=on`,
    ];
    const qsdArgv = [
      'qemu-storage-daemon',
      '--blockdev',
      `driver=file,node-name=d0,filename=${image}`,
      '--export',
      `type=vhost-user-blk,id=e0,node-name=d0,addr.type=unix,addr.path=${qsdSock},writable=on`,
    ];
    const baselineSock = join(work, 'baseline.sock');
    const baselineArgv =
      BASELINE_CLI === undefined
        ? undefined
        : ringvmArgv.map((a) => (a === cli ? BASELINE_CLI : a.replace(ringvmSock, baselineSock)));
    // Alternate the servers and keep each one's best time per phase: the machine is shared and noisy.
    const runs: { ringvm: ServerResult[]; qsd: ServerResult[]; baseline: ServerResult[] } = {
      ringvm: [],
      qsd: [],
      baseline: [],
    };
    for (let i = 0; i < ROUNDS; i++) {
      runs.ringvm.push(await measure('ringvm serve', ringvmArgv, ringvmSock));
      runs.qsd.push(await measure('qemu-storage-daemon', qsdArgv, qsdSock));
      if (baselineArgv !== undefined)
        runs.baseline.push(await measure('ringvm serve (baseline)', baselineArgv, baselineSock));
    }
    const ringvm = best(runs.ringvm);
    const qsd = best(runs.qsd);
    const baseline = baselineArgv === undefined ? undefined : best(runs.baseline);
    console.log(
      `\nUML guest block I/O (O_DIRECT dd) — ringvm serve vs qemu-storage-daemon, same image and guest, best of ${ROUNDS} each`,
    );
    const extra = baseline === undefined ? '' : `  ${'baseline'.padStart(14)}  ${'vs base'.padStart(7)}`;
    console.log(
      `${'phase'.padEnd(24)}  ${'ringvm'.padStart(14)}  ${'qemu-sd'.padStart(14)}  ${'ratio'.padStart(6)}${extra}`,
    );
    PHASES.forEach((p, i) => {
      const fmt = (s: number) =>
        p.bytes >= p.ops * (1 << 20)
          ? `${(p.bytes / (1 << 20) / s).toFixed(1)} MiB/s`
          : `${Math.round(p.ops / s)} IOPS`;
      const a = ringvm.seconds[i]!;
      const b = qsd.seconds[i]!;
      const c = baseline?.seconds[i];
      const more = c === undefined ? '' : `  ${fmt(c).padStart(14)}  ${(c / a).toFixed(2).padStart(6)}×`;
      console.log(
        `${p.name.padEnd(24)}  ${fmt(a).padStart(14)}  ${fmt(b).padStart(14)}  ${(b / a).toFixed(2).padStart(5)}×${more}`,
      );
    });
    console.log(
      `time to listening: ringvm ${ringvm.listenMs.toFixed(0)} ms, qemu-storage-daemon ${qsd.listenMs.toFixed(0)} ms; ` +
        `RSS after the run: ringvm ${(ringvm.rssKiB / 1024).toFixed(1)} MiB, qemu-storage-daemon ${(qsd.rssKiB / 1024).toFixed(1)} MiB`,
    );
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}
