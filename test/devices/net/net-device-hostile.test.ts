/**
 * Hostile input to the virtio-net device (hostile-input note, item 20): bad transmit headers, frames too long
 * or too short, malformed control commands. Each is dropped or answered VIRTIO_NET_ERR, counted under its code,
 * reaches no back end, leaves the device state alone, and never faults the device: the next good frame or
 * command works.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import {
  NET_HDR_SIZE,
  NetCtrlClass,
  NetCtrlMac,
  NetCtrlMq,
  NetCtrlRx,
  NetCtrlVlan,
  NetFeature,
  NetGsoType,
  VIRTIO_NET_ERR,
  VIRTIO_NET_HDR_F_DATA_VALID,
  VIRTIO_NET_HDR_F_NEEDS_CSUM,
  VIRTIO_NET_OK,
} from '../../../src/devices/net/net-layout.js';
import type { NetRequestErrorCode } from '../../../src/devices/net/net-errors.js';
import { NET_CTRL_MAX_DATA } from '../../../src/devices/net/net-ctrl.js';
import { MemoryNetBackend } from './memory-net-backend.js';
import {
  ALL_NET_FEATURES,
  ethFrame,
  macBytes,
  macTables,
  settle,
  setupNet,
  type HdrFields,
  type NetSetup,
} from './net-test-driver.js';

const MAC = '52:54:00:12:34:56';
const PEER = '52:54:00:aa:bb:cc';
const CSUM = VIRTIO_NET_HDR_F_NEEDS_CSUM;

async function tapSetup(featureTable = ALL_NET_FEATURES): Promise<NetSetup> {
  return setupNet({
    backends: [new MemoryNetBackend({ vnetHdr: true })],
    featureTable,
    device: { mtu: 1500 },
  });
}

/** The device still transmits a good frame and has not faulted. */
async function stillWorks(s: NetSetup): Promise<void> {
  const backend = s.backends[0] as MemoryNetBackend;
  const before = backend.sent.length;
  await s.client.send(0, ethFrame(PEER, MAC, 64));
  assert.equal(backend.sent.length, before + 1, 'a good frame still goes out');
  assert.deepEqual(s.faults, [], 'no fault');
}

describe('NetDevice hostile transmit headers', () => {
  const noOffloads = ALL_NET_FEATURES.filter(
    (f) =>
      f !== NetFeature.VIRTIO_NET_F_CSUM &&
      f !== NetFeature.VIRTIO_NET_F_HOST_TSO4 &&
      f !== NetFeature.VIRTIO_NET_F_HOST_TSO6 &&
      f !== NetFeature.VIRTIO_NET_F_HOST_ECN,
  );
  const noEcn = ALL_NET_FEATURES.filter((f) => f !== NetFeature.VIRTIO_NET_F_HOST_ECN);
  const noTso = ALL_NET_FEATURES.filter(
    (f) =>
      f !== NetFeature.VIRTIO_NET_F_HOST_TSO4 &&
      f !== NetFeature.VIRTIO_NET_F_HOST_TSO6 &&
      f !== NetFeature.VIRTIO_NET_F_HOST_ECN,
  );
  const tso = (extra: HdrFields = {}): HdrFields => ({
    flags: CSUM,
    gsoType: NetGsoType.TCPV4,
    hdrLen: 54,
    gsoSize: 1448,
    csumStart: 34,
    csumOffset: 16,
    ...extra,
  });
  const cases: {
    name: string;
    code: NetRequestErrorCode;
    frame: number;
    hdr: HdrFields;
    features?: readonly number[];
  }[] = [
    { name: 'frame shorter than an Ethernet header', code: 'NET_TX_FRAME_TOO_SHORT', frame: 13, hdr: {} },
    {
      name: 'frame longer than MTU + header + VLAN tag',
      code: 'NET_TX_FRAME_TOO_LONG',
      frame: 1500 + 14 + 4 + 1,
      hdr: {},
    },
    {
      name: 'DATA_VALID on transmit',
      code: 'NET_TX_BAD_FLAGS',
      frame: 100,
      hdr: { flags: VIRTIO_NET_HDR_F_DATA_VALID },
    },
    { name: 'unknown flag bits', code: 'NET_TX_BAD_FLAGS', frame: 100, hdr: { flags: 0x80 } },
    {
      name: 'NEEDS_CSUM without CSUM',
      code: 'NET_TX_CSUM_NOT_NEGOTIATED',
      frame: 100,
      hdr: { flags: CSUM, csumStart: 34, csumOffset: 6 },
      features: noOffloads,
    },
    {
      name: 'checksum field past the frame',
      code: 'NET_TX_CSUM_OUT_OF_RANGE',
      frame: 100,
      hdr: { flags: CSUM, csumStart: 98, csumOffset: 1 },
    },
    {
      name: 'huge csum_start',
      code: 'NET_TX_CSUM_OUT_OF_RANGE',
      frame: 100,
      hdr: { flags: CSUM, csumStart: 0xffff, csumOffset: 0xffff },
    },
    { name: 'unknown gso_type', code: 'NET_TX_GSO_BAD_TYPE', frame: 3000, hdr: tso({ gsoType: 2 }) },
    {
      name: 'UFO (not offered)',
      code: 'NET_TX_GSO_BAD_TYPE',
      frame: 3000,
      hdr: tso({ gsoType: NetGsoType.UDP }),
    },
    { name: 'ECN bit alone', code: 'NET_TX_GSO_BAD_TYPE', frame: 100, hdr: { gsoType: NetGsoType.ECN } },
    {
      name: 'TSO4 without HOST_TSO4',
      code: 'NET_TX_GSO_NOT_NEGOTIATED',
      frame: 3000,
      hdr: tso(),
      features: noTso,
    },
    {
      name: 'TSO with ECN without HOST_ECN',
      code: 'NET_TX_GSO_NOT_NEGOTIATED',
      frame: 3000,
      hdr: tso({ gsoType: NetGsoType.TCPV4 | NetGsoType.ECN }),
      features: noEcn,
    },
    { name: 'GSO without NEEDS_CSUM', code: 'NET_TX_GSO_WITHOUT_CSUM', frame: 3000, hdr: tso({ flags: 0 }) },
    { name: 'GSO with gso_size 0', code: 'NET_TX_GSO_BAD_SIZE', frame: 3000, hdr: tso({ gsoSize: 0 }) },
    {
      name: 'GSO with hdr_len past the frame',
      code: 'NET_TX_GSO_BAD_SIZE',
      frame: 3000,
      hdr: tso({ hdrLen: 3001 }),
    },
  ];
  for (const c of cases) {
    test(`${c.name}: dropped, counted as ${c.code}`, async () => {
      const s = await tapSetup(c.features);
      const backend = s.backends[0] as MemoryNetBackend;
      const used = await s.client.send(
        0,
        ethFrame(PEER, MAC, Math.max(0, c.frame - 14)).subarray(0, c.frame),
        c.hdr,
        2,
      );
      assert.equal(used, 0);
      assert.equal(backend.sent.length, 0, 'nothing reached the back end');
      assert.equal(s.device.stats.errors[c.code], 1);
      assert.equal(s.device.stats.txDropped, 1);
      assert.equal(s.requestErrors[0]?.code, c.code);
      await stillWorks(s);
    });
  }

  test('a chain shorter than the header, and one with no readable part', async () => {
    const s = await tapSetup();
    const memory = s.client.memory;
    const a = s.transport.allocator.alloc(64, 1);
    memory.fill(a, 64, 0);
    assert.equal(await s.client.submitRaw(1, [{ addr: a, len: NET_HDR_SIZE - 1 }], []), 0);
    assert.equal(await s.client.submitRaw(1, [], [{ addr: a, len: 64 }]), 0);
    assert.equal(s.device.stats.errors.NET_TX_HEADER_TOO_SHORT, 2);
    await stillWorks(s);
  });

  test('GSO frames may exceed the MTU (up to 64 KiB) once TSO was negotiated', async () => {
    const s = await tapSetup();
    await s.client.send(0, ethFrame(PEER, MAC, 30000), tso(), 4);
    assert.equal((s.backends[0] as MemoryNetBackend).sent.length, 1);
    assert.deepEqual(s.device.stats.errors, {});
  });

  test('arbitrary headers and lengths never fault the device and never pass a refused header', async () => {
    const s = await tapSetup();
    const backend = s.backends[0] as MemoryNetBackend;
    await fc.assert(
      fc.asyncProperty(
        fc.record({
          flags: fc.integer({ min: 0, max: 255 }),
          gsoType: fc.constantFrom(0, 1, 3, 4, 5, 0x81, 0x84, 0x80, 2, 255),
          hdrLen: fc.integer({ min: 0, max: 0xffff }),
          gsoSize: fc.integer({ min: 0, max: 0xffff }),
          csumStart: fc.integer({ min: 0, max: 0xffff }),
          csumOffset: fc.integer({ min: 0, max: 0xffff }),
          numBuffers: fc.integer({ min: 0, max: 0xffff }),
        }),
        fc.integer({ min: 0, max: 4000 }),
        fc.integer({ min: 1, max: 4 }),
        async (hdr, len, segments) => {
          const before = backend.sent.length;
          const dropped = s.device.stats.txDropped;
          const frame = ethFrame(PEER, MAC, Math.max(0, len - 14)).subarray(0, len);
          assert.equal(await s.client.send(0, frame, hdr, segments), 0);
          const sent = backend.sent.length - before;
          assert.equal(sent + (s.device.stats.txDropped - dropped), 1, 'sent or dropped, exactly once');
          if (sent === 1) {
            assert.equal(hdr.flags & ~CSUM, 0);
            assert.ok(len >= 14);
          }
          assert.deepEqual(s.faults, []);
        },
      ),
      { numRuns: 300 },
    );
    await stillWorks(s);
  });
});

describe('NetDevice hostile control commands', () => {
  const id = (n: number) => Uint8Array.of(n & 0xff, n >> 8);
  const cases: { name: string; cls: number; cmd: number; data: Uint8Array; code: NetRequestErrorCode }[] = [
    { name: 'unknown class', cls: 99, cmd: 0, data: new Uint8Array(0), code: 'NET_CTRL_UNSUPPORTED' },
    {
      name: 'GUEST_OFFLOADS (not offered)',
      cls: NetCtrlClass.GUEST_OFFLOADS,
      cmd: 0,
      data: new Uint8Array(8),
      code: 'NET_CTRL_UNSUPPORTED',
    },
    {
      name: 'RX_EXTRA command (not offered)',
      cls: NetCtrlClass.RX,
      cmd: NetCtrlRx.NOBCAST,
      data: Uint8Array.of(1),
      code: 'NET_CTRL_UNSUPPORTED',
    },
    {
      name: 'unknown RX command',
      cls: NetCtrlClass.RX,
      cmd: 77,
      data: Uint8Array.of(1),
      code: 'NET_CTRL_UNSUPPORTED',
    },
    {
      name: 'PROMISC without data',
      cls: NetCtrlClass.RX,
      cmd: NetCtrlRx.PROMISC,
      data: new Uint8Array(0),
      code: 'NET_CTRL_BAD_DATA',
    },
    {
      name: 'PROMISC with two bytes',
      cls: NetCtrlClass.RX,
      cmd: NetCtrlRx.PROMISC,
      data: Uint8Array.of(0, 0),
      code: 'NET_CTRL_BAD_DATA',
    },
    {
      name: 'PROMISC with value 2',
      cls: NetCtrlClass.RX,
      cmd: NetCtrlRx.PROMISC,
      data: Uint8Array.of(2),
      code: 'NET_CTRL_BAD_DATA',
    },
    {
      name: 'MAC table count past the data',
      cls: NetCtrlClass.MAC,
      cmd: NetCtrlMac.TABLE_SET,
      data: Uint8Array.of(0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0),
      code: 'NET_CTRL_BAD_DATA',
    },
    {
      name: 'MAC table without the multicast table',
      cls: NetCtrlClass.MAC,
      cmd: NetCtrlMac.TABLE_SET,
      data: Uint8Array.of(0, 0, 0, 0),
      code: 'NET_CTRL_BAD_DATA',
    },
    {
      name: 'MAC tables with trailing bytes',
      cls: NetCtrlClass.MAC,
      cmd: NetCtrlMac.TABLE_SET,
      data: Uint8Array.of(...macTables([], []), 1),
      code: 'NET_CTRL_BAD_DATA',
    },
    {
      name: 'ADDR_SET with 5 bytes',
      cls: NetCtrlClass.MAC,
      cmd: NetCtrlMac.ADDR_SET,
      data: new Uint8Array(5),
      code: 'NET_CTRL_BAD_DATA',
    },
    {
      name: 'ADDR_SET with a multicast address',
      cls: NetCtrlClass.MAC,
      cmd: NetCtrlMac.ADDR_SET,
      data: macBytes('01:00:5e:00:00:01'),
      code: 'NET_CTRL_BAD_DATA',
    },
    {
      name: 'unknown MAC command',
      cls: NetCtrlClass.MAC,
      cmd: 9,
      data: new Uint8Array(6),
      code: 'NET_CTRL_UNSUPPORTED',
    },
    {
      name: 'VLAN id 4096',
      cls: NetCtrlClass.VLAN,
      cmd: NetCtrlVlan.ADD,
      data: id(4096),
      code: 'NET_CTRL_BAD_DATA',
    },
    {
      name: 'VLAN with one byte',
      cls: NetCtrlClass.VLAN,
      cmd: NetCtrlVlan.ADD,
      data: Uint8Array.of(1),
      code: 'NET_CTRL_BAD_DATA',
    },
    {
      name: 'VQ_PAIRS_SET 0',
      cls: NetCtrlClass.MQ,
      cmd: NetCtrlMq.VQ_PAIRS_SET,
      data: id(0),
      code: 'NET_CTRL_BAD_DATA',
    },
    {
      name: 'VQ_PAIRS_SET above the maximum',
      cls: NetCtrlClass.MQ,
      cmd: NetCtrlMq.VQ_PAIRS_SET,
      data: id(3),
      code: 'NET_CTRL_BAD_DATA',
    },
    {
      name: 'RSS_CONFIG (not offered)',
      cls: NetCtrlClass.MQ,
      cmd: 1,
      data: new Uint8Array(16),
      code: 'NET_CTRL_UNSUPPORTED',
    },
    {
      name: 'ANNOUNCE ACK with data',
      cls: NetCtrlClass.ANNOUNCE,
      cmd: 0,
      data: Uint8Array.of(1),
      code: 'NET_CTRL_BAD_DATA',
    },
    {
      name: 'data over the limit',
      cls: NetCtrlClass.MAC,
      cmd: NetCtrlMac.TABLE_SET,
      data: new Uint8Array(NET_CTRL_MAX_DATA + 1),
      code: 'NET_CTRL_BAD_DATA',
    },
  ];
  for (const c of cases) {
    test(`${c.name}: VIRTIO_NET_ERR, counted as ${c.code}, state unchanged`, async () => {
      const s = await setupNet({ backends: [new MemoryNetBackend(), new MemoryNetBackend()] });
      const mac = s.device.config.mac.slice();
      const r = await s.client.ctrl(c.cls, c.cmd, c.data);
      assert.deepEqual(r, { ack: VIRTIO_NET_ERR, usedLen: 1 });
      assert.equal(s.device.stats.errors[c.code], 1);
      assert.equal(s.device.stats.ctrlErrors, 1);
      assert.equal(s.device.filter.promiscuous, true);
      assert.equal(s.device.filter.unicastCount + s.device.filter.multicastCount, 0);
      assert.deepEqual(s.device.config.mac, mac);
      assert.equal(s.device.activePairs, 1);
      assert.equal(
        (await s.client.ctrl(NetCtrlClass.RX, NetCtrlRx.PROMISC, Uint8Array.of(0))).ack,
        VIRTIO_NET_OK,
      );
      assert.deepEqual(s.faults, []);
    });
  }

  test('commands whose feature was not negotiated are refused', async () => {
    const table = ALL_NET_FEATURES.filter(
      (f) =>
        f !== NetFeature.VIRTIO_NET_F_CTRL_RX &&
        f !== NetFeature.VIRTIO_NET_F_CTRL_VLAN &&
        f !== NetFeature.VIRTIO_NET_F_CTRL_MAC_ADDR &&
        f !== NetFeature.VIRTIO_NET_F_GUEST_ANNOUNCE &&
        f !== NetFeature.VIRTIO_NET_F_MQ,
    );
    const s = await setupNet({ featureTable: table });
    for (const [cls, cmd, data] of [
      [NetCtrlClass.RX, NetCtrlRx.PROMISC, Uint8Array.of(0)],
      [NetCtrlClass.MAC, NetCtrlMac.TABLE_SET, macTables([], [])],
      [NetCtrlClass.MAC, NetCtrlMac.ADDR_SET, macBytes('02:00:00:00:00:01')],
      [NetCtrlClass.VLAN, NetCtrlVlan.ADD, id(1)],
      [NetCtrlClass.ANNOUNCE, 0, new Uint8Array(0)],
      [NetCtrlClass.MQ, NetCtrlMq.VQ_PAIRS_SET, id(1)],
    ] as const) {
      assert.equal((await s.client.ctrl(cls, cmd, data)).ack, VIRTIO_NET_ERR, `class ${cls} command ${cmd}`);
    }
    assert.equal(s.device.stats.errors.NET_CTRL_UNSUPPORTED, 6);
    assert.equal(s.device.announce(), false);
  });

  test('a command with a short header is answered ERR; one without an ack byte is returned with used length 0', async () => {
    const s = await setupNet();
    const memory = s.client.memory;
    const a = s.transport.allocator.alloc(16, 1);
    const ack = s.transport.allocator.alloc(1, 1);
    memory.writeU8(ack, 0xff);
    assert.equal(await s.client.submitRaw(2, [{ addr: a, len: 1 }], [{ addr: ack, len: 1 }]), 1);
    assert.equal(memory.readU8(ack), VIRTIO_NET_ERR);
    assert.equal(await s.client.submitRaw(2, [{ addr: a, len: 3 }], []), 0);
    assert.equal(s.device.stats.errors.NET_CTRL_HEADER_TOO_SHORT, 1);
    assert.equal(s.device.stats.errors.NET_CTRL_NO_ACK, 1);
    assert.equal(
      (await s.client.ctrl(NetCtrlClass.RX, NetCtrlRx.ALLMULTI, Uint8Array.of(1))).ack,
      VIRTIO_NET_OK,
    );
    assert.deepEqual(s.faults, []);
  });

  test('a broken ring is a guest fault (DEVICE_NEEDS_RESET), not a dropped frame', async () => {
    const s = await setupNet();
    // A descriptor outside guest memory on the transmit queue.
    void s.client.submitRaw(1, [{ addr: 0x7fff_0000_0000, len: 64 }], []);
    await settle();
    assert.equal(s.faults.length, 1);
    assert.equal(s.device.stats.txDropped, 0);
  });
});
