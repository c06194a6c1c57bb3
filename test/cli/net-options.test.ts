import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { exportFactoryRef } from '../../src/cli/export-runner.js';
import { devicePlan } from './device-plan.js';
import {
  checkHostResources,
  VIRTIO_DEVICE_ID,
  type DevicePlan,
  type ExportPlan,
} from '../../src/cli/serve-options.js';
import { qemuCommandLine, umlCommandLine, parseRunArgv } from '../../src/cli/run.js';
import { isUsageError, throwsUsageError } from './usage-error.js';

let dir = '';
before(() => {
  dir = mkdtempSync(join(tmpdir(), 'ringvm-net-options-'));
});
after(() => {
  rmSync(dir, { recursive: true, force: true });
});

const plan = (argv: string[]): DevicePlan => devicePlan(argv);

const netExport = (extra = '', id = 'e0', netdev = 'n0'): string[] => [
  '--export',
  `type=vhost-user-net,id=${id},netdev=${netdev},addr.path=${dir}/${id}.sock${extra}`,
];

function usageError(argv: string[], pattern: RegExp, option: string, key?: string): void {
  throwsUsageError(() => plan(argv), pattern, { option, key });
}

describe('--netdev and --export type=vhost-user-net', () => {
  test('a tap netdev and its export: defaults, and the worker factory arguments', () => {
    const p = plan(['--netdev', 'tap,id=n0,ifname=tap7', ...netExport()]);
    assert.deepEqual(p.netdevs, [
      { kind: 'tap', id: 'n0', ifname: 'tap7', queues: 1, vnetHdr: true, label: '--netdev id=n0' },
    ]);
    const e = p.exports[0];
    assert.equal(e?.type, 'vhost-user-net');
    assert.deepEqual(exportFactoryRef(p, e).args, {
      backend: { kind: 'tap', ifname: 'tap7', queues: 1, vnetHdr: true },
      queuePairs: 1,
      mac: '52:54:00:12:34:56',
      offloads: true,
    });
    assert.equal(exportFactoryRef(p, e).name, 'createNetDevice');
    assert.equal(VIRTIO_DEVICE_ID['vhost-user-net'], 1);
  });

  test('queues, mac, mtu, offloads off, vnet_hdr off; default MACs count up per export', () => {
    const p = plan([
      '--netdev',
      'tap,id=n0,queues=4',
      '--netdev',
      'tap,id=n1,vnet_hdr=off',
      ...netExport(',mac=02:AA:00:00:00:01,mtu=9000,offloads=off'),
      ...netExport('', 'e1', 'n1'),
    ]);
    assert.deepEqual(exportFactoryRef(p, p.exports[0] as ExportPlan).args, {
      backend: { kind: 'tap', queues: 4, vnetHdr: true },
      queuePairs: 4,
      mac: '02:aa:00:00:00:01',
      mtu: 9000,
      offloads: false,
    });
    assert.deepEqual(exportFactoryRef(p, p.exports[1] as ExportPlan).args, {
      backend: { kind: 'tap', queues: 1, vnetHdr: false },
      queuePairs: 1,
      mac: '52:54:00:12:34:57',
      offloads: false,
    });
  });

  test('mistakes name the option and the key', () => {
    usageError(
      ['--netdev', 'bridge,id=n0', ...netExport()],
      /'bridge' is not one of tap/,
      '--netdev',
      'type',
    );
    usageError(
      ['--netdev', 'tap,id=n0,ifname=a/b', ...netExport()],
      /not an interface name/,
      '--netdev',
      'ifname',
    );
    usageError(
      ['--netdev', 'tap,id=n0,ifname=abcdefghijklmnop', ...netExport()],
      /not an interface name/,
      '--netdev',
      'ifname',
    );
    usageError(
      ['--netdev', 'tap,id=n0,queues=0', ...netExport()],
      /queues: expected an integer from 1 to 256/,
      '--netdev',
      'queues',
    );
    usageError(
      ['--netdev', 'tap,id=n0,colour=red', ...netExport()],
      /unknown key 'colour'/,
      '--netdev',
      'colour',
    );
    usageError(
      ['--netdev', 'tap,id=n0', '--netdev', 'tap,id=n0', ...netExport()],
      /already used/,
      '--netdev',
      'id',
    );
    usageError(['--netdev', 'tap,id=n0'], /not used by any --export/, '--netdev');
    usageError(
      ['--netdev', 'tap,id=n0', ...netExport('', 'e0', 'n9')],
      /'n9' is not a --netdev/,
      '--export',
      'netdev',
    );
    usageError(
      ['--netdev', 'tap,id=n0', ...netExport(), ...netExport('', 'e1')],
      /already the host side of --export id=e0/,
      '--export',
      'netdev',
    );
    usageError(
      ['--netdev', 'tap,id=n0', ...netExport(',mac=01:00:5e:00:00:01')],
      /multicast/,
      '--export',
      'mac',
    );
    usageError(['--netdev', 'tap,id=n0', ...netExport(',mac=zz')], /not a MAC address/, '--export', 'mac');
    usageError(
      ['--netdev', 'tap,id=n0', ...netExport(',mtu=20')],
      /mtu: expected an integer from 68/,
      '--export',
      'mtu',
    );
    usageError(
      ['--netdev', 'tap,id=n0,queues=2', ...netExport(',queues=3')],
      /queues=2/,
      '--export',
      'queues',
    );
    usageError(
      ['--netdev', 'tap,id=n0,vnet_hdr=off', ...netExport(',offloads=on')],
      /vnet_hdr=off/,
      '--export',
      'offloads',
    );
  });

  test('stream netdevs: unix server, unix client with reconnect, inet; plain frames, offloads off', () => {
    const p = plan([
      '--netdev',
      `stream,id=n0,server=on,addr.type=unix,addr.path=${dir}/s.sock`,
      '--netdev',
      `stream,id=n1,addr.type=unix,addr.path=${dir}/c.sock,reconnect=2`,
      '--netdev',
      'stream,id=n2,server=off,addr.type=inet,addr.host=127.0.0.1,addr.port=5555',
      ...netExport('', 'e0', 'n0'),
      ...netExport('', 'e1', 'n1'),
      ...netExport(',queues=2', 'e2', 'n2'),
    ]);
    assert.deepEqual(p.netdevs[0], {
      kind: 'stream',
      id: 'n0',
      server: true,
      address: { type: 'unix', path: `${dir}/s.sock` },
      reconnectMs: undefined,
      queues: 1,
      vnetHdr: false,
      label: '--netdev id=n0',
    });
    const args = p.exports.map((e) => exportFactoryRef(p, e).args);
    assert.deepEqual(args[0], {
      backend: { kind: 'stream', mode: 'server', address: { type: 'unix', path: `${dir}/s.sock` } },
      queuePairs: 1,
      mac: '52:54:00:12:34:56',
      offloads: false,
    });
    assert.deepEqual((args[1] as { backend: unknown }).backend, {
      kind: 'stream',
      mode: 'client',
      address: { type: 'unix', path: `${dir}/c.sock` },
      reconnectMs: 2000,
    });
    // One stream carries every pair of a multiqueue export.
    assert.deepEqual(args[2], {
      backend: { kind: 'stream', mode: 'client', address: { type: 'inet', host: '127.0.0.1', port: 5555 } },
      queuePairs: 2,
      mac: '52:54:00:12:34:58',
      offloads: false,
    });
  });

  test('passt netdevs: started with options, or a running one by socket', () => {
    const p = plan([
      '--netdev',
      'passt,id=n0,address=10.0.2.15,gateway=10.0.2.2,ipv6=off,tcp-ports=2222:22,netns=ns-1,path=/usr/bin/passt',
      '--netdev',
      `passt,id=n1,socket=${dir}/passt.sock`,
      ...netExport('', 'e0', 'n0'),
      ...netExport('', 'e1', 'n1'),
    ]);
    assert.deepEqual(exportFactoryRef(p, p.exports[0] as ExportPlan).args, {
      backend: {
        kind: 'passt',
        args: ['--address', '10.0.2.15', '--gateway', '10.0.2.2', '--ipv4-only', '--tcp-ports', '2222:22'],
        command: '/usr/bin/passt',
        netns: 'ns-1',
      },
      queuePairs: 1,
      mac: '52:54:00:12:34:56',
      offloads: false,
    });
    assert.deepEqual((exportFactoryRef(p, p.exports[1] as ExportPlan).args as { backend: unknown }).backend, {
      kind: 'passt',
      args: [],
      socketPath: `${dir}/passt.sock`,
    });
  });

  test('stream and passt mistakes name the option and the key', () => {
    const stream = (keys: string) => [
      '--netdev',
      `stream,id=n0${keys === '' ? '' : `,${keys}`}`,
      ...netExport(),
    ];
    usageError(stream(''), /addr\.type: missing \(required; one of unix, inet\)/, '--netdev', 'addr.type');
    usageError(stream('addr.type=vsock'), /'vsock' is not one of unix, inet/, '--netdev', 'addr.type');
    usageError(stream('addr.type=unix'), /addr\.path: missing/, '--netdev', 'addr.path');
    usageError(
      stream(`addr.type=unix,addr.path=${dir}/x,addr.port=1`),
      /addr\.port: only for addr\.type=inet/,
      '--netdev',
      'addr.port',
    );
    usageError(
      stream('addr.type=inet,addr.host=::1,addr.path=/x'),
      /addr\.path: only for addr\.type=unix/,
      '--netdev',
      'addr.path',
    );
    usageError(stream('addr.type=inet,addr.host=h'), /addr\.port: missing/, '--netdev', 'addr.port');
    usageError(
      stream('addr.type=inet,addr.host=h,addr.port=0'),
      /addr\.port: expected an integer from 1 to 65535/,
      '--netdev',
      'addr.port',
    );
    usageError(
      stream('addr.type=inet,addr.host=h,addr.port=70000,server=on'),
      /expected an integer from 0 to 65535/,
      '--netdev',
      'addr.port',
    );
    usageError(
      stream(`addr.type=unix,addr.path=${dir}/x,server=maybe`),
      /server: expected on or off, got 'maybe'/,
      '--netdev',
      'server',
    );
    usageError(
      stream(`addr.type=unix,addr.path=${dir}/x,server=on,reconnect=1`),
      /reconnect: only for server=off/,
      '--netdev',
      'reconnect',
    );
    usageError(
      [...stream(`server=on,addr.type=unix,addr.path=${dir}/e0.sock`)],
      /'.*e0\.sock' is also used by --export id=e0/,
      '--netdev',
      'addr.path',
    );
    usageError(
      ['--netdev', `stream,id=n0,addr.type=unix,addr.path=${dir}/x`, ...netExport(',offloads=on')],
      /offloads=on needs vnet headers, but --netdev id=n0 carries plain frames/,
      '--export',
      'offloads',
    );
    const passt = (keys: string) => ['--netdev', `passt,id=n0${keys}`, ...netExport()];
    usageError(passt(',address=10.0.2'), /address: '10\.0\.2' is not an IPv4 address/, '--netdev', 'address');
    usageError(passt(',gateway=fe80::1'), /not an IPv4 address/, '--netdev', 'gateway');
    usageError(passt(',netns=../etc'), /not a network namespace name/, '--netdev', 'netns');
    usageError(passt(',path='), /path: must not be empty/, '--netdev', 'path');
    usageError(passt(',tcp-ports=22 22'), /not a passt port specification/, '--netdev', 'tcp-ports');
    usageError(
      passt(`,socket=${dir}/p.sock,address=10.0.2.15`),
      /address: only for a passt ringvm starts/,
      '--netdev',
      'address',
    );
    usageError(passt(',queues=2'), /unknown key 'queues'/, '--netdev', 'queues');
  });

  test('host checks: a stream client or passt socket must exist (unless the client reconnects)', async () => {
    const check = async (argv: string[], pattern: RegExp, key: string): Promise<void> => {
      await assert.rejects(checkHostResources(plan(argv)), (e: unknown) => isUsageError(e, pattern, { key }));
    };
    await check(
      ['--netdev', `stream,id=n0,addr.type=unix,addr.path=${dir}/none.sock`, ...netExport()],
      /addr\.path: '.*none\.sock' does not exist \(server=off connects to a listening socket/,
      'addr.path',
    );
    await check(
      ['--netdev', `passt,id=n0,socket=${dir}/none.sock`, ...netExport()],
      /socket: '.*none\.sock' does not exist \(a running passt's --socket path\)/,
      'socket',
    );
    await check(
      ['--netdev', `stream,id=n0,addr.type=unix,addr.path=${dir}/no-dir/c.sock,reconnect=1`, ...netExport()],
      /addr\.path/,
      'addr.path',
    );
    // A reconnecting client may start before its server; a server's path is free.
    await checkHostResources(
      plan([
        '--netdev',
        `stream,id=n0,addr.type=unix,addr.path=${dir}/later.sock,reconnect=1`,
        '--netdev',
        `stream,id=n1,server=on,addr.type=unix,addr.path=${dir}/srv.sock`,
        ...netExport('', 'e0', 'n0'),
        ...netExport('', 'e1', 'n1'),
      ]),
    );
  });

  test('ringvm run: UML gets SOCK:1, QEMU a vhost-user netdev on virtio-net-pci (mq with queues)', () => {
    const p = parseRunArgv(
      ['--netdev', 'tap,id=n0,queues=2', '--export', 'type=vhost-user-net,id=e0,netdev=n0'],
      dir,
    );
    assert.notEqual(p, 'help');
    if (p === 'help') return;
    const sock = join(dir, 'e0.sock');
    assert.ok(umlCommandLine(p, '/root', '/uml').includes(`virtio_uml.device=${sock}:1`));
    const q = parseRunArgv(
      [
        '--engine',
        'qemu',
        '--netdev',
        'tap,id=n0,queues=2',
        '--export',
        'type=vhost-user-net,id=e0,netdev=n0',
      ],
      dir,
    );
    if (q === 'help') return;
    const args = qemuCommandLine(q, '/k', '/i').join(' ');
    assert.match(
      args,
      new RegExp(`-chardev socket,id=e0,path=${sock} -netdev vhost-user,id=e0-netdev,chardev=e0,queues=2`),
    );
    assert.match(args, /-device virtio-net-pci,netdev=e0-netdev,id=e0,mac=52:54:00:12:34:56,mq=on,vectors=0/);
  });
});
