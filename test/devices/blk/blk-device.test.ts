import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { MemoryBackend } from '../../../src/backends/block/memory-backend.js';
import { BlkDevice } from '../../../src/devices/blk/blk-device.js';
import {
  BLK_CONFIG_BLK_SIZE,
  BLK_CONFIG_CAPACITY,
  BLK_CONFIG_MAX_DISCARD_SECTORS,
  BLK_CONFIG_MAX_DISCARD_SEG,
  BLK_CONFIG_MAX_WRITE_ZEROES_SEG,
  BLK_CONFIG_NUM_QUEUES,
  BLK_CONFIG_SEG_MAX,
  BLK_CONFIG_SIZE,
  BLK_CONFIG_SIZE_MAX,
  BLK_CONFIG_WRITE_ZEROES_MAY_UNMAP,
  BlkFeature,
  BlkRequestType,
  BlkStatus,
  SECTOR_SIZE,
  VIRTIO_BLK_ID_BYTES,
  VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
} from '../../../src/devices/blk/blk-layout.js';
import type { BlockBackend } from '../../../src/devices/blk/block-backend.js';
import { UsageError } from '../../../src/virtio/errors.js';
import { VirtioFeature, hasFeature } from '../../../src/virtio/features.js';
import { DeviceStatus } from '../../../src/virtio/status.js';
import {
  ALL_BLK_FEATURES,
  GatedBackend,
  STATUS_UNSET,
  prng,
  randomBytes,
  segments,
  settle,
  setupBlk,
} from './blk-test-driver.js';

const { VIRTIO_BLK_T_IN: IN, VIRTIO_BLK_T_OUT: OUT, VIRTIO_BLK_T_FLUSH: FLUSH } = BlkRequestType;
const { VIRTIO_BLK_T_GET_ID: GET_ID, VIRTIO_BLK_T_DISCARD: DISCARD } = BlkRequestType;
const { VIRTIO_BLK_T_WRITE_ZEROES: WRITE_ZEROES } = BlkRequestType;
const { VIRTIO_BLK_S_OK: OK, VIRTIO_BLK_S_IOERR: IOERR } = BlkStatus;
const MiB = 1 << 20;

describe('BlkDevice: configuration and features', () => {
  test('configuration space fields at the spec offsets, features as offered', async () => {
    const backend = new MemoryBackend(MiB + 300); // a partial last sector is not part of the disk
    const s = await setupBlk(backend, { device: { numQueues: 3, queueSize: 64, sizeMax: 65536 } });
    const cfg = await s.transport.readConfig(0, BLK_CONFIG_SIZE);
    const v = new DataView(cfg.buffer, cfg.byteOffset, cfg.byteLength);
    assert.equal(v.getBigUint64(BLK_CONFIG_CAPACITY, true), BigInt(MiB / SECTOR_SIZE));
    assert.equal(v.getUint32(BLK_CONFIG_SIZE_MAX, true), 65536);
    assert.equal(v.getUint32(BLK_CONFIG_SEG_MAX, true), 62);
    assert.equal(v.getUint32(BLK_CONFIG_BLK_SIZE, true), 512);
    assert.equal(v.getUint16(BLK_CONFIG_NUM_QUEUES, true), 3);
    assert.equal(v.getUint32(BLK_CONFIG_MAX_DISCARD_SECTORS, true), 0x7f_ffff);
    assert.equal(v.getUint32(BLK_CONFIG_MAX_DISCARD_SEG, true), 32);
    assert.equal(v.getUint32(BLK_CONFIG_MAX_WRITE_ZEROES_SEG, true), 32);
    assert.equal(cfg[BLK_CONFIG_WRITE_ZEROES_MAY_UNMAP], 0);
    const f = s.transport.controller.deviceFeatures;
    for (const bit of [
      VirtioFeature.VIRTIO_F_VERSION_1,
      VirtioFeature.VIRTIO_F_EVENT_IDX,
      VirtioFeature.VIRTIO_F_INDIRECT_DESC,
      BlkFeature.VIRTIO_BLK_F_SEG_MAX,
      BlkFeature.VIRTIO_BLK_F_BLK_SIZE,
      BlkFeature.VIRTIO_BLK_F_FLUSH,
      BlkFeature.VIRTIO_BLK_F_MQ,
      BlkFeature.VIRTIO_BLK_F_DISCARD,
      BlkFeature.VIRTIO_BLK_F_WRITE_ZEROES,
      BlkFeature.VIRTIO_BLK_F_SIZE_MAX,
    ]) {
      assert.ok(hasFeature(f, bit), `feature ${bit} offered`);
    }
    assert.ok(!hasFeature(f, BlkFeature.VIRTIO_BLK_F_RO));
    assert.ok(!hasFeature(f, BlkFeature.VIRTIO_BLK_F_CONFIG_WCE));
    assert.equal(s.client.vqs.length, 3);
    // Configuration writes are ignored (every field is read-only without CONFIG_WCE).
    await s.transport.writeConfig(BLK_CONFIG_CAPACITY, new Uint8Array(8));
    assert.deepEqual(await s.transport.readConfig(0, BLK_CONFIG_SIZE), cfg);
  });

  test('one queue: no MQ; EVENT_IDX and INDIRECT_DESC can be withheld', async () => {
    const s = await setupBlk(new MemoryBackend(MiB), { device: { eventIdx: false, indirect: false } });
    const f = s.transport.controller.deviceFeatures;
    assert.ok(!hasFeature(f, BlkFeature.VIRTIO_BLK_F_MQ));
    assert.ok(!hasFeature(f, VirtioFeature.VIRTIO_F_EVENT_IDX));
    assert.ok(!hasFeature(f, VirtioFeature.VIRTIO_F_INDIRECT_DESC));
    const data = randomBytes(prng(1), 4096);
    assert.equal((await s.client.request({ type: OUT, sector: 8, out: data, segments: 5 })).status, OK);
    const r = await s.client.request({ type: IN, sector: 8, inLen: 4096, segments: 3 });
    assert.deepEqual(r.data, data);
  });

  test('bad options throw a UsageError', () => {
    const backend = new MemoryBackend(MiB);
    assert.throws(() => new BlkDevice({ backend, serial: 'x'.repeat(21) }), UsageError);
    assert.throws(() => new BlkDevice({ backend, serial: 'd\u00e9j\u00e0' }), UsageError);
    assert.throws(() => new BlkDevice({ backend, numQueues: 0 }), UsageError);
    assert.throws(() => new BlkDevice({ backend, segMax: 0 }), UsageError);
    const negative: BlockBackend = {
      size: -1,
      readOnly: false,
      readv: () => Promise.resolve(),
      writev: () => Promise.resolve(),
      flush: () => Promise.resolve(),
      close: () => Promise.resolve(),
    };
    assert.throws(() => new BlkDevice({ backend: negative }), UsageError);
    assert.throws(
      () => new BlkDevice({ backend: { ...negative, size: 4096, logicalBlockSize: 1000 } }),
      UsageError,
    );
  });
});

describe('BlkDevice: data path over the loopback transport', () => {
  test('writes then reads back at random sectors; the back end holds exactly what was written', async () => {
    const backend = new MemoryBackend(2 * MiB);
    const s = await setupBlk(backend);
    const rand = prng(42);
    const model = new Uint8Array(backend.size);
    const capacity = backend.size / SECTOR_SIZE;
    for (let i = 0; i < 40; i++) {
      const sectors = 1 + Math.floor(rand() * 16);
      const sector = Math.floor(rand() * (capacity - sectors));
      const data = randomBytes(rand, sectors * SECTOR_SIZE);
      const w = await s.client.request({ type: OUT, sector, out: data, segments: 1 + (i % 4) });
      assert.equal(w.status, OK);
      assert.equal(w.usedLen, 1);
      model.set(data, sector * SECTOR_SIZE);
    }
    assert.deepEqual(backend.bytes, model);
    for (let i = 0; i < 40; i++) {
      const sectors = 1 + Math.floor(rand() * 16);
      const sector = Math.floor(rand() * (capacity - sectors));
      const r = await s.client.request({
        type: IN,
        sector,
        inLen: sectors * SECTOR_SIZE,
        segments: 1 + (i % 5),
      });
      assert.equal(r.status, OK);
      assert.equal(r.usedLen, sectors * SECTOR_SIZE + 1, 'IN: used length = data + status');
      assert.deepEqual(r.data, model.subarray(sector * SECTOR_SIZE, (sector + sectors) * SECTOR_SIZE));
    }
    assert.deepEqual(s.faults, []);
    assert.deepEqual(s.requestErrors, []);
  });

  test('the last sector and a whole-disk read', async () => {
    const backend = new MemoryBackend(64 * SECTOR_SIZE);
    const s = await setupBlk(backend);
    const last = randomBytes(prng(3), SECTOR_SIZE);
    assert.equal((await s.client.request({ type: OUT, sector: 63, out: last })).status, OK);
    const all = await s.client.request({ type: IN, sector: 0, inLen: backend.size, segments: 7 });
    assert.equal(all.status, OK);
    assert.deepEqual(all.data.subarray(63 * SECTOR_SIZE), last);
  });

  test('requests crossing guest memory regions (data split into two segments by the device)', async () => {
    const backend = new MemoryBackend(MiB);
    const s = await setupBlk(backend, {
      transport: {
        regions: [
          { guestAddr: 0, size: 1 << 20 },
          { guestAddr: 1 << 20, size: 1 << 20 },
        ],
      },
    });
    const { memory } = s.transport;
    const hdr = (1 << 20) - 4096;
    const data = (1 << 20) - 700; // 1024 bytes across the region boundary
    const status = (1 << 20) + 4096;
    const payload = randomBytes(prng(9), 1024);
    memory.fill(hdr, 16, 0);
    memory.writeU32(hdr, OUT);
    memory.writeU64(hdr + 8, 10n);
    memory.write(data, payload);
    memory.writeU8(status, STATUS_UNSET);
    await s.client.submitRaw(
      0,
      [
        { addr: hdr, len: 16 },
        { addr: data, len: 1024 },
      ],
      [{ addr: status, len: 1 }],
    );
    assert.equal(memory.readU8(status), OK);
    assert.deepEqual(backend.bytes.subarray(10 * SECTOR_SIZE, 12 * SECTOR_SIZE), payload);
  });

  test('IN with the data and the status in one writable descriptor', async () => {
    const backend = new MemoryBackend(MiB);
    backend.bytes.set(randomBytes(prng(5), 1024), 2048);
    const s = await setupBlk(backend);
    const { memory, allocator } = s.transport;
    const hdr = allocator.alloc(16);
    memory.write(hdr, new Uint8Array(16));
    memory.writeU32(hdr, IN);
    memory.writeU64(hdr + 8, 4n);
    const buf = allocator.alloc(1025);
    memory.fill(buf, 1025, STATUS_UNSET);
    const used = await s.client.submitRaw(0, [{ addr: hdr, len: 16 }], [{ addr: buf, len: 1025 }]);
    assert.equal(used, 1025);
    assert.equal(memory.readU8(buf + 1024), OK);
    assert.deepEqual(memory.slice(buf, 1024), backend.bytes.subarray(2048, 3072));
  });

  test('8+ requests in flight complete out of order, each with the right data', async () => {
    const inner = new MemoryBackend(MiB);
    const rand = prng(77);
    inner.bytes.set(randomBytes(rand, MiB));
    const backend = new GatedBackend(inner);
    const s = await setupBlk(backend);
    const n = 12;
    const pending = Array.from({ length: n }, (_, i) =>
      s.client.request({ type: IN, sector: i * 8, inLen: 4096, segments: 2, kick: i === n - 1 }),
    );
    await backend.waitHeld(n);
    assert.equal(s.device.inFlight, n, 'all requests are in flight at once');
    // Release in reverse order, a few at a time.
    const held = backend.held.splice(0);
    for (let i = held.length - 1; i >= 0; i--) {
      held[i]?.release();
      if (i % 3 === 0) await settle();
    }
    const results = await Promise.all(pending);
    results.forEach((r, i) => {
      assert.equal(r.status, OK);
      assert.deepEqual(r.data, inner.bytes.subarray(i * 8 * SECTOR_SIZE, i * 8 * SECTOR_SIZE + 4096));
    });
    const ids = s.client.order.map(([, id]) => id);
    assert.deepEqual(
      ids,
      [...ids].sort((a, b) => b - a),
      'completed in the reverse of submission order',
    );
    assert.ok(
      s.device.stats.publishes < n,
      `completions were batched (${s.device.stats.publishes} publishes)`,
    );
  });

  test('completions are published in bursts: one used.idx store for many requests', async () => {
    const s = await setupBlk(new MemoryBackend(MiB));
    const n = 32;
    const pending = Array.from({ length: n }, (_, i) =>
      s.client.request({ type: OUT, sector: i, out: new Uint8Array(SECTOR_SIZE).fill(i), kick: i === n - 1 }),
    );
    const results = await Promise.all(pending);
    assert.ok(results.every((r) => r.status === OK));
    assert.equal(s.device.stats.completed, n);
    assert.ok(s.device.stats.publishes <= 2, `${s.device.stats.publishes} publishes for ${n} requests`);
    assert.ok(s.device.stats.interrupts <= s.device.stats.publishes);
  });

  test('MQ: two queues serve requests independently', async () => {
    const backend = new MemoryBackend(MiB);
    const s = await setupBlk(backend, { device: { numQueues: 2, queueSize: 16 } });
    assert.equal(s.client.vqs.length, 2);
    assert.ok(s.dev.hasFeature(BlkFeature.VIRTIO_BLK_F_MQ));
    const rand = prng(8);
    const writes = Array.from({ length: 20 }, (_, i) => ({ sector: i * 4, data: randomBytes(rand, 2048) }));
    const done = await Promise.all(
      writes.map((w, i) => s.client.request({ type: OUT, sector: w.sector, out: w.data }, i % 2)),
    );
    assert.ok(done.every((r) => r.status === OK));
    const reads = await Promise.all(
      writes.map((w, i) => s.client.request({ type: IN, sector: w.sector, inLen: 2048 }, (i + 1) % 2)),
    );
    reads.forEach((r, i) => {
      assert.deepEqual(r.data, writes[i]?.data);
    });
    const perQueue = [0, 0];
    for (const [q] of s.client.order) perQueue[q] = (perQueue[q] ?? 0) + 1;
    assert.deepEqual(perQueue, [20, 20]);
  });

  test('FLUSH completes only after every write popped before it has finished, then flushes the back end', async () => {
    const backend = new GatedBackend(new MemoryBackend(MiB));
    const s = await setupBlk(backend, { device: { numQueues: 2 } });
    const w1 = s.client.request({ type: OUT, sector: 0, out: new Uint8Array(512).fill(1) }, 0);
    const w2 = s.client.request({ type: OUT, sector: 8, out: new Uint8Array(512).fill(2) }, 1);
    await backend.waitHeld(2);
    let flushed = false;
    const f = s.client.request({ type: FLUSH }, 0).then((r) => {
      flushed = true;
      return r;
    });
    await settle();
    assert.equal(backend.held.length, 2, 'the flush waits: not sent to the back end yet');
    backend.held[1]?.release();
    await settle();
    assert.equal(flushed, false);
    assert.equal(backend.held.length, 2);
    backend.held[0]?.release();
    await backend.waitHeld(3);
    const flushCall = backend.held[2] ?? assert.fail('the flush reached the back end');
    assert.equal(flushCall.op, 'flush');
    assert.equal(flushed, false);
    flushCall.release();
    assert.equal((await f).status, OK);
    assert.equal((await w1).status, OK);
    assert.equal((await w2).status, OK);
    assert.deepEqual(backend.log, [
      'writev:0:start',
      'writev:4096:start',
      'writev:4096:end',
      'writev:0:end',
      'flush:0:start',
      'flush:0:end',
    ]);
  });

  test('without VIRTIO_BLK_F_FLUSH negotiated the device is writethrough: each write is flushed', async () => {
    const backend = new GatedBackend(new MemoryBackend(MiB));
    backend.open = true;
    const features = ALL_BLK_FEATURES.filter((b) => b !== BlkFeature.VIRTIO_BLK_F_FLUSH);
    const s = await setupBlk(backend, { featureTable: features });
    assert.ok(!s.dev.hasFeature(BlkFeature.VIRTIO_BLK_F_FLUSH));
    assert.equal((await s.client.request({ type: OUT, sector: 1, out: new Uint8Array(512) })).status, OK);
    assert.deepEqual(backend.log, ['writev:512:start', 'writev:512:end', 'flush:0:start', 'flush:0:end']);
  });

  test('GET_ID returns the serial, NUL-padded to 20 bytes; a 20-byte serial has no terminator', async () => {
    const s = await setupBlk(new MemoryBackend(MiB), { device: { serial: 'ringvm-0' } });
    const r = await s.client.request({ type: GET_ID, inLen: VIRTIO_BLK_ID_BYTES });
    assert.equal(r.status, OK);
    assert.equal(r.usedLen, VIRTIO_BLK_ID_BYTES + 1);
    const expected = new Uint8Array(VIRTIO_BLK_ID_BYTES);
    expected.set(new TextEncoder().encode('ringvm-0'));
    assert.deepEqual(r.data, expected);

    const full = 'ABCDEFGHIJKLMNOPQRST';
    const s2 = await setupBlk(new MemoryBackend(MiB), { device: { serial: full } });
    const r2 = await s2.client.request({ type: GET_ID, inLen: VIRTIO_BLK_ID_BYTES, segments: 3 });
    assert.equal(new TextDecoder().decode(r2.data), full);
    // A shorter buffer gets the id truncated.
    const r3 = await s2.client.request({ type: GET_ID, inLen: 8 });
    assert.equal(r3.status, OK);
    assert.equal(new TextDecoder().decode(r3.data), 'ABCDEFGH');
  });

  test('DISCARD and WRITE_ZEROES (several segments) zero the ranges; unmap reaches the back end', async () => {
    const inner = new MemoryBackend(MiB);
    inner.bytes.fill(0x5a);
    const backend = new GatedBackend(inner);
    backend.open = true;
    const s = await setupBlk(backend);
    const d = await s.client.request({
      type: DISCARD,
      out: segments([
        { sector: 0, count: 2 },
        { sector: 100, count: 1 },
      ]),
    });
    assert.equal(d.status, OK);
    assert.equal(d.usedLen, 1);
    const wz = await s.client.request({
      type: WRITE_ZEROES,
      out: segments([
        { sector: 10, count: 3, flags: VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP },
        { sector: 20, count: 1 },
      ]),
    });
    assert.equal(wz.status, OK);
    const expected = new Uint8Array(MiB).fill(0x5a);
    for (const [sector, count] of [
      [0, 2],
      [100, 1],
      [10, 3],
      [20, 1],
    ] as const) {
      expected.fill(0, sector * SECTOR_SIZE, (sector + count) * SECTOR_SIZE);
    }
    assert.deepEqual(inner.bytes, expected);
    assert.deepEqual(
      backend.log.filter((l) => l.endsWith(':start')),
      ['discard:0:start', 'discard:51200:start', 'writeZeroes+unmap:5120:start', 'writeZeroes:10240:start'],
    );
    const r = await s.client.request({ type: IN, sector: 10, inLen: 1536 });
    assert.deepEqual(r.data, new Uint8Array(1536));
  });

  test('read-only: writes, discards and write-zeroes answer IOERR and never reach the back end', async () => {
    const inner = new MemoryBackend(MiB);
    inner.bytes.fill(7);
    const backend = new GatedBackend(inner);
    backend.open = true;
    const s = await setupBlk(backend, { device: { readOnly: true } });
    assert.ok(s.dev.hasFeature(BlkFeature.VIRTIO_BLK_F_RO));
    assert.ok(!hasFeature(s.transport.controller.deviceFeatures, BlkFeature.VIRTIO_BLK_F_DISCARD));
    assert.ok(!hasFeature(s.transport.controller.deviceFeatures, BlkFeature.VIRTIO_BLK_F_WRITE_ZEROES));
    const w = await s.client.request({ type: OUT, sector: 0, out: new Uint8Array(512) });
    assert.equal(w.status, IOERR);
    const d = await s.client.request({ type: DISCARD, out: segments([{ sector: 0, count: 1 }]) });
    assert.equal(d.status, IOERR);
    const z = await s.client.request({ type: WRITE_ZEROES, out: segments([{ sector: 0, count: 1 }]) });
    assert.equal(z.status, IOERR);
    const r = await s.client.request({ type: IN, sector: 0, inLen: 512 });
    assert.equal(r.status, OK);
    assert.deepEqual(r.data, new Uint8Array(512).fill(7));
    assert.ok(inner.bytes.every((b) => b === 7));
    assert.deepEqual(backend.log, ['readv:0:start', 'readv:0:end']);
    assert.deepEqual(
      s.requestErrors.map((e) => e.code),
      ['BLK_READ_ONLY', 'BLK_READ_ONLY', 'BLK_READ_ONLY'],
    );
  });

  test('a read-only back end makes the device read-only', async () => {
    const s = await setupBlk(new MemoryBackend(MiB, { readOnly: true }));
    assert.ok(s.dev.hasFeature(BlkFeature.VIRTIO_BLK_F_RO));
    assert.equal((await s.client.request({ type: OUT, sector: 0, out: new Uint8Array(512) })).status, IOERR);
  });

  test('a back-end failure answers IOERR and the device carries on', async () => {
    const backend = new MemoryBackend(MiB);
    const s = await setupBlk(backend);
    await backend.close(); // every call now rejects with a HostIoError
    const r = await s.client.request({ type: IN, sector: 0, inLen: 512 });
    assert.equal(r.status, IOERR);
    assert.equal((await s.client.request({ type: FLUSH })).status, IOERR);
    assert.deepEqual(
      s.requestErrors.map((e) => e.code),
      ['HOST_IO', 'HOST_IO'],
    );
    assert.equal(s.transport.controller.status & DeviceStatus.DEVICE_NEEDS_RESET, 0);
  });

  test('reset with I/O in flight: late completions never touch the rings or status bytes', async () => {
    const inner = new MemoryBackend(MiB);
    inner.bytes.fill(0x33);
    const backend = new GatedBackend(inner);
    const s = await setupBlk(backend);
    const { memory, allocator } = s.transport;
    const vq = s.client.vqs[0];
    assert.ok(vq !== undefined);
    const statuses: number[] = [];
    for (let i = 0; i < 4; i++) {
      const hdr = allocator.alloc(16);
      memory.write(hdr, new Uint8Array(16));
      memory.writeU32(hdr, i % 2 === 0 ? IN : OUT);
      memory.writeU64(hdr + 8, BigInt(i));
      const data = allocator.alloc(512);
      const st = allocator.alloc(1);
      memory.writeU8(st, STATUS_UNSET);
      statuses.push(st);
      const dataEntry = { addr: data, len: 512 };
      void s.client.submitRaw(
        0,
        i % 2 === 0 ? [{ addr: hdr, len: 16 }] : [{ addr: hdr, len: 16 }, dataEntry],
        i % 2 === 0 ? [dataEntry, { addr: st, len: 1 }] : [{ addr: st, len: 1 }],
      );
    }
    await backend.waitHeld(4);
    const usedRing = s.transport.controller.queue(0)?.usedRing ?? assert.fail('no used ring');
    const usedBefore = memory.slice(usedRing, 4 + 8 * vq.size).slice();
    await s.transport.reset();
    for (const h of backend.held.splice(0)) h.release();
    await s.device.idle();
    await settle();
    assert.equal(s.device.inFlight, 0);
    assert.equal(s.device.stats.dropped, 4);
    for (const st of statuses) assert.equal(memory.readU8(st), STATUS_UNSET, 'status byte untouched');
    assert.deepEqual(memory.slice(usedRing, 4 + 8 * vq.size), usedBefore, 'used ring untouched');
    assert.equal(s.transport.controller.status, 0);
  });

  test('after a reset the same device serves a new driver instance (remove, add again)', async () => {
    const backend = new MemoryBackend(MiB);
    const s = await setupBlk(backend);
    const data = new Uint8Array(512).fill(9);
    assert.equal((await s.client.request({ type: OUT, sector: 3, out: data })).status, OK);
    await s.bus.removeDevice(s.dev);
    const client = await s.rebind();
    assert.deepEqual((await client.request({ type: IN, sector: 3, inLen: 512 })).data, data);
  });
});
