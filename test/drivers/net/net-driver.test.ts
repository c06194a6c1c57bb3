// ringvm's virtio-net driver against QEMU's own virtio-net-pci (with and without mergeable receive buffers), each
// NIC's netdev a `-netdev stream` connected to a unix socket this test listens on: QEMU frames every packet with a
// 4-byte big-endian length. Frames ringvm sends must arrive there intact; frames written there must reach
// ringvm's onFrame. Link status is flipped through QMP `set_link`.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import {
  NET_HDR_SIZE,
  NetFeature,
  NetGsoType,
  VIRTIO_NET_HDR_F_NEEDS_CSUM,
} from '../../../src/devices/net/net-layout.js';
import {
  NetDriverError,
  VirtioNetDriver,
  fillNetHeader,
  type VirtioNetInterface,
} from '../../../src/drivers/net/net-driver.js';
import { QtestLink } from '../../../src/transport/pci/qtest-link.js';
import { openVirtioPciDevices } from '../../../src/transport/pci/virtio-pci-modern.js';
import { VirtioBus } from '../../../src/virtio/driver/virtio-bus.js';
import { pattern } from '../../guest/guest-harness.js';
import { QmpClient, eventually } from '../../transport/pci/qmp-client.js';
import { ensureQemu, killLeftoverQemus, workDir } from '../../transport/pci/qtest-harness.js';

/** The host end of one stream netdev: accepts QEMU's connection, splits and writes length-prefixed frames. */
class StreamPeer {
  readonly frames: Buffer[] = [];
  readonly server: Server;
  socket: Socket | undefined;
  #buf = Buffer.alloc(0);

  constructor(readonly path: string) {
    this.server = createServer((s) => {
      this.socket = s;
      s.on('data', (chunk: Buffer) => {
        this.#buf = Buffer.concat([this.#buf, chunk]);
        while (this.#buf.length >= 4) {
          const n = this.#buf.readUInt32BE(0);
          if (this.#buf.length < 4 + n) break;
          this.frames.push(Buffer.from(this.#buf.subarray(4, 4 + n)));
          this.#buf = this.#buf.subarray(4 + n);
        }
      });
      s.on('error', () => undefined);
    });
  }

  listen(): Promise<void> {
    return new Promise((resolve) => this.server.listen(this.path, resolve));
  }

  write(frame: Uint8Array): void {
    const len = Buffer.alloc(4);
    len.writeUInt32BE(frame.length);
    this.socket!.write(Buffer.concat([len, frame]));
  }

  close(): void {
    this.socket?.destroy();
    this.server.close();
  }
}

/** An Ethernet frame of `size` bytes: to `dst`, from `src`, ethertype 0x88B5 (local experimental), patterned. */
function frame(dst: Uint8Array, src: Uint8Array, size: number, seed: number): Buffer {
  const f = pattern(size, seed);
  f.set(dst, 0);
  f.set(src, 6);
  f.writeUInt16BE(0x88b5, 12);
  return f;
}

const PEER_MAC = Uint8Array.of(0x52, 0x54, 0x00, 0xaa, 0xbb, 0xcc);
const SIZES = [60, 64, 100, 255, 256, 257, 600, 1000, 1500, 1514];

describe('VirtioNetDriver on QEMU virtio-net-pci (qtest, stream netdev)', { timeout: 5 * 60_000 }, () => {
  const work = workDir('ringvm-netdrv-');
  let link: QtestLink | undefined;
  let qmp: QmpClient | undefined;
  const peers = {
    mrg: new StreamPeer(join(work.dir, 'n0.sock')),
    plain: new StreamPeer(join(work.dir, 'n1.sock')),
  };
  const errors: Error[] = [];
  const bus = new VirtioBus({ onError: (_dev, e) => errors.push(e) });
  // Small receive buffers: a full-size frame spans 7 of them with MRG_RXBUF.
  const driver = new VirtioNetDriver({ rxBufferSize: 256, queueSize: 64 });
  const nics: Record<keyof typeof peers, VirtioNetInterface | undefined> = {
    mrg: undefined,
    plain: undefined,
  };

  before(async () => {
    await ensureQemu();
    await peers.mrg.listen();
    await peers.plain.listen();
    const qmpPath = join(work.dir, 'qmp.sock');
    const stream = (id: string, path: string): string[] => [
      '-netdev',
      `stream,id=${id},server=off,addr.type=unix,addr.path=${path}`,
    ];
    link = await QtestLink.start({
      devices: [
        'virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56,disable-legacy=on',
        'virtio-net-pci,netdev=n1,mac=52:54:00:12:34:57,mrg_rxbuf=off,disable-legacy=on',
      ],
      args: [
        ...stream('n0', peers.mrg.path),
        ...stream('n1', peers.plain.path),
        '-qmp',
        `unix:${qmpPath},server=on,wait=off`,
      ],
      memSize: 64 << 20,
    });
    qmp = await QmpClient.connect(qmpPath);
    await bus.registerDriver(driver);
    const ts = (await openVirtioPciDevices(link)).sort((a, b) => a.pci.address.device - b.pci.address.device);
    assert.equal(ts.length, 2);
    nics.mrg = driver.net(await bus.addDevice(ts[0]!));
    nics.plain = driver.net(await bus.addDevice(ts[1]!));
    assert.deepEqual(errors, []);
    await eventually(async () =>
      Promise.resolve(peers.mrg.socket !== undefined && peers.plain.socket !== undefined),
    );
  });

  after(async () => {
    qmp?.close();
    await link?.close();
    killLeftoverQemus();
    peers.mrg.close();
    peers.plain.close();
    work.cleanup();
  });

  it('reads the MAC from the config space, link up, MRG_RXBUF as configured', () => {
    assert.equal(nics.mrg!.mac, '52:54:00:12:34:56');
    assert.equal(nics.plain!.mac, '52:54:00:12:34:57');
    assert.equal(nics.mrg!.linkUp, true);
    assert.equal(nics.mrg!.mergeable, true);
    assert.equal(nics.plain!.mergeable, false);
    assert.equal(nics.mrg!.dev.hasFeature(NetFeature.VIRTIO_NET_F_STATUS), true);
  });

  for (const kind of ['mrg', 'plain'] as const) {
    it(`${kind}: frames sent arrive at the socket intact, in order`, async () => {
      const nic = nics[kind]!;
      const peer = peers[kind];
      peer.frames.length = 0;
      const sent = SIZES.map((n, i) => frame(PEER_MAC, nic.macBytes, n, 100 + i));
      await Promise.all(sent.map((f) => nic.send(f)));
      await eventually(
        async () => Promise.resolve(peer.frames.length >= sent.length),
        20_000,
        'frames at the socket',
      );
      assert.equal(peer.frames.length, sent.length);
      sent.forEach((f, i) => {
        assert.ok(peer.frames[i]!.equals(f), `frame ${i} (${f.length} bytes)`);
      });
      assert.equal(nic.txPending, 0);
    });

    it(`${kind}: frames written to the socket arrive in onFrame (${kind === 'mrg' ? 'merged buffers' : 'one buffer each'})`, async () => {
      const nic = nics[kind]!;
      const peer = peers[kind];
      const got: { frame: Uint8Array; numBuffers: number }[] = [];
      const off = nic.onFrame((f, info) => got.push({ frame: f, numBuffers: info.numBuffers }));
      // More frames than the 64-entry ring holds buffers for: the ring must be restocked as they arrive.
      const sent: Buffer[] = [];
      for (let round = 0; round < 8; round++) {
        for (const [i, n] of SIZES.entries()) sent.push(frame(nic.macBytes, PEER_MAC, n, 1000 * round + i));
      }
      for (const f of sent) peer.write(f);
      await eventually(async () => Promise.resolve(got.length >= sent.length), 30_000, 'frames in onFrame');
      off();
      assert.equal(got.length, sent.length);
      sent.forEach((f, i) => {
        assert.ok(Buffer.from(got[i]!.frame).equals(f), `frame ${i} (${f.length} bytes)`);
      });
      const maxBuffers = Math.max(...got.map((g) => g.numBuffers));
      if (kind === 'mrg') assert.equal(maxBuffers, Math.ceil((NET_HDR_SIZE + 1514) / 256));
      else assert.equal(maxBuffers, 1);
      assert.equal(nic.stats.rxErrors, 0);
    });
  }

  it('link status follows QMP set_link (config-change interrupt)', async () => {
    const nic = nics.mrg!;
    const changes: boolean[] = [];
    nic.onLinkChange((up) => changes.push(up));
    await qmp!.execute('set_link', { name: 'n0', up: false });
    await eventually(async () => Promise.resolve(!nic.linkUp), 20_000, 'link down');
    await qmp!.execute('set_link', { name: 'n0', up: true });
    await eventually(async () => Promise.resolve(nic.linkUp), 20_000, 'link up');
    assert.deepEqual(changes, [false, true]);
  });

  it('refuses offloads the device did not offer and bad frames, before sending', () => {
    const nic = nics.plain!;
    assert.throws(
      () => nic.send(new Uint8Array(60), { checksum: { start: 34, offset: 16 } }),
      (e: unknown) => e instanceof NetDriverError && e.code === 'UNSUPPORTED',
    );
    assert.throws(
      () => nic.send(new Uint8Array(10)),
      (e: unknown) => e instanceof NetDriverError && e.code === 'INVALID_ARGUMENT',
    );
  });

  it('fills the header as Linux xmit_skb does when offloads are negotiated', () => {
    const all = (): boolean => true;
    const hdr = new Uint8Array(NET_HDR_SIZE);
    // TCP/IPv4 GSO: csum_start = transport header (14 + 20), csum_offset = 16 (TCP checksum), hdr_len = 54.
    fillNetHeader(
      hdr,
      9000,
      { checksum: { start: 34, offset: 16 }, gso: { type: 'tcpv4', size: 1448, hdrLen: 54 } },
      all,
    );
    const v = new DataView(hdr.buffer);
    assert.equal(v.getUint8(0), VIRTIO_NET_HDR_F_NEEDS_CSUM);
    assert.equal(v.getUint8(1), NetGsoType.TCPV4);
    assert.equal(v.getUint16(2, true), 54);
    assert.equal(v.getUint16(4, true), 1448);
    assert.equal(v.getUint16(6, true), 34);
    assert.equal(v.getUint16(8, true), 16);
    assert.equal(v.getUint16(10, true), 0);
    fillNetHeader(hdr, 100, undefined, all);
    assert.deepEqual([...hdr], new Array<number>(NET_HDR_SIZE).fill(0));
    assert.throws(
      () => {
        fillNetHeader(hdr, 100, { gso: { type: 'tcpv6', size: 1000, hdrLen: 74 } }, all);
      },
      (e: unknown) => e instanceof NetDriverError && e.code === 'INVALID_ARGUMENT',
    );
  });

  it('remove fails later sends with REMOVED and frees the receive buffers', async () => {
    const nic = nics.plain!;
    const before = nic.allocator.available;
    await bus.removeDevice(nic.dev);
    assert.ok(nic.allocator.available > before);
    assert.throws(
      () => nic.send(new Uint8Array(60)),
      (e: unknown) => e instanceof NetDriverError && e.code === 'REMOVED',
    );
  });
});
