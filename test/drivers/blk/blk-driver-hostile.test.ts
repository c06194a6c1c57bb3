/**
 * A hostile device against ringvm's blk driver: a device served over vhost-user (a real socket, a real
 * VhostUserExport worker) that answers requests with used elements the spec forbids. Each case breaks that queue
 * with a typed error naming the problem; pending and later requests fail with QUEUE_BROKEN; nothing crashes and
 * the device can be removed and the front end closed.
 *
 * Two ways to reach it: ringvm's own vhost-user front end, and the PCI transport — QEMU's vhost-user-blk-pci
 * connected to the hostile export, driven over qtest, with a virtio-rng-pci beside it that must keep working.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { VirtioBlkDriver, BlkDriverError, type VirtioBlkDisk } from '../../../src/drivers/blk/blk-driver.js';
import { VirtioRngDriver } from '../../../src/drivers/rng/rng-driver.js';
import { QtestLink } from '../../../src/transport/pci/qtest-link.js';
import { openVirtioPciDevices } from '../../../src/transport/pci/virtio-pci-modern.js';
import { VhostUserFrontend } from '../../../src/transport/vhost-user/frontend.js';
import { VhostUserExport } from '../../../src/transport/vhost-user/vhost-user-export.js';
import { VirtioBus } from '../../../src/virtio/driver/virtio-bus.js';
import { VirtqueueError } from '../../../src/virtio/split/virtqueue-error.js';
import type { HostileUsedMode } from '../../fixtures/export-devices.js';
import { ensureQemu, killLeftoverQemus } from '../../transport/pci/qtest-harness.js';

const FACTORIES = new URL('../../fixtures/export-devices.js', import.meta.url).href;

const CASES: [HostileUsedMode, string][] = [
  ['id-out-of-range', 'USED_ID_OUT_OF_RANGE'],
  ['len-too-large', 'USED_LEN_TOO_LARGE'],
  ['not-a-head', 'USED_ID_NOT_HEAD'],
];

/** The first read fails with QUEUE_BROKEN caused by a VirtqueueError `code`; the queue stays broken after it. */
async function expectBrokenQueue(disk: VirtioBlkDisk, code: string): Promise<void> {
  const first = await disk.read(0, 4096).then(
    () => assert.fail('a read answered with a bad used element must not succeed'),
    (e: unknown) => e,
  );
  assert.ok(first instanceof BlkDriverError, String(first));
  assert.equal(first.code, 'QUEUE_BROKEN');
  assert.ok(first.cause instanceof VirtqueueError, `cause: ${String(first.cause)}`);
  assert.equal(first.cause.code, code);
  // The queue stays broken: later requests fail the same way, without reaching the device.
  await assert.rejects(
    disk.read(8, 512),
    (e: unknown) => e instanceof BlkDriverError && e.code === 'QUEUE_BROKEN',
  );
}

describe('blk driver against a device that returns bad used elements', { timeout: 60_000 }, () => {
  let work = '';

  before(() => {
    work = mkdtempSync(join(tmpdir(), 'ringvm-hostile-dev-'));
  });

  after(() => {
    rmSync(work, { recursive: true, force: true });
  });

  for (const [mode, code] of CASES) {
    it(`${mode}: the queue breaks with ${code}; requests fail with QUEUE_BROKEN`, async () => {
      const exp = await VhostUserExport.start({
        socketPath: join(work, `${mode}.sock`),
        device: { module: FACTORIES, name: 'createHostileBlk', args: { mode } },
      });
      const frontend = await VhostUserFrontend.connect(exp.socketPath, {
        deviceId: 2,
        connectTimeoutMs: 10_000,
      });
      const bus = new VirtioBus();
      const driver = new VirtioBlkDriver();
      await bus.registerDriver(driver);
      const dev = await bus.addDevice(frontend);
      try {
        const disk = driver.disk(dev);
        await expectBrokenQueue(disk, code);
      } finally {
        await bus.removeDevice(dev);
        await frontend.close();
        await exp.stop();
      }
    });
  }
});

describe(
  'blk driver over virtio-pci: QEMU vhost-user-blk-pci on a hostile export',
  { timeout: 3 * 60_000 },
  () => {
    let work = '';

    before(async () => {
      await ensureQemu();
      work = mkdtempSync(join(tmpdir(), 'ringvm-hostile-pci-'));
    });

    after(() => {
      killLeftoverQemus();
      rmSync(work, { recursive: true, force: true });
    });

    for (const [mode, code] of CASES) {
      it(`${mode}: the queue breaks with ${code}; QEMU, the export and the machine's other device carry on`, async () => {
        const exp = await VhostUserExport.start({
          socketPath: join(work, `${mode}.sock`),
          device: { module: FACTORIES, name: 'createHostileBlk', args: { mode } },
        });
        // The qtest link's guest RAM is a shared memory-backend-file: QEMU can hand it to the vhost-user back end.
        const link = await QtestLink.start({
          devices: [
            'vhost-user-blk-pci,chardev=c0,num-queues=1,disable-legacy=on',
            'virtio-rng-pci,disable-legacy=on',
          ],
          args: ['-chardev', `socket,id=c0,path=${exp.socketPath}`],
          memSize: 64 << 20,
        });
        const errors: Error[] = [];
        const bus = new VirtioBus({ onError: (_dev, e) => errors.push(e) });
        const blk = new VirtioBlkDriver();
        const rng = new VirtioRngDriver();
        try {
          await bus.registerDriver(blk);
          await bus.registerDriver(rng);
          const ts = (await openVirtioPciDevices(link)).sort(
            (x, y) => x.pci.address.device - y.pci.address.device,
          );
          const dev = await bus.addDevice(ts[0]!);
          const rngDev = await bus.addDevice(ts[1]!);
          assert.deepEqual(errors, []);
          const disk = blk.disk(dev);
          assert.equal(disk.size, 2048 * 512);
          await expectBrokenQueue(disk, code);
          // Nothing else broke: QEMU answers and the other device on the machine still works; the export stops cleanly.
          assert.equal(link.isClosed, false);
          const bytes = await rng.source(rngDev).read(4096);
          assert.equal(bytes.length, 4096);
          await bus.removeDevice(dev);
          await bus.removeDevice(rngDev);
          assert.equal(link.isClosed, false);
          assert.deepEqual(errors, []);
        } finally {
          await link.close();
          await exp.stop();
        }
      });
    }
  },
);
