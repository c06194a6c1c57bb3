import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync, mkdirSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CliUsageError } from '../../src/cli/cli-error.js';
import { exportFactoryRef } from '../../src/cli/export-runner.js';
import { devicePlan } from './device-plan.js';
import { checkHostResources, type DevicePlan } from '../../src/cli/serve-options.js';

let dir = '';
let img = '';

const plan = devicePlan;

async function planAndCheck(argv: string[]): Promise<DevicePlan> {
  const p = plan(argv);
  await checkHostResources(p);
  return p;
}

const blockdev = (extra = ''): string[] => ['--blockdev', `driver=file,node-name=d0,filename=${img}${extra}`];
const blkExport = (extra = ''): string[] => [
  '--export',
  `type=vhost-user-blk,id=e0,node-name=d0,addr.type=unix,addr.path=${dir}/e0.sock${extra}`,
];

before(() => {
  dir = mkdtempSync(join(tmpdir(), 'ringvm-cli-opts-'));
  img = join(dir, 'disk.img');
  writeFileSync(img, Buffer.alloc(1 << 20));
  mkdirSync(join(dir, 'adir'));
  writeFileSync(join(dir, 'plain'), 'not a socket');
  writeFileSync(
    join(dir, 'q.qcow2'),
    Buffer.concat([Buffer.from([0x51, 0x46, 0x49, 0xfb]), Buffer.alloc(508)]),
  );
});
after(() => {
  rmSync(dir, { recursive: true, force: true });
});

describe('serve options: the plan', () => {
  test('a raw image exported read-only by default (qemu-storage-daemon: writable=off)', () => {
    const p = plan([...blockdev(), ...blkExport()]);
    assert.deepEqual(p.blockdevs, [
      { driver: 'file', nodeName: 'd0', filename: img, readOnly: false, label: '--blockdev node-name=d0' },
    ]);
    assert.equal(p.exports.length, 1);
    const e = p.exports[0]!;
    assert.equal(e.socketPath, `${dir}/e0.sock`);
    assert.ok(e.type === 'vhost-user-blk');
    assert.equal(e.writable, false);
    assert.deepEqual(exportFactoryRef(p, e).args, {
      backend: { driver: 'file', filename: img, format: 'raw' },
      readOnly: true,
    });
    assert.equal(exportFactoryRef(p, e).name, 'createBlkDevice');
  });

  test('writable, queues, serial; a memory blockdev', () => {
    const p = plan([
      '--blockdev=driver=memory,node-name=m0,size=64M',
      '--export',
      `type=vhost-user-blk,id=e1,node-name=m0,addr.path=${dir}/m.sock,writable=on,num-queues=4,serial=disk-1`,
    ]);
    const e = p.exports[0]!;
    assert.deepEqual(exportFactoryRef(p, e).args, {
      backend: { driver: 'memory', size: 64 << 20 },
      readOnly: false,
      numQueues: 4,
      serial: 'disk-1',
    });
  });

  test('poll-max-ns on any export (QEMU iothread syntax); absent: undefined, the export does not poll', () => {
    const p = plan([
      ...blockdev(),
      ...blkExport(',poll-max-ns=32768'),
      '--export',
      `type=vhost-user-rng,id=r0,addr.path=${dir}/r.sock,poll-max-ns=0`,
      '--export',
      `type=vhost-user-rng,id=r1,addr.path=${dir}/r1.sock`,
    ]);
    assert.deepEqual(
      p.exports.map((e) => e.pollMaxNs),
      [32768, 0, undefined],
    );
  });

  test('a console with port 0 and named ports; chardev kinds', () => {
    const p = plan([
      '--chardev',
      'stdio,id=con',
      '--chardev',
      `socket,id=agent,path=${dir}/agent.sock,server=on,wait=off`,
      '--chardev',
      `socket,id=cl,path=${dir}/peer.sock,reconnect=2`,
      '--chardev',
      `file,id=log,path=${dir}/log.txt,append=on`,
      '--export',
      `type=vhost-user-console,id=c0,addr.path=${dir}/con.sock,chardev=con`,
      '--device',
      'virtserialport,export=c0,chardev=agent,name=org.qemu.guest_agent.0',
      '--device',
      'virtserialport,id=p2,export=c0,chardev=cl,name=org.example.client',
      '--device',
      'virtconsole,export=c0,chardev=log',
    ]);
    const e = p.exports[0]!;
    assert.equal(exportFactoryRef(p, e).name, 'createConsoleDevice');
    assert.deepEqual(exportFactoryRef(p, e).args, {
      ports: [
        { chardev: { backend: 'stdio' }, console: true },
        {
          chardev: { backend: 'socket', path: `${dir}/agent.sock`, server: true },
          console: false,
          name: 'org.qemu.guest_agent.0',
        },
        {
          chardev: { backend: 'socket', path: `${dir}/peer.sock`, server: false, reconnectMs: 2000 },
          console: false,
          name: 'org.example.client',
        },
        { chardev: { backend: 'file', path: `${dir}/log.txt`, append: true }, console: true },
      ],
    });
  });

  test('rng; relative paths are made absolute; a default socket directory (ringvm run)', () => {
    const p = plan(['--export', 'type=vhost-user-rng,id=r0,addr.path=rng.sock']);
    assert.equal(p.exports[0]!.socketPath, join(process.cwd(), 'rng.sock'));
    assert.equal(exportFactoryRef(p, p.exports[0]!).name, 'createRngDevice');
    const q = plan(['--export', 'type=vhost-user-rng,id=r0'], '/run/x');
    assert.equal(q.exports[0]!.socketPath, '/run/x/r0.sock');
  });

  test('qcow2 over a file node (qemu-storage-daemon syntax), and the file.filename shorthand', () => {
    const q = join(dir, 'x.qcow2');
    const long = plan([
      '--blockdev',
      `driver=file,node-name=f0,filename=${q}`,
      '--blockdev',
      'driver=qcow2,node-name=d0,file=f0',
      ...blkExport(',writable=on'),
    ]);
    assert.deepEqual(long.blockdevs[1], {
      driver: 'qcow2',
      nodeName: 'd0',
      file: { node: 'f0' },
      filename: q,
      readOnly: false,
      label: '--blockdev node-name=d0',
    });
    assert.deepEqual(exportFactoryRef(long, long.exports[0]!).args, {
      backend: { driver: 'file', filename: q, format: 'qcow2' },
      readOnly: false,
    });
    const short = plan(['--blockdev', `driver=qcow2,node-name=d0,file.filename=${q}`, ...blkExport()]);
    assert.deepEqual(exportFactoryRef(short, short.exports[0]!).args, {
      backend: { driver: 'file', filename: q, format: 'qcow2' },
      readOnly: true,
    });
    const raw = plan([
      '--blockdev',
      `driver=raw,node-name=d0,file.driver=file,file.filename=${q}`,
      ...blkExport(),
    ]);
    assert.deepEqual(exportFactoryRef(raw, raw.exports[0]!).args, {
      backend: { driver: 'file', filename: q, format: 'raw' },
      readOnly: true,
    });
  });

  test('read-only=on on the file node makes the qcow2 node read-only: writable=on is refused', () => {
    assert.throws(
      () =>
        plan([
          '--blockdev',
          `driver=file,node-name=f0,filename=${img},read-only=on`,
          '--blockdev',
          'driver=qcow2,node-name=d0,file=f0',
          ...blkExport(',writable=on'),
        ]),
      /^CliUsageError: --export id=e0: writable: writable=on, but --blockdev node-name=d0 is read-only=on/,
    );
  });

  // Every mistake the options themselves can hold: [argv, message]. Each message starts with the option.
  const cases: [string, () => string[], RegExp][] = [
    [
      'qcow2 without a file',
      () => ['--blockdev', 'driver=qcow2,node-name=d0'],
      /^--blockdev node-name=d0: file: missing \(required: file=NODE/,
    ],
    [
      'qcow2 file names no node',
      () => ['--blockdev', 'driver=qcow2,node-name=d0,file=f9'],
      /^--blockdev node-name=d0: file: 'f9' is not a --blockdev/,
    ],
    [
      'qcow2 over a memory node',
      () => [
        '--blockdev',
        'driver=memory,node-name=m0,size=1M',
        '--blockdev',
        'driver=qcow2,node-name=d0,file=m0',
      ],
      /^--blockdev node-name=d0: file: --blockdev 'm0' is driver=memory; a qcow2 node's file must be driver=file/,
    ],
    [
      'one file under two format nodes',
      () => [
        '--blockdev',
        `driver=file,node-name=f0,filename=${img}`,
        '--blockdev',
        'driver=qcow2,node-name=d0,file=f0',
        '--blockdev',
        'driver=raw,node-name=d1,file=f0',
      ],
      /^--blockdev node-name=d1: file: --blockdev 'f0' is already the file of --blockdev node-name=d0/,
    ],
    [
      'exporting the file node under a qcow2 node',
      () => [
        '--blockdev',
        `driver=file,node-name=d0,filename=${img}`,
        '--blockdev',
        'driver=qcow2,node-name=q0,file=d0',
        ...blkExport(),
      ],
      /^--export id=e0: node-name: --blockdev 'd0' is the file of --blockdev node-name=q0 \(driver=qcow2\): export 'q0'/,
    ],
    [
      'file and file.filename both',
      () => ['--blockdev', `driver=qcow2,node-name=d0,file=f0,file.filename=${img}`],
      /^--blockdev node-name=d0: file: give file=NODE or file.filename=PATH, not both/,
    ],
    [
      'file.driver other than file',
      () => ['--blockdev', `driver=qcow2,node-name=d0,file.driver=nbd,file.filename=${img}`],
      /^--blockdev node-name=d0: file.driver: 'nbd' is not one of file/,
    ],
    ['unknown blockdev key', () => blockdev(',cache=none'), /^--blockdev node-name=d0: unknown key 'cache'/],
    [
      'unknown blockdev driver',
      () => ['--blockdev', 'driver=vmdk,node-name=d0,filename=x'],
      /^--blockdev node-name=d0: driver: 'vmdk' is not one of file, memory, qcow2, raw/,
    ],
    [
      'blockdev without filename',
      () => ['--blockdev', 'driver=file,node-name=d0'],
      /^--blockdev node-name=d0: filename: missing/,
    ],
    [
      'blockdev bad node-name',
      () => ['--blockdev', 'driver=file,node-name=0d,filename=x'],
      /node-name: '0d' is not a valid identifier/,
    ],
    [
      'memory without size',
      () => ['--blockdev', 'driver=memory,node-name=m'],
      /^--blockdev node-name=m: size: missing/,
    ],
    [
      'memory odd size',
      () => ['--blockdev', 'driver=memory,node-name=m,size=1000'],
      /size: 1000 is not a positive multiple of 512/,
    ],
    [
      'duplicate node-name',
      () => [...blockdev(), ...blockdev()],
      /^--blockdev node-name=d0: node-name 'd0' is already used/,
    ],
    [
      'unknown export type',
      () => ['--export', 'type=nbd,id=e0'],
      /^--export id=e0: type: 'nbd' is not one of vhost-user-blk, vhost-user-console, vhost-user-rng/,
    ],
    [
      'export without id',
      () => ['--export', `type=vhost-user-rng,addr.path=${dir}/r.sock`],
      /^--export type=vhost-user-rng,addr.path=.*: id: missing/,
    ],
    [
      'export without addr.path',
      () => ['--export', 'type=vhost-user-rng,id=r0'],
      /^--export id=r0: addr.path: missing/,
    ],
    [
      'addr.type not unix',
      () => ['--export', 'type=vhost-user-rng,id=r0,addr.type=inet,addr.path=x'],
      /^--export id=r0: addr.type: 'inet' is not one of unix/,
    ],
    [
      'poll-max-ns out of range',
      () => [...blockdev(), ...blkExport(',poll-max-ns=10000001')],
      /^--export id=e0: poll-max-ns: /,
    ],
    [
      'poll-max-ns not a number',
      () => [...blockdev(), ...blkExport(',poll-max-ns=fast')],
      /^--export id=e0: poll-max-ns: /,
    ],
    [
      'unknown export key',
      () => [...blockdev(), ...blkExport(',iothread=io0')],
      /^--export id=e0: unknown key 'iothread'/,
    ],
    [
      'dangling node-name',
      () => [...blockdev(), '--export', `type=vhost-user-blk,id=e0,node-name=d1,addr.path=${dir}/x.sock`],
      /^--export id=e0: node-name: 'd1' is not a --blockdev$/,
    ],
    [
      'read-only blockdev exported writable',
      () => [...blockdev(',read-only=on'), ...blkExport(',writable=on')],
      /^--export id=e0: writable: writable=on, but --blockdev node-name=d0 is read-only=on$/,
    ],
    [
      'bad writable',
      () => [...blockdev(), ...blkExport(',writable=maybe')],
      /^--export id=e0: writable: expected on or off, got 'maybe'/,
    ],
    [
      'bad num-queues',
      () => [...blockdev(), ...blkExport(',num-queues=0')],
      /^--export id=e0: num-queues: expected an integer from 1 to 65535/,
    ],
    [
      'serial too long',
      () => [...blockdev(), ...blkExport(',serial=123456789012345678901')],
      /^--export id=e0: serial: .* longer than 20 bytes/,
    ],
    [
      'duplicate export id',
      () => [
        '--export',
        `type=vhost-user-rng,id=r0,addr.path=${dir}/a.sock`,
        '--export',
        `type=vhost-user-rng,id=r0,addr.path=${dir}/b.sock`,
      ],
      /^--export id=r0: id: 'r0' is already used by another --export/,
    ],
    [
      'blockdev exported twice',
      () => [
        ...blockdev(),
        ...blkExport(),
        '--export',
        `type=vhost-user-blk,id=e1,node-name=d0,addr.path=${dir}/e1.sock`,
      ],
      /^--export id=e1: node-name: --blockdev 'd0' is already exported by --export id=e0/,
    ],
    [
      'same socket twice',
      () => [
        '--export',
        `type=vhost-user-rng,id=r0,addr.path=${dir}/a.sock`,
        '--export',
        `type=vhost-user-rng,id=r1,addr.path=${dir}/./a.sock`,
      ],
      /^--export id=r1: addr.path: '.*\/a.sock' is also used by --export id=r0/,
    ],
    [
      'socket path is a chardev path',
      () => [
        '--chardev',
        `socket,id=c,path=${dir}/a.sock,server=on`,
        '--export',
        `type=vhost-user-console,id=r0,addr.path=${dir}/a.sock,chardev=c`,
      ],
      /^--chardev id=c: path: '.*\/a.sock' is also used by --export id=r0/,
    ],
    [
      'unknown chardev backend',
      () => ['--chardev', 'pty,id=c0'],
      /^--chardev id=c0: backend: 'pty' is not one of socket, stdio, file/,
    ],
    ['chardev without id', () => ['--chardev', 'stdio'], /^--chardev stdio: id: missing/],
    [
      'chardev wait=on',
      () => ['--chardev', `socket,id=c0,path=${dir}/c.sock,server=on,wait=on`],
      /^--chardev id=c0: wait: wait=on is not supported/,
    ],
    [
      'server with reconnect',
      () => ['--chardev', `socket,id=c0,path=${dir}/c.sock,server=on,reconnect=1`],
      /^--chardev id=c0: reconnect: only for server=off/,
    ],
    [
      'unknown chardev key',
      () => ['--chardev', 'stdio,id=c0,signal=off'],
      /^--chardev id=c0: unknown key 'signal'/,
    ],
    [
      'duplicate chardev id',
      () => ['--chardev', 'stdio,id=c0', '--chardev', `file,id=c0,path=${dir}/f`],
      /^--chardev id=c0: id 'c0' is already used by another --chardev/,
    ],
    [
      'two stdio chardevs',
      () => ['--chardev', 'stdio,id=c0', '--chardev', 'stdio,id=c1'],
      /only one stdio chardev/,
    ],
    [
      'dangling chardev',
      () => ['--export', `type=vhost-user-console,id=k0,addr.path=${dir}/k.sock,chardev=nope`],
      /^--export id=k0: chardev: 'nope' is not a --chardev$/,
    ],
    [
      'chardev used twice',
      () => [
        '--chardev',
        'stdio,id=c0',
        '--export',
        `type=vhost-user-console,id=k0,addr.path=${dir}/k.sock,chardev=c0`,
        '--device',
        'virtserialport,export=k0,chardev=c0,name=x',
      ],
      /^--device virtserialport,export=k0,chardev=c0,name=x: chardev: --chardev 'c0' is already the host side of --export id=k0/,
    ],
    ['unused chardev', () => ['--chardev', 'stdio,id=c0'], /^--chardev id=c0: not used by any port/],
    [
      'device for a missing export',
      () => ['--chardev', 'stdio,id=c0', '--device', 'virtserialport,export=k9,chardev=c0,name=x'],
      /^--device .*: export: 'k9' is not an --export$/,
    ],
    [
      'device for a blk export',
      () => [
        ...blockdev(),
        ...blkExport(),
        '--chardev',
        'stdio,id=c0',
        '--device',
        'virtserialport,export=e0,chardev=c0,name=x',
      ],
      /export: --export 'e0' is a vhost-user-blk, not a vhost-user-console/,
    ],
    [
      'virtserialport without name',
      () =>
        ['--chardev', 'stdio,id=c0', '--chardev', 'stdio,id=c1']
          .slice(0, 2)
          .concat([
            '--chardev',
            `file,id=c1,path=${dir}/f`,
            '--export',
            `type=vhost-user-console,id=k0,addr.path=${dir}/k.sock,chardev=c0`,
            '--device',
            'virtserialport,export=k0,chardev=c1',
          ]),
      /^--device .*: name: missing \(a virtserialport needs a name/,
    ],
    [
      'duplicate port name',
      () => [
        '--chardev',
        'stdio,id=c0',
        '--chardev',
        `file,id=c1,path=${dir}/f`,
        '--export',
        `type=vhost-user-console,id=k0,addr.path=${dir}/k.sock,chardev=c0,name=n`,
        '--device',
        'virtserialport,export=k0,chardev=c1,name=n',
      ],
      /name: port name 'n' is already used on --export id=k0/,
    ],
    [
      'unknown device driver',
      () => ['--device', 'virtio-blk-pci,id=x'],
      /^--device id=x: driver: 'virtio-blk-pci' is not one of virtserialport, virtconsole/,
    ],
  ];
  for (const [name, argv, message] of cases) {
    test(`refused: ${name}`, () => {
      assert.throws(
        () => plan(argv()),
        (e: unknown) => {
          assert.ok(e instanceof CliUsageError, String(e));
          assert.match(e.message, message);
          assert.ok(e.option?.startsWith('--'), `option named: ${e.option}`);
          return true;
        },
      );
    });
  }
});

describe('serve options: host checks before anything listens', () => {
  const hostCases: [string, () => string[], RegExp][] = [
    [
      'a qcow2 image exported as driver=file is refused, not probed',
      () => ['--blockdev', `driver=file,node-name=d0,filename=${dir}/q.qcow2`, ...blkExport()],
      /^--blockdev node-name=d0: filename: '.*\/q.qcow2' is a qcow2 image: serve it with --blockdev driver=qcow2,node-name=NAME,file=d0 \(or driver=raw,file=d0/,
    ],
    [
      'qcow2 shorthand: missing file',
      () => ['--blockdev', `driver=qcow2,node-name=d0,file.filename=${dir}/nope.qcow2`, ...blkExport()],
      /^--blockdev node-name=d0: file.filename: '.*\/nope.qcow2' does not exist$/,
    ],
    [
      'missing image',
      () => ['--blockdev', `driver=file,node-name=d0,filename=${dir}/nope.img`, ...blkExport()],
      /^--blockdev node-name=d0: filename: '.*\/nope.img' does not exist$/,
    ],
    [
      'image under a missing directory',
      () => ['--blockdev', `driver=file,node-name=d0,filename=${dir}/no/such/x.img`, ...blkExport()],
      /^--blockdev node-name=d0: filename: .* does not exist/,
    ],
    [
      'image is a directory',
      () => ['--blockdev', `driver=file,node-name=d0,filename=${dir}/adir`, ...blkExport()],
      /^--blockdev node-name=d0: filename: '.*\/adir' is a directory, not an image file$/,
    ],
    [
      'image is a character device',
      () => ['--blockdev', 'driver=file,node-name=d0,filename=/dev/null', ...blkExport()],
      /is a character device, not an image file/,
    ],
    [
      'socket directory missing',
      () => [
        ...blockdev(),
        '--export',
        `type=vhost-user-blk,id=e0,node-name=d0,addr.path=${dir}/nodir/e0.sock`,
      ],
      /^--export id=e0: addr.path: directory '.*\/nodir' does not exist$/,
    ],
    [
      'socket path is a regular file',
      () => ['--export', `type=vhost-user-rng,id=r0,addr.path=${dir}/plain`],
      /^--export id=r0: addr.path: '.*\/plain' exists and is a regular file; refusing to replace it$/,
    ],
    [
      'socket path too long',
      () => ['--export', `type=vhost-user-rng,id=r0,addr.path=${dir}/${'x'.repeat(120)}.sock`],
      /^--export id=r0: addr.path: .* longer than the 107 bytes/,
    ],
    [
      'client chardev with nobody listening',
      () => [
        '--chardev',
        `socket,id=c0,path=${dir}/none.sock`,
        '--export',
        `type=vhost-user-console,id=k0,addr.path=${dir}/k.sock,chardev=c0`,
      ],
      /^--chardev id=c0: path: '.*\/none.sock' does not exist \(server=off connects/,
    ],
    [
      'file chardev is a directory',
      () => [
        '--chardev',
        `file,id=c0,path=${dir}/adir`,
        '--export',
        `type=vhost-user-console,id=k0,addr.path=${dir}/k.sock,chardev=c0`,
      ],
      /^--chardev id=c0: path: '.*\/adir' is a directory/,
    ],
  ];
  for (const [name, argv, message] of hostCases) {
    test(`refused: ${name}`, async () => {
      await assert.rejects(planAndCheck(argv()), (e: unknown) => {
        assert.ok(e instanceof CliUsageError, String(e));
        assert.match(e.message, message);
        return true;
      });
    });
  }

  test('a live server on the socket path is refused', async () => {
    const path = join(dir, 'live.sock');
    const server = net.createServer();
    await new Promise<void>((resolve) => server.listen(path, resolve));
    try {
      await assert.rejects(
        planAndCheck(['--export', `type=vhost-user-rng,id=r0,addr.path=${path}`]),
        /^CliUsageError: --export id=r0: addr.path: another server is listening on/,
      );
    } finally {
      await new Promise<void>((resolve) =>
        server.close(() => {
          resolve();
        }),
      );
    }
  });

  test('a good plan passes, and the image opens read-write when writable=on', async () => {
    await planAndCheck([...blockdev(), ...blkExport(',writable=on')]);
    await planAndCheck([
      '--chardev',
      `file,id=c0,path=${dir}/new-log.txt`,
      '--export',
      `type=vhost-user-console,id=k0,addr.path=${dir}/k.sock,chardev=c0`,
    ]);
  });
});

describe('serve options: format nodes pass the host checks', () => {
  test('driver=raw over a qcow2 file serves its bytes: named explicitly, so not refused', async () => {
    const q = join(dir, 'q.qcow2');
    await planAndCheck([
      '--blockdev',
      `driver=file,node-name=f0,filename=${q}`,
      '--blockdev',
      'driver=raw,node-name=d0,file=f0',
      ...blkExport(),
    ]);
  });
});
