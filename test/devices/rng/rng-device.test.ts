import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  RngDevice,
  RNG_SOURCE_CHUNK_BYTES,
  type RngDeviceOptions,
} from '../../../src/devices/rng/rng-device.js';
import { LoopbackTransport } from '../../../src/transport/loopback/loopback-transport.js';
import { VirtioBus } from '../../../src/virtio/driver/virtio-bus.js';
import type { VirtioBusDevice } from '../../../src/virtio/driver/virtio-bus-device.js';
import { VIRTIO_DEV_ANY_ID, type VirtioDriver } from '../../../src/virtio/driver/virtio-driver.js';
import type { ScatterEntry, Virtqueue } from '../../../src/virtio/driver/virtqueue.js';
import { DeviceStatus } from '../../../src/virtio/status.js';

interface Pending {
  readonly out: readonly ScatterEntry[];
  readonly inn: readonly ScatterEntry[];
  readonly resolve: (r: { len: number; data: Uint8Array }) => void;
}

/** A minimal virtio-rng driver (Linux drivers/char/hw_random/virtio-rng.c: one queue, device-writable buffers). */
class RngClient {
  vq: Virtqueue | undefined;
  constructor(readonly dev: VirtioBusDevice) {}

  /** One request: `out` readable bytes and writable buffers of the given sizes; resolves with what came back. */
  request(writable: readonly number[], readable = 0): Promise<{ len: number; data: Uint8Array }> {
    const vq = this.vq ?? assert.fail('no queue');
    const { allocator, memory } = this.dev.ops;
    const out: ScatterEntry[] = [];
    const inn: ScatterEntry[] = [];
    if (readable > 0) out.push({ addr: allocator.alloc(readable), len: readable });
    for (const len of writable) {
      const addr = allocator.alloc(len);
      memory.fill(addr, len, 0);
      inn.push({ addr, len });
    }
    const done = new Promise<{ len: number; data: Uint8Array }>((resolve) => {
      vq.addBuf(out, inn, { out, inn, resolve } satisfies Pending);
    });
    vq.kick();
    return done;
  }

  onUsed(vq: Virtqueue): void {
    do {
      vq.disableCb();
      for (let used = vq.getBuf(); used !== null; used = vq.getBuf()) {
        const p = used.token as Pending;
        const total = p.inn.reduce((n, e) => n + e.len, 0);
        const data = new Uint8Array(total);
        let off = 0;
        for (const e of p.inn) {
          this.dev.ops.memory.read(e.addr, data.subarray(off, off + e.len));
          off += e.len;
        }
        for (const e of [...p.out, ...p.inn]) this.dev.ops.allocator.free(e.addr);
        p.resolve({ len: used.len, data });
      }
    } while (!vq.enableCb());
  }
}

async function setup(options?: RngDeviceOptions) {
  const device = new RngDevice(options);
  const transport = new LoopbackTransport(device);
  const bus = new VirtioBus();
  let client: RngClient | undefined;
  const driver: VirtioDriver = {
    name: 'test-virtio-rng',
    idTable: [{ device: 4, vendor: VIRTIO_DEV_ANY_ID }],
    featureTable: [],
    async probe(dev) {
      const c = new RngClient(dev);
      const [vq] = await dev.findVqs([
        {
          name: 'input',
          callback: (q) => {
            c.onUsed(q);
          },
        },
      ]);
      c.vq = vq ?? undefined;
      client = c;
    },
    async remove(dev) {
      await dev.reset();
      await dev.delVqs();
    },
  };
  await bus.registerDriver(driver);
  const dev = await bus.addDevice(transport);
  return { device, transport, dev, client: () => client ?? assert.fail('not bound') };
}

describe('RngDevice', () => {
  test('fills a buffer with random bytes; used length = buffer size', async () => {
    const s = await setup();
    assert.equal(s.dev.driver?.name, 'test-virtio-rng');
    const r = await s.client().request([64]);
    assert.equal(r.len, 64);
    assert.ok(
      r.data.some((b) => b !== 0),
      'not all zero',
    );
    const r2 = await s.client().request([64]);
    assert.notDeepEqual(r2.data, r.data);
    assert.equal(s.device.requests, 2);
    assert.equal(s.device.bytes, 128);
  });

  test('scattered writable buffers larger than one source chunk are filled completely', async () => {
    const calls: number[] = [];
    let counter = 0;
    const s = await setup({
      source: (buf) => {
        calls.push(buf.length);
        for (let i = 0; i < buf.length; i++) buf[i] = (counter++ % 255) + 1;
      },
    });
    const sizes = [100, RNG_SOURCE_CHUNK_BYTES, 3000];
    const r = await s.client().request(sizes);
    const total = sizes.reduce((a, b) => a + b, 0);
    assert.equal(r.len, total);
    assert.ok(
      r.data.every((b) => b !== 0),
      'every byte written',
    );
    assert.ok(calls.every((n) => n <= RNG_SOURCE_CHUNK_BYTES));
    assert.equal(
      calls.reduce((a, b) => a + b, 0),
      total,
    );
  });

  test('a chain with no writable part comes back with used length 0, without a fault', async () => {
    const s = await setup();
    const r = await s.client().request([], 32);
    assert.equal(r.len, 0);
    assert.equal(s.transport.controller.status & DeviceStatus.DEVICE_NEEDS_RESET, 0);
    const ok = await s.client().request([16]);
    assert.equal(ok.len, 16);
  });

  test('readable descriptors before the writable part are skipped', async () => {
    const s = await setup({ source: (buf) => buf.fill(0xaa) });
    const r = await s.client().request([8], 8);
    assert.equal(r.len, 8);
    assert.deepEqual([...r.data], new Array(8).fill(0xaa));
  });

  test('a request larger than maxRequestBytes is filled up to the limit', async () => {
    const s = await setup({ maxRequestBytes: 1000, source: (buf) => buf.fill(1) });
    const r = await s.client().request([4096]);
    assert.equal(r.len, 1000);
    assert.equal(r.data[999], 1);
    assert.equal(r.data[1000], 0);
  });

  test('many requests at once (more than the queue holds over time)', async () => {
    const s = await setup();
    const results = await Promise.all(Array.from({ length: 60 }, (_, i) => s.client().request([i + 1])));
    results.forEach((r, i) => {
      assert.equal(r.len, i + 1);
    });
  });
});
