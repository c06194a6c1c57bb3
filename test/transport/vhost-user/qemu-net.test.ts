/**
 * The PCI path for virtio-net: a QEMU 7.2 TCG guest whose virtio-net-pci sits on `-netdev vhost-user` served by
 * a ringvm net export (tap back end, host side in a namespace this test makes), driven by the Debian kernel's
 * own virtio_pci and virtio_net. The guest gets its address by DHCP, pings the host side and moves 8 MiB over
 * TCP each way with matching checksums; with two queue pairs (`queues=2`, `mq=on`) the guest sees both and
 * host → guest flows arrive on both receive queues.
 *
 * `vectors=0` (INTx, no MSI-X): QEMU 7.2 under TCG dereferences a NULL irqfd table when a vhost-user
 * virtio-net's MSI-X vectors are unmasked at DRIVER_OK, whatever the back end (docs/networking.md, "QEMU guests").
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { MiB, root, run, script } from '../../guest/guest-harness.js';
import { NetNamespace, uniqueName } from '../../guest/net-namespace.js';
import {
  TRANSFER_SINK_PORT,
  TRANSFER_SOURCE_PORT,
  exited,
  guestNetUp,
  startNetExportRig,
  makeNetGuestDir,
} from '../../guest/net-export-rig.js';

const PREFIX = '10.96.0';
const HOST = `${PREFIX}.1`;
const GUEST_MS = 300_000;
/** Host → guest flows in the multiqueue test: the tap spreads flows over its queues by hash. */
const FLOWS = 16;

let dir = '';
let data = '';
let dataMd5 = '';

before(async () => {
  ({ dir, data, dataMd5 } = makeNetGuestDir('qemu-net', 8 * MiB, 0xc0de));
  const build = await run(script('build-qemu'), [], 20 * 60_000);
  assert.equal(build.code, 0, `build-qemu failed:\n${build.stdout}\n${build.stderr}`);
});
after(() => {
  rmSync(dir, { recursive: true, force: true });
});

function runQemu(args: string[]) {
  return run(
    script('run-qemu'),
    ['--timeout', String(GUEST_MS / 1000 - 10), '--share', dir, ...args],
    GUEST_MS,
  );
}

const UP = guestNetUp(HOST);

/** run-qemu's `--qemu ARG` for each of `args`. */
function qemuArgs(...args: string[]): string[] {
  return args.flatMap((a) => ['--qemu', a]);
}

/**
 * A virtio-net-pci on a vhost-user netdev over `socket`, with extra netdev and device options. INTx
 * (`vectors=0`): see the top of this file.
 */
function vhostUserNic(socket: string, netdevOptions: string, deviceOptions: string): string[] {
  return qemuArgs(
    '-chardev',
    `socket,id=c1,path=${socket}`,
    '-netdev',
    `vhost-user,id=n1,chardev=c1${netdevOptions}`,
    '-device',
    `virtio-net-pci,netdev=n1${deviceOptions},vectors=0`,
  );
}

describe('QEMU TCG guest: virtio-net-pci on a ringvm vhost-user-net export', { timeout: 20 * 60_000 }, () => {
  test('DHCP, ping, 8 MiB over TCP each way, checksums match', async () => {
    const r = await startNetExportRig({ dir, prefix: PREFIX });
    try {
      const { received, receiver } = r.startTransferPeers(data);
      const g = await runQemu([
        ...vhostUserNic(r.socket, '', ''),
        '--',
        [
          UP,
          `nc ${HOST} ${TRANSFER_SINK_PORT} < /host/data.bin`,
          `echo "md5 $(nc ${HOST} ${TRANSFER_SOURCE_PORT} | md5sum)"`,
        ].join(' && '),
      ]);
      assert.equal(g.code, 0, `guest failed:\n${g.stdout}\n${g.stderr}\n${r.log.join('\n')}`);
      assert.match(
        g.stdout,
        new RegExp(`inet ${PREFIX.replaceAll('.', '\\.')}\\.(1\\d|20)/24`),
        'a DHCP lease',
      );
      assert.match(g.stdout, /3 packets transmitted, 3 packets received/);
      assert.match(g.stdout, new RegExp(`md5 ${dataMd5}`), 'host → guest checksum');
      await exited(receiver, 'the receiving socat');
      assert.equal(createHash('md5').update(readFileSync(received)).digest('hex'), dataMd5, 'guest → host');
      const s = await r.stats();
      assert.deepEqual(s.errors, {});
      assert.ok(s.rxBytes >= 8 * MiB && s.txBytes >= 8 * MiB, JSON.stringify(s));
    } finally {
      await r.close();
    }
    assert.ok(
      r.log.some((l) => l.includes('front end disconnected')),
      `QEMU disconnected cleanly:\n${r.log.join('\n')}`,
    );
  });

  test('two queue pairs: the guest sees both, host → guest flows use both receive queues', async () => {
    const r = await startNetExportRig({ dir, prefix: PREFIX, queues: 2 });
    try {
      // Listening first: each forked child opens the file itself (a shared fd would be at its end after one flow).
      r.ns.spawn(['socat', '-U', 'TCP-LISTEN:5003,reuseaddr,fork', `OPEN:${data}`]);
      const flows = Array.from({ length: FLOWS }, () => `nc ${HOST} 5003 | md5sum`).join('; ');
      const g = await runQemu([
        ...vhostUserNic(r.socket, ',queues=2', ',mq=on'),
        // Linux starts with one pair per CPU (curr_queue_pairs), so two CPUs to get both.
        ...qemuArgs('-smp', '2'),
        '--',
        [UP, 'echo "queues $(ls /sys/class/net/eth0/queues | tr "\\n" " ")"', `{ ${flows}; }`].join(' && '),
      ]);
      assert.equal(g.code, 0, `guest failed:\n${g.stdout}\n${g.stderr}\n${r.log.join('\n')}`);
      assert.match(g.stdout, /queues rx-0 rx-1 tx-0 tx-1 /);
      const sums = [...g.stdout.matchAll(/^([0-9a-f]{32})\s/gm)].map((m) => m[1]);
      assert.deepEqual(sums, new Array<string>(FLOWS).fill(dataMd5), 'every flow arrived intact');
      const s = await r.stats();
      assert.deepEqual(s.errors, {});
      assert.equal(s.rxFramesPerPair.length, 2, JSON.stringify(s));
      assert.ok(
        s.rxFramesPerPair.every((n) => n > 0),
        `both receive queues carried frames: ${JSON.stringify(s.rxFramesPerPair)}`,
      );
    } finally {
      await r.close();
    }
  });

  test('ringvm run --engine qemu with a net export: the guest NIC comes up and pings the tap side', async () => {
    // ringvm run starts QEMU itself (with the INTx setting of docs/networking.md); it runs inside a namespace
    // whose tap it attaches to, so the host side's address is the namespace's.
    const ns = NetNamespace.create('rvrq');
    try {
      const tap = uniqueName('rvt');
      ns.ip('tuntap', 'add', 'dev', tap, 'mode', 'tap', 'vnet_hdr');
      ns.ip('addr', 'add', `${HOST}/24`, 'dev', tap);
      ns.ip('link', 'set', tap, 'up');
      const g = await run(
        'ip',
        [
          ...[
            'netns',
            'exec',
            ns.name,
            process.execPath,
            join(root, 'build', 'src', 'cli', 'main.js'),
            'run',
          ],
          ...['--engine', 'qemu', '--netdev', `tap,id=n0,ifname=${tap}`],
          ...['--export', 'type=vhost-user-net,id=e0,netdev=n0', '--'],
          `ip link set eth0 up && ip addr add ${PREFIX}.2/24 dev eth0 && ping -c 3 -W 5 ${HOST}`,
        ],
        GUEST_MS,
      );
      assert.equal(g.code, 0, `guest failed:\n${g.stdout}\n${g.stderr}`);
      assert.match(g.stdout, /3 packets transmitted, 3 packets received/);
    } finally {
      ns.delete();
    }
  });
});
