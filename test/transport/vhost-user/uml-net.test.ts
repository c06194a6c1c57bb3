/**
 * The UML guest's own virtio_net driver on ringvm's virtio-net device, over a real tap, as a user would run
 * it: the tap's host side lives in a network namespace this test makes (and always deletes), with a busybox
 * udhcpd and socat peers there. The guest gets its address by DHCP, pings the host side, and moves 100 MiB over
 * TCP each way with matching checksums, with offloads on and off; setting the link down through the export's
 * control API shows the guest carrier off.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DEVICE_FACTORIES_MODULE } from '../../../src/cli/export-runner.js';
import type { NetDeviceArgs } from '../../../src/cli/device-factories.js';
import type { NetDeviceStats } from '../../../src/devices/net/net-device.js';
import { VhostUserExport } from '../../../src/transport/vhost-user/vhost-user-export.js';
import { MiB, killGroup, pattern, script } from '../../guest/guest-harness.js';
import { NetNamespace, uniqueName } from '../../guest/net-namespace.js';

const PREFIX = '10.99.0';
const HOST = `${PREFIX}.1`;
const BOOT_MS = 240_000;

let dir = '';
let data = '';
let dataMd5 = '';

before(() => {
  dir = mkdtempSync(join(tmpdir(), 'ringvm-uml-net-'));
  data = join(dir, 'data.bin');
  const bytes = pattern(100 * MiB, 0x5eed);
  writeFileSync(data, bytes);
  dataMd5 = createHash('md5').update(bytes).digest('hex');
  // udhcpc's script: configure the lease (busybox passes ip, subnet, router).
  writeFileSync(
    join(dir, 'dhcp.sh'),
    '#!/bin/sh\ncase "$1" in bound|renew) ifconfig "$interface" "$ip" netmask "$subnet" ;; esac\n',
    { mode: 0o755 },
  );
});
after(() => {
  rmSync(dir, { recursive: true, force: true });
});

interface Rig {
  readonly ns: NetNamespace;
  readonly exp: VhostUserExport;
  readonly ifname: string;
  readonly socket: string;
  close(): Promise<void>;
}

/** A net export on a new tap, the tap moved into a new namespace with an address and a DHCP server. */
async function rig(options: { queues?: number; offloads?: boolean; vnetHdr?: boolean } = {}): Promise<Rig> {
  const ifname = uniqueName('rvt');
  const socket = join(dir, `${ifname}.sock`);
  const queues = options.queues ?? 1;
  const args: NetDeviceArgs = {
    backend: { kind: 'tap', ifname, queues, vnetHdr: options.vnetHdr ?? true },
    queuePairs: queues,
    mac: '52:54:00:12:34:56',
    offloads: options.offloads ?? true,
  };
  const log: string[] = [];
  const exp = await VhostUserExport.start({
    socketPath: socket,
    device: { module: DEVICE_FACTORIES_MODULE, name: 'createNetDevice', args },
    onLog: (line) => log.push(line),
  });
  let ns: NetNamespace | undefined;
  try {
    ns = NetNamespace.create();
    ns.adopt(ifname, `${HOST}/24`);
    ns.startDhcp(ifname, PREFIX, dir);
  } catch (e) {
    ns?.delete();
    await exp.stop();
    throw e;
  }
  const made = ns;
  return {
    ns: made,
    exp,
    ifname,
    socket,
    close: async () => {
      await exp.stop();
      made.delete();
    },
  };
}

interface Boot {
  readonly code: number | null;
  readonly out: string;
}

/** Boots the UML guest with the export as eth0 and runs `cmd`; `onLine` sees each console line as it comes. */
function boot(r: Rig, cmd: string, onLine: (line: string) => void = () => undefined): Promise<Boot> {
  return new Promise((resolve, reject) => {
    const child = spawn(
      script('run-uml'),
      ['--timeout', String(BOOT_MS / 1000 - 10), '--dev', `${r.socket}:1`, '--share', dir, '--', cmd],
      { detached: true, stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let out = '';
    let partial = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => {
      out += d;
      partial += d;
      const lines = partial.split('\n');
      partial = lines.pop() ?? '';
      for (const l of lines) onLine(l);
    });
    child.stderr.setEncoding('utf8').on('data', (d: string) => (out += d));
    const timer = setTimeout(() => {
      killGroup(child);
      reject(new Error(`guest timed out\n${out}`));
    }, BOOT_MS);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, out });
    });
  });
}

/** The guest's DHCP and ping, as shell. */
const UP = [
  'ip link set eth0 up',
  'udhcpc -i eth0 -n -q -t 20 -T 1 -s /host/dhcp.sh >/dev/null 2>&1',
  'ip -4 -o addr show eth0',
  `ping -c 3 -W 5 ${HOST}`,
].join(' && ');

function md5(path: string): string {
  return createHash('md5').update(readFileSync(path)).digest('hex');
}

async function stats(r: Rig): Promise<NetDeviceStats> {
  return (await r.exp.control({ op: 'stats' })) as NetDeviceStats;
}

describe('UML guest on ringvm virtio-net over a tap', { timeout: 20 * 60_000 }, () => {
  for (const offloads of [true, false]) {
    test(`DHCP, ping, 100 MiB over TCP each way, checksums match (offloads ${offloads ? 'on' : 'off'})`, async () => {
      const r = await rig({ offloads });
      try {
        const received = join(dir, `received-${r.ifname}.bin`);
        r.ns.spawn(['socat', '-u', 'TCP-LISTEN:5001,reuseaddr', `OPEN:${received},creat,trunc`]);
        r.ns.spawn(['socat', '-u', `OPEN:${data}`, 'TCP-LISTEN:5002,reuseaddr']);
        const cmd = [
          UP,
          'ethtool -k eth0 | grep -E "^(tx-checksumming|tcp-segmentation-offload):"',
          `nc ${HOST} 5001 < /host/data.bin`,
          `echo "md5 $(nc ${HOST} 5002 | md5sum)"`,
        ].join(' && ');
        const g = await boot(r, cmd);
        assert.equal(g.code, 0, g.out);
        assert.match(
          g.out,
          new RegExp(`inet ${PREFIX.replaceAll('.', '\\.')}\\.(1\\d|20)/24`),
          'a DHCP lease',
        );
        assert.match(g.out, /3 packets transmitted, 3 packets received/);
        const state = offloads ? 'on' : 'off';
        assert.match(g.out, new RegExp(`tx-checksumming: ${state}`));
        assert.match(g.out, new RegExp(`tcp-segmentation-offload: ${state}`));
        assert.match(g.out, new RegExp(`md5 ${dataMd5}`), 'host → guest checksum');
        assert.equal(md5(received), dataMd5, 'guest → host checksum');
        const s = await stats(r);
        assert.deepEqual(s.errors, {});
        assert.ok(s.rxBytes >= 100 * MiB && s.txBytes >= 100 * MiB, JSON.stringify(s));
      } finally {
        await r.close();
      }
    });
  }

  test('link down through the export: the guest sees carrier off, then on again', async () => {
    const r = await rig();
    try {
      const wait = (want: number, tag: string) =>
        `i=0; until [ "$(cat /sys/class/net/eth0/carrier)" = ${want} ]; do i=$((i+1)); [ $i -lt 600 ] || exit 9; sleep 0.1; done; echo ${tag}`;
      const cmd = [
        UP,
        'echo READY',
        // NO-CARRIER is read before CARRIER-OFF is printed: that line makes the test raise the link again.
        wait(0, 'CARRIER-ZERO'),
        'ip link show eth0 | grep -o NO-CARRIER',
        'echo CARRIER-OFF',
        wait(1, 'CARRIER-ON'),
        `ping -c 1 -W 5 ${HOST} >/dev/null && echo PING-AGAIN`,
      ].join(' && ');
      let step: Promise<unknown> = Promise.resolve();
      const g = await boot(r, cmd, (line) => {
        if (line === 'READY') step = r.exp.control({ op: 'set-link', up: false });
        if (line === 'CARRIER-OFF') step = step.then(() => r.exp.control({ op: 'set-link', up: true }));
      });
      await step;
      assert.equal(g.code, 0, g.out);
      assert.match(g.out, /CARRIER-ZERO\nNO-CARRIER\nCARRIER-OFF\nCARRIER-ON\nPING-AGAIN/);
    } finally {
      await r.close();
    }
  });
});
