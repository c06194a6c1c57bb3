import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { CliUsageError } from '../../src/cli/cli-error.js';
import { checkRunPlan, parseRunArgv, umlCommandLine } from '../../src/cli/run.js';

let dir = '';

before(() => {
  dir = mkdtempSync(join(tmpdir(), 'ringvm-cli-run-'));
});
after(() => {
  rmSync(dir, { recursive: true, force: true });
});

describe('ringvm run: options', () => {
  test('devices get private sockets; the kernel command line follows run-uml', () => {
    const plan = parseRunArgv(
      [
        '--blockdev',
        'driver=memory,node-name=d0,size=16M',
        '--export',
        'type=vhost-user-blk,id=e0,node-name=d0,writable=on',
        '--export',
        'type=vhost-user-rng,id=r0',
        '--mem',
        '512M',
        '--append',
        'ringvm.modules=virtio_blk',
        '--',
        'echo',
        'hi',
      ],
      '/tmp/s',
    );
    assert.notEqual(plan, 'help');
    if (plan === 'help') return;
    assert.equal(plan.guest.command, 'echo hi');
    assert.deepEqual(umlCommandLine(plan, '/root', '/tmp/u'), [
      'mem=512M',
      'root=/dev/root',
      'rootfstype=hostfs',
      'rootflags=/root',
      'ro',
      'init=/init',
      'con=null',
      'con0=fd:0,fd:1',
      'uml_dir=/tmp/u',
      'quiet',
      'virtio_uml.device=/tmp/s/e0.sock:2',
      'virtio_uml.device=/tmp/s/r0.sock:4',
      'ringvm.modules=virtio_blk',
      `ringvm.cmd=${Buffer.from('echo hi').toString('base64')}`,
    ]);
    const interactive = parseRunArgv(['--rw', '--verbose'], '/tmp/s');
    assert.ok(interactive !== 'help');
    assert.equal(interactive.guest.command, undefined);
    assert.deepEqual(umlCommandLine(interactive, '/r', '/u').slice(4), [
      'rw',
      'init=/init',
      'con=null',
      'con0=fd:0,fd:1',
      'uml_dir=/u',
    ]);
  });

  const bad: [string[], RegExp][] = [
    [['--mem', 'lots'], /^--mem 'lots': expected a size/],
    [['--mem', '1M'], /^--mem '1M'/],
    [['--kernel', 'a', '--kernel', 'b'], /^--kernel given twice/],
    [['--append', 'a b'], /^--append 'a b': one kernel parameter/],
    [['--bogus'], /^ringvm run: unknown option '--bogus'/],
    [
      ['--export', 'type=vhost-user-rng,id=r0,addr.path=/tmp/a:b.sock'],
      /^--export id=r0: addr.path: .* cannot be passed to UML/,
    ],
    [
      ['--export', 'type=vhost-user-blk,id=e0,node-name=x'],
      /^--export id=e0: node-name: 'x' is not a --blockdev/,
    ],
  ];
  for (const [argv, message] of bad) {
    test(`refused: ${argv.join(' ')}`, () => {
      assert.throws(
        () => parseRunArgv(argv, '/tmp/s'),
        (e: unknown) => e instanceof CliUsageError && message.test(e.message),
      );
    });
  }

  test('host checks: kernel, root, share', async () => {
    const check = async (argv: string[], message: RegExp): Promise<void> => {
      const plan = parseRunArgv(argv, dir);
      assert.ok(plan !== 'help');
      await assert.rejects(
        checkRunPlan(plan),
        (e: unknown) => e instanceof CliUsageError && message.test(e.message),
      );
    };
    await check(
      ['--kernel', join(dir, 'no-kernel')],
      /^--kernel '.*no-kernel': not an executable file \(does not exist\)/,
    );
    await check(['--root', dir], /^--root '.*': not a directory with an executable \/init/);
    await check(['--share', join(dir, 'nope')], /^--share '.*nope': not a directory/);
  });
});

// Boots the real UML guest (compiled layout: the export workers are compiled modules).
const mainJs = fileURLToPath(new URL('../../src/cli/main.js', import.meta.url));
const compiled = import.meta.url.endsWith('.js') && existsSync(mainJs);

function ringvm(args: string[]): Promise<{ status: number | null; out: string; err: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [mainJs, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.once('close', (status) => {
      resolve({ status, out, err });
    });
  });
}

describe(
  'ringvm run: the UML guest',
  { skip: compiled ? false : 'runs from build/', timeout: 120_000 },
  () => {
    test('a raw image, writable: the guest writes, the host reads it; the status comes back', async () => {
      const img = join(dir, 'disk.img');
      writeFileSync(img, Buffer.alloc(16 << 20));
      const r = await ringvm([
        'run',
        '--blockdev',
        `driver=file,node-name=d0,filename=${img}`,
        '--export',
        'type=vhost-user-blk,id=e0,node-name=d0,writable=on,serial=ringvm-test',
        '--',
        'cat /sys/block/vda/size; printf ringvm-was-here | dd of=/dev/vda bs=512 seek=8 conv=fsync 2>/dev/null; exit 7',
      ]);
      assert.equal(r.status, 7, r.err);
      assert.equal(r.out, `${(16 << 20) / 512}\n`);
      assert.equal(
        readFileSync(img)
          .subarray(4096, 4096 + 15)
          .toString(),
        'ringvm-was-here',
      );
    });

    test('a read-only image (writable off by default): writes fail in the guest, the image is unchanged', async () => {
      const img = join(dir, 'ro.img');
      writeFileSync(img, Buffer.alloc(4 << 20, 0x5a));
      const r = await ringvm([
        'run',
        '--blockdev',
        `driver=file,node-name=d0,filename=${img}`,
        '--export',
        'type=vhost-user-blk,id=e0,node-name=d0',
        '--',
        'cat /sys/block/vda/ro; dd if=/dev/zero of=/dev/vda bs=4096 count=1 conv=fsync 2>/dev/null && echo wrote || echo refused',
      ]);
      assert.equal(r.status, 0, r.err);
      assert.equal(r.out, '1\nrefused\n');
      assert.ok(readFileSync(img).every((b) => b === 0x5a));
    });

    test('a console: hvc0 and a named port write to file chardevs', async () => {
      const hvc = join(dir, 'hvc0.log');
      const port = join(dir, 'port.log');
      const r = await ringvm([
        'run',
        '--chardev',
        `file,id=log,path=${hvc}`,
        '--chardev',
        `file,id=p1,path=${port}`,
        '--export',
        'type=vhost-user-console,id=c0,chardev=log',
        '--device',
        'virtserialport,export=c0,chardev=p1,name=org.example.port',
        '--',
        'echo to-hvc > /dev/hvc0; echo to-port > /dev/virtio-ports/org.example.port',
      ]);
      assert.equal(r.status, 0, r.err);
      assert.equal(readFileSync(hvc, 'utf8'), 'to-hvc\r\n'); // hvc0 is a tty: onlcr
      assert.equal(readFileSync(port, 'utf8'), 'to-port\n');
    });
  },
);
