import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { ChardevError } from '../../../src/backends/chardev/chardev-error.js';
import { FileChardev } from '../../../src/backends/chardev/file-chardev.js';
import { StdioChardev } from '../../../src/backends/chardev/stdio-chardev.js';
import { ConsoleDevice } from '../../../src/devices/console/console-device.js';
import { LoopbackTransport } from '../../../src/transport/loopback/loopback-transport.js';
import { VirtioBus } from '../../../src/virtio/driver/virtio-bus.js';
import { consoleDriver, patternBytes, settle, waitFor } from '../../devices/console/console-driver.js';
import { Recorder } from './recorder.js';

let dir = '';
before(() => {
  dir = mkdtempSync(join(tmpdir(), 'ringvm-filechardev-'));
});
after(() => {
  rmSync(dir, { recursive: true, force: true });
});

const enc = (s: string): Uint8Array => new TextEncoder().encode(s);

describe('FileChardev', () => {
  test('appends guest output to the file; close flushes', async () => {
    const path = join(dir, 'console.log');
    writeFileSync(path, 'previous boot\n');
    const file = new FileChardev({ path });
    const rec = new Recorder();
    file.attach(rec);
    await file.start();
    assert.equal(file.isOpen, true);
    file.write(enc('line 1\n'));
    file.write(enc('line 2\n'));
    await file.close();
    assert.equal(file.isOpen, false);
    assert.equal(readFileSync(path, 'utf8'), 'previous boot\nline 1\nline 2\n');
    assert.deepEqual(rec.events, ['open', 'close']);
    // No input ever; pause/resume are harmless.
    file.pause();
    file.resume();
    assert.equal(rec.chunks.length, 0);
  });

  test('truncate starts an empty file', async () => {
    const path = join(dir, 'truncated.log');
    writeFileSync(path, 'old');
    const file = new FileChardev({ path, truncate: true });
    await file.start();
    file.write(enc('new'));
    await file.close();
    assert.equal(readFileSync(path, 'utf8'), 'new');
  });

  test('a path that cannot be opened: a clear error naming it', async () => {
    const path = join(dir, 'no-such-dir', 'x.log');
    await assert.rejects(new FileChardev({ path }).start(), (e: unknown) => {
      assert.ok(e instanceof ChardevError);
      assert.equal(e.code, 'CHARDEV_OPEN_FAILED');
      assert.ok(e.message.includes(path));
      return true;
    });
  });

  test('as a console log behind a ConsoleDevice: 1 MiB of guest output, byte-exact', async () => {
    const path = join(dir, 'guest.log');
    const file = new FileChardev({ path, truncate: true });
    await file.start();
    const device = new ConsoleDevice({ ports: [{ console: true, chardev: file }] });
    const bus = new VirtioBus();
    const driver = consoleDriver();
    await bus.registerDriver(driver);
    const dev = await bus.addDevice(new LoopbackTransport(device));
    await settle();
    const data = patternBytes(1 << 20, 5);
    await driver.instances.get(dev)!.write(0, data);
    await file.close();
    assert.deepEqual(new Uint8Array(readFileSync(path)), data);
    assert.equal(device.portInfo(0)?.stats.txDiscarded, 0);
  });
});

describe('StdioChardev', () => {
  test('input → onData, write → output, pause/resume, close', async () => {
    const input = new PassThrough();
    const output = new PassThrough();
    const out: Buffer[] = [];
    output.on('data', (d: Buffer) => out.push(d));
    const stdio = new StdioChardev({ input, output });
    const rec = new Recorder();
    stdio.attach(rec);
    stdio.start();
    assert.equal(stdio.isOpen, true);
    assert.deepEqual(rec.events, ['open']);
    input.write('typed');
    await waitFor(() => rec.text === 'typed', 'input');
    stdio.pause();
    input.write(' later');
    await new Promise((r) => setTimeout(r, 20));
    assert.equal(rec.text, 'typed');
    stdio.resume();
    await waitFor(() => rec.text === 'typed later', 'input after resume');
    stdio.write(enc('printed'));
    await waitFor(() => Buffer.concat(out).toString() === 'printed', 'output');
    await stdio.close();
    assert.equal(stdio.isOpen, false);
    input.write('ignored');
    await settle();
    assert.equal(rec.text, 'typed later');
  });
});
