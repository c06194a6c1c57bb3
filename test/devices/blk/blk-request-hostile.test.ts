/**
 * Hostile-input item 19 for the block device, one test per row of the decision table in
 * src/devices/blk/blk-request.ts. Every request is carved from an {@link Arena} filled with a pattern; each test
 * asserts the status byte (or DEVICE_NEEDS_RESET), that the back end was not called for rejected requests, and
 * that no byte of the arena changed except the status byte.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { MemoryBackend } from '../../../src/backends/block/memory-backend.js';
import type { BlkDeviceOptions } from '../../../src/devices/blk/blk-device.js';
import {
  BlkRequestType,
  BlkStatus,
  SECTOR_SIZE,
  VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
} from '../../../src/devices/blk/blk-layout.js';
import type { ScatterEntry } from '../../../src/virtio/driver/virtqueue.js';
import { DeviceStatus } from '../../../src/virtio/status.js';
import {
  ALL_BLK_FEATURES,
  Arena,
  GatedBackend,
  header,
  segments,
  settle,
  setupBlk,
  type BlkSetup,
} from './blk-test-driver.js';

const T = BlkRequestType;
const { VIRTIO_BLK_S_OK: OK, VIRTIO_BLK_S_IOERR: IOERR, VIRTIO_BLK_S_UNSUPP: UNSUPP } = BlkStatus;
const DISK = 64 * SECTOR_SIZE; // 64 sectors
const CAPACITY = DISK / SECTOR_SIZE;

interface Hostile {
  readonly s: BlkSetup;
  readonly inner: MemoryBackend;
  readonly backend: GatedBackend;
  readonly arena: Arena;
}

async function hostile(
  device: Omit<BlkDeviceOptions, 'backend'> = {},
  featureTable = ALL_BLK_FEATURES,
): Promise<Hostile> {
  const inner = new MemoryBackend(DISK);
  inner.bytes.fill(0x11);
  const backend = new GatedBackend(inner);
  backend.open = true;
  const s = await setupBlk(backend, { device, featureTable });
  return { s, inner, backend, arena: new Arena(s) };
}

/**
 * Submits a chain of arena buffers and waits for it; asserts that only `statusAt` changed in the arena (or
 * nothing, when `statusAt` is undefined), and returns the status byte and the used length.
 */
async function run(
  h: Hostile,
  out: readonly ScatterEntry[],
  inn: readonly ScatterEntry[],
  statusAt: number | undefined,
): Promise<{ status: number; used: number }> {
  const before = h.arena.snapshot();
  const used = await h.s.client.submitRaw(0, out, inn);
  const changes = h.arena.changes(before);
  if (statusAt === undefined) assert.deepEqual(changes, []);
  else
    assert.ok(
      changes.every((a) => a === statusAt),
      `only the status byte changed (changed: ${changes.join(',')})`,
    );
  return { status: statusAt === undefined ? -1 : h.s.transport.memory.readU8(statusAt), used };
}

/** header + optional readable data, then writable data + status (all from the arena). */
function chain(
  h: Hostile,
  type: number,
  sector: bigint | number,
  opts: { out?: Uint8Array; inLen?: number; headerLen?: number } = {},
): { out: ScatterEntry[]; inn: ScatterEntry[]; status: number } {
  const hdr = header(type, sector).subarray(0, opts.headerLen ?? 16);
  const out: ScatterEntry[] = [h.arena.take(hdr.length, hdr)];
  if (opts.out !== undefined) out.push(h.arena.take(opts.out.length, opts.out));
  const inn: ScatterEntry[] = [];
  if (opts.inLen !== undefined && opts.inLen > 0) inn.push(h.arena.take(opts.inLen));
  const st = h.arena.take(1);
  inn.push(st);
  return { out, inn, status: st.addr };
}

/** Asserts the device is still live and serves a valid request afterwards. */
async function stillWorks(h: Hostile): Promise<void> {
  const r = await h.s.client.request({ type: T.VIRTIO_BLK_T_IN, sector: 0, inLen: 512 });
  assert.equal(r.status, OK);
  assert.equal(h.s.transport.controller.status & DeviceStatus.DEVICE_NEEDS_RESET, 0);
}

function untouched(h: Hostile): void {
  assert.deepEqual(
    h.backend.log.filter((l) => !l.startsWith('readv:0:')),
    [],
    'the back end was not called',
  );
}

describe('virtio-blk hostile requests (item 19): answered with a status', () => {
  test('header too short (8 readable bytes) → IOERR', async () => {
    const h = await hostile();
    const c = chain(h, T.VIRTIO_BLK_T_IN, 0, { headerLen: 8, inLen: 512 });
    const r = await run(h, c.out, c.inn, c.status);
    assert.equal(r.status, IOERR);
    assert.equal(r.used, 513, 'used length covers the writable part up to the status');
    untouched(h);
    assert.equal(h.s.requestErrors[0]?.code, 'BLK_HEADER_TOO_SHORT');
    await stillWorks(h);
  });

  test('header split across descriptors at every byte is fine (no assumption about the layout)', async () => {
    const h = await hostile();
    for (let cut = 1; cut < 16; cut++) {
      const hdr = header(T.VIRTIO_BLK_T_IN, 1);
      const a = h.arena.take(cut, hdr.subarray(0, cut));
      const b = h.arena.take(16 - cut, hdr.subarray(cut));
      const data = h.arena.take(512);
      const st = h.arena.take(1);
      const before = h.arena.snapshot();
      await h.s.client.submitRaw(0, [a, b], [data, st]);
      assert.equal(h.s.transport.memory.readU8(st.addr), OK);
      const changed = h.arena.changes(before);
      assert.ok(changed.every((x) => x === st.addr || (x >= data.addr && x < data.addr + 512)));
    }
  });

  for (const [name, sector, sectors] of [
    ['sector = capacity', CAPACITY, 1],
    ['sector inside, end past capacity', CAPACITY - 1, 2],
    ['sector 2^64 - 1', 2n ** 64n - 1n, 1],
    ['sector 2^53 (beyond a safe number)', 2n ** 53n, 1],
    ['sector 2^32 + 1 (the low half alone is inside)', 2n ** 32n + 1n, 1],
    ['sector 2^53 / 512 - 1 (largest high half below the limit)', 2n ** 44n - 1n, 1],
    ['sector = 2^64 / 512 (byte offset wraps to 0)', 2n ** 55n, 1],
  ] as const) {
    test(`IN/OUT ${name} → IOERR, back end untouched`, async () => {
      const h = await hostile();
      const rIn = chain(h, T.VIRTIO_BLK_T_IN, sector, { inLen: sectors * SECTOR_SIZE });
      assert.equal((await run(h, rIn.out, rIn.inn, rIn.status)).status, IOERR);
      const rOut = chain(h, T.VIRTIO_BLK_T_OUT, sector, { out: new Uint8Array(sectors * SECTOR_SIZE) });
      assert.equal((await run(h, rOut.out, rOut.inn, rOut.status)).status, IOERR);
      untouched(h);
      assert.deepEqual(
        h.s.requestErrors.map((e) => e.code),
        ['BLK_OUT_OF_RANGE', 'BLK_OUT_OF_RANGE'],
      );
      await stillWorks(h);
    });
  }

  test('data length not a multiple of 512 → IOERR (IN 100 bytes, OUT 700 bytes)', async () => {
    const h = await hostile();
    const a = chain(h, T.VIRTIO_BLK_T_IN, 0, { inLen: 100 });
    assert.equal((await run(h, a.out, a.inn, a.status)).status, IOERR);
    const b = chain(h, T.VIRTIO_BLK_T_OUT, 0, { out: new Uint8Array(700) });
    assert.equal((await run(h, b.out, b.inn, b.status)).status, IOERR);
    untouched(h);
    assert.ok(h.s.requestErrors.every((e) => e.code === 'BLK_LENGTH_UNALIGNED'));
  });

  test('IN / OUT with no data → OK, nothing transferred', async () => {
    const h = await hostile();
    const a = chain(h, T.VIRTIO_BLK_T_IN, 3);
    assert.equal((await run(h, a.out, a.inn, a.status)).status, OK);
    const b = chain(h, T.VIRTIO_BLK_T_OUT, 3);
    assert.equal((await run(h, b.out, b.inn, b.status)).status, OK);
    untouched(h);
  });

  test('write to a read-only disk → IOERR, back end untouched', async () => {
    const h = await hostile({ readOnly: true });
    const c = chain(h, T.VIRTIO_BLK_T_OUT, 0, { out: new Uint8Array(512).fill(0xcc) });
    assert.equal((await run(h, c.out, c.inn, c.status)).status, IOERR);
    untouched(h);
  });

  for (const type of [2, 3, 5, 10, 14, 15, 16, 0x8000_0000, 0xffff_ffff]) {
    test(`unknown request type ${type} → UNSUPP (not a fault)`, async () => {
      const h = await hostile();
      const c = chain(h, type, 0, { inLen: 512 });
      assert.equal((await run(h, c.out, c.inn, c.status)).status, UNSUPP);
      untouched(h);
      assert.equal(h.s.requestErrors[0]?.code, 'BLK_UNSUPPORTED_TYPE');
      await stillWorks(h);
    });
  }

  test('more data descriptors than seg_max → IOERR', async () => {
    const h = await hostile({ segMax: 2 });
    const hdr = h.arena.take(16, header(T.VIRTIO_BLK_T_IN, 0));
    const data = [h.arena.take(512), h.arena.take(512), h.arena.take(512)];
    const st = h.arena.take(1);
    assert.equal((await run(h, [hdr], [...data, st], st.addr)).status, IOERR);
    assert.equal(h.s.requestErrors[0]?.code, 'BLK_TOO_MANY_SEGMENTS');
    // seg_max data descriptors are fine.
    const ok = chain(h, T.VIRTIO_BLK_T_IN, 0, { inLen: 1024 });
    assert.equal((await h.s.client.submitRaw(0, ok.out, ok.inn)) > 0, true);
    assert.equal(h.s.transport.memory.readU8(ok.status), OK);
  });

  test('GET_ID without room before the status → IOERR', async () => {
    const h = await hostile({ serial: 'x' });
    const c = chain(h, T.VIRTIO_BLK_T_GET_ID, 0);
    assert.equal((await run(h, c.out, c.inn, c.status)).status, IOERR);
    assert.equal(h.s.requestErrors[0]?.code, 'BLK_GET_ID_NO_ROOM');
  });

  test('FLUSH with a non-zero sector and data is still a flush → OK', async () => {
    const h = await hostile();
    const c = chain(h, T.VIRTIO_BLK_T_FLUSH, 99, { out: new Uint8Array(512) });
    assert.equal((await run(h, c.out, c.inn, c.status)).status, OK);
    assert.deepEqual(h.backend.log, ['flush:0:start', 'flush:0:end']);
  });

  test('extra writable bytes before the status of an OUT are left untouched', async () => {
    const h = await hostile();
    const hdr = h.arena.take(16, header(T.VIRTIO_BLK_T_OUT, 1));
    const data = h.arena.take(512, new Uint8Array(512).fill(0x77));
    const tail = h.arena.take(9); // 8 spare bytes + the status
    const r = await run(h, [hdr, data], [tail], tail.addr + 8);
    assert.equal(r.status, OK);
    assert.equal(r.used, 9);
  });
});

describe('virtio-blk hostile DISCARD / WRITE_ZEROES', () => {
  const seg = (list: Parameters<typeof segments>[0]): Uint8Array => segments(list);

  const cases: [string, number, Uint8Array, number, string][] = [
    [
      'discard with unmap set',
      T.VIRTIO_BLK_T_DISCARD,
      seg([{ sector: 0, count: 1, flags: 1 }]),
      UNSUPP,
      'BLK_SEGMENT_FLAGS',
    ],
    [
      'discard with a reserved flag',
      T.VIRTIO_BLK_T_DISCARD,
      seg([{ sector: 0, count: 1, flags: 4 }]),
      UNSUPP,
      'BLK_SEGMENT_FLAGS',
    ],
    [
      'write zeroes with a reserved flag (in the 2nd segment, 1st out of range)',
      T.VIRTIO_BLK_T_WRITE_ZEROES,
      seg([
        { sector: CAPACITY, count: 1 },
        { sector: 0, count: 1, flags: 0x8000_0001 },
      ]),
      UNSUPP,
      'BLK_SEGMENT_FLAGS',
    ],
    [
      'discard past capacity',
      T.VIRTIO_BLK_T_DISCARD,
      seg([{ sector: CAPACITY - 1, count: 2 }]),
      IOERR,
      'BLK_OUT_OF_RANGE',
    ],
    [
      'write zeroes at sector 2^64-1',
      T.VIRTIO_BLK_T_WRITE_ZEROES,
      seg([{ sector: 2n ** 64n - 1n, count: 1 }]),
      IOERR,
      'BLK_OUT_OF_RANGE',
    ],
    [
      'discard with 15 bytes of segments',
      T.VIRTIO_BLK_T_DISCARD,
      new Uint8Array(15),
      IOERR,
      'BLK_SEGMENTS_INVALID',
    ],
    [
      'write zeroes with no segment',
      T.VIRTIO_BLK_T_WRITE_ZEROES,
      new Uint8Array(0),
      IOERR,
      'BLK_SEGMENTS_INVALID',
    ],
    [
      'discard with more segments than max_discard_seg (2)',
      T.VIRTIO_BLK_T_DISCARD,
      seg([
        { sector: 0, count: 1 },
        { sector: 1, count: 1 },
        { sector: 2, count: 1 },
      ]),
      IOERR,
      'BLK_TOO_MANY_SEGMENTS',
    ],
    [
      'write zeroes larger than max_write_zeroes_sectors (8)',
      T.VIRTIO_BLK_T_WRITE_ZEROES,
      seg([{ sector: 0, count: 9 }]),
      IOERR,
      'BLK_SEGMENT_TOO_LARGE',
    ],
  ];
  for (const [name, type, data, status, code] of cases) {
    test(`${name} → ${status === UNSUPP ? 'UNSUPP' : 'IOERR'}, nothing discarded`, async () => {
      const h = await hostile({ maxDiscardSegments: 2, maxWriteZeroesSectors: 8 });
      const c = chain(h, type, 0, { out: data });
      assert.equal((await run(h, c.out, c.inn, c.status)).status, status);
      untouched(h);
      assert.ok(h.inner.bytes.every((b) => b === 0x11));
      assert.equal(h.s.requestErrors[0]?.code, code);
      await stillWorks(h);
    });
  }

  test('discard / write zeroes without the feature negotiated → UNSUPP', async () => {
    const h = await hostile({}, []);
    for (const type of [T.VIRTIO_BLK_T_DISCARD, T.VIRTIO_BLK_T_WRITE_ZEROES]) {
      const c = chain(h, type, 0, { out: seg([{ sector: 0, count: 1, flags: 0 }]) });
      assert.equal((await run(h, c.out, c.inn, c.status)).status, UNSUPP);
    }
    untouched(h);
  });

  test('write zeroes with unmap is accepted', async () => {
    const h = await hostile();
    const c = chain(h, T.VIRTIO_BLK_T_WRITE_ZEROES, 0, {
      out: seg([{ sector: 1, count: 1, flags: VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP }]),
    });
    assert.equal((await run(h, c.out, c.inn, c.status)).status, OK);
    assert.deepEqual(h.backend.log, ['writeZeroes+unmap:512:start', 'writeZeroes+unmap:512:end']);
  });
});

describe('virtio-blk hostile requests: guest faults (DEVICE_NEEDS_RESET)', () => {
  test('no device-writable byte at all (status descriptor missing) → NEEDS_RESET, nothing written', async () => {
    const h = await hostile();
    const hdr = h.arena.take(16, header(T.VIRTIO_BLK_T_OUT, 0));
    const data = h.arena.take(512, new Uint8Array(512).fill(0xab));
    const before = h.arena.snapshot();
    void h.s.client.submitRaw(0, [hdr, data], []);
    await settle();
    assert.deepEqual(h.arena.changes(before), []);
    const c = h.s.transport.controller;
    assert.equal(c.status & DeviceStatus.DEVICE_NEEDS_RESET, DeviceStatus.DEVICE_NEEDS_RESET);
    assert.equal(c.resetReason?.code, 'BLK_STATUS_MISSING');
    untouched(h);
  });

  test('status descriptor not writable (readable after writable) → NEEDS_RESET from the ring', async () => {
    const h = await hostile({ indirect: false });
    const { memory } = h.s.transport;
    // Build the chain by hand in the descriptor table: the driver-side queue refuses this order.
    const q = h.s.transport.controller.queue(0) ?? assert.fail('no queue');
    const hdr = h.arena.take(16, header(T.VIRTIO_BLK_T_IN, 0));
    const data = h.arena.take(512);
    const st = h.arena.take(1);
    const desc = (i: number, addr: number, len: number, flags: number, next: number): void => {
      const d = q.descTable + 16 * i;
      memory.writeU64(d, BigInt(addr));
      memory.writeU32(d + 8, len);
      memory.writeU16(d + 12, flags);
      memory.writeU16(d + 14, next);
    };
    desc(0, hdr.addr, 16, 1, 1); // NEXT
    desc(1, data.addr, 512, 1 | 2, 2); // NEXT | WRITE
    desc(2, st.addr, 1, 0, 0); // readable status: forbidden after a writable descriptor
    const before = h.arena.snapshot();
    memory.writeU16(q.availRing + 4, 0);
    memory.writeU16(q.availRing + 2, 1);
    h.s.transport.controller.notify(0);
    await settle();
    assert.deepEqual(h.arena.changes(before), []);
    assert.equal(h.s.transport.controller.resetReason?.code, 'READABLE_AFTER_WRITABLE');
    untouched(h);
  });

  test('requests in flight when a fault arrives still complete; reset clears the condition', async () => {
    const inner = new MemoryBackend(DISK);
    const backend = new GatedBackend(inner);
    const s = await setupBlk(backend);
    const arena = new Arena(s);
    const h: Hostile = { s, inner, backend, arena };
    const good = chain(h, T.VIRTIO_BLK_T_IN, 0, { inLen: 512 });
    const goodDone = s.client.submitRaw(0, good.out, good.inn);
    await backend.waitHeld(1);
    const bad = h.arena.take(16, header(T.VIRTIO_BLK_T_OUT, 0));
    void s.client.submitRaw(0, [bad], []);
    await settle();
    assert.equal(s.transport.controller.resetReason?.code, 'BLK_STATUS_MISSING');
    backend.held[0]?.release();
    assert.equal(await goodDone, 513);
    assert.equal(s.transport.memory.readU8(good.status), OK);
    await s.bus.removeDevice(s.dev);
    backend.open = true;
    const client = await s.rebind();
    assert.equal((await client.request({ type: T.VIRTIO_BLK_T_IN, sector: 1, inLen: 512 })).status, OK);
  });
});
