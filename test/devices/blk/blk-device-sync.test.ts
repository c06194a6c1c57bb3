/**
 * BlkDevice over a back end with synchronous reads and writes (`readvSync`/`writevSync`): requests complete inside
 * the kick, with one used-ring publish per pass and no microtask between the I/O and the interrupt.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { MemoryBackend } from '../../../src/backends/block/memory-backend.js';
import { BlkFeature, BlkRequestType, BlkStatus, SECTOR_SIZE } from '../../../src/devices/blk/blk-layout.js';
import { BLK_SYNC_PUBLISH_BATCH } from '../../../src/devices/blk/blk-device.js';
import { DeviceStatus } from '../../../src/virtio/status.js';
import { ALL_BLK_FEATURES, GatedBackend, prng, randomBytes, setupBlk } from './blk-test-driver.js';

const { VIRTIO_BLK_T_IN: IN, VIRTIO_BLK_T_OUT: OUT, VIRTIO_BLK_T_FLUSH: FLUSH } = BlkRequestType;
const { VIRTIO_BLK_T_GET_ID: GET_ID } = BlkRequestType;
const { VIRTIO_BLK_S_OK: OK, VIRTIO_BLK_S_IOERR: IOERR } = BlkStatus;
const MiB = 1 << 20;

describe('BlkDevice: synchronous back end', () => {
  test('MemoryBackend offers the synchronous methods only with sync: true', () => {
    assert.equal(new MemoryBackend(4096).readvSync, undefined);
    assert.equal(new MemoryBackend(4096).writevSync, undefined);
    const b = new MemoryBackend(4096, { sync: true });
    b.writevSync?.(512, [new Uint8Array([1, 2]), new Uint8Array([3])]);
    assert.deepEqual(b.bytes.subarray(512, 515), new Uint8Array([1, 2, 3]));
    const back = new Uint8Array(3);
    b.readvSync?.(512, [back]);
    assert.deepEqual(back, new Uint8Array([1, 2, 3]));
    assert.throws(() => b.readvSync?.(4000, [new Uint8Array(512)]), { code: 'HOST_IO' });
  });

  test('writes then reads back at random sectors, every one completed synchronously', async () => {
    const backend = new MemoryBackend(2 * MiB, { sync: true });
    const s = await setupBlk(backend);
    const rand = prng(5);
    const model = new Uint8Array(backend.size);
    const capacity = backend.size / SECTOR_SIZE;
    for (let i = 0; i < 30; i++) {
      const sectors = 1 + Math.floor(rand() * 16);
      const sector = Math.floor(rand() * (capacity - sectors));
      const data = randomBytes(rand, sectors * SECTOR_SIZE);
      const w = await s.client.request({ type: OUT, sector, out: data, segments: 1 + (i % 4) });
      assert.equal(w.status, OK);
      model.set(data, sector * SECTOR_SIZE);
      const r = await s.client.request({ type: IN, sector, inLen: data.length, segments: 1 + (i % 3) });
      assert.equal(r.status, OK);
      assert.equal(r.usedLen, data.length + 1);
      assert.deepEqual(r.data, data);
    }
    assert.deepEqual(backend.bytes, model);
    assert.equal(s.device.stats.synchronous, 60);
    assert.equal(s.device.stats.completed, 60);
    assert.equal(s.device.inFlight, 0);
    assert.deepEqual(s.faults, []);
    assert.deepEqual(s.requestErrors, []);
  });

  test('a burst completes inside the notify: a publish per BLK_SYNC_PUBLISH_BATCH, nothing left for a microtask', async () => {
    const backend = new MemoryBackend(MiB, { sync: true });
    const s = await setupBlk(backend);
    const n = 24;
    const pending = Array.from({ length: n }, (_, i) =>
      i % 3 === 2
        ? s.client.request({ type: GET_ID, inLen: 20, kick: false })
        : s.client.request({
            type: i % 3 === 0 ? OUT : IN,
            sector: i,
            inLen: i % 3 === 1 ? 512 : 0,
            out: i % 3 === 0 ? new Uint8Array(512).fill(i) : new Uint8Array(0),
            kick: false,
          }),
    );
    const before = { ...s.device.stats };
    // The driver's kick exposes the chains (its notification reaches the device a microtask later); the device is
    // notified here at once, and everything happens before notify returns.
    s.client.kick(0);
    s.transport.controller.notify(0);
    assert.equal(s.device.stats.requests - before.requests, n);
    assert.equal(
      s.device.stats.completed - before.completed,
      n,
      'every request is in the used ring on return',
    );
    const publishes = Math.ceil(n / BLK_SYNC_PUBLISH_BATCH);
    assert.ok(publishes > 1, 'the burst is longer than one batch');
    assert.equal(
      s.device.stats.publishes - before.publishes,
      publishes,
      'one used.idx store per batch, none left over at the end of the pass',
    );
    assert.ok(s.device.stats.interrupts - before.interrupts <= publishes);
    assert.equal(s.device.stats.synchronous - before.synchronous, 16);
    assert.equal(s.device.inFlight, 0);
    const results = await Promise.all(pending);
    assert.ok(results.every((r) => r.status === OK));
    assert.equal(s.device.stats.publishes - before.publishes, publishes, 'no later publish');
  });

  test('a synchronous back-end failure answers IOERR and the device carries on', async () => {
    const backend = new MemoryBackend(MiB, { sync: true });
    const s = await setupBlk(backend);
    await backend.close(); // every call now throws (or rejects) a HostIoError
    assert.equal((await s.client.request({ type: IN, sector: 0, inLen: 512 })).status, IOERR);
    assert.equal((await s.client.request({ type: OUT, sector: 0, out: new Uint8Array(512) })).status, IOERR);
    assert.equal((await s.client.request({ type: FLUSH })).status, IOERR);
    assert.deepEqual(
      s.requestErrors.map((e) => e.code),
      ['HOST_IO', 'HOST_IO', 'HOST_IO'],
    );
    assert.equal(s.transport.controller.status & DeviceStatus.DEVICE_NEEDS_RESET, 0);
  });

  test('FLUSH after synchronous writes; writethrough writes stay asynchronous and are flushed', async () => {
    const inner = new MemoryBackend(MiB, { sync: true });
    const gated = new GatedBackend(inner);
    gated.open = true;
    // GatedBackend forwards only the promise methods: expose the inner synchronous ones beside them.
    const backend = Object.assign(gated, { readvSync: inner.readvSync, writevSync: inner.writevSync });
    const s = await setupBlk(backend);
    assert.equal(
      (await s.client.request({ type: OUT, sector: 1, out: new Uint8Array(512).fill(7) })).status,
      OK,
    );
    assert.equal((await s.client.request({ type: FLUSH })).status, OK);
    assert.deepEqual(gated.log, ['flush:0:start', 'flush:0:end'], 'the write bypassed the promise path');
    assert.equal(inner.bytes[512], 7);

    const inner2 = new MemoryBackend(MiB, { sync: true });
    const gated2 = new GatedBackend(inner2);
    gated2.open = true;
    const backend2 = Object.assign(gated2, { readvSync: inner2.readvSync, writevSync: inner2.writevSync });
    const features = ALL_BLK_FEATURES.filter((b) => b !== BlkFeature.VIRTIO_BLK_F_FLUSH);
    const t = await setupBlk(backend2, { featureTable: features });
    assert.equal((await t.client.request({ type: OUT, sector: 1, out: new Uint8Array(512) })).status, OK);
    assert.deepEqual(gated2.log, ['writev:512:start', 'writev:512:end', 'flush:0:start', 'flush:0:end']);
    assert.equal(t.device.stats.synchronous, 0);
    assert.equal((await t.client.request({ type: IN, sector: 1, inLen: 512 })).status, OK);
    assert.equal(t.device.stats.synchronous, 1, 'reads are still synchronous in writethrough mode');
  });
});
