/**
 * Two UML guests on ringvm's in-process L2 switch, put together from TypeScript as a library user would: one
 * NetSwitch in this thread, one shared port per guest, each port the back end of a virtio-net export whose device
 * runs in that export's worker (`{ kind: 'switch-port', handle }`). The guests (static addresses, the kernel's own
 * virtio_net) ping each other and move a file over TCP with a matching checksum; a frame callback on the switch
 * sees the traffic of both ports, and the switch has learned both MACs.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { NetSwitch } from '../../../src/backends/net/net-switch.js';
import type { NetDeviceArgs } from '../../../src/cli/device-factories.js';
import { DEVICE_FACTORIES_MODULE } from '../../../src/cli/export-runner.js';
import { VhostUserExport } from '../../../src/transport/vhost-user/vhost-user-export.js';
import { MiB, run, script, type RunResult } from '../../guest/guest-harness.js';
import { makeNetGuestDir } from '../../guest/net-export-rig.js';
import { receiveFile, sendFile, upAndReach } from '../../guest/net-peer-shell.js';

/** A healthy pair takes seconds; a guest whose peer died gives up after a minute (net-peer-shell's retry). */
const GUEST_MS = 120_000;
const A = '10.95.0.1';
const B = '10.95.0.2';
const MACS = ['52:54:00:95:00:01', '52:54:00:95:00:02'] as const;

let dir = '';
let dataMd5 = '';

before(async () => {
  ({ dir, dataMd5 } = makeNetGuestDir('uml-net-switch', 8 * MiB, 0x5a17));
  const build = await run(script('build-uml'), [], 20 * 60_000);
  assert.equal(build.code, 0, `build-uml failed:\n${build.stdout}\n${build.stderr}`);
});
after(() => {
  rmSync(dir, { recursive: true, force: true });
});

function guest(socket: string, cmd: string): Promise<RunResult> {
  return run(
    script('run-uml'),
    ['--timeout', String(GUEST_MS / 1000 - 10), '--dev', `${socket}:1`, '--share', dir, '--', cmd],
    GUEST_MS,
  );
}

const output = (name: string, r: RunResult): string => `${name} (exit ${r.code}):\n${r.stdout}\n${r.stderr}`;

describe('two UML guests on the in-process switch', { timeout: 10 * 60_000 }, () => {
  test('ping both ways and 8 MiB over TCP through one NetSwitch; the switch sees and learns both', async () => {
    const sw = new NetSwitch();
    const seen = new Map<string, number>();
    sw.onFrame((_frame, from) => {
      seen.set(from.name, (seen.get(from.name) ?? 0) + 1);
      return true;
    });
    const ports = [sw.addSharedPort({ name: 'vm-a' }), sw.addSharedPort({ name: 'vm-b' })];
    const log: string[] = [];
    const exports: VhostUserExport[] = [];
    try {
      for (const [i, port] of ports.entries()) {
        const args: NetDeviceArgs = {
          backend: { kind: 'switch-port', handle: port.handle },
          queuePairs: 1,
          mac: MACS[i] as string,
          offloads: false,
        };
        exports.push(
          await VhostUserExport.start({
            socketPath: join(dir, `sw-${i}.sock`),
            device: { module: DEVICE_FACTORIES_MODULE, name: 'createNetDevice', args },
            onLog: (line) => log.push(`[${i}] ${line}`),
          }),
        );
      }
      const [ra, rb] = await Promise.all([
        guest(join(dir, 'sw-0.sock'), `${upAndReach(A, B)} && ${receiveFile(B)}`),
        guest(join(dir, 'sw-1.sock'), `${upAndReach(B, A)} && ${sendFile(A, '/host/data.bin')}`),
      ]);
      assert.equal(ra.code, 0, `${output('guest A', ra)}\n${log.join('\n')}`);
      assert.equal(rb.code, 0, `${output('guest B', rb)}\n${log.join('\n')}`);
      assert.match(ra.stdout, /3 packets transmitted, 3 packets received/);
      assert.match(rb.stdout, /3 packets transmitted, 3 packets received/);
      assert.match(ra.stdout, new RegExp(`md5 ${dataMd5}`), 'B → A over TCP');
      // 8 MiB in frames of at most 1514 bytes: thousands each way through the callback.
      assert.ok((seen.get('vm-b') ?? 0) > (8 * MiB) / 1514, JSON.stringify([...seen]));
      assert.ok((seen.get('vm-a') ?? 0) > 100, JSON.stringify([...seen]));
      const learned = sw.macTable().map((e) => e.mac);
      for (const mac of MACS) assert.ok(learned.includes(mac), `${mac} learned: ${learned.join(' ')}`);
    } finally {
      await Promise.all(exports.map((e) => e.stop()));
      await sw.close();
    }
  });
});
