/**
 * The blk driver's polled completions (`pollNs`) against ringvm's real blk device in a vhost-user export (its
 * own worker thread, so the device answers while the driver spins), on a raw image: every request completes
 * with the right data whether the poll finds it or the interrupt does, at queue depth 1 and 32.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BlkDriverError, VirtioBlkDriver, type VirtioBlkDisk } from '../../../src/drivers/blk/blk-driver.js';
import { VhostUserFrontend } from '../../../src/transport/vhost-user/frontend.js';
import { VhostUserExport } from '../../../src/transport/vhost-user/vhost-user-export.js';
import { VirtioBus } from '../../../src/virtio/driver/virtio-bus.js';
import { pattern } from '../../guest/guest-harness.js';

const FACTORIES = new URL('../../fixtures/export-devices.js', import.meta.url).href;
const IMAGE_BYTES = 4 << 20;
const BLOCK = 4096;
const BLOCKS = IMAGE_BYTES / BLOCK;

/** Serves the image through an export, binds a driver with `pollNs` to it, runs `body`, tears it all down. */
async function withDisk(
  work: string,
  name: string,
  pollNs: number,
  body: (disk: VirtioBlkDisk) => Promise<void>,
): Promise<void> {
  const exp = await VhostUserExport.start({
    socketPath: join(work, `${name}.sock`),
    device: { module: FACTORIES, name: 'createRawBlk', args: { path: join(work, 'disk.img'), io: 'sync' } },
  });
  const frontend = await VhostUserFrontend.connect(exp.socketPath, { deviceId: 2, connectTimeoutMs: 10_000 });
  const bus = new VirtioBus();
  const driver = new VirtioBlkDriver({ pollNs });
  await bus.registerDriver(driver);
  const dev = await bus.addDevice(frontend);
  try {
    await body(driver.disk(dev));
  } finally {
    await bus.removeDevice(dev);
    await frontend.close();
    await exp.stop();
  }
}

describe('blk driver: polled completions over a vhost-user export', { timeout: 120_000 }, () => {
  let work = '';

  before(() => {
    work = mkdtempSync(join(tmpdir(), 'ringvm-blk-poll-'));
    writeFileSync(join(work, 'disk.img'), pattern(IMAGE_BYTES, 7));
  });

  after(() => {
    rmSync(work, { recursive: true, force: true });
  });

  it('QD 1 with a window the device answers in: polls find the requests, data is right', async () => {
    // 200 ms: far longer than a request takes, even on a loaded machine, so nearly every poll hits.
    await withDisk(work, 'qd1', 200_000_000, async (disk) => {
      const buf = disk.allocBuffer(BLOCK);
      const image = readFileSync(join(work, 'disk.img'));
      try {
        for (let i = 0; i < 200; i++) {
          const block = (i * 37) % BLOCKS;
          await disk.readInto((block * BLOCK) / 512, buf);
          assert.ok(
            Buffer.from(buf.bytes).equals(image.subarray(block * BLOCK, (block + 1) * BLOCK)),
            `block ${block}`,
          );
        }
        const data = pattern(BLOCK, 99);
        buf.bytes.set(data);
        await disk.writeFrom(8, buf);
        await disk.flush();
        assert.ok(
          readFileSync(join(work, 'disk.img'))
            .subarray(8 * 512, 8 * 512 + BLOCK)
            .equals(data),
        );
      } finally {
        disk.freeBuffer(buf);
      }
      const { hits, misses } = disk.pollStats;
      assert.equal(hits + misses, 202, 'one poll per kick');
      assert.ok(hits >= 150, `polls found the requests (hits ${hits}, misses ${misses})`);
    });
  });

  it('a window too short for the device: every request still completes, by interrupt', async () => {
    await withDisk(work, 'short', 1, async (disk) => {
      const image = readFileSync(join(work, 'disk.img'));
      for (let i = 0; i < 50; i++) {
        const got = await disk.read(i * 8, BLOCK);
        assert.ok(Buffer.from(got).equals(image.subarray(i * BLOCK, (i + 1) * BLOCK)), `block ${i}`);
      }
      assert.ok(disk.pollStats.misses > 0, `some polls missed (${JSON.stringify(disk.pollStats)})`);
    });
  });

  it('QD 32: requests left on the ring after a poll complete by interrupt (no hang)', async () => {
    await withDisk(work, 'qd32', 100_000, async (disk) => {
      const image = readFileSync(join(work, 'disk.img'));
      for (let round = 0; round < 10; round++) {
        const blocks = Array.from({ length: 32 }, (_, i) => (round * 32 + i * 13) % BLOCKS);
        const got = await Promise.all(blocks.map((b) => disk.read((b * BLOCK) / 512, BLOCK)));
        got.forEach((g, i) => {
          const b = blocks[i] as number;
          assert.ok(Buffer.from(g).equals(image.subarray(b * BLOCK, (b + 1) * BLOCK)), `block ${b}`);
        });
      }
    });
  });

  it('refuses a pollNs that is not a non-negative number', () => {
    for (const pollNs of [-1, Number.NaN, Number.POSITIVE_INFINITY]) {
      assert.throws(
        () => new VirtioBlkDriver({ pollNs }),
        (e: unknown) => e instanceof BlkDriverError && e.code === 'INVALID_ARGUMENT',
      );
    }
  });
});
