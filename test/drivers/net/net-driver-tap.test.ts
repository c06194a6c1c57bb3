// ringvm's virtio-net driver against QEMU's virtio-net-pci on tap netdevs, inside a network namespace this test
// makes and deletes. A tap gives QEMU a vnet header, so QEMU offers the checksum and segmentation offloads.
//
//   ringvm nicA ── QEMU virtio-net (mq, 4 pairs) ── tapA (multi-queue, vnet header) ─┐
//                                                                                     br0 (10.77.0.1/24)
//   ringvm nicB ── QEMU virtio-net (no offloads) ── tapB (no vnet header) ───────────┘
//
// tapB has no offload features, so whatever the kernel forwards there it must first segment and checksum in
// software: frames nicA sends with TSO / checksum offload come out at nicB as ordinary, checksummed segments,
// which this test checks with its own checksum code (ip-packets.ts). Receive offloads: a TCP client in the
// namespace sends to 10.77.0.2 (nicA's MAC, a static neighbour) and this test answers as a minimal TCP peer on
// nicA, which then gets GSO super-frames with partial checksums (GUEST_TSO4, GUEST_CSUM). The control queue's
// effects are read back through QMP (query-rx-filter, x-query-virtio-queue-status).
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import {
  NET_CONFIG_STATUS,
  NetFeature,
  NetGsoType,
  VIRTIO_NET_HDR_F_NEEDS_CSUM,
  VIRTIO_NET_S_ANNOUNCE,
} from '../../../src/devices/net/net-layout.js';
import {
  NetDriverError,
  VirtioNetDriver,
  type NetRxInfo,
  type VirtioNetInterface,
} from '../../../src/drivers/net/net-driver.js';
import { QtestLink } from '../../../src/transport/pci/qtest-link.js';
import { openVirtioPciDevices } from '../../../src/transport/pci/virtio-pci-modern.js';
import { VirtioBus } from '../../../src/virtio/driver/virtio-bus.js';
import { ProbeError } from '../../../src/virtio/driver/virtio-driver.js';
import { QmpClient, eventually } from '../../transport/pci/qmp-client.js';
import { ensureQemu, killLeftoverQemus, workDir } from '../../transport/pci/qtest-harness.js';
import {
  ETHERTYPE_IPV4,
  IPPROTO_TCP,
  IPPROTO_UDP,
  TCP_CHECK,
  TcpFlag,
  UDP_CHECK,
  buildFrame,
  ipv4,
  ipv6,
  parseSegment,
  type IpAddrs,
  type ParsedSegment,
} from './ip-packets.js';
import { NetNamespace } from '../../guest/net-namespace.js';

const PAIRS = 4;
const MAC_A = '52:54:00:12:34:60';
const MAC_B = '52:54:00:12:34:61';
const HOST_IP = '10.77.0.1';
const A_IP = '10.77.0.2';
const B_IP = '10.77.0.3';

function macBytes(mac: string): Uint8Array {
  return Uint8Array.from(mac.split(':').map((h) => parseInt(h, 16)));
}

function payload(n: number, seed: number): Uint8Array {
  const p = new Uint8Array(n);
  for (let i = 0; i < n; i++) p[i] = (i * 7 + seed * 13 + (i >> 8)) & 0xff;
  return p;
}

interface Received {
  readonly frame: Uint8Array;
  readonly info: NetRxInfo;
}

describe(
  'VirtioNetDriver on QEMU virtio-net-pci over tap (offloads, control queue, multiqueue)',
  { timeout: 6 * 60_000 },
  () => {
    const work = workDir('ringvm-nettap-');
    let ns: NetNamespace | undefined;
    let link: QtestLink | undefined;
    let qmp: QmpClient | undefined;
    const errors: Error[] = [];
    const bus = new VirtioBus({ onError: (_dev, e) => errors.push(e) });
    const driver = new VirtioNetDriver({ queuePairs: PAIRS });
    let a: VirtioNetInterface;
    let b: VirtioNetInterface;
    let refused: ProbeError | undefined;
    const atA: Received[] = [];
    const atB: Received[] = [];
    let pathA = '';

    before(async () => {
      await ensureQemu();
      ns = NetNamespace.create('nettap');
      ns.ip('tuntap', 'add', 'dev', 'tapA', 'mode', 'tap', 'multi_queue');
      ns.ip('tuntap', 'add', 'dev', 'tapB', 'mode', 'tap');
      ns.ip('link', 'add', 'br0', 'type', 'bridge');
      for (const dev of ['tapA', 'tapB']) ns.ip('link', 'set', dev, 'master', 'br0');
      for (const dev of ['tapA', 'tapB', 'br0']) ns.ip('link', 'set', dev, 'up');
      ns.ip('addr', 'add', `${HOST_IP}/24`, 'dev', 'br0');
      ns.ip('neigh', 'add', A_IP, 'lladdr', MAC_A, 'dev', 'br0', 'nud', 'permanent');
      const qmpPath = join(work.dir, 'qmp.sock');
      link = await QtestLink.start({
        wrapper: ns.wrapper,
        devices: [
          `virtio-net-pci,id=nicA,netdev=nA,mac=${MAC_A},mq=on,vectors=${2 * PAIRS + 2},disable-legacy=on`,
          `virtio-net-pci,id=nicB,netdev=nB,mac=${MAC_B},disable-legacy=on`,
          // ctrl_vq=off still offers CTRL_RX, CTRL_VLAN...: a device Linux refuses (VIRTNET_FAIL_ON), and so must we.
          'virtio-net-pci,id=nicC,netdev=nC,ctrl_vq=off,disable-legacy=on',
        ],
        args: [
          '-netdev',
          `tap,id=nA,ifname=tapA,script=no,downscript=no,vhost=off,queues=${PAIRS}`,
          '-netdev',
          'tap,id=nB,ifname=tapB,script=no,downscript=no,vhost=off,vnet_hdr=off',
          '-netdev',
          'hubport,id=nC,hubid=0',
          '-qmp',
          `unix:${qmpPath},server=on,wait=off`,
        ],
        memSize: 128 << 20,
      });
      qmp = await QmpClient.connect(qmpPath);
      await bus.registerDriver(driver);
      const ts = (await openVirtioPciDevices(link)).sort(
        (x, y) => x.pci.address.device - y.pci.address.device,
      );
      assert.equal(ts.length, 3);
      a = driver.net(await bus.addDevice(ts[0]!));
      b = driver.net(await bus.addDevice(ts[1]!));
      const c = await bus.addDevice(ts[2]!);
      refused = c.probeError instanceof ProbeError ? c.probeError : undefined;
      assert.equal(errors.length, 1, errors.map((e) => e.message).join('\n'));
      a.onFrame((frame, info) => atA.push({ frame, info }));
      b.onFrame((frame, info) => atB.push({ frame, info }));
      const devices = (await qmp.execute('x-query-virtio', {})) as { path: string }[];
      pathA = devices.find((d) => d.path.includes('nicA'))!.path;
    });

    after(async () => {
      qmp?.close();
      await link?.close();
      killLeftoverQemus();
      ns?.delete();
      work.cleanup();
    });

    it('negotiates the offloads, the control queue and 4 queue pairs; refuses CTRL_RX without CTRL_VQ', async () => {
      for (const bit of [
        NetFeature.VIRTIO_NET_F_CSUM,
        NetFeature.VIRTIO_NET_F_HOST_TSO4,
        NetFeature.VIRTIO_NET_F_HOST_TSO6,
        NetFeature.VIRTIO_NET_F_GUEST_CSUM,
        NetFeature.VIRTIO_NET_F_GUEST_TSO4,
        NetFeature.VIRTIO_NET_F_GUEST_TSO6,
        NetFeature.VIRTIO_NET_F_GUEST_ECN,
        NetFeature.VIRTIO_NET_F_GUEST_UFO,
        NetFeature.VIRTIO_NET_F_CTRL_VQ,
        NetFeature.VIRTIO_NET_F_CTRL_RX,
        NetFeature.VIRTIO_NET_F_CTRL_VLAN,
        NetFeature.VIRTIO_NET_F_MQ,
      ]) {
        assert.equal(a.dev.hasFeature(bit), true, `nicA feature ${bit}`);
      }
      // No vnet header on tapB: QEMU offers no offloads there.
      assert.equal(b.dev.hasFeature(NetFeature.VIRTIO_NET_F_CSUM), false);
      assert.equal(b.dev.hasFeature(NetFeature.VIRTIO_NET_F_GUEST_CSUM), false);
      assert.equal(a.maxQueuePairs, PAIRS);
      assert.equal(a.queuePairs, PAIRS);
      assert.equal(a.activeQueuePairs, PAIRS);
      assert.equal(b.queuePairs, 1);
      const status = (await qmp!.execute('x-query-virtio-status', { path: pathA })) as { 'num-vqs': number };
      assert.equal(status['num-vqs'], 2 * PAIRS + 1);
      assert.equal(refused?.code, 'VALIDATE_FAILED');
      assert.ok(
        refused.cause instanceof NetDriverError && refused.cause.code === 'BAD_FEATURES',
        String(refused.cause),
      );
      assert.match(refused.cause.message, /CTRL_RX.*without VIRTIO_NET_F_CTRL_VQ/);
    });

    /** Frames at nicB parsed as segments from `srcPort` (waiting for `bytes` of payload). */
    async function segmentsAtB(srcPort: number, bytes: number): Promise<ParsedSegment[]> {
      const mine = (): ParsedSegment[] =>
        atB.map((r) => parseSegment(r.frame)).filter((s): s is ParsedSegment => s?.srcPort === srcPort);
      await eventually(
        async () => Promise.resolve(mine().reduce((n, s) => n + s.payload.length, 0) >= bytes),
        20_000,
        `${bytes} bytes from port ${srcPort} at nicB`,
      );
      return mine();
    }

    for (const v6 of [false, true]) {
      it(`TSO (${v6 ? 'HOST_TSO6' : 'HOST_TSO4'}): one 40 000-byte super-frame arrives at nicB as checksummed 1400-byte segments`, async () => {
        const ip: IpAddrs = v6
          ? { v6, src: ipv6(2), dst: ipv6(3) }
          : { v6, src: ipv4(A_IP), dst: ipv4(B_IP) };
        const data = payload(40_000, v6 ? 6 : 4);
        const srcPort = v6 ? 40006 : 40004;
        const seq = 0x1234_5678;
        const built = buildFrame({
          dstMac: macBytes(MAC_B),
          srcMac: macBytes(MAC_A),
          ip,
          proto: IPPROTO_TCP,
          srcPort,
          dstPort: 5000,
          seq,
          ack: 1,
          flags: TcpFlag.ACK | TcpFlag.PSH,
          payload: data,
          checksum: 'partial',
          ipId: 100,
        });
        await a.send(built.frame, {
          checksum: { start: built.l4Start, offset: TCP_CHECK },
          gso: { type: v6 ? 'tcpv6' : 'tcpv4', size: 1400, hdrLen: built.hdrLen },
        });
        const segs = await segmentsAtB(srcPort, data.length);
        assert.equal(segs.length, Math.ceil(data.length / 1400));
        let expectSeq = seq;
        const got: Uint8Array[] = [];
        for (const [i, s] of segs.entries()) {
          assert.ok(s.ipChecksumOk && s.lengthOk && s.l4ChecksumOk, `segment ${i} checksums/lengths`);
          assert.equal(s.seq, expectSeq >>> 0, `segment ${i} sequence number`);
          assert.ok(s.payload.length <= 1400);
          expectSeq += s.payload.length;
          got.push(s.payload);
        }
        assert.deepEqual(Buffer.concat(got), Buffer.from(data));
      });
    }

    it('checksum offload (CSUM) without GSO: a UDP datagram arrives at nicB with its checksum filled in', async () => {
      const data = payload(1000, 9);
      const built = buildFrame({
        dstMac: macBytes(MAC_B),
        srcMac: macBytes(MAC_A),
        ip: { v6: false, src: ipv4(A_IP), dst: ipv4(B_IP) },
        proto: IPPROTO_UDP,
        srcPort: 40009,
        dstPort: 5000,
        payload: data,
        checksum: 'partial',
      });
      await a.send(built.frame, { checksum: { start: built.l4Start, offset: UDP_CHECK } });
      const [seg] = await segmentsAtB(40009, data.length);
      assert.ok(seg!.l4ChecksumOk && seg!.ipChecksumOk);
      assert.deepEqual(Buffer.from(seg!.payload), Buffer.from(data));
    });

    it('GUEST_TSO4 / GUEST_CSUM: a TCP stream from the host arrives as GSO super-frames with partial checksums', async () => {
      const total = 300_000;
      const hostMac = ns!.mac('br0');
      const port = 5001;
      const iss = 0x0100_0000;
      let rcvNext = 0;
      let clientPort = 0;
      let finished = false;
      const chunks: Uint8Array[] = [];
      const gsoFrames: NetRxInfo[] = [];
      const reply = (flags: number, seq: number, options?: Uint8Array): void => {
        const built = buildFrame({
          dstMac: hostMac,
          srcMac: macBytes(MAC_A),
          ip: { v6: false, src: ipv4(A_IP), dst: ipv4(HOST_IP) },
          proto: IPPROTO_TCP,
          srcPort: port,
          dstPort: clientPort,
          seq,
          ack: rcvNext,
          flags,
          payload: new Uint8Array(0),
          ...(options === undefined ? {} : { options }),
          checksum: 'partial',
        });
        void a.send(built.frame, { checksum: { start: built.l4Start, offset: TCP_CHECK } });
      };
      const off = a.onFrame((frame, info) => {
        if (frame.length < 14 || (((frame[12] as number) << 8) | (frame[13] as number)) !== ETHERTYPE_IPV4)
          return;
        const s = parseSegment(frame);
        if (s === undefined || s.proto !== IPPROTO_TCP || s.dstPort !== port) return;
        if (info.gsoType !== NetGsoType.NONE) gsoFrames.push(info);
        if ((s.flags & TcpFlag.SYN) !== 0) {
          clientPort = s.srcPort;
          rcvNext = (s.seq + 1) >>> 0;
          // MSS 1460 (kind 2, length 4).
          reply(TcpFlag.SYN | TcpFlag.ACK, iss, Uint8Array.of(2, 4, 0x05, 0xb4));
          return;
        }
        if (s.seq === rcvNext && s.payload.length > 0) {
          chunks.push(s.payload);
          rcvNext = (rcvNext + s.payload.length) >>> 0;
        }
        if ((s.flags & TcpFlag.FIN) !== 0 && (s.seq + s.payload.length) >>> 0 === rcvNext) {
          rcvNext = (rcvNext + 1) >>> 0;
          finished = true;
          reply(TcpFlag.FIN | TcpFlag.ACK, (iss + 1) >>> 0);
          return;
        }
        reply(TcpFlag.ACK, (iss + 1) >>> 0);
      });
      const script = [
        "const net = require('node:net');",
        `const data = Buffer.alloc(${total}); for (let i = 0; i < data.length; i++) data[i] = (i * 7 + 5 * 13 + (i >> 8)) & 0xff;`,
        `const s = net.connect(${port}, '${A_IP}', () => s.end(data));`,
        "s.on('close', () => process.exit(0)); s.on('error', (e) => { console.error(e.message); process.exit(1); });",
        'setTimeout(() => { console.error("timeout"); process.exit(2); }, 60000);',
      ].join('\n');
      const child = ns!.spawn([process.execPath, '-e', script]);
      let stderr = '';
      child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
      const code = await new Promise<number | null>((resolve) => child.on('exit', resolve));
      off();
      assert.equal(code, 0, `client: ${stderr}`);
      assert.equal(finished, true);
      assert.deepEqual(Buffer.concat(chunks), Buffer.from(payload(total, 5)));
      assert.ok(gsoFrames.length > 0, 'some frames arrived as GSO super-frames');
      for (const info of gsoFrames) {
        assert.equal(info.gsoType & ~NetGsoType.ECN, NetGsoType.TCPV4);
        assert.equal(info.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_F_NEEDS_CSUM);
        assert.equal(info.csumStart, 34);
        assert.equal(info.csumOffset, TCP_CHECK);
        assert.ok(info.gsoSize > 0 && info.gsoSize <= 1460);
      }
      assert.equal(a.stats.rxErrors, 0);
    });

    it('MQ: frames sent on each of the 4 transmit queues arrive, and QEMU saw each queue used', async () => {
      const before = (await Promise.all(
        Array.from({ length: PAIRS }, (_, q) =>
          qmp!.execute('x-query-virtio-queue-status', { path: pathA, queue: 2 * q + 1 }),
        ),
      )) as { 'used-idx': number }[];
      const perQueue = 10;
      const sends: Promise<void>[] = [];
      for (let q = 0; q < PAIRS; q++) {
        for (let i = 0; i < perQueue; i++) {
          const built = buildFrame({
            dstMac: macBytes(MAC_B),
            srcMac: macBytes(MAC_A),
            ip: { v6: false, src: ipv4(A_IP), dst: ipv4(B_IP) },
            proto: IPPROTO_UDP,
            srcPort: 41000 + q,
            dstPort: 5000,
            payload: payload(100, q * 100 + i),
            checksum: 'full',
          });
          sends.push(a.send(built.frame, undefined, { queue: q }));
        }
      }
      await Promise.all(sends);
      for (let q = 0; q < PAIRS; q++) {
        const segs = await segmentsAtB(41000 + q, 100 * perQueue);
        assert.equal(segs.length, perQueue);
        const after = (await qmp!.execute('x-query-virtio-queue-status', {
          path: pathA,
          queue: 2 * q + 1,
        })) as {
          'used-idx': number;
        };
        assert.equal(
          (after['used-idx'] - before[q]!['used-idx'] + 0x10000) % 0x10000,
          perQueue,
          `tx queue ${q}`,
        );
      }
      assert.throws(
        () => a.send(new Uint8Array(60), undefined, { queue: PAIRS }),
        (e: unknown) => e instanceof NetDriverError && e.code === 'INVALID_ARGUMENT',
      );
    });

    it('MQ: flows from nicB spread over all 4 receive queues of nicA', async () => {
      const rxBefore = a.queueStats.rx;
      const flows = 64;
      await Promise.all(
        Array.from({ length: flows }, (_, i) => {
          const built = buildFrame({
            dstMac: macBytes(MAC_A),
            srcMac: macBytes(MAC_B),
            ip: { v6: false, src: ipv4(B_IP), dst: ipv4(A_IP) },
            proto: IPPROTO_UDP,
            srcPort: 42000 + i,
            dstPort: 6000 + i,
            payload: payload(64, i),
            checksum: 'full',
          });
          return b.send(built.frame);
        }),
      );
      const fromB = (): number =>
        atA.filter((r) => {
          const s = parseSegment(r.frame);
          return s !== undefined && s.srcPort >= 42000 && s.srcPort < 42000 + flows;
        }).length;
      await eventually(async () => Promise.resolve(fromB() >= flows), 20_000, 'flows at nicA');
      const rx = a.queueStats.rx.map((n, q) => n - rxBefore[q]!);
      for (let q = 0; q < PAIRS; q++) assert.ok(rx[q]! > 0, `receive queue ${q} got frames: ${rx.join(',')}`);
    });

    async function rxFilter(): Promise<Record<string, unknown>> {
      const [f] = (await qmp!.execute('query-rx-filter', { name: 'nicA' })) as Record<string, unknown>[];
      return f!;
    }

    it('control queue: rx mode, MAC filter, MAC address and VLANs as QEMU reports them (query-rx-filter)', async () => {
      await a.setPromiscuous(false);
      assert.equal((await rxFilter()).promiscuous, false);
      await a.setAllMulticast(true);
      assert.equal((await rxFilter()).multicast, 'all');
      await a.setAllMulticast(false);
      assert.equal((await rxFilter()).multicast, 'normal');
      await a.setMacFilter(['52:54:00:00:aa:01', '52:54:00:00:aa:02'], ['01:00:5e:00:00:fb']);
      let f = await rxFilter();
      assert.deepEqual([...(f['unicast-table'] as string[])].sort(), [
        '52:54:00:00:aa:01',
        '52:54:00:00:aa:02',
      ]);
      assert.deepEqual(f['multicast-table'], ['01:00:5e:00:00:fb']);
      await a.addVlan(42);
      await a.addVlan(100);
      assert.deepEqual(
        [...((await rxFilter())['vlan-table'] as number[])].sort((x, y) => x - y),
        [42, 100],
      );
      await a.removeVlan(42);
      assert.deepEqual((await rxFilter())['vlan-table'], [100]);
      await a.setMacAddress('52:54:00:12:34:6f');
      f = await rxFilter();
      assert.equal(f['main-mac'], '52:54:00:12:34:6f');
      assert.equal(a.mac, '52:54:00:12:34:6f');
      await a.setMacAddress(MAC_A);
      assert.equal((await rxFilter())['main-mac'], MAC_A);
      await a.setReceiveOffloads({ csum: true, tso4: true, tso6: true, ecn: true, ufo: true });
      assert.ok(a.controlStats.ok >= 10);
      assert.equal(a.controlStats.failed, 0);
      assert.throws(
        () => a.removeVlan(4096),
        (e: unknown) => e instanceof NetDriverError && e.code === 'INVALID_ARGUMENT',
      );
    });

    it('the MAC filter really filters: with promiscuous off, only listed unicast addresses reach ringvm', async () => {
      const frameTo = (dst: string, seed: number): Uint8Array =>
        buildFrame({
          dstMac: macBytes(dst),
          srcMac: macBytes(MAC_B),
          ip: { v6: false, src: ipv4(B_IP), dst: ipv4(A_IP) },
          proto: IPPROTO_UDP,
          srcPort: 43000 + seed,
          dstPort: 7000,
          payload: payload(80, seed),
          checksum: 'full',
        }).frame;
      const seen = (port: number): boolean => atA.some((r) => parseSegment(r.frame)?.srcPort === port);
      await b.send(frameTo('52:54:00:00:bb:01', 1)); // not listed: dropped by QEMU
      await b.send(frameTo('52:54:00:00:aa:02', 2)); // listed
      await eventually(async () => Promise.resolve(seen(43002)), 20_000, 'listed unicast frame');
      await new Promise((r) => setTimeout(r, 300));
      assert.equal(seen(43001), false, 'unlisted unicast frame was filtered');
      await a.setPromiscuous(true);
      assert.equal((await rxFilter()).promiscuous, true);
      await b.send(frameTo('52:54:00:00:bb:01', 3));
      await eventually(async () => Promise.resolve(seen(43003)), 20_000, 'frame in promiscuous mode');
    });

    it('GUEST_ANNOUNCE: QMP announce-self is acknowledged through the control queue', async () => {
      let called = 0;
      const off = a.onAnnounce(() => called++);
      await qmp!.execute('announce-self', { initial: 50, max: 550, rounds: 1, step: 50 });
      await eventually(async () => Promise.resolve(a.stats.announces >= 1), 20_000, 'announce acked');
      off();
      assert.ok(called >= 1);
      const status = await a.dev.readConfigU16(NET_CONFIG_STATUS);
      assert.equal(status & VIRTIO_NET_S_ANNOUNCE, 0, 'QEMU cleared VIRTIO_NET_S_ANNOUNCE after the ack');
    });

    it('commands the device did not negotiate are refused before sending', async () => {
      await assert.rejects(
        b.setQueuePairs(2),
        (e: unknown) => e instanceof NetDriverError && e.code === 'INVALID_ARGUMENT',
      );
      assert.throws(
        () => b.send(new Uint8Array(100), { checksum: { start: 34, offset: 16 } }),
        (e: unknown) => e instanceof NetDriverError && e.code === 'UNSUPPORTED',
      );
      assert.deepEqual(errors.length, 1);
    });

    it('remove fails pending commands and sends, frees every queue pair', async () => {
      const avail = a.allocator.available;
      await bus.removeDevice(a.dev);
      await bus.removeDevice(b.dev);
      assert.ok(a.allocator.available > avail);
      await assert.rejects(
        a.setPromiscuous(false),
        (e: unknown) => e instanceof NetDriverError && e.code === 'REMOVED',
      );
    });
  },
);
