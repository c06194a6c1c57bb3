// ringvm's virtio-rng driver against QEMU's own virtio-rng-pci (the built-in backend, and rng-random on
// /dev/urandom), through the virtio bus and the qtest-driven virtio-pci transport.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { RngDriverError, VirtioRngDriver } from '../../../src/drivers/rng/rng-driver.js';
import { QtestLink } from '../../../src/transport/pci/qtest-link.js';
import { openVirtioPciDevices } from '../../../src/transport/pci/virtio-pci-modern.js';
import { VirtioBus } from '../../../src/virtio/driver/virtio-bus.js';
import type { VirtioBusDevice } from '../../../src/virtio/driver/virtio-bus-device.js';
import { ensureQemu, killLeftoverQemus } from '../../transport/pci/qtest-harness.js';

/** Distinct byte values, and the longest run of one value. */
function stats(bytes: Uint8Array): { distinct: number; longestRun: number } {
  const seen = new Set<number>();
  let run = 0;
  let longestRun = 0;
  for (let i = 0; i < bytes.length; i++) {
    seen.add(bytes[i]!);
    run = i > 0 && bytes[i] === bytes[i - 1] ? run + 1 : 1;
    longestRun = Math.max(longestRun, run);
  }
  return { distinct: seen.size, longestRun };
}

describe('VirtioRngDriver on QEMU virtio-rng-pci (qtest, virtio-pci modern)', { timeout: 5 * 60_000 }, () => {
  let link: QtestLink | undefined;
  const errors: Error[] = [];
  const bus = new VirtioBus({ onError: (_dev, e) => errors.push(e) });
  const driver = new VirtioRngDriver({ chunkSize: 4096 });
  let builtin: VirtioBusDevice | undefined;
  let urandom: VirtioBusDevice | undefined;

  before(async () => {
    await ensureQemu();
    link = await QtestLink.start({
      devices: ['virtio-rng-pci,disable-legacy=on', 'virtio-rng-pci,rng=r0'],
      args: ['-object', 'rng-random,id=r0,filename=/dev/urandom'],
      memSize: 64 << 20,
    });
    await bus.registerDriver(driver);
    const transports = await openVirtioPciDevices(link);
    assert.equal(transports.length, 2);
    const sorted = [...transports].sort((a, b) => a.pci.address.device - b.pci.address.device);
    builtin = await bus.addDevice(sorted[0]!);
    urandom = await bus.addDevice(sorted[1]!);
    assert.deepEqual(errors, []);
  });

  after(async () => {
    await link?.close();
    killLeftoverQemus();
  });

  it('binds both devices', () => {
    assert.equal(driver.devices.length, 2);
    assert.equal(builtin!.driver, driver);
    assert.equal(urandom!.driver, driver);
  });

  for (const which of ['builtin', 'urandom'] as const) {
    it(`${which}: exactly the requested count, not constant`, async () => {
      const source = driver.source(which === 'builtin' ? builtin! : urandom!);
      for (const n of [1, 7, 4096, 4097, 100_000]) {
        const bytes = await source.read(n);
        assert.equal(bytes.length, n);
        if (n >= 4096) {
          const s = stats(bytes);
          assert.ok(s.distinct > 200, `${s.distinct} distinct byte values in ${n}`);
          assert.ok(s.longestRun < 16, `a run of ${s.longestRun} equal bytes`);
        }
      }
      const a = await source.read(64);
      const b = await source.read(64);
      assert.notDeepEqual(a, b);
      assert.equal(source.inFlight, 0);
    });
  }

  it('many reads in flight together (more chunks than the ring holds) all complete with their counts', async () => {
    const source = driver.source(urandom!);
    const sizes = Array.from({ length: 40 }, (_, i) => 1 + ((i * 7919) % 20_000));
    const results = await Promise.all(sizes.map((n) => source.read(n)));
    results.forEach((r, i) => {
      assert.equal(r.length, sizes[i]);
    });
    const all = Buffer.concat(results);
    assert.ok(stats(all).distinct === 256);
    assert.equal(source.inFlight, 0);
  });

  it('driver.read reads from the first device; 0 bytes is an empty array', async () => {
    assert.equal((await driver.read(1000)).length, 1000);
    assert.equal((await driver.read(0)).length, 0);
  });

  it('rejects bad counts before sending', async () => {
    await assert.rejects(driver.source(builtin!).read(-1), {
      name: 'RngDriverError',
      code: 'INVALID_ARGUMENT',
    });
    await assert.rejects(driver.source(builtin!).read(1.5), { code: 'INVALID_ARGUMENT' });
  });

  it('removing a device resets it; its source then refuses with REMOVED', async () => {
    const dev = builtin!;
    const source = driver.source(dev);
    await bus.removeDevice(dev);
    assert.equal(await dev.ops.getStatus(), 0);
    const error = await source.read(10).then(
      () => undefined,
      (e: unknown) => e,
    );
    assert.ok(error instanceof RngDriverError);
    assert.equal(error.code, 'REMOVED');
    assert.throws(() => driver.source(dev), { code: 'NOT_BOUND' });
    assert.equal(driver.devices.length, 1);
    assert.equal((await driver.read(32)).length, 32);
  });
});
