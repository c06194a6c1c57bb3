// StreamNetBackend against QEMU's own `-netdev stream`: two virtio-net-pci NICs of one QEMU (qtest; ringvm's
// virtio-net driver is their guest driver) on one NetSwitch segment. NIC 0's netdev connects over TCP to a
// ringvm stream server; NIC 1's netdev is a QEMU unix server that a reconnecting ringvm stream client dials.
// Frames between the NICs cross QEMU → stream → switch → stream → QEMU; an endpoint port injects broadcasts.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { NetSwitch } from '../../../src/backends/net/net-switch.js';
import { StreamNetBackend } from '../../../src/backends/net/stream-backend.js';
import type { EndpointSwitchPort } from '../../../src/backends/net/switch-ports.js';
import { VirtioNetDriver, type VirtioNetInterface } from '../../../src/drivers/net/net-driver.js';
import { QtestLink } from '../../../src/transport/pci/qtest-link.js';
import { openVirtioPciDevices } from '../../../src/transport/pci/virtio-pci-modern.js';
import { VirtioBus } from '../../../src/virtio/driver/virtio-bus.js';
import { ensureQemu, killLeftoverQemus, workDir } from '../../transport/pci/qtest-harness.js';
import { BROADCAST, mac, testFrame, until } from './net-backend-harness.js';

describe(
  'StreamNetBackend with QEMU virtio-net-pci (-netdev stream), bridged by NetSwitch',
  { timeout: 5 * 60_000 },
  () => {
    const work = workDir(`ringvm-stream-qemu-${process.pid}-`);
    const sw = new NetSwitch();
    let link: QtestLink | undefined;
    let server: StreamNetBackend | undefined;
    let client: StreamNetBackend | undefined;
    let endpoint: EndpointSwitchPort | undefined;
    const seen: Buffer[] = [];
    const bus = new VirtioBus();
    const driver = new VirtioNetDriver({ rxBufferSize: 2048, queueSize: 128 });
    const nics: VirtioNetInterface[] = [];

    before(async () => {
      await ensureQemu();
      server = await StreamNetBackend.open({
        mode: 'server',
        address: { type: 'inet', host: '127.0.0.1', port: 0 },
      });
      const port = server.address.type === 'inet' ? server.address.port : 0;
      const qemuServerPath = join(work.dir, 'qemu-n1.sock');
      link = await QtestLink.start({
        devices: [
          'virtio-net-pci,netdev=n0,mac=52:54:00:12:34:60,disable-legacy=on',
          'virtio-net-pci,netdev=n1,mac=52:54:00:12:34:61,disable-legacy=on',
        ],
        args: [
          '-netdev',
          `stream,id=n0,server=off,addr.type=inet,addr.host=127.0.0.1,addr.port=${port}`,
          '-netdev',
          `stream,id=n1,server=on,addr.type=unix,addr.path=${qemuServerPath}`,
        ],
        memSize: 64 << 20,
      });
      client = await StreamNetBackend.open({
        mode: 'client',
        address: { type: 'unix', path: qemuServerPath },
        reconnectMs: 50,
      });
      sw.addBackend(server, { name: 'qemu-n0' });
      sw.addBackend(client, { name: 'qemu-n1' });
      endpoint = sw.addEndpoint({ name: 'host' });
      endpoint.onFrame((f) => seen.push(Buffer.from(f)));
      await bus.registerDriver(driver);
      const ts = (await openVirtioPciDevices(link)).sort(
        (a, b) => a.pci.address.device - b.pci.address.device,
      );
      for (const t of ts) nics.push(driver.net(await bus.addDevice(t)));
      await until(() => server!.linkUp && client!.linkUp, 'both stream links', 60_000);
    });

    after(async () => {
      await link?.close();
      killLeftoverQemus();
      await sw.close();
      work.cleanup();
    });

    it('a broadcast from the host endpoint reaches both NICs', async () => {
      const got: Buffer[][] = [[], []];
      const offs = nics.map((n, i) => n.onFrame((f) => got[i]!.push(Buffer.from(f))));
      const f = testFrame(BROADCAST, mac(0x77), 60, 1);
      endpoint!.send(f);
      await until(() => got[0]!.length === 1 && got[1]!.length === 1, 'the broadcast at both NICs');
      assert.ok(got[0]![0]!.equals(f) && got[1]![0]!.equals(f));
      for (const off of offs) off();
    });

    it('NIC 0 ↔ NIC 1 through two stream links and the switch: every frame, in order, both ways', async () => {
      const [a, b] = nics as [VirtioNetInterface, VirtioNetInterface];
      const atB: Buffer[] = [];
      const atA: Buffer[] = [];
      const offB = b.onFrame((f) => atB.push(Buffer.from(f)));
      const offA = a.onFrame((f) => atA.push(Buffer.from(f)));
      // Let the switch learn both NICs (their first frames are flooded, the endpoint sees them).
      await a.send(testFrame(BROADCAST, a.macBytes, 60, 2));
      await b.send(testFrame(BROADCAST, b.macBytes, 60, 3));
      await until(() => seen.length >= 2 && atA.length === 1 && atB.length === 1, 'the learning broadcasts');
      atA.length = 0;
      atB.length = 0;
      const seenBefore = seen.length;
      const aToB = Array.from({ length: 300 }, (_, i) =>
        testFrame(b.macBytes, a.macBytes, 60 + ((i * 37) % 1455), i),
      );
      const bToA = Array.from({ length: 300 }, (_, i) =>
        testFrame(a.macBytes, b.macBytes, 64 + ((i * 53) % 1451), i + 7),
      );
      // In windows the rx rings can take: QEMU drops what its guest has no buffer for, as a NIC does.
      for (let w = 0; w < 300; w += 50) {
        await Promise.all([
          ...aToB.slice(w, w + 50).map((f) => a.send(f)),
          ...bToA.slice(w, w + 50).map((f) => b.send(f)),
        ]);
        await until(() => atB.length >= w + 50 && atA.length >= w + 50, `window ${w}`);
      }
      assert.equal(atB.length, aToB.length);
      assert.equal(atA.length, bToA.length);
      atB.forEach((f, i) => {
        assert.ok(f.equals(aToB[i]!), `a→b frame ${i}`);
      });
      atA.forEach((f, i) => {
        assert.ok(f.equals(bToA[i]!), `b→a frame ${i}`);
      });
      // Known unicast is not flooded to the endpoint.
      assert.equal(seen.length, seenBefore);
      const n0 = sw.ports.find((p) => p.name === 'qemu-n0')!;
      assert.equal(n0.stats.txDropped, 0);
      assert.ok(n0.stats.rxFrames >= 301 && n0.stats.txFrames >= 301);
      offA();
      offB();
    });
  },
);
