/**
 * Guests joined by ringvm's stream back end, as a user would wire them: two `ringvm run` processes, each a UML
 * guest whose eth0 is ringvm's virtio-net on `--netdev stream` (one listens, the other connects and reconnects
 * until it is there). They ping each other and move a file over TCP with a matching checksum. Then a UML guest
 * and a QEMU TCG guest whose NIC is QEMU's own virtio-net-pci on `-netdev stream`: one segment, ping both ways.
 * No tap, no namespace: the segment is the unix socket between the two processes.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MiB, run, script, type RunResult } from '../guest/guest-harness.js';
import { makeNetGuestDir } from '../guest/net-export-rig.js';
import { receiveFile, retry, sendFile, upAndReach } from '../guest/net-peer-shell.js';
import { compiled, netGuestRunArgs } from './ringvm-process.js';

const GUEST_MS = 300_000;
const PREFIX = '10.97.0';

let dir = '';
let sockets = '';
let dataMd5 = '';

before(async () => {
  ({ dir, dataMd5 } = makeNetGuestDir('run-net-stream', 4 * MiB, 0x57e4));
  sockets = mkdtempSync(join(tmpdir(), 'ringvm-stream-seg-'));
  // Built once here: two `ringvm run`s starting together would otherwise both build the guest on first use.
  for (const name of ['build-uml', 'build-qemu']) {
    const build = await run(script(name), [], 20 * 60_000);
    assert.equal(build.code, 0, `${name} failed:\n${build.stdout}\n${build.stderr}`);
  }
});
after(() => {
  rmSync(dir, { recursive: true, force: true });
  rmSync(sockets, { recursive: true, force: true });
});

/** `ringvm run` (UML) with eth0 on `netdev`, MAC `mac`, running `cmd` with the shared directory at /host. */
function umlGuest(netdev: string, mac: string, cmd: string): Promise<RunResult> {
  return run(process.execPath, netGuestRunArgs(dir, netdev, cmd, `,mac=${mac}`), GUEST_MS);
}

/** Guest shell: mark `me` done pinging in /host, then wait (a minute at most, exit 7) for `peer`'s mark. */
function waitForPeer(me: string, peer: string): string {
  return `touch /host/${me}-pinged && ${retry(`[ -e /host/${peer}-pinged ]`, 7)}`;
}

function output(name: string, r: RunResult): string {
  return `${name} (exit ${r.code}):\n${r.stdout}\n${r.stderr}`;
}

describe(
  'guests on ringvm stream netdevs',
  { skip: compiled ? false : 'runs from build/', timeout: 15 * 60_000 },
  () => {
    test('two UML guests through ringvm run: ping both ways, a TCP transfer with a matching checksum', async () => {
      const seg = join(sockets, 'uml-uml.sock');
      const a = `${PREFIX}.1`;
      const b = `${PREFIX}.2`;
      // A listens on the segment and receives the file; B connects (retrying until A listens) and sends it.
      const [ra, rb] = await Promise.all([
        umlGuest(
          `stream,id=n0,server=on,addr.type=unix,addr.path=${seg}`,
          '52:54:00:97:00:01',
          `${upAndReach(a, b)} && ${receiveFile(b)}`,
        ),
        umlGuest(
          `stream,id=n0,addr.type=unix,addr.path=${seg},reconnect=1`,
          '52:54:00:97:00:02',
          `${upAndReach(b, a)} && ${sendFile(a, '/host/data.bin')}`,
        ),
      ]);
      assert.equal(ra.code, 0, output('guest A', ra));
      assert.equal(rb.code, 0, output('guest B', rb));
      assert.match(ra.stdout, /3 packets transmitted, 3 packets received/, output('guest A', ra));
      assert.match(rb.stdout, /3 packets transmitted, 3 packets received/, output('guest B', rb));
      assert.match(ra.stdout, new RegExp(`md5 ${dataMd5}`), 'B → A over TCP');
    });

    test('a UML guest and a QEMU guest (its own virtio-net-pci on -netdev stream) on one segment: ping both ways', async () => {
      const seg = join(sockets, 'uml-qemu.sock');
      const uml = `${PREFIX}.1`;
      const qemu = `${PREFIX}.3`;
      // QEMU listens (its -netdev stream server); ringvm connects and keeps retrying until QEMU is up.
      const [rq, ru] = await Promise.all([
        run(
          script('run-qemu'),
          [
            '--timeout',
            String(GUEST_MS / 1000 - 10),
            '--share',
            dir,
            '--qemu',
            '-netdev',
            '--qemu',
            `stream,id=s0,server=on,addr.type=unix,addr.path=${seg}`,
            '--qemu',
            '-device',
            '--qemu',
            'virtio-net-pci,netdev=s0,mac=52:54:00:97:00:03',
            '--',
            // Each stays up until the other has pinged it (a marker in the shared directory).
            `${upAndReach(qemu, uml)} && ${waitForPeer('qemu', 'uml')}`,
          ],
          GUEST_MS,
        ),
        umlGuest(
          `stream,id=n0,addr.type=unix,addr.path=${seg},reconnect=1`,
          '52:54:00:97:00:01',
          `${upAndReach(uml, qemu)} && ${waitForPeer('uml', 'qemu')}`,
        ),
      ]);
      assert.equal(rq.code, 0, output('QEMU guest', rq));
      assert.equal(ru.code, 0, output('UML guest', ru));
      assert.match(rq.stdout, /3 packets transmitted, 3 packets received/, output('QEMU guest', rq));
      assert.match(ru.stdout, /3 packets transmitted, 3 packets received/, output('UML guest', ru));
    });
  },
);
