/**
 * Network I/O from a real guest: the UML guest's own virtio_net driver on `ringvm serve` (vhost-user-net over a
 * tap), against the same guest's UML vector network driver on a tap of its own (`vec0:transport=tap`: the
 * kernel path with no vhost-user in between, the physical reference of the virtio-net issue).
 *
 * One guest boot with both interfaces: eth0 (ringvm) on 10.98.0.0/24, vec0 (vector) on 10.97.0.0/24. Both taps'
 * host sides live in one network namespace the bench makes and deletes (the guest runs inside it too, so UML's
 * vector driver opens its tap there), with a socat sink and a socat echo server listening on both subnets. The
 * guest runs ringvm-net-bench (scripts/guest/net-bench.c): guest → host TCP stream throughput (until the sink has
 * read every byte) and 1-byte TCP request/response with TCP_NODELAY, timed inside the guest. Each phase alternates
 * between the interfaces, the order swapping every round; the best round per interface counts, as in the block
 * bench. Ratio = ringvm / vector (higher is better for ringvm). `taskset -c N` on the whole run puts the guest,
 * ringvm serve and the socat peers on one CPU (the header says which CPUs the run had).
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawn, type ChildProcess } from 'node:child_process';
import { run, script } from '../test/guest/guest-harness.js';
import { NetNamespace, ip, uniqueName } from '../test/guest/net-namespace.js';
import { hostConditions } from './host-conditions.js';
import { ratioSpread } from './round-stats.js';

const STREAM_MIB = 512;
const RR_COUNT = 10_000;
/**
 * Rounds per interface; the best counts. 10, not 5: one interface's rounds span 2× on an unpinned 2-core machine
 * (docs/benchmarks.md), and with 5 the best-round ratio still swung 0.79–1.37× between runs. A round is ~4 s.
 */
const ROUNDS = positiveInt(process.env.RINGVM_BENCH_ROUNDS) ?? 10;
const SINK_PORT = 5101;
const ECHO_PORT = 5102;

function positiveInt(text: string | undefined): number | undefined {
  const n = Number(text);
  return text !== undefined && Number.isInteger(n) && n > 0 ? n : undefined;
}

interface Nic {
  readonly name: string;
  /** The guest's interface. */
  readonly guestIf: string;
  /** The /24 both ends use: host side .1, guest .2. */
  readonly prefix: string;
}

const NICS: readonly Nic[] = [
  { name: 'ringvm', guestIf: 'eth0', prefix: '10.98.0' },
  { name: 'vector', guestIf: 'vec0', prefix: '10.97.0' },
];

interface Phase {
  readonly name: string;
  readonly mode: 'stream' | 'rr';
  readonly port: number;
  readonly amount: number;
}

const PHASES: readonly Phase[] = [
  { name: 'TCP stream guest → host', mode: 'stream', port: SINK_PORT, amount: STREAM_MIB },
  { name: 'TCP 1-byte request/response', mode: 'rr', port: ECHO_PORT, amount: RR_COUNT },
];

function guestScript(): string {
  const lines: string[] = [];
  for (const n of NICS) {
    lines.push(
      `ip link set ${n.guestIf} up || exit 11`,
      `ip addr add ${n.prefix}.2/24 dev ${n.guestIf} || exit 11`,
      // The first packets also settle ARP before anything is timed.
      `ping -c 2 -W 5 ${n.prefix}.1 >/dev/null || exit 12`,
    );
  }
  for (let round = 0; round < ROUNDS; round++) {
    PHASES.forEach((p, i) => {
      const order = round % 2 === 0 ? NICS.map((_, k) => k) : NICS.map((_, k) => NICS.length - 1 - k);
      for (const k of order) {
        const host = `${NICS[k]!.prefix}.1`;
        lines.push(
          `r=$(ringvm-net-bench ${p.mode} ${host} ${p.port} ${p.amount}) || exit 10; echo "PHASE ${k} ${i} $r"`,
        );
      }
    });
  }
  return lines.join('\n') + '\n';
}

/** Seconds per round: `times[nic][phase][round]`. */
function parsePhases(stdout: string): number[][][] {
  const times = NICS.map(() => PHASES.map(() => [] as number[]));
  for (const m of stdout.matchAll(/^PHASE (\d+) (\d+) RESULT \S+ \d+ (\d+)$/gm)) {
    times[Number(m[1])]![Number(m[2])]!.push(Number(m[3]) / 1e9);
  }
  if (times.some((nic) => nic.some((rounds) => rounds.length !== ROUNDS))) {
    throw new Error(`the guest did not report every phase of every round:\n${stdout}`);
  }
  return times;
}

/** Waits until `ifname` exists in this namespace (ringvm serve creates the tap before it listens). */
async function waitForInterface(ifname: string, server: ChildProcess, stderr: () => string): Promise<void> {
  const deadline = Date.now() + 30_000;
  for (;;) {
    try {
      ip('link', 'show', ifname);
      return;
    } catch {
      if (server.exitCode !== null) throw new Error(`ringvm serve exited (${server.exitCode}):\n${stderr()}`);
      if (Date.now() > deadline) throw new Error(`tap ${ifname} did not appear:\n${stderr()}`);
      await new Promise((r) => setTimeout(r, 10));
    }
  }
}

export async function runNetUmlBench(): Promise<void> {
  const conditions = hostConditions();
  const build = await run(script('build-uml'), [], 20 * 60_000);
  if (build.code !== 0) throw new Error(`build-uml failed:\n${build.stderr}`);
  const work = mkdtempSync(join(tmpdir(), 'ringvm-bench-net-'));
  const ns = NetNamespace.create('rvnb');
  let server: ChildProcess | undefined;
  try {
    const ringvmTap = uniqueName('rvb');
    const vectorTap = uniqueName('rvv');
    const socket = join(work, 'net.sock');
    const cli = new URL('../src/cli/main.js', import.meta.url).pathname;
    server = spawn(
      process.execPath,
      [
        cli,
        'serve',
        '--netdev',
        `tap,id=n0,ifname=${ringvmTap}`,
        '--export',
        `type=vhost-user-net,id=e0,netdev=n0,addr.path=${socket}`,
      ],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
    let stderr = '';
    server.stderr?.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    await waitForInterface(ringvmTap, server, () => stderr);
    ns.adopt(ringvmTap, `${NICS[0]!.prefix}.1/24`);
    ip('-n', ns.name, 'tuntap', 'add', 'dev', vectorTap, 'mode', 'tap');
    ip('-n', ns.name, 'addr', 'add', `${NICS[1]!.prefix}.1/24`, 'dev', vectorTap);
    ip('-n', ns.name, 'link', 'set', vectorTap, 'up');
    ns.spawn(['socat', '-u', `TCP-LISTEN:${SINK_PORT},reuseaddr,fork`, 'OPEN:/dev/null']);
    ns.spawn(['socat', `TCP-LISTEN:${ECHO_PORT},reuseaddr,fork,nodelay`, 'PIPE']);

    const scriptDir = join(work, 'guest');
    mkdirSync(scriptDir);
    writeFileSync(join(scriptDir, 'bench.sh'), guestScript());
    const r = await run(
      'ip',
      [
        'netns',
        'exec',
        ns.name,
        script('run-uml'),
        '--dev',
        `${socket}:1`,
        '--append',
        `vec0:transport=tap,ifname=${vectorTap}`,
        '--modules',
        'virtio_net',
        '--mem',
        '512M',
        '--script',
        join(scriptDir, 'bench.sh'),
      ],
      1_800_000,
    );
    if (r.code !== 0) throw new Error(`guest failed (${r.code}):\n${r.stdout}\n${r.stderr}\n${stderr}`);
    const times = parsePhases(r.stdout);

    console.log(
      `\nUML guest network I/O (ringvm-net-bench over TCP to a socat peer in a namespace): the guest's virtio_net ` +
        `on ringvm serve (tap back end) vs the same guest's UML vector driver on its own tap, one boot, phases ` +
        `alternating, ${ROUNDS} rounds; figures = best round, ratio = ringvm / vector, per round = median [min–max]; ` +
        `${conditions} at the start`,
    );
    console.log(
      `${'phase'.padEnd(28)}  ${'ringvm'.padStart(16)}  ${'vector'.padStart(16)}  ${'ratio'.padStart(6)}  ${'per round'.padStart(18)}`,
    );
    PHASES.forEach((p, i) => {
      const fmt = (s: number) =>
        p.mode === 'stream' ? `${(p.amount / s).toFixed(0)} MiB/s` : `${Math.round(p.amount / s)} trans/s`;
      const best = (nic: number) => Math.min(...times[nic]![i]!);
      const a = best(0);
      const b = best(1);
      const perRound = times[0]![i]!.map((t, round) => times[1]![i]![round]! / t);
      const rounds = ratioSpread(perRound);
      console.log(
        `${p.name.padEnd(28)}  ${fmt(a).padStart(16)}  ${fmt(b).padStart(16)}  ${(b / a).toFixed(2).padStart(5)}×  ${rounds.padStart(18)}`,
      );
    });
    console.log('Target (virtio-net issue): ≥ 0.8× of the vector driver on throughput.');
  } finally {
    if (server !== undefined && server.exitCode === null) {
      const exited = new Promise((res) => server!.once('exit', res));
      server.kill('SIGTERM');
      await exited;
    }
    ns.delete();
    rmSync(work, { recursive: true, force: true });
  }
}
