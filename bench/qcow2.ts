/**
 * qcow2 benchmarks (issue "qcow2 images and `ringvm img`"), each against its QEMU peer in the same run:
 *
 * 1. Block I/O on ONE qcow2 image (fully allocated, page-cached), served in turn by `ringvm serve` and by
 *    `qemu-storage-daemon`, both with `--blockdev driver=file,... --blockdev driver=qcow2,...,file=f0`; the client
 *    is ringvm's virtio-blk driver over the vhost-user front end (bench/vhost-blk.ts's harness, no guest CPU).
 *    Phases: 4 KiB random read and write at queue depth 1, 1 MiB sequential read and write (vhost-blk.ts's
 *    phases and rounds: the order of the servers alternates per round; the best of the rounds counts).
 * 2. `ringvm img convert` against `qemu-img convert` of a 1 GiB image (¾ data, ¼ zeros), qcow2 → raw and
 *    raw → qcow2, each the best of the rounds, interleaved; times are whole commands as a user runs them (so
 *    ringvm's include Node's start-up).
 *
 * `node build/bench/main.js --qcow2-only` runs this alone (`--quick`: smaller, one round).
 */
import { spawnSync } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, readSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  best,
  fmt,
  now,
  perRoundRatios,
  printTable,
  random4k,
  runRounds,
  sequential,
  writeFilledImage,
  type BlkServer,
  type Phase,
  type Sizes,
} from './vhost-blk.js';

const MiB = 1 << 20;

const PHASES: readonly Phase[] = [
  random4k(false, 1),
  random4k(true, 1),
  sequential(false, 1),
  sequential(true, 1),
];

function run(cmd: string, args: readonly string[]): void {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.status}:\n${r.stderr}`);
}

function timed(cmd: string, args: readonly string[]): number {
  const t = now();
  run(cmd, args);
  return now() - t;
}

/**
 * Reads `path` once so that a timed command finds it in the page cache. This machine's DAMON `pageout` scheme
 * evicts pages idle for about a minute (docs/benchmarks.md), which made single runs of either tool 2-5x slower.
 */
function warm(path: string): void {
  const fd = openSync(path, 'r');
  try {
    const buf = Buffer.allocUnsafe(4 * MiB);
    for (let pos = 0; ; pos += buf.length) {
      if (readSync(fd, buf, 0, buf.length, pos) === 0) break;
    }
  } finally {
    closeSync(fd);
  }
}

/** A raw file of `bytes`: data (nonzero, varying) in three of every four MiB, zeros in the fourth. */
function writeSourceRaw(path: string, bytes: number): void {
  const fd = openSync(path, 'w');
  try {
    const chunk = Buffer.alloc(MiB);
    for (let off = 0; off < bytes; off += MiB) {
      if ((off / MiB) % 4 === 3) continue;
      chunk.fill((off / MiB) & 0xff || 1);
      writeSync(fd, chunk, 0, MiB, off);
    }
  } finally {
    closeSync(fd);
  }
  run('truncate', ['-s', String(bytes), path]);
}

export async function runQcow2Bench(options: { quick?: boolean } = {}): Promise<void> {
  const quick = options.quick === true;
  const rounds = Number(process.env.RINGVM_BENCH_ROUNDS ?? (quick ? 1 : 3));
  const s: Sizes = quick
    ? { imageBytes: 64 * MiB, qd1Ops: 2000, qd32Ops: 0, seqBytes: 32 * MiB }
    : { imageBytes: 256 * MiB, qd1Ops: 20_000, qd32Ops: 0, seqBytes: 128 * MiB };
  const convertBytes = quick ? 256 * MiB : 1024 * MiB;
  const work = mkdtempSync(join(tmpdir(), 'ringvm-bench-qcow2-'));
  const cli = new URL('../src/cli/main.js', import.meta.url).pathname;
  try {
    // 1. Block I/O on one fully allocated qcow2 image (qemu-img's default 64 KiB clusters).
    const raw = join(work, 'fill.raw');
    writeFilledImage(raw, s.imageBytes);
    const image = join(work, 'disk.qcow2');
    run('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', raw, image]);
    rmSync(raw);
    const exportArgs = (sock: string) => [
      '--blockdev',
      `driver=file,node-name=f0,filename=${image}`,
      '--blockdev',
      'driver=qcow2,node-name=d0,file=f0',
      '--export',
      `type=vhost-user-blk,id=e0,node-name=d0,addr.type=unix,addr.path=${sock},writable=on`,
    ];
    // ringvm first, qemu-storage-daemon second: the ratios compare these two.
    const servers: BlkServer[] = [
      { name: 'ringvm', argv: (sock) => [process.execPath, cli, 'serve', ...exportArgs(sock)] },
      { name: 'qemu-sd', argv: (sock) => ['qemu-storage-daemon', ...exportArgs(sock)] },
    ];
    const results = await runRounds(servers, work, s, rounds, PHASES);
    console.log(
      `\nqcow2 block I/O: ringvm's virtio-blk driver over VhostUserFrontend, against ringvm serve and ` +
        `qemu-storage-daemon (driver=qcow2) on the same qcow2 image (${s.imageBytes / MiB} MiB, 64 KiB clusters, ` +
        `fully allocated, page-cached; ${rounds} rounds, figures = best round; per round = median [min–max])`,
    );
    printTable(
      ['phase', 'ringvm', 'qemu-sd', 'ringvm/QSD', 'per round'],
      PHASES.map((p, i) => {
        const a = best(results[0]!, i);
        const b = best(results[1]!, i);
        return [
          `${p.label} (${p.unit})`,
          fmt(a, p.unit),
          fmt(b, p.unit),
          `${(a / b).toFixed(2)}×`,
          perRoundRatios(results, i),
        ];
      }),
    );
    console.log('Target: ringvm/QSD ≥ 0.9× on every line.');
    rmSync(image);

    // 2. convert.
    const srcRaw = join(work, 'src.raw');
    const srcQcow2 = join(work, 'src.qcow2');
    writeSourceRaw(srcRaw, convertBytes);
    run('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', srcRaw, srcQcow2]);
    const cases = [
      { label: 'qcow2 → raw', src: srcQcow2, from: 'qcow2', to: 'raw' },
      { label: 'raw → qcow2', src: srcRaw, from: 'raw', to: 'qcow2' },
    ];
    const rows: string[][] = [];
    for (const c of cases) {
      let ours = Infinity;
      let theirs = Infinity;
      const out = join(work, `out.${c.to}`);
      const args = ['convert', '-f', c.from, '-O', c.to, c.src, out];
      // One untimed run of each first: both programs' own files (node, ringvm's modules, qemu-img and its
      // libraries) come back into the page cache too.
      for (const [cmd, argv] of [
        [process.execPath, [cli, 'img', ...args]],
        ['qemu-img', args],
      ] as const) {
        rmSync(out, { force: true });
        run(cmd, argv);
      }
      for (let round = 0; round < rounds; round++) {
        for (const k of round % 2 === 0 ? [0, 1] : [1, 0]) {
          rmSync(out, { force: true });
          warm(c.src);
          if (k === 0) ours = Math.min(ours, timed(process.execPath, [cli, 'img', ...args]));
          else theirs = Math.min(theirs, timed('qemu-img', args));
        }
      }
      rmSync(out, { force: true });
      const mib = convertBytes / MiB;
      rows.push([
        c.label,
        `${ours.toFixed(2)} s (${(mib / ours).toFixed(0)} MiB/s)`,
        `${theirs.toFixed(2)} s (${(mib / theirs).toFixed(0)} MiB/s)`,
        `${(theirs / ours).toFixed(2)}×`,
      ]);
    }
    console.log(
      `\nimg convert of a ${convertBytes / MiB} MiB image (¾ data, ¼ zeros; page-cached; whole commands, best of ${rounds})`,
    );
    printTable(['conversion', 'ringvm img', 'qemu-img', 'speed ratio'], rows);
    console.log('Target: ringvm img convert ≥ 1.0× qemu-img convert speed.');
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}
