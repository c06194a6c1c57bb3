/**
 * A hostile device against ringvm's blk driver: a device served over vhost-user (a real socket, a real
 * VhostUserExport worker) that answers requests with used elements the spec forbids. Each case breaks that queue
 * with a typed error naming the problem; pending and later requests fail with QUEUE_BROKEN; nothing crashes and
 * the device can be removed and the front end closed.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { VirtioBlkDriver, BlkDriverError } from '../../../src/drivers/blk/blk-driver.js';
import { VhostUserFrontend } from '../../../src/transport/vhost-user/frontend.js';
import { VhostUserExport } from '../../../src/transport/vhost-user/vhost-user-export.js';
import { VirtioBus } from '../../../src/virtio/driver/virtio-bus.js';
import { VirtqueueError } from '../../../src/virtio/split/virtqueue-error.js';
import type { HostileUsedMode } from '../../fixtures/export-devices.js';

const FACTORIES = new URL('../../fixtures/export-devices.js', import.meta.url).href;

const CASES: [HostileUsedMode, string][] = [
  ['id-out-of-range', 'USED_ID_OUT_OF_RANGE'],
  ['len-too-large', 'USED_LEN_TOO_LARGE'],
  ['not-a-head', 'USED_ID_NOT_HEAD'],
];

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
      } finally {
        await bus.removeDevice(dev);
        await frontend.close();
        await exp.stop();
      }
    });
  }
});
