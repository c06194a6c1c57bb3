import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { NetDevice, RX_BUDGET } from '../../../src/devices/net/net-device.js';
import type { NetBackendEvents } from '../../../src/devices/net/net-backend.js';
import {
  NET_CONFIG_MAC,
  NET_CONFIG_MAX_VIRTQUEUE_PAIRS,
  NET_CONFIG_MTU,
  NET_CONFIG_SIZE,
  NET_CONFIG_STATUS,
  NET_HDR_SIZE,
  NetCtrlAnnounce,
  NetCtrlClass,
  NetCtrlMac,
  NetCtrlMq,
  NetCtrlRx,
  NetCtrlVlan,
  NetFeature,
  VIRTIO_NET_HDR_F_DATA_VALID,
  VIRTIO_NET_HDR_F_NEEDS_CSUM,
  VIRTIO_NET_OK,
  VIRTIO_NET_S_ANNOUNCE,
  VIRTIO_NET_S_LINK_UP,
} from '../../../src/devices/net/net-layout.js';
import { UsageError } from '../../../src/virtio/errors.js';
import { VirtioFeature, hasFeature } from '../../../src/virtio/features.js';
import { MemoryNetBackend } from './memory-net-backend.js';
import {
  ALL_NET_FEATURES,
  ethFrame,
  macBytes,
  macTables,
  netHdr,
  settle,
  type RxFrame,
  setupNet,
  vlanFrame,
} from './net-test-driver.js';

const MAC = '52:54:00:12:34:56';
const PEER = '52:54:00:aa:bb:cc';
const WITHOUT_MRG = ALL_NET_FEATURES.filter((f) => f !== NetFeature.VIRTIO_NET_F_MRG_RXBUF);

describe('NetDevice: configuration and features', () => {
  test('configuration fields at the spec offsets; offloads only with vnet headers', async () => {
    const s = await setupNet({
      device: { mac: '02:11:22:33:44:55', mtu: 1400, queuePairs: 3 },
      backends: [new MemoryNetBackend()],
    });
    const cfg = await s.transport.readConfig(0, NET_CONFIG_SIZE);
    const v = new DataView(cfg.buffer, cfg.byteOffset, cfg.byteLength);
    assert.deepEqual(cfg.subarray(NET_CONFIG_MAC, NET_CONFIG_MAC + 6), macBytes('02:11:22:33:44:55'));
    assert.equal(v.getUint16(NET_CONFIG_STATUS, true), VIRTIO_NET_S_LINK_UP);
    assert.equal(v.getUint16(NET_CONFIG_MAX_VIRTQUEUE_PAIRS, true), 3);
    assert.equal(v.getUint16(NET_CONFIG_MTU, true), 1400);
    const f = s.transport.controller.deviceFeatures;
    for (const bit of [
      VirtioFeature.VIRTIO_F_VERSION_1,
      VirtioFeature.VIRTIO_F_EVENT_IDX,
      VirtioFeature.VIRTIO_F_INDIRECT_DESC,
      NetFeature.VIRTIO_NET_F_MAC,
      NetFeature.VIRTIO_NET_F_STATUS,
      NetFeature.VIRTIO_NET_F_MTU,
      NetFeature.VIRTIO_NET_F_MRG_RXBUF,
      NetFeature.VIRTIO_NET_F_CTRL_VQ,
      NetFeature.VIRTIO_NET_F_CTRL_RX,
      NetFeature.VIRTIO_NET_F_CTRL_VLAN,
      NetFeature.VIRTIO_NET_F_CTRL_MAC_ADDR,
      NetFeature.VIRTIO_NET_F_GUEST_ANNOUNCE,
      NetFeature.VIRTIO_NET_F_MQ,
    ]) {
      assert.ok(hasFeature(f, bit), `feature ${bit} offered`);
    }
    for (const bit of [
      NetFeature.VIRTIO_NET_F_CSUM,
      NetFeature.VIRTIO_NET_F_GUEST_TSO4,
      NetFeature.VIRTIO_NET_F_HOST_TSO6,
    ]) {
      assert.ok(!hasFeature(f, bit), `offload ${bit} not offered without vnet headers`);
    }
    assert.equal(s.client.vqs.length, 7, 'three pairs and the control queue');

    const tap = new NetDevice({ backends: [new MemoryNetBackend({ vnetHdr: true })] });
    for (const bit of [
      NetFeature.VIRTIO_NET_F_CSUM,
      NetFeature.VIRTIO_NET_F_GUEST_CSUM,
      NetFeature.VIRTIO_NET_F_HOST_TSO4,
      NetFeature.VIRTIO_NET_F_HOST_TSO6,
      NetFeature.VIRTIO_NET_F_HOST_ECN,
      NetFeature.VIRTIO_NET_F_GUEST_TSO4,
      NetFeature.VIRTIO_NET_F_GUEST_TSO6,
      NetFeature.VIRTIO_NET_F_GUEST_ECN,
    ]) {
      assert.ok(hasFeature(tap.deviceFeatures, bit), `offload ${bit} offered over vnet headers`);
    }
    assert.ok(!hasFeature(tap.deviceFeatures, NetFeature.VIRTIO_NET_F_MQ), 'one pair: no MQ');
    const off = new NetDevice({ backends: [new MemoryNetBackend({ vnetHdr: true })], offloads: false });
    assert.ok(!hasFeature(off.deviceFeatures, NetFeature.VIRTIO_NET_F_CSUM));
    const noCtrl = new NetDevice({ backends: [new MemoryNetBackend()], ctrlQueue: false, queuePairs: 2 });
    assert.equal(noCtrl.queueMaxSizes.length, 4);
    assert.ok(!hasFeature(noCtrl.deviceFeatures, NetFeature.VIRTIO_NET_F_MQ), 'MQ needs the control queue');
  });

  test('bad options are UsageErrors', () => {
    const b = () => new MemoryNetBackend();
    assert.throws(() => new NetDevice({ backends: [] }), UsageError);
    assert.throws(() => new NetDevice({ backends: [b(), b()], queuePairs: 3 }), UsageError);
    assert.throws(
      () => new NetDevice({ backends: [b(), new MemoryNetBackend({ vnetHdr: true })] }),
      UsageError,
    );
    assert.throws(() => new NetDevice({ backends: [b()], mac: '01:00:5e:00:00:01' }), /multicast/);
    assert.throws(() => new NetDevice({ backends: [b()], mac: 'nonsense' }), UsageError);
    assert.throws(() => new NetDevice({ backends: [b()], mtu: 10 }), UsageError);
  });

  test('feature dependencies of §5.1.3.1 are refused at FEATURES_OK', () => {
    const d = new NetDevice({ backends: [new MemoryNetBackend({ vnetHdr: true })] });
    const bit = (n: number) => 1n << BigInt(n);
    assert.ok(d.validateFeatures(bit(NetFeature.VIRTIO_NET_F_CSUM) | bit(NetFeature.VIRTIO_NET_F_HOST_TSO4)));
    assert.ok(!d.validateFeatures(bit(NetFeature.VIRTIO_NET_F_HOST_TSO4)));
    assert.ok(!d.validateFeatures(bit(NetFeature.VIRTIO_NET_F_GUEST_TSO6)));
    assert.ok(
      !d.validateFeatures(bit(NetFeature.VIRTIO_NET_F_GUEST_CSUM) | bit(NetFeature.VIRTIO_NET_F_GUEST_ECN)),
    );
    assert.ok(!d.validateFeatures(bit(NetFeature.VIRTIO_NET_F_CTRL_RX)));
  });

  test('MQ and GUEST_ANNOUNCE without CTRL_VQ (a front end running the control queue itself): every pair live', async () => {
    const d = new NetDevice({ backends: [new MemoryNetBackend()] });
    const bit = (n: number) => 1n << BigInt(n);
    assert.ok(
      d.validateFeatures(bit(NetFeature.VIRTIO_NET_F_MQ) | bit(NetFeature.VIRTIO_NET_F_GUEST_ANNOUNCE)),
    );
    // QEMU's virtio-net over vhost-user acks only data-path bits: no CTRL_VQ and nothing that needs it.
    const dataPath = ALL_NET_FEATURES.filter(
      (f) =>
        f !== NetFeature.VIRTIO_NET_F_CTRL_VQ &&
        f !== NetFeature.VIRTIO_NET_F_CTRL_RX &&
        f !== NetFeature.VIRTIO_NET_F_CTRL_VLAN &&
        f !== NetFeature.VIRTIO_NET_F_CTRL_MAC_ADDR,
    );
    const s = await setupNet({
      backends: [new MemoryNetBackend(), new MemoryNetBackend()],
      featureTable: dataPath,
    });
    assert.deepEqual(s.faults, []);
    assert.equal(s.device.activePairs, 2);
    assert.deepEqual(
      s.backends.map((b) => b.enabled),
      [true, true],
    );
  });
});

describe('NetDevice: transmit', () => {
  test('frames reach a bare back end without the header, split descriptors joined, used length 0', async () => {
    const s = await setupNet();
    const backend = s.backends[0] as MemoryNetBackend;
    const a = ethFrame(PEER, MAC, 100);
    const b = ethFrame(PEER, MAC, 1500);
    assert.equal(await s.client.send(0, a), 0);
    assert.equal(await s.client.send(0, b, {}, 5), 0);
    assert.deepEqual(backend.sent, [a, b]);
    assert.equal(s.device.stats.txFrames, 2);
    assert.equal(s.device.stats.txBytes, a.length + b.length);
    assert.deepEqual(s.faults, []);
  });

  test('a vnet-header back end gets the header as the driver wrote it (offloads pass through)', async () => {
    const s = await setupNet({ backends: [new MemoryNetBackend({ vnetHdr: true })] });
    const frame = ethFrame(PEER, MAC, 3000);
    const hdr = {
      flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
      gsoType: 1,
      hdrLen: 54,
      gsoSize: 1448,
      csumStart: 34,
      csumOffset: 16,
    };
    await s.client.send(0, frame, hdr, 3);
    const sent = (s.backends[0] as MemoryNetBackend).sent;
    assert.equal(sent.length, 1);
    const [out] = sent as [Uint8Array];
    assert.deepEqual(out.subarray(0, NET_HDR_SIZE), netHdr(hdr));
    assert.deepEqual(out.subarray(NET_HDR_SIZE), frame);
  });

  test('back-pressure keeps the chain until the back end is writable, in order', async () => {
    const s = await setupNet();
    const backend = s.backends[0] as MemoryNetBackend;
    backend.full = true;
    const frames = [1, 2, 3].map((n) => ethFrame(PEER, MAC, 60 + n));
    let done = 0;
    const sends = frames.map((f) => s.client.send(0, f).then(() => done++));
    await settle();
    assert.equal(done, 0, 'nothing completes while the back end is full');
    backend.drain();
    await Promise.all(sends);
    assert.deepEqual(backend.sent, frames);
  });

  test('link down: frames are dropped and counted, the guest sees carrier off', async () => {
    const s = await setupNet();
    const before = s.configChanges();
    s.device.setLinkUp(false);
    await settle();
    assert.ok(s.configChanges() > before, 'a configuration change interrupt');
    const cfg = await s.transport.readConfig(NET_CONFIG_STATUS, 2);
    assert.equal((cfg[0] as number) & VIRTIO_NET_S_LINK_UP, 0);
    await s.client.send(0, ethFrame(PEER, MAC, 64));
    assert.equal((s.backends[0] as MemoryNetBackend).sent.length, 0);
    assert.equal(s.device.stats.txLinkDown, 1);
    s.client.postRx(0, 4, 1600);
    (s.backends[0] as MemoryNetBackend).inject(ethFrame(MAC, PEER, 64));
    await settle();
    assert.equal(s.client.frames(0).length, 0);
    assert.equal(s.device.stats.rxLinkDown, 1);
    s.device.setLinkUp(true);
    (s.backends[0] as MemoryNetBackend).inject(ethFrame(MAC, PEER, 64));
    await settle();
    assert.equal(s.client.frames(0).length, 1);
    assert.equal(s.device.linkUp, true);
  });

  test('a back end whose link came up before the driver started the device: the guest sees it up', async () => {
    // As a stream peer that connected before DRIVER_OK: nobody was listening for linkChange then.
    class EarlyLink extends MemoryNetBackend {
      override start(events: NetBackendEvents): void {
        this.linkUp = true;
        super.start(events);
      }
    }
    const backend = new EarlyLink();
    backend.linkUp = false;
    const s = await setupNet({ backends: [backend] });
    assert.equal(s.device.linkUp, true);
    const cfg = await s.transport.readConfig(NET_CONFIG_STATUS, 2);
    assert.equal((cfg[0] as number) & VIRTIO_NET_S_LINK_UP, VIRTIO_NET_S_LINK_UP);
  });

  test('the back end going down takes the link down too', async () => {
    const s = await setupNet();
    (s.backends[0] as MemoryNetBackend).setLink(false);
    assert.equal(s.device.linkUp, false);
    (s.backends[0] as MemoryNetBackend).setLink(true);
    assert.equal(s.device.linkUp, true);
  });
});

describe('NetDevice: receive', () => {
  test('without MRG_RXBUF: one frame per buffer, header zeroed, num_buffers 1', async () => {
    const s = await setupNet({ featureTable: WITHOUT_MRG });
    const backend = s.backends[0] as MemoryNetBackend;
    s.client.postRx(0, 4, NET_HDR_SIZE + 1518, 3);
    const frames = [ethFrame(MAC, PEER, 46), ethFrame(MAC, PEER, 1500)];
    backend.inject(...frames);
    await settle();
    const got = s.client.frames(0);
    assert.deepEqual(
      got.map((f) => f.frame),
      frames,
    );
    for (const f of got)
      assert.deepEqual(f.hdr, {
        flags: 0,
        gsoType: 0,
        hdrLen: 0,
        gsoSize: 0,
        csumStart: 0,
        csumOffset: 0,
        numBuffers: 1,
      });
    assert.equal(s.device.stats.rxFrames, 2);
  });

  test('without MRG_RXBUF a frame longer than its buffer is dropped and counted', async () => {
    const s = await setupNet({ featureTable: WITHOUT_MRG });
    s.client.postRx(0, 2, 200);
    (s.backends[0] as MemoryNetBackend).inject(ethFrame(MAC, PEER, 500), ethFrame(MAC, PEER, 100));
    await settle();
    assert.deepEqual(
      s.client.frames(0).map((f) => f.frame.length),
      [114],
    );
    assert.equal(s.device.stats.rxTooLong, 1);
  });

  for (const knownLength of [true, false]) {
    test(`MRG_RXBUF (${knownLength ? 'length known' : 'length unknown, as tap'}): frames span buffers; unused buffers stay posted`, async () => {
      const s = await setupNet({ backends: [new MemoryNetBackend({ knownLength })] });
      const backend = s.backends[0] as MemoryNetBackend;
      s.client.postRx(0, 8, 512);
      const big = ethFrame(MAC, PEER, 1200); // 1226 bytes with the header: three buffers
      const small = ethFrame(MAC, PEER, 60);
      backend.inject(big, small);
      await settle();
      const got = s.client.frames(0);
      assert.deepEqual(
        got.map((f) => [f.frame.length, f.buffers]),
        [
          [big.length, 3],
          [small.length, 1],
        ],
      );
      assert.deepEqual(got[0]?.frame, big);
      assert.deepEqual(got[1]?.frame, small);
      // Four buffers remain: the next frames use them, in order, nothing lost to the look-ahead.
      backend.inject(...[1, 2, 3, 4].map((n) => ethFrame(MAC, PEER, 100 + n)));
      await settle();
      assert.deepEqual(
        s.client.frames(0).map((f) => f.frame.length),
        knownLength ? [115, 116, 117, 118] : [115, 116],
        knownLength
          ? 'each fits one buffer'
          : 'an unknown length needs room for a whole MTU frame (1530 bytes)',
      );
      assert.equal(s.device.stats.rxStalls, knownLength ? 0 : 1);
      assert.deepEqual(s.faults, []);
    });
  }

  test('length unknown: the buffers reserved for the next frame stay popped between passes; quiesce gives them back', async () => {
    const s = await setupNet({ backends: [new MemoryNetBackend({ knownLength: false })] });
    const backend = s.backends[0] as MemoryNetBackend;
    const rxq = s.transport.controller.queue(0) ?? assert.fail('no receive queue');
    s.client.postRx(0, 8, 512);
    backend.inject(ethFrame(MAC, PEER, 60));
    await settle();
    assert.equal(s.client.frames(0).length, 1);
    // Room for an MTU frame (1530 bytes) is three buffers: one used, two kept for the next frame.
    assert.equal(rxq.nextAvail, 3);
    assert.equal(rxq.inFlight, 2);
    s.device.quiesce();
    assert.equal(rxq.nextAvail, 1, 'the next chain the driver expects the device to read');
    assert.equal(rxq.inFlight, 0);
    backend.inject(ethFrame(MAC, PEER, 70));
    await settle();
    assert.deepEqual(
      s.client.frames(0).map((f) => f.frame.length),
      [84],
      'the next frame lands in the buffer after the first',
    );
    assert.deepEqual(s.faults, []);
  });

  test('more frames pending than one pass takes (RX_BUDGET): the rest follow with no kick and no new readable()', async () => {
    // A back end with a backlog calls readable() once (edge-triggered), and the driver does not kick a queue
    // whose buffers are plentiful: stopping at the budget without coming back left frames stranded.
    const total = 2 * RX_BUDGET + 17;
    const s = await setupNet({ device: { queueSize: 1024 }, featureTable: WITHOUT_MRG });
    const backend = s.backends[0] as MemoryNetBackend;
    s.client.postRx(0, total, NET_HDR_SIZE + 1518);
    await settle();
    const frames = Array.from({ length: total }, (_, i) => ethFrame(MAC, PEER, 46 + i));
    backend.inject(...frames);
    for (let i = 0; i < 10 && (s.client.rxUsed[0]?.length ?? 0) < total; i++) await settle();
    assert.equal(backend.inbox.length, 0, 'every frame taken from the back end');
    assert.deepEqual(
      s.client.frames(0).map((f) => f.frame),
      frames,
      'in order',
    );
    assert.equal(s.device.stats.rxStalls, 0);
    assert.deepEqual(s.faults, []);
  });

  test('no receive buffers: the back end is paused; posting buffers resumes it', async () => {
    const s = await setupNet({ backends: [new MemoryNetBackend({ knownLength: false })] });
    const backend = s.backends[0] as MemoryNetBackend;
    backend.inject(ethFrame(MAC, PEER, 80));
    await settle();
    assert.equal(backend.paused, true);
    assert.equal(s.device.stats.rxStalls, 1);
    s.client.postRx(0, 1, 1000); // less than an MTU frame needs: still waiting
    await settle();
    assert.equal(s.client.frames(0).length, 0);
    assert.equal(backend.paused, true);
    s.client.postRx(0, 2, 1000);
    await settle();
    assert.equal(backend.paused, false);
    assert.deepEqual(
      s.client.frames(0).map((f) => f.frame.length),
      [94],
    );
  });

  test('a vnet-header back end writes the header; the device sets num_buffers and clears what was not negotiated', async () => {
    const noCsum = ALL_NET_FEATURES.filter(
      (f) =>
        f !== NetFeature.VIRTIO_NET_F_GUEST_CSUM &&
        f !== NetFeature.VIRTIO_NET_F_GUEST_TSO4 &&
        f !== NetFeature.VIRTIO_NET_F_GUEST_TSO6 &&
        f !== NetFeature.VIRTIO_NET_F_GUEST_ECN,
    );
    for (const [table, expectFlags] of [
      [ALL_NET_FEATURES, VIRTIO_NET_HDR_F_DATA_VALID],
      [noCsum, 0],
    ] as const) {
      const backend = new MemoryNetBackend({ vnetHdr: true });
      const s = await setupNet({ backends: [backend], featureTable: table });
      assert.deepEqual(backend.offloads, {
        csum: expectFlags !== 0,
        tso4: expectFlags !== 0,
        tso6: expectFlags !== 0,
        ecn: expectFlags !== 0,
        ufo: false,
      });
      s.client.postRx(0, 4, 2048);
      const frame = ethFrame(MAC, PEER, 200);
      const withHdr = new Uint8Array(NET_HDR_SIZE + frame.length);
      withHdr.set(netHdr({ flags: VIRTIO_NET_HDR_F_DATA_VALID, numBuffers: 0x7777 }));
      withHdr.set(frame, NET_HDR_SIZE);
      backend.inject(withHdr);
      await settle();
      const [got] = s.client.frames(0) as [RxFrame];
      assert.equal(got.hdr.flags, expectFlags);
      assert.equal(got.hdr.numBuffers, 1);
      assert.deepEqual(got.frame, frame);
    }
  });
});

describe('NetDevice: control queue and receive filtering', () => {
  test('promiscuous off: own MAC, broadcast and table entries pass; others are filtered and counted', async () => {
    const s = await setupNet();
    const backend = s.backends[0] as MemoryNetBackend;
    s.client.postRx(0, 32, 2048);
    assert.equal(
      (await s.client.ctrl(NetCtrlClass.RX, NetCtrlRx.PROMISC, Uint8Array.of(0))).ack,
      VIRTIO_NET_OK,
    );
    const r = await s.client.ctrl(
      NetCtrlClass.MAC,
      NetCtrlMac.TABLE_SET,
      macTables(['52:54:00:00:00:77'], ['01:00:5e:00:00:fb']),
    );
    assert.deepEqual(r, { ack: VIRTIO_NET_OK, usedLen: 1 });
    const pass = [
      ethFrame(MAC, PEER, 50),
      ethFrame('ff:ff:ff:ff:ff:ff', PEER, 51),
      ethFrame('52:54:00:00:00:77', PEER, 52),
      ethFrame('01:00:5e:00:00:fb', PEER, 53),
    ];
    const drop = [ethFrame('52:54:00:00:00:78', PEER, 60), ethFrame('01:00:5e:00:00:01', PEER, 61)];
    backend.inject(drop[0] as Uint8Array, ...pass, drop[1] as Uint8Array);
    await settle();
    assert.deepEqual(
      s.client.frames(0).map((f) => f.frame),
      pass,
    );
    assert.equal(s.device.stats.rxFiltered, 2);
    // ALLMULTI lets every multicast through; PROMISC everything.
    await s.client.ctrl(NetCtrlClass.RX, NetCtrlRx.ALLMULTI, Uint8Array.of(1));
    backend.inject(drop[1] as Uint8Array);
    await settle();
    assert.equal(s.client.frames(0).length, 1);
    await s.client.ctrl(NetCtrlClass.RX, NetCtrlRx.PROMISC, Uint8Array.of(1));
    backend.inject(drop[0] as Uint8Array);
    await settle();
    assert.equal(s.client.frames(0).length, 1);
  });

  test('a MAC table longer than the device keeps overflows: that kind is no longer filtered', async () => {
    const s = await setupNet();
    s.client.postRx(0, 8, 2048);
    await s.client.ctrl(NetCtrlClass.RX, NetCtrlRx.PROMISC, Uint8Array.of(0));
    const many = Array.from({ length: 70 }, (_, i) => `52:54:01:00:00:${i.toString(16).padStart(2, '0')}`);
    assert.equal(
      (await s.client.ctrl(NetCtrlClass.MAC, NetCtrlMac.TABLE_SET, macTables(many, []))).ack,
      VIRTIO_NET_OK,
    );
    (s.backends[0] as MemoryNetBackend).inject(ethFrame('52:54:99:99:99:99', PEER, 60));
    await settle();
    assert.equal(s.client.frames(0).length, 1);
  });

  test('MAC_ADDR_SET changes the station address in the configuration and in the filter', async () => {
    const s = await setupNet();
    s.client.postRx(0, 8, 2048);
    await s.client.ctrl(NetCtrlClass.RX, NetCtrlRx.PROMISC, Uint8Array.of(0));
    assert.equal(
      (await s.client.ctrl(NetCtrlClass.MAC, NetCtrlMac.ADDR_SET, macBytes('02:00:00:00:00:42'))).ack,
      VIRTIO_NET_OK,
    );
    assert.deepEqual(await s.transport.readConfig(NET_CONFIG_MAC, 6), macBytes('02:00:00:00:00:42'));
    (s.backends[0] as MemoryNetBackend).inject(
      ethFrame(MAC, PEER, 60),
      ethFrame('02:00:00:00:00:42', PEER, 61),
    );
    await settle();
    assert.deepEqual(
      s.client.frames(0).map((f) => f.frame.length),
      [75],
    );
  });

  test('VLAN filtering: tagged frames pass only for added VLAN ids', async () => {
    const s = await setupNet();
    s.client.postRx(0, 8, 2048);
    await s.client.ctrl(NetCtrlClass.RX, NetCtrlRx.PROMISC, Uint8Array.of(0));
    const id = (n: number) => Uint8Array.of(n & 0xff, n >> 8);
    assert.equal((await s.client.ctrl(NetCtrlClass.VLAN, NetCtrlVlan.ADD, id(100))).ack, VIRTIO_NET_OK);
    assert.equal((await s.client.ctrl(NetCtrlClass.VLAN, NetCtrlVlan.ADD, id(4095))).ack, VIRTIO_NET_OK);
    assert.equal((await s.client.ctrl(NetCtrlClass.VLAN, NetCtrlVlan.DEL, id(4095))).ack, VIRTIO_NET_OK);
    const backend = s.backends[0] as MemoryNetBackend;
    backend.inject(
      vlanFrame(MAC, PEER, 100, 40),
      vlanFrame(MAC, PEER, 200, 41),
      vlanFrame(MAC, PEER, 4095, 42),
      ethFrame(MAC, PEER, 43),
    );
    await settle();
    assert.deepEqual(
      s.client.frames(0).map((f) => f.frame.length),
      [58, 57],
    );
    assert.equal(s.device.stats.rxFiltered, 2);
  });

  test('ANNOUNCE: the device asks, the driver acknowledges, the bit clears', async () => {
    const s = await setupNet();
    assert.equal(s.device.announce(), true);
    let st = await s.transport.readConfig(NET_CONFIG_STATUS, 2);
    assert.equal((st[0] as number) & VIRTIO_NET_S_ANNOUNCE, VIRTIO_NET_S_ANNOUNCE);
    assert.equal((await s.client.ctrl(NetCtrlClass.ANNOUNCE, NetCtrlAnnounce.ACK)).ack, VIRTIO_NET_OK);
    st = await s.transport.readConfig(NET_CONFIG_STATUS, 2);
    assert.equal((st[0] as number) & VIRTIO_NET_S_ANNOUNCE, 0);
  });

  test('MQ: pairs beyond VQ_PAIRS_SET are disabled at their back end; traffic flows on every active pair', async () => {
    const backends = [0, 1, 2].map(() => new MemoryNetBackend());
    const s = await setupNet({ backends });
    assert.deepEqual(
      backends.map((b) => b.enabled),
      [true, false, false],
    );
    assert.equal(
      (await s.client.ctrl(NetCtrlClass.MQ, NetCtrlMq.VQ_PAIRS_SET, Uint8Array.of(3, 0))).ack,
      VIRTIO_NET_OK,
    );
    assert.equal(s.device.activePairs, 3);
    assert.deepEqual(
      backends.map((b) => b.enabled),
      [true, true, true],
    );
    for (let p = 0; p < 3; p++) {
      s.client.postRx(p, 4, 2048);
      backends[p]?.inject(ethFrame(MAC, PEER, 60 + p));
      await s.client.send(p, ethFrame(PEER, MAC, 70 + p));
    }
    await settle();
    for (let p = 0; p < 3; p++) {
      assert.deepEqual(
        s.client.frames(p).map((f) => f.frame.length),
        [74 + p],
      );
      assert.equal(backends[p]?.sent.length, 1);
    }
    assert.deepEqual(s.device.stats.rxFramesPerPair, [1, 1, 1]);
    assert.deepEqual(s.device.stats.txFramesPerPair, [1, 1, 1]);
    assert.equal(
      (await s.client.ctrl(NetCtrlClass.MQ, NetCtrlMq.VQ_PAIRS_SET, Uint8Array.of(1, 0))).ack,
      VIRTIO_NET_OK,
    );
    assert.deepEqual(
      backends.map((b) => b.enabled),
      [true, false, false],
    );
  });

  test('reset restores the MAC, promiscuous mode and one pair', async () => {
    const s = await setupNet({ backends: [new MemoryNetBackend(), new MemoryNetBackend()] });
    await s.client.ctrl(NetCtrlClass.MAC, NetCtrlMac.ADDR_SET, macBytes('02:00:00:00:00:42'));
    await s.client.ctrl(NetCtrlClass.RX, NetCtrlRx.PROMISC, Uint8Array.of(0));
    await s.client.ctrl(NetCtrlClass.MQ, NetCtrlMq.VQ_PAIRS_SET, Uint8Array.of(2, 0));
    await s.transport.reset();
    assert.deepEqual(s.device.config.mac, macBytes(MAC));
    assert.equal(s.device.filter.promiscuous, true);
    assert.equal(s.device.activePairs, 1);
  });
});
