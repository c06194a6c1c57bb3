/**
 * Two UML guests on one segment of ringvm's in-process switch, as a user wires them: one `ringvm serve` with two
 * `--netdev hubport` netdevs on the same hubid, each the host side of a vhost-user-net export, and a UML guest on
 * each export. Static addresses; they ping each other both ways and move a file over TCP with a matching MD5.
 * Then the bad hubport options a user may type, each a usage error naming the key.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { exportFactoryRef } from '../../src/cli/export-runner.js';
import type { NetDeviceArgs } from '../../src/cli/device-factories.js';
import { NetHubs } from '../../src/cli/net-hubs.js';
import type { ExportPlan } from '../../src/cli/serve-options.js';
import { devicePlan } from './device-plan.js';
import { MiB, killGroup, run, script, type RunResult } from '../guest/guest-harness.js';
import { makeNetGuestDir } from '../guest/net-export-rig.js';
import { receiveFile, sendFile, upAndReach } from '../guest/net-peer-shell.js';
import { compiled, mainJs, serveProcess } from './ringvm-process.js';
import { throwsUsageError } from './usage-error.js';

const GUEST_MS = 300_000;
const PREFIX = '10.96.0';

let dir = '';
let sockets = '';
let dataMd5 = '';

before(() => {
  ({ dir, dataMd5 } = makeNetGuestDir('serve-net-hub', 4 * MiB, 0x4b0b));
  sockets = mkdtempSync(join(tmpdir(), 'ringvm-hub-'));
});
after(() => {
  rmSync(dir, { recursive: true, force: true });
  rmSync(sockets, { recursive: true, force: true });
});

function uml(sock: string, cmd: string): Promise<RunResult> {
  return run(
    script('run-uml'),
    ['--timeout', String(GUEST_MS / 1000 - 10), '--dev', `${sock}:1`, '--share', dir, '--', cmd],
    GUEST_MS,
  );
}

function output(name: string, r: RunResult): string {
  return `${name} (exit ${r.code}):\n${r.stdout}\n${r.stderr}`;
}

describe(
  'two UML guests on ringvm serve --netdev hubport',
  { skip: compiled ? false : 'runs from build/', timeout: 15 * 60_000 },
  () => {
    test('one switch in one ringvm: ping both ways, a TCP transfer with a matching MD5', async () => {
      const build = await run(script('build-uml'), [], 20 * 60_000);
      assert.equal(build.code, 0, `build-uml failed:\n${build.stdout}\n${build.stderr}`);
      const [sa, sb] = [join(sockets, 'a.sock'), join(sockets, 'b.sock')];
      const serve = spawn(
        process.execPath,
        [
          mainJs,
          'serve',
          '--netdev',
          'hubport,id=na,hubid=0',
          '--netdev',
          'hubport,id=nb,hubid=0',
          '--export',
          `type=vhost-user-net,id=ea,netdev=na,addr.type=unix,addr.path=${sa},mac=52:54:00:96:00:01`,
          '--export',
          `type=vhost-user-net,id=eb,netdev=nb,addr.type=unix,addr.path=${sb},mac=52:54:00:96:00:02`,
        ],
        { detached: true, stdio: ['ignore', 'pipe', 'pipe'] },
      );
      let log = '';
      serve.stdout.setEncoding('utf8').on('data', (d: string) => (log += d));
      serve.stderr.setEncoding('utf8').on('data', (d: string) => (log += d));
      try {
        const deadline = Date.now() + 60_000;
        while (!(existsSync(sa) && existsSync(sb))) {
          assert.equal(serve.exitCode, null, `ringvm serve exited:\n${log}`);
          assert.ok(Date.now() < deadline, `ringvm serve did not listen:\n${log}`);
          await new Promise((r) => setTimeout(r, 100));
        }
        const [a, b] = [`${PREFIX}.1`, `${PREFIX}.2`];
        const [ra, rb] = await Promise.all([
          uml(sa, `${upAndReach(a, b)} && ${receiveFile(b)}`),
          uml(sb, `${upAndReach(b, a)} && ${sendFile(a, '/host/data.bin')}`),
        ]);
        assert.equal(ra.code, 0, output('guest A', ra));
        assert.equal(rb.code, 0, output('guest B', rb));
        assert.match(ra.stdout, /3 packets transmitted, 3 packets received/, output('guest A', ra));
        assert.match(rb.stdout, /3 packets transmitted, 3 packets received/, output('guest B', rb));
        assert.match(ra.stdout, new RegExp(`md5 ${dataMd5}`), `B → A over TCP\n${output('guest A', ra)}`);
        assert.match(rb.stdout, /done/, output('guest B', rb));
        assert.equal(serve.exitCode, null, `ringvm serve is still serving:\n${log}`);
      } finally {
        const exited = new Promise((r) => serve.once('close', r));
        if (serve.exitCode === null) serve.kill('SIGTERM');
        const timer = setTimeout(() => {
          killGroup(serve);
        }, 30_000);
        await exited;
        clearTimeout(timer);
      }
      assert.equal(serve.exitCode, 0, `ringvm serve stopped cleanly on SIGTERM:\n${log}`);
    });

    test('a hub uplink (netdev=) on a stream: a guest on the hub reaches a guest behind it', async () => {
      // ringvm serve #1: guest A's export on hub 0, whose uplink is a stream server; ringvm serve #2: guest B's
      // export on a stream client of that socket. A ↔ hub ↔ uplink ↔ stream ↔ B.
      const [sa, sb, up] = [join(sockets, 'ua.sock'), join(sockets, 'ub.sock'), join(sockets, 'uplink.sock')];
      const hub = serveProcess([
        '--netdev',
        'hubport,id=na,hubid=0',
        '--netdev',
        'hubport,id=nu,hubid=0,netdev=s0',
        '--netdev',
        `stream,id=s0,server=on,addr.type=unix,addr.path=${up}`,
        '--export',
        `type=vhost-user-net,id=ea,netdev=na,addr.type=unix,addr.path=${sa},mac=52:54:00:96:00:11`,
      ]);
      const peer = serveProcess([
        '--netdev',
        `stream,id=s1,addr.type=unix,addr.path=${up},reconnect=1`,
        '--export',
        `type=vhost-user-net,id=eb,netdev=s1,addr.type=unix,addr.path=${sb},mac=52:54:00:96:00:12`,
      ]);
      try {
        await hub.listening(1);
        await peer.listening(1);
        const [a, b] = [`${PREFIX}.11`, `${PREFIX}.12`];
        const [ra, rb] = await Promise.all([
          uml(sa, `${upAndReach(a, b)} && ${receiveFile(b)}`),
          uml(sb, `${upAndReach(b, a)} && ${sendFile(a, '/host/data.bin')}`),
        ]);
        const logs = `\nhub serve:\n${hub.out()}${hub.err()}\npeer serve:\n${peer.out()}${peer.err()}`;
        assert.equal(ra.code, 0, output('guest A', ra) + logs);
        assert.equal(rb.code, 0, output('guest B', rb) + logs);
        assert.match(ra.stdout, /3 packets transmitted, 3 packets received/, output('guest A', ra));
        assert.match(rb.stdout, /3 packets transmitted, 3 packets received/, output('guest B', rb));
        assert.match(ra.stdout, new RegExp(`md5 ${dataMd5}`), `B → A over TCP\n${output('guest A', ra)}`);
      } finally {
        const [hubExit, peerExit] = await Promise.all([hub.stop(), peer.stop()]);
        assert.equal(hubExit, 0, `the hub's ringvm serve stopped cleanly:\n${hub.err()}`);
        assert.equal(peerExit, 0, `the peer's ringvm serve stopped cleanly:\n${peer.err()}`);
      }
    });
  },
);

describe('--netdev hubport options', () => {
  const plan = (...netdevs: string[]) => {
    const argv = netdevs.flatMap((n) => ['--netdev', n]);
    netdevs.forEach((_, i) => {
      argv.push('--export', `type=vhost-user-net,id=e${i},netdev=n${i},addr.path=${sockets}/x${i}.sock`);
    });
    return devicePlan(argv);
  };

  test('hubports with one hubid share a switch; each worker gets its port handle', async () => {
    const p = plan('hubport,id=n0,hubid=0', 'hubport,id=n1,hubid=0', 'hubport,id=n2,hubid=lan');
    assert.deepEqual(
      p.netdevs.map((n) => (n.kind === 'hubport' ? n.hubid : n.kind)),
      ['0', '0', 'lan'],
    );
    assert.deepEqual(
      p.exports.map((e) => (e.type === 'vhost-user-net' ? e.offloads : undefined)),
      [false, false, false],
      'no offloads: switch ports carry plain frames',
    );
    assert.throws(() => exportFactoryRef(p, p.exports[0] as ExportPlan), /hubport n0 without its switches/);
    const hubs = new NetHubs(p);
    try {
      const backend = (exportFactoryRef(p, p.exports[1] as ExportPlan, hubs).args as NetDeviceArgs).backend;
      assert.equal(backend.kind, 'switch-port');
      assert.equal(backend.handle.name, 'n1');
      assert.deepEqual(
        hubs.hub('0')?.ports.map((x) => x.name),
        ['n0', 'n1'],
      );
      assert.deepEqual(
        hubs.hub('lan')?.ports.map((x) => x.name),
        ['n2'],
      );
    } finally {
      await hubs.close();
    }
  });

  test('mistakes name the option and the key', () => {
    const usage = (netdev: string, re: RegExp, key: string) => {
      throwsUsageError(() => plan(netdev), re, { option: '--netdev', key });
    };
    usage('hubport,id=n0', /hubid/, 'hubid');
    usage('hubport,id=n0,hubid=a b', /'a b' is not a hub id/, 'hubid');
    usage('hubport,id=n0,hubid=', /must not be empty/, 'hubid');
    usage('hubport,id=n0,hubid=0,queues=2', /unknown key 'queues'/, 'queues');
  });

  test('netdev= plugs a tap, stream or passt netdev in as the hub uplink', () => {
    const p = devicePlan([
      '--netdev',
      'hubport,id=n0,hubid=0',
      '--netdev',
      'hubport,id=up0,hubid=0,netdev=s0',
      '--netdev',
      `stream,id=s0,server=on,addr.type=unix,addr.path=${sockets}/up.sock`,
      '--export',
      `type=vhost-user-net,id=e0,netdev=n0,addr.path=${sockets}/e0.sock`,
    ]);
    const up = p.netdevs.find((n) => n.id === 'up0');
    assert.ok(up?.kind === 'hubport');
    assert.equal(up.uplink, 's0');
    assert.equal(p.exports.length, 1);
  });

  test('uplink mistakes name the option and the key', () => {
    const usage = (argv: string[], re: RegExp, key: string, option = '--netdev') => {
      throwsUsageError(() => devicePlan(argv), re, { option, key });
    };
    const exp = (netdev: string, i = 0) => [
      '--export',
      `type=vhost-user-net,id=e${i},netdev=${netdev},addr.path=${sockets}/u${i}.sock`,
    ];
    const stream = ['--netdev', `stream,id=s0,addr.type=unix,addr.path=${sockets}/peer.sock`];
    const port = ['--netdev', 'hubport,id=n0,hubid=0'];
    usage(
      [...port, '--netdev', 'hubport,id=u,hubid=0,netdev=nope', ...exp('n0')],
      /'nope' is not a --netdev/,
      'netdev',
    );
    usage(
      [...port, '--netdev', 'hubport,id=u,hubid=0,netdev=n0', ...exp('n0')],
      /'n0' is a hubport/,
      'netdev',
    );
    usage(
      [...port, '--netdev', 'tap,id=t,queues=2', '--netdev', 'hubport,id=u,hubid=0,netdev=t', ...exp('n0')],
      /queues=2; a hub's uplink has one queue/,
      'netdev',
    );
    usage(
      [...port, ...stream, '--netdev', 'hubport,id=u,hubid=0,netdev=s0', ...exp('n0'), ...exp('s0', 1)],
      /'s0' is already the host side of|already the uplink/,
      'netdev',
      '--export',
    );
    usage(
      [
        ...port,
        ...stream,
        '--netdev',
        'hubport,id=u,hubid=0,netdev=s0',
        '--netdev',
        'hubport,id=v,hubid=0,netdev=s0',
        ...exp('n0'),
      ],
      /'s0' is already the uplink of --netdev id=u/,
      'netdev',
    );
    usage(
      [...port, ...stream, '--netdev', 'hubport,id=u,hubid=0,netdev=s0', ...exp('n0'), ...exp('u', 1)],
      /'u' is the port of its uplink --netdev 's0'/,
      'netdev',
      '--export',
    );
    usage(
      [...port, ...stream, '--netdev', 'hubport,id=u,hubid=9,netdev=s0', ...exp('n0')],
      /hubid=9 has no port for an export/,
      'hubid',
    );
  });
});
