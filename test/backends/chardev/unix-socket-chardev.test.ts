import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { linkSync, mkdtempSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { UnixSocketChardev } from '../../../src/backends/chardev/unix-socket-chardev.js';
import { ChardevError } from '../../../src/backends/chardev/chardev-error.js';
import { ConsoleDevice } from '../../../src/devices/console/console-device.js';
import { LoopbackTransport } from '../../../src/transport/loopback/loopback-transport.js';
import { VirtioBus } from '../../../src/virtio/driver/virtio-bus.js';
import { consoleDriver, patternBytes, settle, waitFor } from '../../devices/console/console-driver.js';
import { MemoryChardev } from '../../devices/console/memory-chardev.js';
import { Recorder } from './recorder.js';

let dir = '';
let n = 0;
const sockPath = (): string => join(dir, `s${n++}.sock`);

before(() => {
  dir = mkdtempSync(join(tmpdir(), 'ringvm-chardev-'));
});
after(() => {
  rmSync(dir, { recursive: true, force: true });
});

function connectClient(path: string): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect(path);
    s.once('connect', () => {
      resolve(s);
    });
    s.once('error', reject);
  });
}

function collect(socket: net.Socket): { bytes: () => Buffer } {
  const chunks: Buffer[] = [];
  socket.on('data', (d: Buffer) => chunks.push(d));
  return { bytes: () => Buffer.concat(chunks) };
}

function listenServer(path: string, onConn: (s: net.Socket) => void): Promise<net.Server> {
  return new Promise((resolve) => {
    const server = net.createServer(onConn);
    server.listen(path, () => {
      resolve(server);
    });
  });
}

const closeServer = (server: net.Server): Promise<void> =>
  new Promise((resolve) => {
    server.close(() => {
      resolve();
    });
  });

describe('UnixSocketChardev, server mode', () => {
  test('a real client: open, data both ways, close; the next client is served; extra clients refused', async () => {
    const path = sockPath();
    const chardev = new UnixSocketChardev({ path, mode: 'server' });
    const rec = new Recorder();
    chardev.attach(rec);
    await chardev.start();
    assert.equal(chardev.isOpen, false);

    const c1 = await connectClient(path);
    const c1in = collect(c1);
    await waitFor(() => chardev.isOpen, 'first client');
    c1.write('from client');
    await waitFor(() => rec.text === 'from client', 'client bytes');
    assert.equal(chardev.write(new TextEncoder().encode('to client')), true);
    await waitFor(() => c1in.bytes().toString() === 'to client', 'bytes at the client');

    // A second client while the first is connected is refused.
    const c2 = await connectClient(path);
    const c2closed = new Promise<void>((resolve) =>
      c2.once('close', () => {
        resolve();
      }),
    );
    c2.on('error', () => undefined);
    await c2closed;
    assert.equal(chardev.refused, 1);
    assert.equal(chardev.isOpen, true);

    c1.destroy();
    await waitFor(() => !chardev.isOpen, 'disconnect');
    // Written while nobody is connected: discarded, not an error.
    assert.equal(chardev.write(Uint8Array.of(1)), true);

    const c3 = await connectClient(path);
    const c3in = collect(c3);
    await waitFor(() => chardev.isOpen, 'reconnect');
    chardev.write(new TextEncoder().encode('again'));
    await waitFor(() => c3in.bytes().toString() === 'again', 'bytes at the new client');
    assert.deepEqual(rec.events, ['open', 'close', 'open']);
    assert.equal(chardev.connections, 2);

    await chardev.close();
    await waitFor(() => c3.destroyed || c3.readableEnded, 'client closed');
    assert.equal(existsSync(path), false, 'socket file removed');
    assert.deepEqual(rec.events, ['open', 'close', 'open', 'close']);
    c3.destroy();
  });

  test('pause holds client bytes until resume', async () => {
    const path = sockPath();
    const chardev = new UnixSocketChardev({ path, mode: 'server' });
    const rec = new Recorder();
    chardev.attach(rec);
    await chardev.start();
    chardev.pause();
    const c = await connectClient(path);
    await waitFor(() => chardev.isOpen, 'client');
    c.write('held');
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(rec.text, '');
    chardev.resume();
    await waitFor(() => rec.text === 'held', 'bytes after resume');
    c.destroy();
    await chardev.close();
  });

  test('write pushes back on a slow client and drains when it reads', async () => {
    const path = sockPath();
    const chardev = new UnixSocketChardev({ path, mode: 'server' });
    const rec = new Recorder();
    chardev.attach(rec);
    await chardev.start();
    const c = await connectClient(path);
    c.pause();
    await waitFor(() => chardev.isOpen, 'client');
    const big = patternBytes(8 << 20);
    assert.equal(chardev.write(big), false);
    const got = collect(c);
    c.resume();
    await waitFor(() => rec.drains > 0, 'drain');
    await waitFor(() => got.bytes().length === big.length, 'all bytes');
    assert.deepEqual(new Uint8Array(got.bytes()), big);
    c.destroy();
    await chardev.close();
  });

  test('refuses a path that is not a socket, naming it', async () => {
    const path = join(dir, 'regular-file');
    writeFileSync(path, 'keep me');
    const chardev = new UnixSocketChardev({ path, mode: 'server' });
    await assert.rejects(chardev.start(), (e: unknown) => {
      assert.ok(e instanceof ChardevError);
      assert.equal(e.code, 'CHARDEV_PATH_NOT_SOCKET');
      assert.ok(e.message.includes(path));
      return true;
    });
    assert.equal(existsSync(path), true);
  });

  test('refuses a socket with a live server; replaces a stale one', async () => {
    const live = sockPath();
    const server = await listenServer(live, (s) => s.destroy());
    await assert.rejects(new UnixSocketChardev({ path: live, mode: 'server' }).start(), (e: unknown) => {
      assert.ok(e instanceof ChardevError);
      assert.equal(e.code, 'CHARDEV_PATH_IN_USE');
      assert.ok(e.message.includes(live));
      return true;
    });
    // A hard link to the socket outlives the server: a stale socket file.
    const stale = sockPath();
    linkSync(live, stale);
    await closeServer(server);
    const chardev = new UnixSocketChardev({ path: stale, mode: 'server' });
    await chardev.start();
    const c = await connectClient(stale);
    await waitFor(() => chardev.isOpen, 'client on the replaced socket');
    c.destroy();
    await chardev.close();
    assert.equal(existsSync(stale), false);
  });
});

describe('UnixSocketChardev, client mode', () => {
  test('connects to a listening server; data both ways; server hang-up → close', async () => {
    const path = sockPath();
    let peer: net.Socket | undefined;
    const server = await listenServer(path, (s) => {
      peer = s;
    });
    const chardev = new UnixSocketChardev({ path, mode: 'client' });
    const rec = new Recorder();
    chardev.attach(rec);
    await chardev.start();
    assert.equal(chardev.isOpen, true);
    await waitFor(() => peer !== undefined, 'accepted');
    const atServer = collect(peer!);
    chardev.write(new TextEncoder().encode('ping'));
    peer!.write('pong');
    await waitFor(() => rec.text === 'pong' && atServer.bytes().toString() === 'ping', 'both ways');
    peer!.destroy();
    await waitFor(() => !chardev.isOpen, 'close');
    assert.deepEqual(rec.events, ['open', 'close']);
    await chardev.close();
    await closeServer(server);
  });

  test('without reconnect, a failed connect rejects start naming the path', async () => {
    const path = sockPath();
    await assert.rejects(new UnixSocketChardev({ path, mode: 'client' }).start(), (e: unknown) => {
      assert.ok(e instanceof ChardevError);
      assert.equal(e.code, 'CHARDEV_CONNECT_FAILED');
      assert.ok(e.message.includes(path));
      return true;
    });
  });

  test('with reconnect: waits for the server, and reconnects after a hang-up', async () => {
    const path = sockPath();
    const chardev = new UnixSocketChardev({ path, mode: 'client', reconnectMs: 10 });
    const rec = new Recorder();
    chardev.attach(rec);
    await chardev.start();
    assert.equal(chardev.isOpen, false);
    const peers: net.Socket[] = [];
    const server = await listenServer(path, (s) => peers.push(s));
    await waitFor(() => chardev.isOpen, 'first connection');
    await waitFor(() => peers.length === 1, 'server side');
    peers[0]!.destroy();
    await waitFor(() => peers.length === 2 && chardev.isOpen, 'reconnected');
    assert.deepEqual(rec.events, ['open', 'close', 'open']);
    const atServer = collect(peers[1]!);
    chardev.write(new TextEncoder().encode('after reconnect'));
    await waitFor(() => atServer.bytes().toString() === 'after reconnect', 'bytes');
    await chardev.close();
    for (const p of peers) p.destroy();
    await closeServer(server);
  });
});

describe('UnixSocketChardev behind a ConsoleDevice', () => {
  test('guest ↔ socket client, 256 KiB each way, byte-exact', async () => {
    const path = sockPath();
    const chardev = new UnixSocketChardev({ path, mode: 'server' });
    await chardev.start();
    const device = new ConsoleDevice({
      ports: [
        { console: true, chardev: new MemoryChardev() },
        { name: 'org.example.sock', chardev },
      ],
    });
    const bus = new VirtioBus();
    const driver = consoleDriver({ rxBuffers: 8, rxBufferSize: 2048 });
    await bus.registerDriver(driver);
    const dev = await bus.addDevice(new LoopbackTransport(device));
    await settle();
    const drv = driver.instances.get(dev)!;
    assert.equal(drv.port(1).name, 'org.example.sock');
    assert.equal(drv.port(1).hostOpen, false);

    const client = await connectClient(path);
    const atClient = collect(client);
    await waitFor(() => drv.port(1).hostOpen, 'PORT_OPEN(1) at the guest');
    drv.openPort(1);
    await settle();

    const up = patternBytes(256 * 1024, 11);
    const down = patternBytes(256 * 1024, 12);
    client.write(down);
    await drv.write(1, up);
    await waitFor(() => atClient.bytes().length === up.length, 'guest bytes at the client');
    await waitFor(() => drv.port(1).receivedBytes === down.length, 'client bytes at the guest');
    assert.deepEqual(new Uint8Array(atClient.bytes()), up);
    assert.deepEqual(drv.receivedOn(1), down);

    client.destroy();
    await waitFor(() => !drv.port(1).hostOpen, 'PORT_OPEN(0) at the guest');
    await bus.removeDevice(dev);
    await chardev.close();
  });
});

const hasSocat = spawnSync('which', ['socat']).status === 0;

describe('UnixSocketChardev with socat', { skip: hasSocat ? false : 'socat is not installed' }, () => {
  test('server mode: socat connects, bytes both ways', async () => {
    const path = sockPath();
    const chardev = new UnixSocketChardev({ path, mode: 'server' });
    const rec = new Recorder();
    chardev.attach(rec);
    await chardev.start();
    const socat = spawn('socat', ['-', `UNIX-CONNECT:${path}`], { stdio: ['pipe', 'pipe', 'inherit'] });
    const out: Buffer[] = [];
    socat.stdout.on('data', (d: Buffer) => out.push(d));
    await waitFor(() => chardev.isOpen, 'socat connected');
    socat.stdin.write('hello from socat\n');
    await waitFor(() => rec.text === 'hello from socat\n', 'socat bytes');
    chardev.write(new TextEncoder().encode('hello to socat\n'));
    await waitFor(() => Buffer.concat(out).toString() === 'hello to socat\n', 'bytes at socat');
    const exited = new Promise<void>((resolve) =>
      socat.once('exit', () => {
        resolve();
      }),
    );
    socat.stdin.end();
    await waitFor(() => !chardev.isOpen, 'socat hung up');
    await exited;
    await chardev.close();
  });

  test('client mode: connects to socat UNIX-LISTEN', async () => {
    const path = sockPath();
    const socat = spawn('socat', [`UNIX-LISTEN:${path}`, '-'], { stdio: ['pipe', 'pipe', 'inherit'] });
    const out: Buffer[] = [];
    socat.stdout.on('data', (d: Buffer) => out.push(d));
    const chardev = new UnixSocketChardev({ path, mode: 'client', reconnectMs: 10 });
    const rec = new Recorder();
    chardev.attach(rec);
    await chardev.start();
    await waitFor(() => chardev.isOpen, 'connected to socat');
    chardev.write(new TextEncoder().encode('to socat'));
    socat.stdin.write('from socat');
    await waitFor(
      () => rec.text === 'from socat' && Buffer.concat(out).toString() === 'to socat',
      'both ways',
    );
    await chardev.close();
    const exited = new Promise<void>((resolve) =>
      socat.once('exit', () => {
        resolve();
      }),
    );
    socat.stdin.end();
    await exited;
  });
});
