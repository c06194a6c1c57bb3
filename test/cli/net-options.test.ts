import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgv } from '../../src/cli/argv.js';
import { CliUsageError } from '../../src/cli/cli-error.js';
import { exportFactoryRef } from '../../src/cli/export-runner.js';
import {
  buildDevicePlan,
  DEVICE_OPTIONS,
  VIRTIO_DEVICE_ID,
  type DevicePlan,
  type ExportPlan,
} from '../../src/cli/serve-options.js';
import { qemuCommandLine, umlCommandLine, parseRunArgv } from '../../src/cli/run.js';

let dir = '';
before(() => {
  dir = mkdtempSync(join(tmpdir(), 'ringvm-net-options-'));
});
after(() => {
  rmSync(dir, { recursive: true, force: true });
});

function plan(argv: string[]): DevicePlan {
  const args = parseArgv(argv, {
    command: 'ringvm serve',
    values: DEVICE_OPTIONS,
    flags: [],
    positionals: 'none',
  });
  return buildDevicePlan(args.options);
}

const netExport = (extra = '', id = 'e0', netdev = 'n0'): string[] => [
  '--export',
  `type=vhost-user-net,id=${id},netdev=${netdev},addr.path=${dir}/${id}.sock${extra}`,
];

function usageError(argv: string[], pattern: RegExp, option: string, key?: string): void {
  assert.throws(
    () => plan(argv),
    (e: unknown) => {
      assert.ok(e instanceof CliUsageError, String(e));
      assert.match(e.message, pattern);
      assert.equal(e.option, option);
      if (key !== undefined) assert.equal(e.key, key);
      return true;
    },
  );
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
