// The legacy (virtio 0.9.5) interface of transitional virtio-pci devices, through their I/O BAR: QEMU's
// virtio-blk-pci and virtio-rng-pci with `disable-modern=on` (legacy only) and a default transitional device (both
// interfaces, driven here through the legacy one), with MSI-X and with ISR polling. ringvm's unchanged blk and rng
// drivers run on it: what the driver writes is in the host file, what the file holds is what it reads.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { VirtioBlkDriver, type VirtioBlkDisk } from '../../../src/drivers/blk/blk-driver.js';
import { VirtioRngDriver } from '../../../src/drivers/rng/rng-driver.js';
import { PciBus } from '../../../src/transport/pci/pci-bus-scan.js';
import { QtestLink } from '../../../src/transport/pci/qtest-link.js';
import {
  LEGACY_CONFIG_OFFSET,
  LEGACY_CONFIG_OFFSET_MSIX,
  VirtioPciLegacyTransport,
  openVirtioPciLegacyDevices,
} from '../../../src/transport/pci/virtio-pci-legacy.js';
import { VirtioPciError, VirtioPciModernTransport } from '../../../src/transport/pci/virtio-pci-modern.js';
import { VirtioFeature, hasFeature } from '../../../src/virtio/features.js';
import { DeviceStatus } from '../../../src/virtio/status.js';
import { VirtioBus } from '../../../src/virtio/driver/virtio-bus.js';
import type { VirtioBusDevice } from '../../../src/virtio/driver/virtio-bus-device.js';
import { MiB, pattern } from '../../guest/guest-harness.js';
import { ensureQemu, killLeftoverQemus, rawDrive, workDir } from './qtest-harness.js';

const SECTOR = 512;

for (const interrupts of ['msix', 'isr'] as const) {
  describe(
    `virtio-pci legacy interface on QEMU transitional devices (${interrupts})`,
    { timeout: 5 * 60_000 },
    () => {
      const work = workDir('ringvm-legacy-');
      const seed = pattern(2 * MiB, 11);
      let legacyImage = '';
      let transitionalImage = '';
      let link: QtestLink | undefined;
      const errors: Error[] = [];
      const bus = new VirtioBus({ onError: (_dev, e) => errors.push(e) });
      const blk = new VirtioBlkDriver();
      const rng = new VirtioRngDriver();
      let transports: VirtioPciLegacyTransport[] = [];
      let devs: VirtioBusDevice[] = [];

      before(async () => {
        await ensureQemu();
        legacyImage = work.image('legacy.img', seed);
        transitionalImage = work.image('transitional.img', seed.subarray(0, MiB));
        link = await QtestLink.start({
          devices: [
            'virtio-blk-pci,drive=d0,disable-modern=on,serial=ringvm-legacy',
            'virtio-rng-pci,disable-modern=on',
            'virtio-blk-pci,drive=d1,serial=ringvm-trans',
            'virtio-rng-pci,disable-legacy=on',
          ],
          args: [...rawDrive('d0', legacyImage), ...rawDrive('d1', transitionalImage)],
          memSize: 64 << 20,
        });
        await bus.registerDriver(blk);
        await bus.registerDriver(rng);
        transports = await openVirtioPciLegacyDevices(link, { interrupts });
        for (const t of transports) devs.push(await bus.addDevice(t));
        assert.deepEqual(errors, []);
      });

      after(async () => {
        await link?.close();
        killLeftoverQemus();
        work.cleanup();
      });

      it('opens the three transitional functions through BAR0 and skips the modern-only one', () => {
        assert.deepEqual(
          transports.map((t) => [t.pci.deviceId, t.deviceId, t.interruptMode]),
          [
            [0x1001, 2, interrupts],
            [0x1005, 4, interrupts],
            [0x1001, 2, interrupts],
          ],
        );
        for (const t of transports) {
          assert.equal(t.legacy, true);
          assert.equal(
            t.configOffset,
            interrupts === 'msix' ? LEGACY_CONFIG_OFFSET_MSIX : LEGACY_CONFIG_OFFSET,
          );
        }
        devs = devs.filter((d) => d.driver !== undefined);
        assert.equal(devs.length, 3);
      });

      it('negotiates without VERSION_1 and without FEATURES_OK', async () => {
        for (const dev of devs) {
          assert.equal(hasFeature(await dev.ops.getFeatures(), VirtioFeature.VIRTIO_F_VERSION_1), false);
          assert.equal(dev.hasFeature(VirtioFeature.VIRTIO_F_VERSION_1), false);
          const status = await dev.getStatus();
          assert.equal(status & DeviceStatus.DRIVER_OK, DeviceStatus.DRIVER_OK);
          assert.equal(status & DeviceStatus.FEATURES_OK, 0);
        }
      });

      it('blk: config through the legacy header, GET_ID, random writes land in the host file and read back', async () => {
        const disk: VirtioBlkDisk = blk.disk(devs[0]!);
        assert.equal(disk.size, seed.length);
        assert.equal(await disk.getId(), 'ringvm-legacy');
        let x = 12345;
        const next = (): number => (x = (Math.imul(x, 1103515245) + 12345) >>> 0);
        const writes: { sector: number; data: Uint8Array }[] = [];
        for (let i = 0; i < 24; i++) {
          const sectors = 1 + (next() % 64);
          const sector = next() % (seed.length / SECTOR - sectors);
          writes.push({ sector, data: pattern(sectors * SECTOR, 1000 + i) });
        }
        for (const w of writes) await disk.write(w.sector, w.data);
        await disk.flush();
        const expected = Buffer.from(seed);
        for (const w of writes) expected.set(w.data, w.sector * SECTOR);
        assert.ok(readFileSync(legacyImage).equals(expected), 'host file = what the driver wrote');
        const back = await Promise.all(writes.map((w) => disk.read(w.sector, w.data.length)));
        back.forEach((b, i) => {
          assert.ok(
            Buffer.from(b).equals(
              Buffer.from(
                expected.subarray(
                  writes[i]!.sector * SECTOR,
                  writes[i]!.sector * SECTOR + writes[i]!.data.length,
                ),
              ),
            ),
          );
        });
        const whole = await disk.read(0, seed.length);
        assert.ok(Buffer.from(whole).equals(expected));
      });

      it('blk: a transitional device with both interfaces works through the legacy one', async () => {
        const disk = blk.disk(devs[2]!);
        assert.equal(await disk.getId(), 'ringvm-trans');
        const data = pattern(64 * 1024, 77);
        await disk.write(100, data);
        await disk.flush();
        assert.ok(
          readFileSync(transitionalImage)
            .subarray(100 * SECTOR, 100 * SECTOR + data.length)
            .equals(data),
        );
        assert.ok(Buffer.from(await disk.read(100, data.length)).equals(data));
      });

      it('rng: bytes arrive', async () => {
        const bytes = await rng.source(devs[1]!).read(20_000);
        assert.equal(bytes.length, 20_000);
        assert.ok(new Set(bytes).size > 200);
      });

      it('refuses a modern-only function, and the modern transport refuses a legacy-only one', async () => {
        // A second scan of the same bus, with its own BAR window, so it cannot move the BARs the transports use.
        const fns = await new PciBus(link!, { mmioBase: 0xf000_0000, ioBase: 0xe000 }).scan();
        const modernOnly = fns.find((f) => f.deviceId === 0x1044)!;
        await assert.rejects(
          VirtioPciLegacyTransport.open(link!, modernOnly),
          (e: unknown) => e instanceof VirtioPciError && e.code === 'MISSING_CAPABILITY',
        );
        const legacyOnly = transports[1]!.pci;
        await assert.rejects(
          VirtioPciModernTransport.open(link!, legacyOnly),
          (e: unknown) => e instanceof VirtioPciError && e.code === 'MISSING_CAPABILITY',
        );
      });

      it('removal resets the devices and frees their rings', async () => {
        const before = link!.allocator.available;
        for (const dev of devs) await bus.removeDevice(dev);
        assert.ok(link!.allocator.available > before);
        for (const t of transports) assert.equal(await t.getStatus(), 0);
        assert.deepEqual(errors, []);
      });
    },
  );
}
