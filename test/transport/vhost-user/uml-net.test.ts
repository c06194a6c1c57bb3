/**
 * The UML guest's own virtio_net driver on ringvm's virtio-net device, over a real tap, as a user would run
 * it: the tap's host side lives in a network namespace this test makes (and always deletes), with a busybox
 * udhcpd and socat peers there. The guest gets its address by DHCP, pings the host side, and moves 100 MiB over
 * TCP each way with matching checksums, with offloads on and off; with four queue pairs the guest turns them on
 * (ethtool -L) and flows spread over them; setting the link down through the export's control API shows the
 * guest carrier off.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { NetInfo } from '../../../src/cli/device-factories.js';
import type { NetDeviceStats } from '../../../src/devices/net/net-device.js';
import { MiB, killGroup, pattern, run, script } from '../../guest/guest-harness.js';
import {
  TRANSFER_SINK_PORT,
  TRANSFER_SOURCE_PORT,
  exited,
  guestNetUp,
  startNetExportRig,
  makeNetGuestDir,
  type NetExportRig,
} from '../../guest/net-export-rig.js';

const PREFIX = '10.99.0';
const HOST = `${PREFIX}.1`;
const BOOT_MS = 240_000;

let dir = '';
let data = '';
let dataMd5 = '';

before(async () => {
  ({ dir, data, dataMd5 } = makeNetGuestDir('uml-net', 100 * MiB, 0x5eed));
  // Before any rig: build-uml installs the Debian packages the host side uses too (socat, iproute2, busybox).
  const build = await run(script('build-uml'), [], 20 * 60_000);
  assert.equal(build.code, 0, `build-uml failed:\n${build.stdout}\n${build.stderr}`);
});
after(() => {
  rmSync(dir, { recursive: true, force: true });
});

type Rig = NetExportRig;

/** A net export on a new tap, the tap moved into a new namespace with an address and a DHCP server. */
function rig(options: { queues?: number; offloads?: boolean; vnetHdr?: boolean } = {}): Promise<Rig> {
  return startNetExportRig({ dir, prefix: PREFIX, ...options });
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

const UP = guestNetUp(HOST);

function md5(path: string): string {
  return createHash('md5').update(readFileSync(path)).digest('hex');
}

function stats(r: Rig): Promise<NetDeviceStats> {
  return r.stats();
}

describe('UML guest on ringvm virtio-net over a tap', { timeout: 20 * 60_000 }, () => {
  for (const offloads of [true, false]) {
    test(`DHCP, ping, 100 MiB over TCP each way, checksums match (offloads ${offloads ? 'on' : 'off'})`, async () => {
      const r = await rig({ offloads });
      try {
        const { received, receiver } = r.startTransferPeers(data);
        const cmd = [
          UP,
          'ethtool -k eth0 | grep -E "^(tx-checksumming|tcp-segmentation-offload):"',
          `nc ${HOST} ${TRANSFER_SINK_PORT} < /host/data.bin`,
          `echo "md5 $(nc ${HOST} ${TRANSFER_SOURCE_PORT} | md5sum)"`,
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
        await exited(receiver, 'the host-side receiver');
        assert.equal(md5(received), dataMd5, 'guest → host checksum');
        const s = await stats(r);
        assert.deepEqual(s.errors, {});
        assert.ok(s.rxBytes >= 100 * MiB && s.txBytes >= 100 * MiB, JSON.stringify(s));
      } finally {
        await r.close();
      }
    });
  }

  test('four queue pairs: the guest turns them on and flows spread over them', async (t) => {
    const r = await rig({ queues: 4 });
    try {
      const flows = [0, 1, 2, 3, 4, 5, 6, 7];
      const chunkBytes = 4 * MiB;
      const down = join(dir, `chunk-${r.ifname}.bin`);
      writeFileSync(down, pattern(chunkBytes, 77));
      const downMd5 = md5(down);
      const upMd5 = createHash('md5').update(readFileSync(data).subarray(0, chunkBytes)).digest('hex');
      const upFile = (f: number) => join(dir, `up-${r.ifname}-${f}.bin`);
      const receivers = flows.map((f) => {
        r.ns.spawn(['socat', '-u', `OPEN:${down}`, `TCP-LISTEN:${5100 + f},reuseaddr`]);
        return r.ns.spawn([
          'socat',
          '-u',
          `TCP-LISTEN:${5200 + f},reuseaddr`,
          `OPEN:${upFile(f)},creat,trunc`,
        ]);
      });
      const cmd = [
        UP,
        'ethtool -l eth0 | grep -A4 "Pre-set maximums" | grep Combined',
        'ethtool -L eth0 combined 4',
        'echo queues $(ls /sys/class/net/eth0/queues)',
        'echo PAIRS-SET',
        `for f in ${flows.join(' ')}; do (nc ${HOST} $((5100 + f)) | md5sum > /tmp/m$f; head -c ${chunkBytes} /host/data.bin | nc ${HOST} $((5200 + f))) & done; wait`,
        'cat /tmp/m*',
      ].join(' && ');
      // Read while the guest runs: its shutdown resets the device, and a reset device uses one pair.
      let running: Promise<unknown> | undefined;
      const g = await boot(r, cmd, (line) => {
        if (line === 'PAIRS-SET') running = r.exp.control({ op: 'info' });
      });
      assert.equal(g.code, 0, g.out);
      assert.ok(running, 'the guest printed PAIRS-SET');
      assert.equal(((await running) as NetInfo).activePairs, 4, 'VQ_PAIRS_SET 4 reached the device');
      assert.match(g.out, /Combined:\s+4/);
      assert.match(g.out, /queues rx-0 rx-1 rx-2 rx-3 tx-0 tx-1 tx-2 tx-3/);
      assert.equal(g.out.split(downMd5).length - 1, flows.length, 'every flow arrived whole in the guest');
      for (const f of flows) {
        await exited(receivers[f] as ChildProcess, `the host-side receiver of flow ${f}`);
        assert.equal(md5(upFile(f)), upMd5, `flow ${f} arrived whole on the host`);
      }
      const s = await stats(r);
      assert.deepEqual(s.errors, {});
      // Spread: at least two pairs each carried a tenth of the frames (the guest hashes flows over its pairs,
      // the tap steers each flow's receive side to the queue the guest sends it on).
      const busy = (per: number[]) => {
        const total = per.reduce((a, b) => a + b, 0);
        return per.filter((n) => n >= total / 10).length;
      };
      assert.ok(busy(s.rxFramesPerPair) >= 2, `receive spread: ${s.rxFramesPerPair.join(' ')}`);
      assert.ok(busy(s.txFramesPerPair) >= 2, `transmit spread: ${s.txFramesPerPair.join(' ')}`);
      t.diagnostic(`frames per pair: rx ${s.rxFramesPerPair.join(' ')}, tx ${s.txFramesPerPair.join(' ')}`);
    } finally {
      await r.close();
    }
  });

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
