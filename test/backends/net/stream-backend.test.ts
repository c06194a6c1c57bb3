// StreamNetBackend in server and client mode over unix and TCP loopback sockets: frames both ways intact and in
// order, back-pressure without loss (a paused receiver, a flood of transmits), link down without a peer, one peer
// at a time, reconnecting clients, and a peer that breaks the framing.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { NetBackendError } from '../../../src/devices/net/net-backend.js';
import { StreamBackendError } from '../../../src/backends/net/stream-backend-error.js';
import { StreamNetBackend, type StreamAddress } from '../../../src/backends/net/stream-backend.js';
import { BackendProbe, mac, testFrame, until } from './net-backend-harness.js';

let dir = '';
before(() => {
  dir = mkdtempSync(join(tmpdir(), `ringvm-stream-${process.pid}-`));
});
after(() => {
  rmSync(dir, { recursive: true, force: true });
});

async function pair(kind: 'unix' | 'inet', name: string): Promise<[StreamNetBackend, StreamNetBackend]> {
  const address: StreamAddress =
    kind === 'unix'
      ? { type: 'unix', path: join(dir, `${name}.sock`) }
      : { type: 'inet', host: '127.0.0.1', port: 0 };
  const server = await StreamNetBackend.open({ mode: 'server', address });
  const client = await StreamNetBackend.open({ mode: 'client', address: server.address });
  await until(() => server.linkUp, 'the server to accept');
  return [server, client];
}

const SIZES = [14, 60, 64, 100, 1514, 9014, 65_535];

describe('StreamNetBackend', () => {
  for (const kind of ['unix', 'inet'] as const) {
    test(`${kind}: frames both ways, intact and in order; link up on both ends`, async () => {
      const [server, client] = await pair(kind, 'both');
      const s = new BackendProbe(server);
      const c = new BackendProbe(client);
      assert.equal(server.linkUp, true);
      assert.equal(client.linkUp, true);
      const toServer = SIZES.map((n, i) => testFrame(mac(1), mac(2), n, i));
      const toClient = SIZES.map((n, i) => testFrame(mac(2), mac(1), n, 100 + i));
      for (const f of toServer) c.send(f);
      for (const f of toClient) s.send(f);
      await until(() => s.frames.length === toServer.length && c.frames.length === toClient.length, 'frames');
      assert.deepEqual(s.frames, toServer);
      assert.deepEqual(c.frames, toClient);
      assert.equal(server.stats.framesReceived, toServer.length);
      assert.equal(
        client.stats.bytesTransmitted,
        SIZES.reduce((a, b) => a + b, 0),
      );
      await client.close();
      await until(() => !server.linkUp, 'the server to see the peer leave');
      assert.deepEqual(s.links, [false]);
      await server.close();
    });
  }

  test('a receiver that stops at pendingLength 0 (as the device does) is told about every later frame', async () => {
    const [server, client] = await pair('unix', 'edge');
    const s = new BackendProbe(server, { asDevice: true });
    const c = new BackendProbe(client);
    for (let i = 0; i < 5; i++) {
      // One frame at a time: each arrives after the receiver found the queue empty.
      c.send(testFrame(mac(1), mac(2), 98, i));
      await until(() => s.frames.length === i + 1, `frame ${i}`);
    }
    await client.close();
    await server.close();
  });

  test('back-pressure both ways loses nothing: 20 000 frames to a paused receiver', async () => {
    const [server, client] = await pair('unix', 'pressure');
    const s = new BackendProbe(server);
    const c = new BackendProbe(client);
    s.pause();
    const sent: Buffer[] = [];
    for (let i = 0; i < 20_000; i++) {
      const f = testFrame(mac(1), mac(2), 60 + (i % 1400), i);
      sent.push(f);
      c.send(f);
    }
    // The sender is pushed back (transmit returned false) while the receiver does not read.
    await until(() => c.queued > 0 && server.queuedFrames > 0, 'back-pressure');
    await new Promise((r) => setTimeout(r, 200));
    assert.ok(c.queued > 0, 'the sender still holds frames');
    assert.ok(
      server.queuedFrames * 60 <= server.receiveQueueBytes * 2 + 70_000,
      'the receive queue is bounded',
    );
    s.resume();
    await until(() => s.frames.length === sent.length, 'every frame', 60_000);
    assert.equal(c.queued, 0);
    assert.ok(c.writableEvents > 0);
    assert.ok(
      s.frames.every((f, i) => f.equals(sent[i]!)),
      'in order and intact',
    );
    await client.close();
    await server.close();
  });

  test('without a peer the link is down and transmit throws LINK_DOWN; a frame too long throws FRAME_TOO_LONG', async () => {
    const path = join(dir, 'lonely.sock');
    const server = await StreamNetBackend.open({ mode: 'server', address: { type: 'unix', path } });
    const s = new BackendProbe(server);
    assert.equal(server.linkUp, false);
    assert.throws(
      () => server.transmit([new Uint8Array(60)]),
      (e: unknown) => e instanceof NetBackendError && e.code === 'LINK_DOWN',
    );
    const client = await StreamNetBackend.open({ mode: 'client', address: { type: 'unix', path } });
    await until(() => server.linkUp, 'link up');
    assert.deepEqual(s.links, [true]);
    assert.throws(
      () => client.transmit([new Uint8Array(server.maxFrame + 1)]),
      (e: unknown) => e instanceof NetBackendError && e.code === 'FRAME_TOO_LONG',
    );
    await client.close();
    await server.close();
  });

  test('a server serves one peer at a time; the next one after it leaves', async () => {
    const path = join(dir, 'one.sock');
    const server = await StreamNetBackend.open({ mode: 'server', address: { type: 'unix', path } });
    const s = new BackendProbe(server);
    const a = await StreamNetBackend.open({ mode: 'client', address: { type: 'unix', path } });
    await until(() => server.linkUp, 'first peer');
    const b = await StreamNetBackend.open({ mode: 'client', address: { type: 'unix', path } });
    await until(() => !b.linkUp, 'second peer refused');
    assert.equal(server.refused, 1);
    new BackendProbe(a).send(testFrame(mac(1), mac(2), 60, 1));
    await until(() => s.frames.length === 1, 'frame from the first peer');
    await a.close();
    await until(() => !server.linkUp, 'first peer gone');
    const c = await StreamNetBackend.open({ mode: 'client', address: { type: 'unix', path } });
    await until(() => server.linkUp, 'third peer');
    new BackendProbe(c).send(testFrame(mac(1), mac(3), 61, 2));
    await until(() => s.frames.length === 2, 'frame from the third peer');
    assert.equal(s.frames[1]!.length, 61);
    await b.close();
    await c.close();
    await server.close();
  });

  test('a reconnecting client comes up when the server appears and again after it restarts', async () => {
    const path = join(dir, 'later.sock');
    const log: string[] = [];
    const client = await StreamNetBackend.open({
      mode: 'client',
      address: { type: 'unix', path },
      reconnectMs: 20,
      onLog: (line) => log.push(line),
    });
    const c = new BackendProbe(client);
    assert.equal(client.linkUp, false);
    // Given at open, the log has the first failure already (it happened inside open).
    assert.equal(log.length, 1);
    assert.match(log[0] ?? '', /cannot connect to .*later\.sock .*retrying every 20 ms/);
    let server = await StreamNetBackend.open({ mode: 'server', address: { type: 'unix', path } });
    await until(() => client.linkUp, 'client connected');
    await server.close();
    await until(() => !client.linkUp, 'client sees the server go');
    server = await StreamNetBackend.open({ mode: 'server', address: { type: 'unix', path } });
    await until(() => client.linkUp, 'client reconnected');
    new BackendProbe(server).send(testFrame(mac(2), mac(1), 80, 3));
    await until(() => c.frames.length === 1, 'frame after reconnecting');
    assert.deepEqual(c.links, [true, false, true]);
    // One line per event, not per retry: failing, connected, gone, (failing again if the restart took longer
    // than one retry,) connected again.
    const events = log.map((l) => /cannot connect|connected to|went away/.exec(l)?.[0]).join(', ');
    assert.match(
      events,
      /^cannot connect, connected to, went away, (cannot connect, )?connected to$/,
      log.join('\n'),
    );
    const lines = log.length;
    await client.close();
    assert.equal(log.length, lines, 'closing the client is not a reconnect');
    await server.close();
  });

  test('a peer that sends a zero-length frame is dropped and counted; good frames before it arrive', async () => {
    const path = join(dir, 'rogue.sock');
    const server = await StreamNetBackend.open({ mode: 'server', address: { type: 'unix', path } });
    const s = new BackendProbe(server);
    const rogue = net.connect(path);
    await new Promise((r) => rogue.once('connect', r));
    const good = testFrame(mac(1), mac(9), 60, 9);
    const h = Buffer.alloc(4);
    h.writeUInt32BE(good.length);
    rogue.write(Buffer.concat([h, good, Buffer.alloc(4), Buffer.alloc(32)]));
    await until(() => server.stats.framingErrors === 1 && !server.linkUp, 'the framing error');
    assert.deepEqual(s.frames, [good]);
    rogue.destroy();
    await server.close();
  });

  test('bad options and unusable addresses are typed errors', async () => {
    const file = join(dir, 'plain-file');
    writeFileSync(file, 'x');
    await assert.rejects(
      StreamNetBackend.open({ mode: 'server', address: { type: 'unix', path: file } }),
      (e: unknown) => e instanceof StreamBackendError && e.code === 'PATH_NOT_SOCKET',
    );
    await assert.rejects(
      StreamNetBackend.open({ mode: 'client', address: { type: 'unix', path: join(dir, 'nobody.sock') } }),
      (e: unknown) => e instanceof StreamBackendError && e.code === 'CONNECT_FAILED',
    );
    await assert.rejects(
      StreamNetBackend.open({ mode: 'client', address: { type: 'inet', host: '127.0.0.1', port: 70_000 } }),
      (e: unknown) => e instanceof StreamBackendError && e.code === 'INVALID_OPTION',
    );
    await assert.rejects(
      StreamNetBackend.open({
        mode: 'server',
        address: { type: 'inet', host: '127.0.0.1', port: 0 },
        reconnectMs: 5,
      }),
      (e: unknown) => e instanceof StreamBackendError && e.code === 'INVALID_OPTION',
    );
    const live = await StreamNetBackend.open({
      mode: 'server',
      address: { type: 'unix', path: join(dir, 'live.sock') },
    });
    await assert.rejects(
      StreamNetBackend.open({ mode: 'server', address: { type: 'unix', path: join(dir, 'live.sock') } }),
      (e: unknown) => e instanceof StreamBackendError && e.code === 'ADDRESS_IN_USE',
    );
    await live.close();
  });
});
