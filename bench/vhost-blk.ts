/**
 * Host-only vhost-user block benchmark: no guest CPU in the loop. ringvm's own virtio-blk driver
 * (VirtioBlkDriver on a VhostUserFrontend) is the client; the servers are qemu-storage-daemon's vhost-user-blk
 * export and `ringvm serve`, on the same fully allocated raw image (page-cached on the host, as both servers
 * open it without O_DIRECT). Raw host pread/pwrite of the same file (fs.readSync/writeSync, synchronous, one
 * request at a time) is the physical limit.
 *
 * Phases: 4 KiB random reads at queue depth 1 and 32 (IOPS), 1 MiB sequential reads and writes at queue depth 1
 * (MiB/s). Each round starts each server in turn (the order alternating), attaches, runs every phase, detaches
 * and stops it; the best figure of the rounds counts.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, mkdtempSync, openSync, readSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { VirtioBlkDriver, type VirtioBlkDisk } from '../src/drivers/blk/blk-driver.js';
import { VhostUserFrontend } from '../src/transport/vhost-user/frontend.js';
import { VirtioBus } from '../src/virtio/driver/virtio-bus.js';

const MiB = 1 << 20;
const SECTOR = 512;

interface Sizes {
  readonly imageBytes: number;
  readonly qd1Ops: number;
  readonly qd32Ops: number;
  readonly seqBytes: number;
}

type Phase = 'rand4k-qd1' | 'rand4k-qd32' | 'seq1m-read' | 'seq1m-write';
const PHASES: readonly { key: Phase; label: string; unit: 'IOPS' | 'MiB/s' }[] = [
  { key: 'rand4k-qd1', label: '4 KiB random read, QD 1', unit: 'IOPS' },
  { key: 'rand4k-qd32', label: '4 KiB random read, QD 32', unit: 'IOPS' },
  { key: 'seq1m-read', label: '1 MiB sequential read', unit: 'MiB/s' },
  { key: 'seq1m-write', label: '1 MiB sequential write', unit: 'MiB/s' },
];
type Result = Record<Phase, number>;

function rng(seed: number): (n: number) => number {
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

const now = () => Number(process.hrtime.bigint()) / 1e9;

async function measureDisk(disk: VirtioBlkDisk, s: Sizes, seed: number): Promise<Result> {
  const blocks = s.imageBytes / 4096;
  let r = rng(seed);
  // Warm-up: a few requests so first-use costs are not timed.
  for (let i = 0; i < 64; i++) await disk.read(r(blocks) * 8, 4096);
  r = rng(seed + 1);
  let t = now();
  for (let i = 0; i < s.qd1Ops; i++) await disk.read(r(blocks) * 8, 4096);
  const qd1 = s.qd1Ops / (now() - t);
  let issued = 0;
  const worker = async () => {
    while (issued < s.qd32Ops) {
      issued++;
      await disk.read(r(blocks) * 8, 4096);
    }
  };
  t = now();
  await Promise.all(Array.from({ length: 32 }, worker));
  const qd32 = s.qd32Ops / (now() - t);
  t = now();
  for (let off = 0; off < s.seqBytes; off += MiB) await disk.read(off / SECTOR, MiB);
  const seqRead = s.seqBytes / MiB / (now() - t);
  const data = new Uint8Array(MiB).fill(0xa5);
  t = now();
  for (let off = 0; off < s.seqBytes; off += MiB) await disk.write(off / SECTOR, data);
  await disk.flush();
  const seqWrite = s.seqBytes / MiB / (now() - t);
  return { 'rand4k-qd1': qd1, 'rand4k-qd32': qd32, 'seq1m-read': seqRead, 'seq1m-write': seqWrite };
}

function measureRaw(image: string, s: Sizes, seed: number): Result {
  const fd = openSync(image, 'r+');
  try {
    const blocks = s.imageBytes / 4096;
    const small = Buffer.alloc(4096);
    const r = rng(seed + 1);
    let t = now();
    for (let i = 0; i < s.qd1Ops; i++) readSync(fd, small, 0, 4096, r(blocks) * 4096);
    const qd1 = s.qd1Ops / (now() - t);
    t = now();
    for (let i = 0; i < s.qd32Ops; i++) readSync(fd, small, 0, 4096, r(blocks) * 4096);
    const qd32 = s.qd32Ops / (now() - t);
    const big = Buffer.alloc(MiB, 0xa5);
    t = now();
    for (let off = 0; off < s.seqBytes; off += MiB) readSync(fd, big, 0, MiB, off);
    const seqRead = s.seqBytes / MiB / (now() - t);
    t = now();
    for (let off = 0; off < s.seqBytes; off += MiB) writeSync(fd, big, 0, MiB, off);
    const seqWrite = s.seqBytes / MiB / (now() - t);
    return { 'rand4k-qd1': qd1, 'rand4k-qd32': qd32, 'seq1m-read': seqRead, 'seq1m-write': seqWrite };
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

async function runOne(argv: readonly string[], socket: string, s: Sizes, seed: number): Promise<Result> {
  const child = await startServer(argv, socket);
  try {
    const frontend = await VhostUserFrontend.connect(socket, {
      deviceId: 2,
      connectTimeoutMs: 10_000,
    });
    const bus = new VirtioBus();
    const driver = new VirtioBlkDriver();
    await bus.registerDriver(driver);
    const dev = await bus.addDevice(frontend);
    try {
      return await measureDisk(driver.disk(dev), s, seed);
    } finally {
      await bus.removeDevice(dev);
      await frontend.close();
    }
  } finally {
    await stopServer(child);
  }
}

function fmt(v: number, unit: 'IOPS' | 'MiB/s'): string {
  return unit === 'IOPS' ? `${(v / 1000).toFixed(1)} k` : v.toFixed(0);
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
    const fd = openSync(image, 'w');
    const chunk = Buffer.alloc(16 * MiB, 0x5a);
    for (let off = 0; off < s.imageBytes; off += chunk.length) writeSync(fd, chunk, 0, chunk.length, off);
    closeSync(fd);
    const cli = new URL('../src/cli/main.js', import.meta.url).pathname;
    const exportArgs = (sock: string) => [
      '--blockdev',
      `driver=file,node-name=d0,filename=${image}`,
      '--export',
      `type=vhost-user-blk,id=e0,node-name=d0,addr.type=unix,addr.path=${sock},writable=on`,
    ];
    const servers = [
      { name: 'ringvm', argv: (sock: string) => [process.execPath, cli, 'serve', ...exportArgs(sock)] },
      { name: 'qemu-sd', argv: (sock: string) => ['qemu-storage-daemon', ...exportArgs(sock)] },
    ];
    const best: Result[] = servers.map(() => ({
      'rand4k-qd1': 0,
      'rand4k-qd32': 0,
      'seq1m-read': 0,
      'seq1m-write': 0,
    }));
    const raw: Result = { 'rand4k-qd1': 0, 'rand4k-qd32': 0, 'seq1m-read': 0, 'seq1m-write': 0 };
    const keepBest = (into: Result, got: Result) => {
      for (const p of PHASES) into[p.key] = Math.max(into[p.key], got[p.key]);
    };
    for (let round = 0; round < rounds; round++) {
      const order = round % 2 === 0 ? [0, 1] : [1, 0];
      for (const k of order) {
        const server = servers[k]!;
        keepBest(
          best[k]!,
          await runOne(
            server.argv(join(work, `${server.name}.sock`)),
            join(work, `${server.name}.sock`),
            s,
            round,
          ),
        );
      }
      keepBest(raw, measureRaw(image, s, round));
    }
    console.log(
      `\nHost-only vhost-user block I/O: ringvm's virtio-blk driver over VhostUserFrontend, against ringvm serve and ` +
        `qemu-storage-daemon (${s.imageBytes / MiB} MiB allocated raw image, page-cached; best of ${rounds}; raw = ` +
        `synchronous fs.readSync/writeSync of the same file)`,
    );
    const head = ['phase', 'ringvm', 'qemu-sd', 'raw host', 'ringvm/QSD', 'ringvm/raw', 'QSD/raw'];
    const rows = PHASES.map((p) => {
      const a = best[0]![p.key];
      const b = best[1]![p.key];
      const h = raw[p.key];
      return [
        `${p.label} (${p.unit})`,
        fmt(a, p.unit),
        fmt(b, p.unit),
        fmt(h, p.unit),
        `${(a / b).toFixed(2)}×`,
        `${(a / h).toFixed(2)}×`,
        `${(b / h).toFixed(2)}×`,
      ];
    });
    const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
    const line = (cells: string[]) =>
      cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ');
    console.log(line(head));
    for (const r of rows) console.log(line(r));
    console.log('Targets: ringvm/QSD ≥ 1.0× on every line; ≥ 0.7× of raw for 1 MiB sequential.');
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}
