// ringvm's virtio-balloon driver against QEMU's own virtio-balloon-pci, through the virtio bus and the
// qtest-driven virtio-pci transport; QEMU's view is read over QMP (query-balloon, guest-stats) and its target set
// with QMP `balloon`.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import {
  BALLOON_PAGE_SIZE,
  BalloonDriverError,
  VirtioBalloonDriver,
  type VirtioBalloon,
} from '../../../src/drivers/balloon/balloon-driver.js';
import { QtestLink } from '../../../src/transport/pci/qtest-link.js';
import {
  openVirtioPciDevices,
  type VirtioPciModernTransport,
} from '../../../src/transport/pci/virtio-pci-modern.js';
import { VirtioBus } from '../../../src/virtio/driver/virtio-bus.js';
import { ensureQemu, killLeftoverQemus, workDir } from '../../transport/pci/qtest-harness.js';
import { QmpClient, eventually } from '../../transport/pci/qmp-client.js';

const RAM = 64 << 20;

describe('VirtioBalloonDriver on QEMU virtio-balloon-pci (qtest, QMP)', { timeout: 5 * 60_000 }, () => {
  const work = workDir('ringvm-balloon-');
  let link: QtestLink | undefined;
  let qmp: QmpClient | undefined;
  const errors: Error[] = [];
  const bus = new VirtioBus({ onError: (_dev, e) => errors.push(e) });
  const driver = new VirtioBalloonDriver();
  let balloon: VirtioBalloon;
  let transport: VirtioPciModernTransport;

  const actualBytes = async (): Promise<number> =>
    ((await qmp!.execute('query-balloon')) as { actual: number }).actual;

  before(async () => {
    await ensureQemu();
    const qmpPath = join(work.dir, 'qmp.sock');
    link = await QtestLink.start({
      devices: ['virtio-balloon-pci,id=balloon0,disable-legacy=on'],
      args: ['-qmp', `unix:${qmpPath},server=on,wait=off`],
      memSize: RAM,
    });
    qmp = await QmpClient.connect(qmpPath);
    await bus.registerDriver(driver);
    const ts = await openVirtioPciDevices(link);
    assert.equal(ts.length, 1);
    transport = ts[0]!;
    const dev = await bus.addDevice(transport);
    assert.deepEqual(errors, []);
    balloon = driver.balloon(dev);
    await balloon.settled();
  });

  after(async () => {
    qmp?.close();
    await link?.close();
    killLeftoverQemus();
    work.cleanup();
  });

  it('starts empty: QEMU reports the whole RAM', async () => {
    assert.equal(balloon.actual, 0);
    assert.equal(balloon.hasStats, true);
    assert.equal(await actualBytes(), RAM);
  });

  it('inflate by N pages: query-balloon shows ram − N×4096; the pages are the allocator’s', async () => {
    const before = balloon.allocator.available;
    const n = 300; // more than one 256-PFN buffer
    await balloon.inflate(n);
    assert.equal(balloon.actual, n);
    assert.equal(before - balloon.allocator.available, n * BALLOON_PAGE_SIZE);
    assert.equal(await actualBytes(), RAM - n * BALLOON_PAGE_SIZE);
  });

  it('deflate restores it and the pages go back to the allocator', async () => {
    const before = balloon.allocator.available;
    await balloon.deflate(100);
    assert.equal(await actualBytes(), RAM - 200 * BALLOON_PAGE_SIZE);
    await balloon.deflate(200);
    assert.equal(balloon.actual, 0);
    assert.equal(balloon.allocator.available - before, 300 * BALLOON_PAGE_SIZE);
    assert.equal(await actualBytes(), RAM);
  });

  it('a target set through QMP `balloon` is seen (config interrupt) and honoured', async () => {
    const pages = 1024;
    const configInterrupts = transport.stats.configInterrupts;
    await qmp!.execute('balloon', { value: RAM - pages * BALLOON_PAGE_SIZE });
    await eventually(
      async () => (await actualBytes()) === RAM - pages * BALLOON_PAGE_SIZE,
      30_000,
      'inflate',
    );
    assert.equal(balloon.target, pages);
    assert.equal(balloon.actual, pages);
    assert.ok(transport.stats.configInterrupts > configInterrupts, 'seen through the config vector');
    await qmp!.execute('balloon', { value: RAM });
    await eventually(async () => (await actualBytes()) === RAM, 30_000, 'deflate');
    assert.equal(balloon.actual, 0);
    assert.equal(balloon.lastError, undefined);
  });

  it('answers the device’s stats requests with free and total memory', async () => {
    const path = '/machine/peripheral/balloon0';
    await qmp!.execute('qom-set', { path, property: 'guest-stats-polling-interval', value: 1 });
    await balloon.inflate(512);
    const expectFree = balloon.allocator.available;
    await eventually(
      async () => {
        const s = (await qmp!.execute('qom-get', { path, property: 'guest-stats' })) as {
          stats: Record<string, number>;
        };
        return s.stats['stat-free-memory'] === expectFree && s.stats['stat-total-memory'] === RAM;
      },
      30_000,
      'guest-stats with the free memory after inflate',
    );
    assert.ok(balloon.statsRequests >= 1);
    await balloon.deflate(512);
    await qmp!.execute('qom-set', { path, property: 'guest-stats-polling-interval', value: 0 });
  });

  it('refuses bad counts before sending anything', () => {
    assert.throws(
      () => balloon.inflate(-1),
      (e: unknown) => e instanceof BalloonDriverError && e.code === 'INVALID_ARGUMENT',
    );
    assert.throws(
      () => balloon.setTarget(1.5),
      (e: unknown) => e instanceof BalloonDriverError && e.code === 'INVALID_ARGUMENT',
    );
  });

  it('remove gives every page back and later calls fail REMOVED', async () => {
    const dev = balloon.dev;
    await balloon.inflate(64);
    const held = balloon.allocator.available;
    await bus.removeDevice(dev);
    // the pages, the PFN and stats buffers, and the rings (delVqs)
    assert.ok(balloon.allocator.available - held >= 64 * BALLOON_PAGE_SIZE + 4 * 256);
    assert.throws(
      () => balloon.inflate(1),
      (e: unknown) => e instanceof BalloonDriverError && e.code === 'REMOVED',
    );
  });
});
