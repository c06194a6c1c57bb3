import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BlockBackendError } from '../../src/backends/block/block-backend-error.js';
import {
  createBlkDevice,
  createConsoleDevice,
  createNetDevice,
  createRngDevice,
  type NetInfo,
} from '../../src/cli/device-factories.js';
import { StreamBackendError } from '../../src/backends/net/stream-backend-error.js';
import { BlkFeature } from '../../src/devices/blk/blk-layout.js';
import { hasFeature } from '../../src/virtio/features.js';

let dir = '';
let img = '';

before(() => {
  dir = mkdtempSync(join(tmpdir(), 'ringvm-cli-factories-'));
  img = join(dir, 'disk.img');
  writeFileSync(img, Buffer.alloc(4 << 20));
});
after(() => {
  rmSync(dir, { recursive: true, force: true });
});

describe('device factories', () => {
  test('blk over a raw image, read-only: RO offered, writes refused, the image unchanged', async () => {
    const inst = await createBlkDevice({ backend: { driver: 'file', filename: img }, readOnly: true });
    try {
      assert.equal(inst.device.capacity, (4 << 20) / 512);
      assert.equal(inst.device.readOnly, true);
      assert.equal(inst.device.backend.readOnly, true);
      assert.ok(hasFeature(inst.device.deviceFeatures, BlkFeature.VIRTIO_BLK_F_RO));
      await assert.rejects(inst.device.backend.writev(0, [new Uint8Array(512).fill(1)]));
      assert.equal(inst.busy?.(), false);
      await inst.idle?.();
    } finally {
      await inst.close();
    }
    assert.equal(
      readFileSync(img).every((b) => b === 0),
      true,
    );
  });

  test('blk over a raw image, writable, with queues and serial; close flushes and closes', async () => {
    const inst = await createBlkDevice({
      backend: { driver: 'file', filename: img },
      readOnly: false,
      numQueues: 3,
      serial: 'ringvm-0',
    });
    assert.equal(inst.device.readOnly, false);
    assert.equal(hasFeature(inst.device.deviceFeatures, BlkFeature.VIRTIO_BLK_F_RO), false);
    assert.ok(hasFeature(inst.device.deviceFeatures, BlkFeature.VIRTIO_BLK_F_MQ));
    assert.equal(inst.device.queueMaxSizes.length, 3);
    await inst.device.backend.writev(512, [new Uint8Array(512).fill(0xab)]);
    await inst.close();
    await inst.close(); // idempotent
    const bytes = readFileSync(img);
    assert.equal(bytes[511], 0);
    assert.equal(bytes[512], 0xab);
    assert.equal(bytes[1023], 0xab);
    await assert.rejects(inst.device.backend.readv(0, [new Uint8Array(512)]));
  });

  test('blk over a memory blockdev', async () => {
    const inst = await createBlkDevice({ backend: { driver: 'memory', size: 1 << 20 }, readOnly: false });
    assert.equal(inst.device.capacity, 2048);
    await inst.device.backend.writev(0, [new Uint8Array([1, 2, 3, 4])]);
    const back = new Uint8Array(4);
    await inst.device.backend.readv(0, [back]);
    assert.deepEqual([...back], [1, 2, 3, 4]);
    await inst.close();
  });

  test('blk: a missing image rejects with the back end error naming the path', async () => {
    await assert.rejects(
      createBlkDevice({ backend: { driver: 'file', filename: join(dir, 'nope.img') }, readOnly: true }),
      (e: unknown) =>
        e instanceof BlockBackendError && e.code === 'NOT_FOUND' && e.message.includes('nope.img'),
    );
  });

  test('blk: a bad serial closes the image it opened and rejects', async () => {
    await assert.rejects(
      createBlkDevice({ backend: { driver: 'file', filename: img }, readOnly: true, serial: 'x'.repeat(21) }),
    );
  });

  test('console: a server socket port and a file port; close removes the socket and flushes the file', async () => {
    const sock = join(dir, 'port.sock');
    const log = join(dir, 'console.log');
    const inst = await createConsoleDevice({
      ports: [
        { chardev: { backend: 'file', path: log, append: false }, console: true },
        {
          chardev: { backend: 'socket', path: sock, server: true },
          console: false,
          name: 'org.example.port',
        },
      ],
    });
    assert.equal(inst.device.portCount, 2);
    assert.equal(inst.device.portInfo(1)?.name, 'org.example.port');
    assert.equal(inst.device.portInfo(0)?.console, true);
    assert.equal(inst.busy?.(), true);
    assert.ok(existsSync(log));
    // The server socket accepts a client now.
    await new Promise<void>((resolve, reject) => {
      const c = net.connect(sock, () => {
        c.destroy();
        resolve();
      });
      c.once('error', reject);
    });
    await inst.close();
    assert.equal(existsSync(sock), false);
  });

  test('console: a chardev that cannot start closes the ones already started', async () => {
    const sock = join(dir, 'first.sock');
    await assert.rejects(
      createConsoleDevice({
        ports: [
          { chardev: { backend: 'socket', path: sock, server: true }, console: true },
          {
            chardev: { backend: 'socket', path: join(dir, 'nobody.sock'), server: false },
            console: false,
            name: 'x',
          },
        ],
      }),
      /nobody.sock: cannot connect/,
    );
    assert.equal(existsSync(sock), false);
  });

  test('rng', async () => {
    const inst = await createRngDevice({});
    assert.equal(inst.device.deviceType, 4);
    await inst.close();
  });

  test('net over a stream server: listening when created, its link up once a peer connects, socket gone after close', async () => {
    const path = join(dir, 'stream.sock');
    const inst = await createNetDevice({
      backend: { kind: 'stream', mode: 'server', address: { type: 'unix', path } },
      queuePairs: 1,
      mac: '52:54:00:00:00:01',
      offloads: false,
    });
    try {
      assert.equal(inst.device.backends.length, 1);
      const up = (): boolean => inst.device.backends[0]?.linkUp === true;
      assert.equal(up(), false, 'no peer yet');
      assert.equal((inst.control?.({ op: 'info' }) as NetInfo).mac, '52:54:00:00:00:01');
      const peer = net.connect(path);
      await new Promise<void>((resolve) => peer.once('connect', resolve));
      for (let i = 0; i < 200 && !up(); i++) await new Promise((r) => setTimeout(r, 10));
      assert.equal(up(), true);
      peer.destroy();
    } finally {
      await inst.close();
    }
    assert.equal(existsSync(path), false);
  });

  test('net over a stream client with nothing listening rejects with the back end error naming the address', async () => {
    const path = join(dir, 'nobody.sock');
    await assert.rejects(
      createNetDevice({
        backend: { kind: 'stream', mode: 'client', address: { type: 'unix', path } },
        queuePairs: 1,
        mac: '52:54:00:00:00:01',
        offloads: false,
      }),
      (e: unknown) =>
        e instanceof StreamBackendError && e.code === 'CONNECT_FAILED' && e.message.includes(path),
    );
  });
});
