/**
 * The vhost-user front end (VhostUserFrontend) under ringvm's own virtio-blk driver, against real back ends:
 * qemu-storage-daemon's vhost-user-blk export and ringvm's (VhostUserExport in-process, and `ringvm serve` as a
 * process for the kill test). Every I/O is checked against the host image file.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BlkDriverError, VirtioBlkDriver, type VirtioBlkDisk } from '../../../src/drivers/blk/blk-driver.js';
import { VhostUserFrontend, VhostUserFrontendError } from '../../../src/transport/vhost-user/frontend.js';
import { VhostUserExport } from '../../../src/transport/vhost-user/vhost-user-export.js';
import { VirtioBus } from '../../../src/virtio/driver/virtio-bus.js';
import type { VirtioBusDevice } from '../../../src/virtio/driver/virtio-bus-device.js';
import { MiB, pattern, root, run, script } from '../../guest/guest-harness.js';

const BLK_FACTORIES = new URL('../../fixtures/export-devices.js', import.meta.url).href;
const CLI = join(root, 'build', 'src', 'cli', 'main.js');
const IMAGE_BYTES = 16 * MiB;
const SECTOR = 512;

interface Peer {
  readonly socket: string;
  stop(): Promise<void>;
  /** Kills the back end without a clean shutdown (SIGKILL for a process). */
  kill(): Promise<void>;
}

const children = new Set<ChildProcess>();

function killChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  const exited = new Promise<void>((r) => {
    child.once('exit', () => {
      r();
    });
  });
  child.kill('SIGKILL');
  return exited;
}

async function spawnPeer(argv: string[], socket: string): Promise<Peer> {
  const [cmd, ...args] = argv as [string, ...string[]];
  const child = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  children.add(child);
  child.once('exit', () => children.delete(child));
  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  const deadline = Date.now() + 30_000;
  while (!existsSync(socket)) {
    if (child.exitCode !== null)
      throw new Error(`${cmd} exited (${child.exitCode}) before listening:\n${stderr}`);
    if (Date.now() > deadline) {
      await killChild(child);
      throw new Error(`${socket} did not appear:\n${stderr}`);
    }
    await new Promise((r) => setTimeout(r, 10));
  }
  const kill = () => killChild(child);
  return { socket, stop: kill, kill };
}

function exportArgs(image: string, socket: string, writable: boolean): string[] {
  return [
    '--blockdev',
    `driver=file,node-name=f0,filename=${image}`,
    '--export',
    `type=vhost-user-blk,id=e0,node-name=f0,addr.type=unix,addr.path=${socket},writable=${writable ? 'on' : 'off'}`,
  ];
}

const startQsd = (image: string, socket: string, writable = true) =>
  spawnPeer(['qemu-storage-daemon', ...exportArgs(image, socket, writable)], socket);

const startRingvmServe = (image: string, socket: string, writable = true) =>
  spawnPeer([process.execPath, CLI, 'serve', ...exportArgs(image, socket, writable)], socket);

async function startRingvmExport(
  image: string,
  socket: string,
  writable = true,
  pollMaxNs = 0,
): Promise<Peer> {
  const io = pollMaxNs > 0 ? 'sync' : 'threads';
  const exp = await VhostUserExport.start({
    socketPath: socket,
    device: { module: BLK_FACTORIES, name: 'createRawBlk', args: { path: image, readOnly: !writable, io } },
    pollMaxNs,
  });
  return { socket, stop: () => exp.stop(), kill: () => exp.terminate() };
}

interface Attached {
  readonly frontend: VhostUserFrontend;
  readonly bus: VirtioBus;
  readonly dev: VirtioBusDevice;
  readonly disk: VirtioBlkDisk;
  detach(): Promise<void>;
}

async function attach(socket: string): Promise<Attached> {
  const frontend = await VhostUserFrontend.connect(socket, {
    deviceId: 2,
    connectTimeoutMs: 10_000,
  });
  const bus = new VirtioBus();
  const driver = new VirtioBlkDriver();
  await bus.registerDriver(driver);
  const dev = await bus.addDevice(frontend);
  let disk: VirtioBlkDisk;
  try {
    disk = driver.disk(dev);
  } catch (e) {
    await frontend.close();
    throw e;
  }
  return {
    frontend,
    bus,
    dev,
    disk,
    async detach() {
      await bus.removeDevice(dev);
      await frontend.close();
    },
  };
}

/** Deterministic random numbers (xorshift32). */
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

function causeChain(e: unknown): unknown[] {
  const out: unknown[] = [];
  for (let c: unknown = e; c !== undefined && c !== null; c = (c as { cause?: unknown }).cause) out.push(c);
  return out;
}

let work = '';
let seq = 0;

function freshImage(seed: number): { image: string; socket: string; content: Buffer } {
  seq++;
  const image = join(work, `disk${seq}.img`);
  const content = pattern(IMAGE_BYTES, seed);
  writeFileSync(image, content);
  return { image, socket: join(work, `s${seq}.sock`), content };
}

before(async () => {
  const install = await run(script('install-packages'), [], 20 * 60_000);
  assert.equal(install.code, 0, `install-packages failed:\n${install.stdout}\n${install.stderr}`);
  assert.ok(existsSync(CLI), `${CLI} is missing: build first (npm run build)`);
  work = mkdtempSync(join(tmpdir(), 'ringvm-frontend-'));
});

after(async () => {
  await Promise.all([...children].map(killChild));
  if (work) rmSync(work, { recursive: true, force: true });
});

const peers: { name: string; start: (image: string, socket: string, writable?: boolean) => Promise<Peer> }[] =
  [
    { name: 'qemu-storage-daemon', start: startQsd },
    { name: 'ringvm export', start: startRingvmExport },
    // The worker polls the ring after each pass (synchronous file I/O, as `ringvm serve`): requests are served
    // from the poll as well as from kicks.
    {
      name: 'ringvm export, sync I/O, polling (pollMaxNs 200 µs)',
      start: (image, socket, writable) => startRingvmExport(image, socket, writable, 200_000),
    },
  ];

for (const peer of peers) {
  describe(`VhostUserFrontend + VirtioBlkDriver against ${peer.name}`, { timeout: 120_000 }, () => {
    it('negotiates and reads the configuration', async () => {
      const { image, socket } = freshImage(1);
      const server = await peer.start(image, socket);
      try {
        const a = await attach(socket);
        try {
          assert.equal(a.dev.probeError, undefined);
          assert.equal(a.disk.size, IMAGE_BYTES);
          assert.equal(a.disk.config.readOnly, false);
          assert.ok(a.frontend.protocolFeatures !== 0n, 'protocol features negotiated');
        } finally {
          await a.detach();
        }
      } finally {
        await server.stop();
      }
    });

    it('random-offset writes in flight together read back equal to the host file, after flush', async () => {
      const { image, socket, content } = freshImage(2);
      const expected = Buffer.from(content);
      const server = await peer.start(image, socket);
      try {
        const a = await attach(socket);
        try {
          const r = rng(42);
          const writes: Promise<void>[] = [];
          const regions: [number, number][] = [];
          for (let i = 0; i < 48; i++) {
            const len = (1 + r(64)) * 4096;
            const sector = r((IMAGE_BYTES - len) / SECTOR);
            // Non-overlapping with earlier writes in this batch, so the order of completion cannot matter.
            if (regions.some(([s, l]) => sector * SECTOR < s + l && s < sector * SECTOR + len)) continue;
            const data = pattern(len, 1000 + i);
            regions.push([sector * SECTOR, len]);
            data.copy(expected, sector * SECTOR);
            writes.push(a.disk.write(sector, data));
          }
          await Promise.all(writes);
          await a.disk.flush();
          const host = readFileSync(image);
          assert.ok(host.equals(expected), 'the host image holds every write');
          for (const [off, len] of regions) {
            const back = await a.disk.read(off / SECTOR, len);
            assert.ok(
              Buffer.from(back).equals(expected.subarray(off, off + len)),
              `read back at ${off}+${len}`,
            );
          }
          // Untouched data reads as the image's initial content.
          const whole = await a.disk.read(0, IMAGE_BYTES);
          assert.ok(Buffer.from(whole).equals(expected), 'the whole disk reads as the host file');
        } finally {
          await a.detach();
        }
      } finally {
        await server.stop();
      }
    });

    it('keeps 1000 requests in flight (more than the ring holds)', async () => {
      const { image, socket, content } = freshImage(3);
      const server = await peer.start(image, socket);
      try {
        const a = await attach(socket);
        try {
          const r = rng(7);
          const offsets = Array.from({ length: 1000 }, () => r(IMAGE_BYTES / 4096) * 4096);
          const reads = offsets.map((off) => a.disk.read(off / SECTOR, 4096));
          assert.ok(a.disk.inFlight > 256, `in flight: ${a.disk.inFlight}`);
          const got = await Promise.all(reads);
          got.forEach((data, i) => {
            const off = offsets[i] as number;
            assert.ok(Buffer.from(data).equals(content.subarray(off, off + 4096)), `read at ${off}`);
          });
        } finally {
          await a.detach();
        }
      } finally {
        await server.stop();
      }
    });

    it('a read-only export rejects writes and serves reads', async () => {
      const { image, socket, content } = freshImage(4);
      const server = await peer.start(image, socket, false);
      try {
        const a = await attach(socket);
        try {
          assert.equal(a.disk.config.readOnly, true);
          await assert.rejects(a.disk.write(0, new Uint8Array(4096)), (e: unknown) => {
            assert.ok(e instanceof BlkDriverError);
            assert.equal(e.code, 'READ_ONLY');
            return true;
          });
          const data = await a.disk.read(8, 4096);
          assert.ok(Buffer.from(data).equals(content.subarray(4096, 8192)));
          assert.ok(readFileSync(image).equals(content), 'the image is unchanged');
        } finally {
          await a.detach();
        }
      } finally {
        await server.stop();
      }
    });
  });
}

const killable: { name: string; start: (image: string, socket: string) => Promise<Peer> }[] = [
  { name: 'qemu-storage-daemon', start: startQsd },
  { name: 'ringvm serve', start: startRingvmServe },
];

for (const peer of killable) {
  it(
    `${peer.name} killed mid-I/O: pending requests fail with a typed error, nothing hangs`,
    { timeout: 60_000 },
    async () => {
      const { image, socket } = freshImage(5);
      const server = await peer.start(image, socket);
      try {
        const a = await attach(socket);
        const r = rng(9);
        const settled: Promise<unknown>[] = [];
        let completed = 0;
        let failure: unknown;
        let stop = false;
        // 32 reads in flight, each completion starting the next, until the first failure.
        const worker = async () => {
          while (!stop) {
            const p = a.disk.read(r(IMAGE_BYTES / 65536) * 128, 65536);
            settled.push(p.catch(() => undefined));
            try {
              await p;
              completed++;
            } catch (e) {
              failure ??= e;
              stop = true;
            }
          }
        };
        const workers = Array.from({ length: 32 }, worker);
        while (completed < 200) await new Promise((res) => setTimeout(res, 5));
        await server.kill();
        await Promise.all(workers);
        await Promise.all(settled);
        assert.ok(failure instanceof BlkDriverError, `failure: ${String(failure)}`);
        assert.equal(failure.code, 'QUEUE_BROKEN');
        const typed = causeChain(failure).find((c) => c instanceof VhostUserFrontendError);
        assert.ok(typed instanceof VhostUserFrontendError, 'a VhostUserFrontendError is in the cause chain');
        assert.equal(typed.code, 'DISCONNECTED');
        assert.ok(a.frontend.isDisconnected);
        // Later requests fail at once, and the device can still be removed and closed.
        await assert.rejects(a.disk.read(0, 4096), (e: unknown) => e instanceof BlkDriverError);
        await a.detach();
      } finally {
        await server.stop();
      }
    },
  );
}

it('a polling export (sync I/O) serves requests from its poll, not only from kicks', async () => {
  const { image, socket, content } = freshImage(6);
  const lines: string[] = [];
  // A 1 ms window: the driver's next request at queue depth 1 comes well within it, even on a loaded machine.
  const exp = await VhostUserExport.start({
    socketPath: socket,
    device: {
      module: BLK_FACTORIES,
      name: 'createRawBlk',
      args: { path: image, readOnly: false, io: 'sync' },
    },
    pollMaxNs: 1_000_000,
    onLog: (line) => lines.push(line),
  });
  try {
    const a = await attach(socket);
    try {
      const r = rng(11);
      for (let i = 0; i < 2000; i++) {
        const off = r(IMAGE_BYTES / 4096) * 4096;
        const got = await a.disk.read(off / SECTOR, 4096);
        assert.ok(Buffer.from(got).equals(content.subarray(off, off + 4096)), `read at ${off}`);
      }
    } finally {
      await a.detach();
    }
  } finally {
    await exp.stop();
  }
  const report = lines.find((l) => l.startsWith('polling: '));
  assert.ok(report !== undefined, `no polling report in:\n${lines.join('\n')}`);
  const hits = Number(/^polling: (\d+) requests found/.exec(report)?.[1]);
  // How many depends on the machine's load (another process may hold the driver's CPU past the window); none
  // at all means the poll never looks at the ring.
  assert.ok(hits > 0, report);
});
