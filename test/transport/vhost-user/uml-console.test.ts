/**
 * ringvm's virtio-console (MULTIPORT) over vhost-user against the Linux virtio_console driver in the UML
 * guest: a named port's bytes reach a host unix socket, with the chardev in server mode (a host client connects
 * to it) and in client mode (a host server listens first, as `socat UNIX-LISTEN:… -` would); bytes from the host
 * reach the guest; port 0 is hvc0. The device comes from the same factory `ringvm serve` uses.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { VhostUserExport } from '../../../src/transport/vhost-user/vhost-user-export.js';
import type { ConsoleDeviceArgs } from '../../../src/cli/device-factories.js';
import { run, runUml, script } from '../../guest/guest-harness.js';

const VIRTIO_ID_CONSOLE = 3;
const FACTORIES = new URL('../../../src/cli/device-factories.js', import.meta.url).href;
const PORT = 'org.fedoraproject.port.0';

/** Collects what arrives on a socket. */
function collect(socket: net.Socket): { text(): string } {
  let text = '';
  socket.setEncoding('utf8').on('data', (d: string) => (text += d));
  return { text: () => text };
}

async function until(what: string, check: () => boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe('UML guest on ringvm vhost-user-console', { timeout: 10 * 60_000 }, () => {
  let work = '';
  const logs: string[] = [];

  async function serve(args: ConsoleDeviceArgs): Promise<VhostUserExport> {
    return VhostUserExport.start({
      socketPath: join(work, `con-${Math.random().toString(36).slice(2)}.sock`),
      device: { module: FACTORIES, name: 'createConsoleDevice', args },
      onLog: (line) => logs.push(line),
    });
  }

  function guest(exp: VhostUserExport, command: string) {
    return runUml([
      '--dev',
      `${exp.socketPath}:${VIRTIO_ID_CONSOLE}`,
      '--modules',
      'virtio_console',
      '--',
      command,
    ]);
  }

  before(async () => {
    work = mkdtempSync(join(tmpdir(), 'ringvm-uml-con-'));
    const build = await run(script('build-uml'), [], 20 * 60_000);
    assert.equal(build.code, 0, `build-uml failed:\n${build.stdout}\n${build.stderr}`);
  });

  after(() => {
    if (work) rmSync(work, { recursive: true, force: true });
  });

  it('server mode: guest output on a named port reaches a host client, host bytes reach the guest; hvc0 works', async () => {
    const portSock = join(work, 'port-server.sock');
    const hvcFile = join(work, 'hvc0.log');
    const exp = await serve({
      ports: [
        { chardev: { backend: 'file', path: hvcFile, append: false }, console: true },
        { chardev: { backend: 'socket', path: portSock, server: true }, name: PORT, console: false },
      ],
    });
    const client = net.connect(portSock);
    await new Promise<void>((resolve, reject) => client.once('connect', resolve).once('error', reject));
    const received = collect(client);
    client.write('from-host\n');
    try {
      const r = await guest(
        exp,
        [
          `test -e /dev/virtio-ports/${PORT} || { ls -l /dev/virtio-ports /dev/vport* 2>&1; exit 3; }`,
          `head -n 1 /dev/virtio-ports/${PORT}`,
          `echo foo > /dev/virtio-ports/${PORT}`,
          'echo hello-hvc0 > /dev/hvc0',
        ].join(' && '),
      );
      assert.equal(r.code, 0, `guest failed:\n${r.stdout}\n${r.stderr}\n${logs.join('\n')}`);
      assert.match(r.stdout, /^from-host$/m, 'host bytes arrived in the guest');
      await until('foo on the host socket', () => received.text().includes('foo\n'));
      assert.match(readFileSync(hvcFile, 'utf8'), /hello-hvc0/, 'hvc0 output reached its chardev');
    } finally {
      client.destroy();
      await exp.stop();
    }
  });

  it('client mode: the chardev connects to a host server that listens first', async () => {
    const portSock = join(work, 'port-client.sock');
    let received = { text: () => '' };
    const server = net.createServer((socket) => {
      received = collect(socket);
    });
    await new Promise<void>((resolve) => server.listen(portSock, resolve));
    const exp = await serve({
      ports: [{ chardev: { backend: 'socket', path: portSock, server: false }, name: PORT, console: false }],
    });
    try {
      const r = await guest(exp, `echo foo > /dev/virtio-ports/${PORT}`);
      assert.equal(r.code, 0, `guest failed:\n${r.stdout}\n${r.stderr}\n${logs.join('\n')}`);
      await until('foo on the host server', () => received.text().includes('foo\n'));
    } finally {
      await exp.stop();
      server.close();
    }
  });
});
