/**
 * A UML guest behind passt, as a user runs it: `ringvm run --netdev passt,...` starts passt for the guest's eth0
 * (ringvm's virtio-net over vhost-user), the guest takes its address by DHCP from passt (busybox udhcpc) and
 * reaches a TCP server listening on the host's 127.0.0.1 at the gateway address (passt's default mapping of
 * the gateway to the host's loopback), moving a file each way with matching checksums. The receiving nc's stdin
 * is a FIFO the guest shell holds open: with stdin at /dev/null busybox nc half-closes at once, and passt then
 * stops sending to the guest after some 500 KB (seen with 4 MB).
 *
 * "The host" is a network namespace this test makes (and deletes): a veth uplink with a fixed address and a
 * default route, so passt's address plan (which it copies from the host's default-route interface) does not
 * depend on the machine's own network. Once `ringvm run` itself runs inside it (the plain `--netdev passt`),
 * once it runs outside and starts passt inside with `netns=` (and a guest address chosen with `address=`).
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { MiB, run, script, type RunResult } from '../guest/guest-harness.js';
import { makeNetGuestDir, exited } from '../guest/net-export-rig.js';
import { NetNamespace } from '../guest/net-namespace.js';
import { compiled, netGuestRunArgs } from './ringvm-process.js';

const GUEST_MS = 300_000;
/** The namespace's uplink: passt hands the guest this address and gateway unless told otherwise. */
const UPLINK = '10.213.7.2';
const GATEWAY = '10.213.7.1';
/** Each test's server has its own port (they share the namespace). */
const PORTS = { default: 5001, netns: 5011 } as const;

let dir = '';
let data = '';
let dataMd5 = '';
let ns: NetNamespace | undefined;

before(async () => {
  ({ dir, data, dataMd5 } = makeNetGuestDir('run-net-passt', 4 * MiB, 0x9a55));
  // build-uml installs the Debian packages (passt, socat, busybox) and builds the guest.
  const build = await run(script('build-uml'), [], 20 * 60_000);
  assert.equal(build.code, 0, `build-uml failed:\n${build.stdout}\n${build.stderr}`);
  ns = NetNamespace.create('rvpt');
  // Both ends of a veth pair inside: an uplink with carrier, an address and a default route, like a host's NIC.
  ns.ip('link', 'add', 'uplink0', 'type', 'veth', 'peer', 'name', 'uplink1');
  ns.ip('link', 'set', 'uplink1', 'up');
  ns.ip('addr', 'add', `${UPLINK}/24`, 'dev', 'uplink0');
  ns.ip('link', 'set', 'uplink0', 'up');
  ns.ip('route', 'add', 'default', 'via', GATEWAY);
});
after(() => {
  ns?.delete();
  rmSync(dir, { recursive: true, force: true });
});

function md5(path: string): string {
  return createHash('md5').update(readFileSync(path)).digest('hex');
}

type Tag = keyof typeof PORTS;

/**
 * socat servers on the namespace's 127.0.0.1 only: on the tag's port one writes what it receives to a file, on
 * the next one sends `data`. Resolves when both listen.
 */
async function loopbackServers(tag: Tag): Promise<{ received: string; receiver: ChildProcess }> {
  const n = ns!;
  const sink = PORTS[tag];
  const received = join(dir, `received-${tag}.bin`);
  const receiver = n.spawn([
    'socat',
    '-u',
    `TCP-LISTEN:${sink},bind=127.0.0.1,reuseaddr`,
    `OPEN:${received},creat,trunc`,
  ]);
  n.spawn(['socat', '-u', `OPEN:${data}`, `TCP-LISTEN:${sink + 1},bind=127.0.0.1,reuseaddr`]);
  const deadline = Date.now() + 60_000;
  for (;;) {
    const listening = n.exec(['ss', '-Hltn']);
    if (listening.includes(`127.0.0.1:${sink}`) && listening.includes(`127.0.0.1:${sink + 1}`)) break;
    if (Date.now() > deadline) throw new Error(`the loopback servers do not listen:\n${listening}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  return { received, receiver };
}

/** Guest shell: a DHCP lease from passt, then a file to the host's loopback and one back, through the gateway. */
function guestCmd(tag: Tag): string {
  return [
    'ip link set eth0 up',
    'udhcpc -i eth0 -n -q -t 20 -T 1 -s /host/dhcp.sh >/dev/null 2>&1',
    'ip -4 -o addr show eth0',
    `nc ${GATEWAY} ${PORTS[tag]} < /host/data.bin`,
    'mkfifo /tmp/hold',
    `{ nc ${GATEWAY} ${PORTS[tag] + 1} < /tmp/hold | md5sum > /tmp/got.md5 & } && exec 3> /tmp/hold && wait $! && exec 3>&-`,
    'echo "md5 $(cat /tmp/got.md5)"',
  ].join(' && ');
}

function ringvmRun(tag: Tag, netdev: string): string[] {
  return netGuestRunArgs(dir, netdev, guestCmd(tag));
}

function output(r: RunResult): string {
  return `ringvm run (exit ${r.code}):\n${r.stdout}\n${r.stderr}`;
}

/** Runs `file args` (a `ringvm run` of {@link ringvmRun}) against the tag's servers; checks lease and data. */
async function transfer(tag: Tag, file: string, args: string[], address: string): Promise<void> {
  const { received, receiver } = await loopbackServers(tag);
  const r = await run(file, args, GUEST_MS);
  assert.equal(r.code, 0, output(r));
  assert.match(
    r.stdout,
    new RegExp(`inet ${address.replaceAll('.', '\\.')}/`),
    `the DHCP lease\n${output(r)}`,
  );
  assert.match(r.stdout, new RegExp(`md5 ${dataMd5}`), `host loopback → guest\n${output(r)}`);
  await exited(receiver, 'the loopback receiver');
  assert.equal(md5(received), dataMd5, 'guest → host loopback');
}

describe(
  'a UML guest behind passt (ringvm run --netdev passt)',
  { skip: compiled ? false : 'runs from build/', timeout: 15 * 60_000 },
  () => {
    test('ringvm starts passt: DHCP, then TCP both ways with servers on the host loopback', async () => {
      // `ringvm run` in the namespace, as on a host: the guest's lease is the uplink's address (passt's default).
      await transfer(
        'default',
        'ip',
        ['netns', 'exec', ns!.name, process.execPath, ...ringvmRun('default', 'passt,id=n0')],
        UPLINK,
      );
    });

    test('netns= starts passt in a namespace, address= picks the guest address', async () => {
      const address = '10.213.7.15';
      await transfer(
        'netns',
        process.execPath,
        ringvmRun('netns', `passt,id=n0,netns=${ns!.name},address=${address},ipv6=off`),
        address,
      );
    });
  },
);
