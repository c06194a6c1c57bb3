/**
 * Guests joined by ringvm's stream back end, as a user would wire them: two `ringvm run` processes, each a UML
 * guest whose eth0 is ringvm's virtio-net on `--netdev stream` (one listens, the other connects and reconnects
 * until it is there). They ping each other and move a file over TCP with a matching checksum. Then a UML guest
 * and a QEMU TCG guest whose NIC is QEMU's own virtio-net-pci on `-netdev stream`: one segment, ping both ways.
 * No tap, no namespace: the segment is the unix socket between the two processes.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MiB, run, script, type RunResult } from '../guest/guest-harness.js';
import { makeNetGuestDir } from '../guest/net-export-rig.js';
import { compiled, mainJs } from './ringvm-process.js';

const GUEST_MS = 300_000;
const PREFIX = '10.97.0';
const PORT = 5000;
/** A tells B on this port that the file arrived (B's guest must not end before its data is sent). */
const DONE_PORT = 5001;

let dir = '';
let sockets = '';
let dataMd5 = '';

before(async () => {
  ({ dir, dataMd5 } = makeNetGuestDir('run-net-stream', 4 * MiB, 0x57e4));
  // The receiving side runs this on the connection (nc -e): a plain `nc -l` with stdin at /dev/null would
  // half-close at once, and busybox's nc on the sending side stops sending when it sees that.
  writeFileSync(join(dir, 'receive.sh'), '#!/bin/sh\nmd5sum > /tmp/received.md5\n', { mode: 0o755 });
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
  return run(
    process.execPath,
    [
      mainJs,
      'run',
      '--share',
      dir,
      '--netdev',
      netdev,
      '--export',
      `type=vhost-user-net,id=e0,netdev=n0,mac=${mac}`,
      '--',
      cmd,
    ],
    GUEST_MS,
  );
}

/** Guest shell: eth0 up with `PREFIX.last/24`, then wait (up to a minute) until `peer` answers a ping. */
function upAndReach(last: number, peer: string): string {
  return [
    'ip link set eth0 up',
    `ip addr add ${PREFIX}.${last}/24 dev eth0`,
    retry(`ping -c 1 -W 1 ${peer} >/dev/null 2>&1`, 9),
    `ping -c 3 -W 5 ${peer}`,
  ].join(' && ');
}

/** Guest shell: `cmd` until it succeeds, once a second for a minute; then exit `status`. */
function retry(cmd: string, status: number): string {
  return `{ i=0; until ${cmd}; do i=$((i+1)); [ $i -lt 60 ] || exit ${status}; sleep 1; done; }`;
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
          // Then tell B it may end: B's nc returns when the file is in its socket buffer, not when A has it.
          `${upAndReach(1, b)} && nc -l -p ${PORT} -e /host/receive.sh && echo "md5 $(cat /tmp/received.md5)" && ${retry(`echo done | nc ${b} ${DONE_PORT}`, 8)}`,
        ),
        umlGuest(
          `stream,id=n0,addr.type=unix,addr.path=${seg},reconnect=1`,
          '52:54:00:97:00:02',
          // A may still be pinging when B is ready: retry the connection until A's nc listens.
          `${upAndReach(2, a)} && ${retry(`nc ${a} ${PORT} < /host/data.bin`, 8)} && nc -l -p ${DONE_PORT}`,
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
            '--qemu',
            '-netdev',
            '--qemu',
            `stream,id=s0,server=on,addr.type=unix,addr.path=${seg}`,
            '--qemu',
            '-device',
            '--qemu',
            'virtio-net-pci,netdev=s0,mac=52:54:00:97:00:03',
            '--',
            // Stay up a while: the other guest may still be pinging this one.
            `${upAndReach(3, uml)} && sleep 8`,
          ],
          GUEST_MS,
        ),
        umlGuest(
          `stream,id=n0,addr.type=unix,addr.path=${seg},reconnect=1`,
          '52:54:00:97:00:01',
          `${upAndReach(1, qemu)} && sleep 8`,
        ),
      ]);
      assert.equal(rq.code, 0, output('QEMU guest', rq));
      assert.equal(ru.code, 0, output('UML guest', ru));
      assert.match(rq.stdout, /3 packets transmitted, 3 packets received/, output('QEMU guest', rq));
      assert.match(ru.stdout, /3 packets transmitted, 3 packets received/, output('UML guest', ru));
    });
  },
);
