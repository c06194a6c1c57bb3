// virtio-pci modern transport against QEMU's own virtio-blk-pci over qtest: capabilities, BARs, features,
// status, device config, a queue driven by hand (GET_ID) with completions seen through MSI-X slots in guest RAM
// and through ISR polling, and a transitional device driven through its modern interface.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { PciBus } from '../../../src/transport/pci/pci-bus-scan.js';
import { PciCapId } from '../../../src/transport/pci/pci-config.js';
import { QtestLink } from '../../../src/transport/pci/qtest-link.js';
import {
  VirtioPciError,
  VirtioPciModernTransport,
  openVirtioPciDevices,
} from '../../../src/transport/pci/virtio-pci-modern.js';
import { VirtioFeature, featureBit, hasFeature } from '../../../src/virtio/features.js';
import { DeviceStatus } from '../../../src/virtio/status.js';
import type { Virtqueue } from '../../../src/virtio/driver/virtqueue.js';
import { ensureQemu, killLeftoverQemus, rawDrive, workDir } from './qtest-harness.js';

const IMAGE_BYTES = 4 << 20;
const { ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK } = DeviceStatus;

/** Brings a transport to DRIVER_OK with VERSION_1 (+ event idx when offered) and one queue. */
async function setUp(t: VirtioPciModernTransport, onUsed: (vq: Virtqueue) => void): Promise<Virtqueue> {
  await t.reset();
  await t.setStatus(ACKNOWLEDGE | DRIVER);
  const offered = await t.getFeatures();
  const features =
    offered & (featureBit(VirtioFeature.VIRTIO_F_VERSION_1) | featureBit(VirtioFeature.VIRTIO_F_EVENT_IDX));
  await t.finalizeFeatures(features);
  await t.setStatus(ACKNOWLEDGE | DRIVER | FEATURES_OK);
  assert.equal((await t.getStatus()) & FEATURES_OK, FEATURES_OK);
  const [vq] = await t.findVqs([{ name: 'rq', callback: onUsed }], features);
  await t.setStatus(ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
  return vq!;
}

/** A GET_ID request built by hand (header, 20-byte id buffer, status), completed through the transport's poller. */
async function getIdByHand(t: VirtioPciModernTransport, vq: Virtqueue, done: Promise<void>): Promise<string> {
  const m = t.memory;
  const hdr = t.allocator.alloc(16);
  const id = t.allocator.alloc(20);
  const status = t.allocator.alloc(1);
  m.writeU32(hdr, 8); // VIRTIO_BLK_T_GET_ID
  m.writeU32(hdr + 4, 0);
  m.writeU64(hdr + 8, 0n);
  m.writeU8(status, 0xff);
  vq.addBuf(
    [{ addr: hdr, len: 16 }],
    [
      { addr: id, len: 20 },
      { addr: status, len: 1 },
    ],
    'get-id',
  );
  vq.kick();
  await done;
  assert.equal(m.readU8(status), 0);
  const bytes = m.slice(id, 20);
  const end = bytes.indexOf(0);
  const text = Buffer.from(bytes.subarray(0, end < 0 ? 20 : end)).toString('latin1');
  for (const a of [hdr, id, status]) t.allocator.free(a);
  return text;
}

function usedWaiter(): { onUsed: (vq: Virtqueue) => void; next: () => Promise<void> } {
  let resolve: (() => void) | undefined;
  return {
    onUsed: (vq) => {
      while (vq.getBuf() !== null) {
        // one buffer per test step
      }
      resolve?.();
    },
    next: () =>
      new Promise<void>((r) => {
        resolve = r;
      }),
  };
}

describe('VirtioPciModernTransport (QEMU virtio-blk-pci over qtest)', { timeout: 5 * 60_000 }, () => {
  const work = workDir('ringvm-vpci-');
  let link: QtestLink | undefined;
  let modern: VirtioPciModernTransport | undefined;
  let transitional: VirtioPciModernTransport | undefined;

  before(async () => {
    await ensureQemu();
    const a = work.image('a.img', new Uint8Array(IMAGE_BYTES));
    const b = work.image('b.img', new Uint8Array(IMAGE_BYTES / 2));
    link = await QtestLink.start({
      devices: [
        'virtio-blk-pci,drive=d0,disable-legacy=on,serial=MODERN0',
        'virtio-blk-pci,drive=d1,disable-legacy=off,serial=TRANS1',
      ],
      args: [...rawDrive('d0', a), ...rawDrive('d1', b)],
      memSize: 64 << 20,
    });
    const found = await openVirtioPciDevices(link);
    assert.equal(found.length, 2);
    modern = found.find((t) => !t.transitional);
    transitional = found.find((t) => t.transitional);
  });

  after(async () => {
    await link?.close();
    killLeftoverQemus();
    work.cleanup();
  });

  it('finds the device by its modern id, assigns BARs and enables MSI-X', async () => {
    const t = modern!;
    assert.equal(t.deviceId, 2);
    assert.equal(t.vendorId, 0x1af4);
    assert.equal(t.pci.deviceId, 0x1042);
    assert.match(t.location, /^pci:00:[0-9a-f]{2}\.0$/);
    assert.equal(t.interruptMode, 'msix');
    assert.equal(t.notifyMultiplier, 4, "QEMU's notify_off_multiplier");
    const memBars = t.pci.bars.filter((b) => b?.kind === 'memory');
    assert.ok(memBars.length >= 2, 'MSI-X table BAR and the modern BAR');
    for (const b of memBars) assert.equal(b!.address % b!.size, 0, 'BARs are size-aligned');
    const caps = await t.pci.capabilities();
    assert.ok(caps.some((c) => c.id === PciCapId.MSIX));
    assert.ok(caps.filter((c) => c.id === PciCapId.VENDOR).length >= 4);
  });

  it('reads features, status and the device configuration', async () => {
    const t = modern!;
    await t.reset();
    assert.equal(await t.getStatus(), 0);
    const features = await t.getFeatures();
    assert.ok(hasFeature(features, VirtioFeature.VIRTIO_F_VERSION_1));
    await t.setStatus(ACKNOWLEDGE);
    assert.equal(await t.getStatus(), ACKNOWLEDGE);
    const cfg = await t.readConfig(0, 8);
    assert.equal(
      new DataView(cfg.buffer).getBigUint64(0, true),
      BigInt(IMAGE_BYTES / 512),
      'capacity in sectors',
    );
    // An unaligned read spanning fields uses byte/word accesses and agrees with the aligned one.
    const odd = await t.readConfig(1, 6);
    assert.deepEqual([...odd], [...cfg.subarray(1, 7)]);
    assert.equal(typeof (await t.generation()), 'number');
    await assert.rejects(t.readConfig(0, 1 << 20), VirtioPciError);
    await t.reset();
  });

  it('drives a queue by hand: GET_ID completes through the MSI-X slot in guest RAM', async () => {
    const t = modern!;
    const w = usedWaiter();
    const vq = await setUp(t, w.onUsed);
    const before = t.stats.queueInterrupts;
    assert.equal(await getIdByHand(t, vq, w.next()), 'MODERN0');
    assert.ok(t.stats.queueInterrupts > before, 'an MSI-X interrupt was seen');
    assert.ok(t.stats.kicks >= 1);
    await t.reset();
    await t.delVqs();
    await assert.rejects(
      t.delVqs().then(() => t.findVqs([{ name: 'x' }, { name: 'y' }], 0n)),
      { code: 'QUEUE_SETUP' },
    );
    await t.reset();
    await t.delVqs();
  });

  it('drives the same queue with ISR polling instead of MSI-X', async () => {
    const img = work.image('isr.img', new Uint8Array(IMAGE_BYTES));
    const own = await QtestLink.start({
      devices: ['virtio-blk-pci,drive=d0,disable-legacy=on,serial=ISR0'],
      args: rawDrive('d0', img),
      memSize: 16 << 20,
    });
    try {
      const fn = (await new PciBus(own).scan()).find((f) => f.deviceId === 0x1042)!;
      const t = await VirtioPciModernTransport.open(own, fn, { interrupts: 'isr' });
      assert.equal(t.interruptMode, 'isr');
      const w = usedWaiter();
      const vq = await setUp(t, w.onUsed);
      assert.equal(await getIdByHand(t, vq, w.next()), 'ISR0');
      assert.ok(t.stats.queueInterrupts >= 1);
      await t.reset();
      await t.delVqs();
    } finally {
      await own.close();
    }
  });

  it('drives a transitional device (0x1001) through its modern capabilities', async () => {
    const t = transitional!;
    assert.equal(t.pci.deviceId, 0x1001);
    assert.equal(t.deviceId, 2, 'device id from the subsystem id');
    assert.ok(
      t.pci.bars.some((b) => b?.kind === 'io'),
      'the legacy I/O BAR is there (and left alone)',
    );
    const cfg = await t.readConfig(0, 8);
    assert.equal(new DataView(cfg.buffer).getBigUint64(0, true), BigInt(IMAGE_BYTES / 2 / 512));
    const w = usedWaiter();
    const vq = await setUp(t, w.onUsed);
    assert.equal(await getIdByHand(t, vq, w.next()), 'TRANS1');
    await t.reset();
    await t.delVqs();
  });
});
