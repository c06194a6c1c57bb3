// ringvm's virtio-blk driver against QEMU's own virtio-blk-pci (modern, transitional, read-only, multiqueue) on
// raw image files, through the virtio bus and the qtest-driven virtio-pci transport. What the driver writes is
// checked in the host file, and what the host file holds is what the driver reads.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { BlkDriverError, VirtioBlkDriver, type VirtioBlkDisk } from '../../../src/drivers/blk/blk-driver.js';
import { QtestLink } from '../../../src/transport/pci/qtest-link.js';
import {
  openVirtioPciDevices,
  type VirtioPciModernTransport,
} from '../../../src/transport/pci/virtio-pci-modern.js';
import { VirtioBus } from '../../../src/virtio/driver/virtio-bus.js';
import type { VirtioBusDevice } from '../../../src/virtio/driver/virtio-bus-device.js';
import { MiB, pattern } from '../../guest/guest-harness.js';
import { ensureQemu, killLeftoverQemus, rawDrive, workDir } from '../../transport/pci/qtest-harness.js';

const SECTOR = 512;

/** xorshift32, for reproducible offsets. */
function rng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x;
  };
}

describe(
  'VirtioBlkDriver on QEMU virtio-blk-pci (qtest, virtio-pci modern)',
  { timeout: 10 * 60_000 },
  () => {
    const work = workDir('ringvm-blkdrv-');
    const seed = pattern(8 * MiB, 7);
    const files = {
      modern: '',
      transitional: '',
      ro: '',
      mq: '',
    };
    let link: QtestLink | undefined;
    const errors: Error[] = [];
    const bus = new VirtioBus({ onError: (_dev, e) => errors.push(e) });
    const driver = new VirtioBlkDriver({ queueSize: 16 });
    const byLocation = new Map<string, { t: VirtioPciModernTransport; dev: VirtioBusDevice }>();
    const disks: Record<keyof typeof files, VirtioBlkDisk | undefined> = {
      modern: undefined,
      transitional: undefined,
      ro: undefined,
      mq: undefined,
    };

    before(async () => {
      await ensureQemu();
      files.modern = work.image('modern.img', seed);
      files.transitional = work.image('transitional.img', seed.subarray(0, 2 * MiB));
      files.ro = work.image('ro.img', seed.subarray(0, 1 * MiB));
      files.mq = work.image('mq.img', seed.subarray(0, 4 * MiB));
      link = await QtestLink.start({
        devices: [
          'virtio-blk-pci,drive=d0,disable-legacy=on,serial=ringvm-modern',
          'virtio-blk-pci,drive=d1,disable-legacy=off,serial=ringvm-trans',
          'virtio-blk-pci,drive=d2,disable-legacy=on,serial=ringvm-ro',
          'virtio-blk-pci,drive=d3,disable-legacy=on,num-queues=3,serial=ringvm-mq',
        ],
        args: [
          ...rawDrive('d0', files.modern),
          ...rawDrive('d1', files.transitional),
          ...rawDrive('d2', files.ro, ',readonly=on'),
          ...rawDrive('d3', files.mq),
        ],
        memSize: 128 << 20,
      });
      await bus.registerDriver(driver);
      for (const t of await openVirtioPciDevices(link)) {
        const dev = await bus.addDevice(t);
        byLocation.set(t.location, { t, dev });
      }
      assert.deepEqual(errors, []);
      const devs = [...byLocation.values()];
      assert.equal(devs.length, 4);
      // Slots follow the -device order.
      const [m, tr, ro, mq] = devs.sort((a, b) => a.t.pci.address.device - b.t.pci.address.device);
      disks.modern = driver.disk(m!.dev);
      disks.transitional = driver.disk(tr!.dev);
      disks.ro = driver.disk(ro!.dev);
      disks.mq = driver.disk(mq!.dev);
    });

    after(async () => {
      await link?.close();
      killLeftoverQemus();
      work.cleanup();
    });

    it('probes: capacity, queues, features from the config space', async () => {
      const d = disks.modern!;
      assert.equal(d.size, 8 * MiB);
      assert.equal(d.config.capacity, (8 * MiB) / SECTOR);
      assert.equal(d.config.readOnly, false);
      assert.equal(d.config.flush, true);
      assert.ok(d.config.blkSize >= 512);
      assert.equal(d.numQueues, 1);
      assert.equal(disks.mq!.numQueues, 3);
      assert.equal(disks.ro!.config.readOnly, true);
      assert.equal(await d.getId(), 'ringvm-modern');
    });

    it('reads what the host file holds', async () => {
      const d = disks.modern!;
      const got = await d.read(100, 64 * 1024);
      assert.ok(Buffer.from(got).equals(seed.subarray(100 * SECTOR, 100 * SECTOR + 64 * 1024)));
    });

    it('writes patterns at random offsets (many in flight), reads them back, and the host file agrees', async () => {
      const d = disks.modern!;
      const next = rng(42);
      const capacity = d.config.capacity;
      const writes: { sector: number; data: Buffer }[] = [];
      // Non-overlapping: one slot of 64 sectors each, random slots and lengths.
      const slots = new Set<number>();
      while (slots.size < 48) slots.add(next() % (capacity / 64));
      for (const slot of slots) {
        const sectors = 1 + (next() % 64);
        writes.push({ sector: slot * 64, data: pattern(sectors * SECTOR, next()) });
      }
      // All 48 at once on a 16-entry ring: the backlog and in-order completion by token are exercised.
      await Promise.all(writes.map((w) => d.write(w.sector, w.data)));
      assert.equal(d.inFlight, 0);
      await d.flush();
      const back = await Promise.all(writes.map((w) => d.read(w.sector, w.data.length)));
      const host = readFileSync(files.modern);
      writes.forEach((w, i) => {
        assert.ok(Buffer.from(back[i]!).equals(w.data), `read back at sector ${w.sector}`);
        assert.ok(
          host.subarray(w.sector * SECTOR, w.sector * SECTOR + w.data.length).equals(w.data),
          `host file at sector ${w.sector}`,
        );
      });
    });

    it('splits a large transfer and keeps it intact', async () => {
      const d = disks.modern!;
      const data = pattern(6 * MiB, 99);
      await d.write(2048, data);
      const back = await d.read(2048, data.length);
      assert.ok(Buffer.from(back).equals(data));
      assert.ok(
        readFileSync(files.modern)
          .subarray(2048 * SECTOR, 2048 * SECTOR + data.length)
          .equals(data),
      );
    });

    it('zero copy: writeFrom and readInto work on a guest buffer the caller reuses (split too)', async () => {
      const d = disks.modern!;
      const allocations = d.allocator.allocations;
      const big = d.allocBuffer(5 * MiB); // larger than one segment: split into several requests
      const data = pattern(5 * MiB, 41);
      big.bytes.set(data);
      await d.writeFrom(4096, big);
      big.bytes.fill(0);
      await d.readInto(4096, big);
      assert.ok(Buffer.from(big.bytes).equals(data), 'read back into the same buffer');
      const host = readFileSync(files.modern);
      assert.ok(
        host.subarray(4096 * SECTOR, 4096 * SECTOR + data.length).equals(data),
        'the host file agrees',
      );
      // A prefix of the buffer; then several requests in flight at once on one buffer.
      const small = d.allocBuffer(64 * SECTOR);
      await d.readInto(4096 + 8, small, 8 * SECTOR);
      assert.ok(
        Buffer.from(small.bytes.subarray(0, 8 * SECTOR)).equals(data.subarray(8 * SECTOR, 16 * SECTOR)),
      );
      await Promise.all(Array.from({ length: 8 }, (_, i) => d.readInto(4096 + i * 8, small, 8 * SECTOR)));
      await assert.rejects(d.readInto(0, small, 65 * SECTOR), { code: 'INVALID_ARGUMENT' });
      await assert.rejects(d.readInto(d.config.capacity, small, SECTOR), { code: 'OUT_OF_RANGE' });
      d.freeBuffer(big);
      d.freeBuffer(small);
      assert.throws(
        () => {
          d.freeBuffer(small);
        },
        { code: 'INVALID_ARGUMENT' },
      );
      await assert.rejects(d.readInto(0, small), { code: 'INVALID_ARGUMENT' }, 'a freed buffer is refused');
      assert.equal(d.allocator.allocations, allocations, 'every buffer went back to the allocator');
    });

    it('write zeroes and discard reach the image', async () => {
      const d = disks.modern!;
      if (d.config.maxWriteZeroesSectors > 0) {
        await d.write(16, pattern(8 * SECTOR, 5));
        await d.writeZeroes(16, 8);
        assert.ok(
          readFileSync(files.modern)
            .subarray(16 * SECTOR, 24 * SECTOR)
            .every((b) => b === 0),
        );
        assert.ok((await d.read(16, 8 * SECTOR)).every((b) => b === 0));
      }
      if (d.config.maxDiscardSectors > 0) await d.discard(32, 8); // contents afterwards are unspecified
    });

    it('rejects bad arguments with typed errors before sending', async () => {
      const d = disks.modern!;
      const kicks = byLocation.get(d.dev.ops.location)!.t.stats.kicks;
      await assert.rejects(d.read(d.config.capacity, SECTOR), {
        name: 'BlkDriverError',
        code: 'OUT_OF_RANGE',
      });
      await assert.rejects(d.read(0, 100), { code: 'INVALID_ARGUMENT' });
      await assert.rejects(d.write(d.config.capacity - 1, new Uint8Array(2 * SECTOR)), {
        code: 'OUT_OF_RANGE',
      });
      assert.equal(byLocation.get(d.dev.ops.location)!.t.stats.kicks, kicks, 'nothing was sent');
    });

    it('a read-only drive is read and rejects writes with READ_ONLY before any request is sent', async () => {
      const d = disks.ro!;
      const t = byLocation.get(d.dev.ops.location)!.t;
      assert.ok(Buffer.from(await d.read(0, 4096)).equals(seed.subarray(0, 4096)));
      const kicks = t.stats.kicks;
      const error = await d.write(0, new Uint8Array(SECTOR)).then(
        () => undefined,
        (e: unknown) => e,
      );
      assert.ok(error instanceof BlkDriverError);
      assert.equal(error.code, 'READ_ONLY');
      await assert.rejects(d.writeZeroes(0, 1), { code: 'READ_ONLY' });
      await assert.rejects(d.discard(0, 1), { code: 'READ_ONLY' });
      assert.equal(t.stats.kicks, kicks, 'no request reached the device');
      assert.ok(readFileSync(files.ro).equals(seed.subarray(0, 1 * MiB)), 'the image is unchanged');
      assert.equal(await d.getId(), 'ringvm-ro');
    });

    it('a transitional device (disable-legacy=off) works the same', async () => {
      const d = disks.transitional!;
      assert.equal(byLocation.get(d.dev.ops.location)!.t.pci.deviceId, 0x1001);
      assert.equal(d.size, 2 * MiB);
      const data = pattern(12 * SECTOR, 3);
      await d.write(77, data);
      await d.flush();
      assert.ok(Buffer.from(await d.read(77, data.length)).equals(data));
      assert.ok(
        readFileSync(files.transitional)
          .subarray(77 * SECTOR, 77 * SECTOR + data.length)
          .equals(data),
      );
      assert.equal(await d.getId(), 'ringvm-trans');
    });

    it('multiqueue: requests spread over every queue', async () => {
      const d = disks.mq!;
      const t = byLocation.get(d.dev.ops.location)!.t;
      const writes = Array.from({ length: 30 }, (_, i) => ({
        sector: i * 16,
        data: pattern(16 * SECTOR, 1000 + i),
      }));
      await Promise.all(writes.map((w) => d.write(w.sector, w.data)));
      const back = await Promise.all(writes.map((w) => d.read(w.sector, w.data.length)));
      writes.forEach((w, i) => {
        assert.ok(Buffer.from(back[i]!).equals(w.data));
      });
      for (let q = 0; q < 3; q++) assert.ok(t.virtqueue(q) !== undefined);
      const host = readFileSync(files.mq);
      for (const w of writes)
        assert.ok(host.subarray(w.sector * SECTOR, w.sector * SECTOR + w.data.length).equals(w.data));
    });

    it('removing the device resets it; its API then refuses with REMOVED', async () => {
      const d = disks.transitional!;
      const entry = byLocation.get(d.dev.ops.location)!;
      await bus.removeDevice(entry.dev);
      assert.equal(await entry.t.getStatus(), 0);
      await assert.rejects(d.read(0, SECTOR), { code: 'REMOVED' });
      assert.throws(() => driver.disk(entry.dev), { code: 'NOT_BOUND' });
    });
  },
);
