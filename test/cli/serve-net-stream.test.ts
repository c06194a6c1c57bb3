/**
 * `ringvm serve --netdev stream` as a user runs it, with real guests at both ends of the stream (QEMU's
 * `-netdev stream` framing: a 4-byte big-endian length before each frame):
 *
 * - two UML guests, each on the vhost-user-net export of its own `ringvm serve`: one serve is the stream's
 *   server (`server=on`, a unix socket), the other its client. Static addresses on one /24; each pings the
 *   other and sends it 8 MiB over TCP (busybox nc), the MD5s match.
 *
 * The guests share one host directory (/host) and meet there: each touches `/host/NAME-done` when its part is
 * done and halts only when its peer's file exists, so neither leaves while the other still talks to it.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { MiB, run, runUml, script } from '../guest/guest-harness.js';
import { makeNetGuestDir } from '../guest/net-export-rig.js';
import { compiled, serveProcess, type ServeProcess } from './ringvm-process.js';

const PREFIX = '10.77.0';
const GUEST_MS = 300_000;
const DATA_BYTES = 8 * MiB;

let dir = '';
let dataMd5 = '';

before(async () => {
  // ringvm serve runs from build/ (its export workers are compiled modules): scripts/test.mjs runs it so.
  assert.ok(
    compiled,
    'this test runs the compiled ringvm command: npm run build, then node scripts/test.mjs',
  );
  ({ dir, dataMd5 } = makeNetGuestDir('serve-net-stream', DATA_BYTES, 0x57e4));
  const build = await run(script('build-uml'), [], 20 * 60_000);
  assert.equal(build.code, 0, `build-uml failed:\n${build.stdout}\n${build.stderr}`);
});
after(() => {
  rmSync(dir, { recursive: true, force: true });
});

/** A guest's side of the segment: its address, and the name it signs its `done` file with. */
interface GuestEnd {
  readonly name: string;
  readonly ip: string;
}

interface GuestScriptOptions {
  readonly me: GuestEnd;
  readonly peer: GuestEnd;
  /** TCP: listen on `listen` (what arrives is summed as `md5 SUM`), send /host/data.bin to the peer's `send`. */
  readonly transfer?: { readonly listen: number; readonly send: number };
}

/**
 * The shell one guest runs: eth0 up with a static address, wait (up to 5 minutes: the peer may still be
 * booting) until the peer answers a ping, three pings, the optional transfer, then the meeting in /host.
 */
function guestScript({ me, peer, transfer }: GuestScriptOptions): string {
  const lines = [
    'set -e',
    'ip link set eth0 up',
    `ip addr add ${me.ip}/24 dev eth0`,
    ...(transfer === undefined
      ? []
      : [
          // busybox nc half-closes at EOF on its stdin and stops at EOF from the socket: a listener whose stdin
          // ended at once would make the sender stop early, so the listener's stdin never ends.
          `tail -f /dev/null | nc -l -p ${transfer.listen} | md5sum > /tmp/got &`,
        ]),
    `i=0; until ping -c 1 -W 1 ${peer.ip} >/dev/null 2>&1; do i=$((i+1)); [ $i -lt 300 ] || { echo "no answer from ${peer.ip}"; exit 9; }; done`,
    `ping -c 3 -W 5 ${peer.ip}`,
    ...(transfer === undefined
      ? []
      : [
          // The peer's listener may not be up yet: a refused connect is retried.
          `i=0; until nc ${peer.ip} ${transfer.send} < /host/data.bin 2>/dev/null; do i=$((i+1)); [ $i -lt 120 ] || { echo "cannot send to ${peer.ip}"; exit 8; }; sleep 1; done`,
          `i=0; until [ -s /tmp/got ]; do i=$((i+1)); [ $i -lt 1200 ] || { echo "nothing from ${peer.ip}"; exit 6; }; sleep 0.1; done`,
          'echo "md5 $(cat /tmp/got)"',
        ]),
    `touch /host/${me.name}-done`,
    `i=0; until [ -e /host/${peer.name}-done ]; do i=$((i+1)); [ $i -lt 3000 ] || { echo "${peer.name} never finished"; exit 7; }; sleep 0.1; done`,
    'echo GUEST-DONE',
  ];
  return lines.join('\n');
}

function bootUml(socket: string, cmd: string) {
  return runUml(['--dev', `${socket}:1`, '--share', dir, '--', cmd], GUEST_MS);
}

/** What the guest printed, what it exited with, and what the serves said: for assertion messages. */
function report(
  what: string,
  g: { code: number | null; stdout: string; stderr: string },
  serves: ServeProcess[],
) {
  const logs = serves.map((s, i) => `serve #${i + 1} stderr:\n${s.err()}`).join('\n');
  return `${what} (exit ${g.code}):\n${g.stdout}\n${g.stderr}\n${logs}`;
}

describe('ringvm serve --netdev stream: real guests on both ends', { timeout: 20 * 60_000 }, () => {
  test('two UML guests, a serve each (stream server and client): ping both ways, 8 MiB each way over TCP', async () => {
    const seg = join(dir, 'seg.sock');
    const a: GuestEnd = { name: 'uml-a', ip: `${PREFIX}.1` };
    const b: GuestEnd = { name: 'uml-b', ip: `${PREFIX}.2` };
    const sockA = join(dir, 'a.sock');
    const sockB = join(dir, 'b.sock');
    const serves: ServeProcess[] = [];
    try {
      // A serve with one net export (its own vhost-user socket and MAC) on the stream netdev `keys`.
      const serve = async (keys: string, socket: string, mac: string): Promise<ServeProcess> => {
        const s = serveProcess([
          '--netdev',
          `stream,id=n0,${keys},addr.type=unix,addr.path=${seg}`,
          '--export',
          `type=vhost-user-net,id=e0,netdev=n0,addr.path=${socket},mac=${mac}`,
        ]);
        serves.push(s);
        await s.listening(1);
        return s;
      };
      const serveA = await serve('server=on', sockA, '52:54:00:77:00:01');
      assert.ok(existsSync(seg), 'the stream server listens before the export does');
      // The client connects at once (no reconnect=): the server is listening.
      const serveB = await serve('server=off', sockB, '52:54:00:77:00:02');

      const [ga, gb] = await Promise.allSettled([
        bootUml(sockA, guestScript({ me: a, peer: b, transfer: { listen: 5001, send: 5002 } })),
        bootUml(sockB, guestScript({ me: b, peer: a, transfer: { listen: 5002, send: 5001 } })),
      ]);
      for (const [what, g] of [
        ['guest A', ga],
        ['guest B', gb],
      ] as const) {
        if (g.status === 'rejected') throw g.reason;
        const r = g.value;
        assert.equal(r.code, 0, report(what, r, serves));
        assert.match(r.stdout, /3 packets transmitted, 3 packets received/, report(what, r, serves));
        assert.match(r.stdout, new RegExp(`md5 ${dataMd5}`), report(`${what}: what it received`, r, serves));
        assert.match(r.stdout, /GUEST-DONE/);
      }
      // Both serves outlived their guests' disconnects and stop cleanly, removing their sockets.
      assert.equal(await serveB.stop(), 0, serveB.err());
      assert.equal(await serveA.stop(), 0, serveA.err());
      assert.equal(existsSync(seg), false, 'the stream server removed its socket');
      assert.equal(existsSync(sockA) || existsSync(sockB), false, 'the exports removed their sockets');
      for (const s of serves) assert.doesNotMatch(s.err(), /broke the framing|error/i, s.err());
    } finally {
      await Promise.all(serves.map((s) => s.stop()));
    }
  });
});
