/**
 * A ringvm virtio-net export on a new tap whose host side lives in a network namespace made for the test, with
 * an address (`PREFIX.1/24`) and a DHCP server handing out `PREFIX.10`–`PREFIX.20`. What guest tests (UML or
 * QEMU) attach their guest to; `close()` stops the export and deletes the namespace.
 */
import { DEVICE_FACTORIES_MODULE } from '../../src/cli/export-runner.js';
import type { NetDeviceArgs } from '../../src/cli/device-factories.js';
import type { NetDeviceStats } from '../../src/devices/net/net-device.js';
import { VhostUserExport } from '../../src/transport/vhost-user/vhost-user-export.js';
import { pattern } from './guest-harness.js';
import { NetNamespace, uniqueName } from './net-namespace.js';
import type { ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** A guest test's shared directory (/host in the guest): the DHCP script and a file of test data. */
export interface NetGuestDir {
  readonly dir: string;
  /** `bytes` of deterministic data, what the guest and the host send each other. */
  readonly data: string;
  readonly dataMd5: string;
}

/** Makes a temporary {@link NetGuestDir} named after `name`, with `bytes` of data from `seed`. */
export function makeNetGuestDir(name: string, bytes: number, seed: number): NetGuestDir {
  const dir = mkdtempSync(join(tmpdir(), `ringvm-${name}-`));
  const data = join(dir, 'data.bin');
  const content = pattern(bytes, seed);
  writeFileSync(data, content);
  writeDhcpScript(dir);
  return { dir, data, dataMd5: createHash('md5').update(content).digest('hex') };
}

/** Writes `DIR/dhcp.sh`, the script busybox udhcpc runs in the guest: it configures the lease it got. */
export function writeDhcpScript(dir: string): void {
  writeFileSync(
    join(dir, 'dhcp.sh'),
    '#!/bin/sh\ncase "$1" in bound|renew) ifconfig "$interface" "$ip" netmask "$subnet" ;; esac\n',
    { mode: 0o755 },
  );
}

/** Guest shell: eth0 up, a DHCP lease (the shared dir is /host), its address printed, three pings to `host`. */
export function guestNetUp(host: string): string {
  return [
    'ip link set eth0 up',
    'udhcpc -i eth0 -n -q -t 20 -T 1 -s /host/dhcp.sh >/dev/null 2>&1',
    'ip -4 -o addr show eth0',
    `ping -c 3 -W 5 ${host}`,
  ].join(' && ');
}

/** Resolves when `child` (a socat writing a file) has exited: then every byte it received is in the file. */
export function exited(child: ChildProcess, what: string): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      reject(new Error(`${what} did not finish`));
    }, 60_000);
    child.on('exit', () => {
      clearTimeout(timer);
      resolve();
    });
  });
}

/** The guest's TCP ports for {@link NetExportRig.startTransferPeers}: it sends to the first, reads the second. */
export const TRANSFER_SINK_PORT = 5001;
export const TRANSFER_SOURCE_PORT = 5002;

/** Host-side peers of a one-shot transfer each way: a receiver writing a file, and a sender of a file. */
export interface TransferPeers {
  /** Where the receiver writes what the guest sent to {@link TRANSFER_SINK_PORT}. */
  readonly received: string;
  /** The receiving socat: once it has {@link exited}, `received` holds every byte. */
  readonly receiver: ChildProcess;
}

export interface NetExportRig {
  readonly ns: NetNamespace;
  readonly exp: VhostUserExport;
  /** The tap, now inside `ns`. */
  readonly ifname: string;
  /** The export's vhost-user socket. */
  readonly socket: string;
  /** What the export worker logged. */
  readonly log: readonly string[];
  stats(): Promise<NetDeviceStats>;
  /**
   * socat peers in the namespace: one connection's bytes to {@link TRANSFER_SINK_PORT} go to a file, and
   * `source` is served once on {@link TRANSFER_SOURCE_PORT}.
   */
  startTransferPeers(source: string): TransferPeers;
  close(): Promise<void>;
}

export interface NetExportRigOptions {
  /** Where the socket and udhcpd's files go. */
  readonly dir: string;
  /** The /24's first three octets, e.g. `10.99.0`. */
  readonly prefix: string;
  readonly queues?: number;
  readonly offloads?: boolean;
  readonly vnetHdr?: boolean;
}

export async function startNetExportRig(options: NetExportRigOptions): Promise<NetExportRig> {
  const ifname = uniqueName('rvt');
  const socket = join(options.dir, `${ifname}.sock`);
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
    ns.adopt(ifname, `${options.prefix}.1/24`);
    ns.startDhcp(ifname, options.prefix, options.dir);
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
    log,
    stats: async () => (await exp.control({ op: 'stats' })) as NetDeviceStats,
    startTransferPeers: (source) => {
      const received = join(options.dir, `received-${ifname}.bin`);
      const receiver = made.spawn([
        'socat',
        '-u',
        `TCP-LISTEN:${TRANSFER_SINK_PORT},reuseaddr`,
        `OPEN:${received},creat,trunc`,
      ]);
      made.spawn(['socat', '-u', `OPEN:${source}`, `TCP-LISTEN:${TRANSFER_SOURCE_PORT},reuseaddr`]);
      return { received, receiver };
    },
    close: async () => {
      await exp.stop();
      made.delete();
    },
  };
}
