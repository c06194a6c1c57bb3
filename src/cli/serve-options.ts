/**
 * The device options shared by `ringvm serve` and `ringvm run`, in qemu-storage-daemon's syntax, turned into a
 * typed, validated {@link DevicePlan}:
 *
 * ```
 * --blockdev driver=file,node-name=NAME,filename=PATH[,read-only=on]
 * --blockdev driver=qcow2|raw,node-name=NAME,file=FILE-NODE[,read-only=on]      (a format over a file node)
 * --blockdev driver=qcow2|raw,node-name=NAME,file.filename=PATH[,read-only=on]  (the same, one option)
 * --blockdev driver=memory,node-name=NAME,size=SIZE
 * --chardev socket,id=ID,path=PATH[,server=on|off][,wait=off][,reconnect=SECONDS]
 * --chardev stdio,id=ID
 * --chardev file,id=ID,path=PATH[,append=on]
 * --export type=vhost-user-blk,id=ID,node-name=NAME,addr.type=unix,addr.path=SOCK[,writable=on][,num-queues=N][,serial=S]
 * (every --export also takes [,poll-max-ns=N]: how long its worker may poll a ring before sleeping)
 * --export type=vhost-user-console,id=ID,addr.path=SOCK,chardev=ID[,name=PORTNAME]
 * --export type=vhost-user-rng,id=ID,addr.path=SOCK
 * --device virtserialport,export=ID,chardev=ID,name=NAME     (and virtconsole: another console port)
 * --netdev tap,id=ID[,ifname=NAME][,queues=N][,vnet_hdr=on|off]
 * --netdev stream,id=ID,addr.type=unix,addr.path=PATH[,server=on|off][,reconnect=SECONDS]
 * --netdev stream,id=ID,addr.type=inet,addr.host=HOST,addr.port=PORT[,server=on|off][,reconnect=SECONDS]
 * --netdev passt,id=ID[,path=PASST][,address=IP][,gateway=IP][,ipv6=on|off][,tcp-ports=SPEC][,udp-ports=SPEC][,netns=NAME]
 * --netdev passt,id=ID,socket=PATH                                (a running passt)
 * --netdev hubport,id=ID,hubid=HUB[,netdev=NETDEV]               (a port of in-process switch HUB)
 * --export type=vhost-user-net,id=ID,netdev=ID,addr.path=SOCK[,mac=MAC][,mtu=N][,queues=N][,offloads=on|off]
 * ```
 *
 * Two stages, both before anything listens: {@link buildDevicePlan} checks the options themselves (keys, types,
 * ids, references, socket paths given twice), {@link checkHostResources} checks the host (images exist, are
 * regular files and open with the access the export needs; socket directories exist; socket paths are free).
 * Every error is a {@link CliUsageError} whose message names the option, e.g.
 * `--export id=e0: node-name 'd1' is not a --blockdev`.
 */
import { constants, promises as fs, type Stats } from 'node:fs';
import net from 'node:net';
import { dirname, join, resolve } from 'node:path';
import { Qcow2Image } from '../backends/block/qcow2/index.js';
import { VirtioError } from '../virtio/errors.js';
import { CliUsageError } from './cli-error.js';
import { parseKeyValue, type KeyValueOptions } from './options.js';
import type { ArgvOption } from './argv.js';

/** The device options (the rest of a subcommand's options are its own). */
export const DEVICE_OPTIONS = ['--blockdev', '--chardev', '--export', '--device', '--netdev'] as const;

/** How a format node names its image file: a `--blockdev driver=file` node, or `file.filename` inline. */
export type FileReference = { readonly node: string } | { readonly filename: string };

export type BlockdevPlan =
  | {
      readonly driver: 'file';
      readonly nodeName: string;
      readonly filename: string;
      readonly readOnly: boolean;
      readonly label: string;
    }
  | {
      /** An image format over a file: qcow2 through the qcow2 back end, raw as the file's bytes. */
      readonly driver: 'qcow2' | 'raw';
      readonly nodeName: string;
      readonly file: FileReference;
      /** The image file (the referenced file node's filename, or `file.filename`). */
      readonly filename: string;
      /** This node or its file node is read-only=on. */
      readonly readOnly: boolean;
      readonly label: string;
    }
  | {
      readonly driver: 'memory';
      readonly nodeName: string;
      readonly size: number;
      readonly readOnly: boolean;
      readonly label: string;
    };

export type ChardevPlan =
  | {
      readonly backend: 'socket';
      readonly id: string;
      readonly path: string;
      readonly server: boolean;
      /** Client mode: retry the connection every this many ms. */
      readonly reconnectMs: number | undefined;
      readonly label: string;
    }
  | { readonly backend: 'stdio'; readonly id: string; readonly label: string }
  | {
      readonly backend: 'file';
      readonly id: string;
      readonly path: string;
      readonly append: boolean;
      readonly label: string;
    };

/**
 * The host side of a net export (`--netdev KIND,id=ID,...`, QEMU's -netdev syntax). One member per kind; a new
 * kind adds a member here, a case in {@link netdev} and one in export-runner's netBackendArgs.
 */
export type NetdevPlan = TapNetdevPlan | StreamNetdevPlan | PasstNetdevPlan | HubportNetdevPlan;

interface NetdevCommon {
  readonly id: string;
  /** Host-side queues: one per virtio-net queue pair, or 1 (one back end carries every pair). */
  readonly queues: number;
  /** Frames carry a virtio_net_hdr (offloads pass through); only a tap does. */
  readonly vnetHdr: boolean;
  readonly label: string;
}

export interface TapNetdevPlan extends NetdevCommon {
  readonly kind: 'tap';
  /** Attach to this interface or create it (absent: a new tapN). */
  readonly ifname: string | undefined;
}

/** QEMU's `-netdev stream` (4-byte big-endian length before each frame): a listening or connecting socket. */
export interface StreamNetdevPlan extends NetdevCommon {
  readonly kind: 'stream';
  readonly server: boolean;
  /** A unix path is absolute. */
  readonly address:
    | { readonly type: 'unix'; readonly path: string }
    | { readonly type: 'inet'; readonly host: string; readonly port: number };
  /** Client: retry a failed or lost connection after this long. */
  readonly reconnectMs: number | undefined;
}

/** User-mode networking through passt: ringvm starts one (its options below), or connects to `socket`. */
export interface PasstNetdevPlan extends NetdevCommon {
  readonly kind: 'passt';
  /** A running passt's `--socket` path (absolute); the other keys are for a passt ringvm starts. */
  readonly socket: string | undefined;
  /** The passt executable (default `passt` from PATH). */
  readonly command: string | undefined;
  /** passt's own options, from address/gateway/ipv6/tcp-ports/udp-ports. */
  readonly args: readonly string[];
  /** Start passt in this network namespace. */
  readonly netns: string | undefined;
}

/**
 * QEMU's `-netdev hubport`: a port of the in-process switch `hubid`, owned by the main thread of this ringvm
 * process. Every hubport with the same hubid is on one segment (a learning switch, not a hub: unicast goes only
 * to the port behind the destination address).
 */
export interface HubportNetdevPlan extends NetdevCommon {
  readonly kind: 'hubport';
  readonly hubid: string;
  /**
   * QEMU's `netdev=`: the id of a tap, stream or passt netdev plugged into the switch through this port (its
   * uplink), instead of an export's net device. It carries plain frames: a tap uplink is opened without vnet
   * headers.
   */
  readonly uplink: string | undefined;
}

export interface ConsolePortPlan {
  /** The --chardev id of the port's host side. */
  readonly chardev: string;
  readonly name: string | undefined;
  readonly console: boolean;
}

interface ExportCommon {
  readonly id: string;
  /** Absolute path of the vhost-user socket. */
  readonly socketPath: string;
  readonly label: string;
  /** `poll-max-ns`: the export worker's longest polling window (QEMU's iothread property); none: 0, no polling. */
  readonly pollMaxNs: number | undefined;
}

export interface BlkExportPlan extends ExportCommon {
  readonly type: 'vhost-user-blk';
  readonly nodeName: string;
  /** qemu-storage-daemon's `writable` (default off: the guest sees a read-only disk). */
  readonly writable: boolean;
  readonly numQueues: number | undefined;
  readonly serial: string | undefined;
}

export interface ConsoleExportPlan extends ExportCommon {
  readonly type: 'vhost-user-console';
  /** Port 0 first (the export's own chardev), then the --device ports in command-line order. */
  readonly ports: readonly ConsolePortPlan[];
}

export interface RngExportPlan extends ExportCommon {
  readonly type: 'vhost-user-rng';
}

export interface NetExportPlan extends ExportCommon {
  readonly type: 'vhost-user-net';
  /** The --netdev id of its host side. */
  readonly netdev: string;
  readonly mac: string;
  readonly mtu: number | undefined;
  /** Queue pairs (MQ when more than 1). */
  readonly queues: number;
  /** Offer checksum/TSO offloads (only possible over a vnet-header tap). */
  readonly offloads: boolean;
}

export type ExportPlan = BlkExportPlan | ConsoleExportPlan | RngExportPlan | NetExportPlan;
export type ExportType = ExportPlan['type'];

export interface DevicePlan {
  readonly blockdevs: readonly BlockdevPlan[];
  readonly chardevs: readonly ChardevPlan[];
  readonly netdevs: readonly NetdevPlan[];
  readonly exports: readonly ExportPlan[];
}

export interface DevicePlanOptions {
  /**
   * Where sockets go when an export has no `addr.path` (`ringvm run`: a private temporary directory). Without
   * it `addr.path` is required.
   */
  readonly defaultSocketDir?: string;
}

/** The virtio device id of each export type (what UML's `virtio_uml.device=SOCK:ID` wants). */
export const VIRTIO_DEVICE_ID: Readonly<Record<ExportType, number>> = {
  'vhost-user-blk': 2,
  'vhost-user-console': 3,
  'vhost-user-rng': 4,
  'vhost-user-net': 1,
};

const EXPORT_TYPES: readonly ExportType[] = [
  'vhost-user-blk',
  'vhost-user-console',
  'vhost-user-rng',
  'vhost-user-net',
];
/** Interface names: at most IFNAMSIZ - 1 bytes, no '/', ':' or whitespace (Linux dev_valid_name). */
const IFNAME = /^[A-Za-z0-9_.-]{1,15}$/;
/** Linux MAX_TAP_QUEUES; also far more virtqueue pairs than a vhost-user front end sets up. */
const MAX_NET_QUEUES = 256;
const MAX_PORT = 65_535;
/** A `--netdev hubport` hubid: QEMU's number, or a name. */
const HUB_ID = /^[A-Za-z0-9_.-]{1,64}$/;
/** What `ip netns` accepts as a name (a file under /run/netns). */
const NETNS = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$/;
/** passt's -t/-u forwarding syntax: [ADDR/]PORT[-PORT][:PORT[-PORT]], `~` exclusions, `all`, `auto`, `none`. */
const PORT_SPEC = /^[A-Za-z0-9:~/%._-]{1,128}$/;
/** virtio-net MTU bounds (net-config.ts: NET_MTU_MIN, NET_MTU_MAX). */
const MIN_MTU = 68;
const MAX_MTU = 65517;
const MAC = /^[0-9a-f]{2}(?::[0-9a-f]{2}){5}$/i;
/** Default MACs: QEMU's 52:54:00:12:34:56, then one up per net export. */
const DEFAULT_MAC_PREFIX = '52:54:00:12:34:';
const DEFAULT_MAC_LAST = 0x56;
const ID = /^[A-Za-z][A-Za-z0-9_.-]*$/;
/** sun_path is 108 bytes on Linux, the last one a NUL. */
const MAX_SOCKET_PATH_BYTES = 107;
/** virtio-blk GET_ID: 20 bytes. */
const MAX_SERIAL_BYTES = 20;
/** QEMU's VIRTIO_QUEUE_MAX (1024 queues) less the control pair, over two queues per port. */
const MAX_CONSOLE_PORTS = 511;
const MAX_PORT_NAME_BYTES = 4096;
const MAX_QUEUES = 0xffff;
/** The longest `poll-max-ns` accepted: 10 ms (a window that long already spins a core for nothing). */
const MAX_POLL_NS = 10_000_000;

/** Checks an `id`/`node-name` value the way QEMU does (a letter, then letters, digits, `-`, `.`, `_`). */
function identifier(o: KeyValueOptions, key: string): string {
  const value = o.string(key);
  if (!ID.test(value)) {
    throw o.error(
      `'${value}' is not a valid identifier (a letter, then letters, digits, '-', '.', '_')`,
      key,
    );
  }
  return value;
}

/**
 * Parses and cross-checks the device options (in command-line order). Options other than
 * {@link DEVICE_OPTIONS} are ignored (they belong to the subcommand).
 */
export function buildDevicePlan(argv: readonly ArgvOption[], options: DevicePlanOptions = {}): DevicePlan {
  const blockdevs: BlockdevPlan[] = [];
  const chardevs: ChardevPlan[] = [];
  const netdevs: NetdevPlan[] = [];
  const exportOptions: KeyValueOptions[] = [];
  const deviceOptions: KeyValueOptions[] = [];

  for (const { name, value } of argv) {
    switch (name) {
      case '--blockdev':
        blockdevs.push(blockdev(parseKeyValue(name, value)));
        break;
      case '--chardev':
        chardevs.push(chardev(parseKeyValue(name, value, { impliedKey: 'backend' })));
        break;
      case '--netdev':
        netdevs.push(netdev(parseKeyValue(name, value, { impliedKey: 'type' })));
        break;
      case '--export':
        exportOptions.push(parseKeyValue(name, value));
        break;
      case '--device':
        deviceOptions.push(parseKeyValue(name, value, { impliedKey: 'driver' }));
        break;
      default:
        break;
    }
  }

  const blockdevByName = new Map<string, BlockdevPlan>();
  for (const b of blockdevs) {
    const other = blockdevByName.get(b.nodeName);
    if (other !== undefined) {
      throw new CliUsageError(`${b.label}: node-name '${b.nodeName}' is already used`, b.nodeName, {
        option: '--blockdev',
        key: 'node-name',
      });
    }
    blockdevByName.set(b.nodeName, b);
  }
  resolveFileReferences(blockdevs, blockdevByName);
  const chardevById = new Map<string, ChardevPlan>();
  for (const c of chardevs) {
    if (chardevById.has(c.id)) {
      throw new CliUsageError(`${c.label}: id '${c.id}' is already used by another --chardev`, c.id, {
        option: '--chardev',
        key: 'id',
      });
    }
    if (c.backend === 'stdio' && chardevs.some((o) => o !== c && o.backend === 'stdio')) {
      throw new CliUsageError(`${c.label}: only one stdio chardev can exist`, c.id, { option: '--chardev' });
    }
    chardevById.set(c.id, c);
  }

  const netdevById = new Map<string, NetdevPlan>();
  for (const n of netdevs) {
    if (netdevById.has(n.id)) {
      throw new CliUsageError(`${n.label}: id '${n.id}' is already used by another --netdev`, n.id, {
        option: '--netdev',
        key: 'id',
      });
    }
    netdevById.set(n.id, n);
  }
  const netdevUser = new Map<string, string>();
  for (const n of netdevs) {
    if (n.kind !== 'hubport' || n.uplink === undefined) continue;
    const uplink = n.uplink;
    const fail = (message: string): never => {
      throw new CliUsageError(`${n.label}: netdev: ${message}`, uplink, {
        option: '--netdev',
        key: 'netdev',
      });
    };
    const up = netdevById.get(uplink);
    if (up === undefined) fail(`'${uplink}' is not a --netdev`);
    else if (up.kind === 'hubport')
      fail(`'${uplink}' is a hubport (a hub's uplink is a tap, stream or passt)`);
    else if (up.queues > 1) fail(`${up.label} has queues=${up.queues}; a hub's uplink has one queue`);
    const user = netdevUser.get(uplink);
    if (user !== undefined) fail(`--netdev '${uplink}' is already the uplink of ${user}`);
    netdevUser.set(uplink, n.label);
    // The port itself is taken by its uplink (netExport refuses an export on it).
    netdevUser.set(n.id, `its uplink --netdev '${uplink}'`);
  }

  /** chardev id → the label of the port that uses it. */
  const chardevUser = new Map<string, string>();
  const useChardev = (o: KeyValueOptions, key: string, id: string): void => {
    if (!chardevById.has(id)) throw o.error(`'${id}' is not a --chardev`, key);
    const user = chardevUser.get(id);
    if (user !== undefined) {
      throw o.error(`--chardev '${id}' is already the host side of ${user} (one port per chardev)`, key);
    }
    chardevUser.set(id, o.label);
  };
  const blockdevUser = new Map<string, string>();

  const exports: (
    BlkExportPlan | RngExportPlan | NetExportPlan | (ConsoleExportPlan & { ports: ConsolePortPlan[] })
  )[] = [];
  let netExports = 0;
  const exportById = new Map<string, (typeof exports)[number]>();
  for (const o of exportOptions) {
    o.identifyBy('id');
    const type = o.choice('type', EXPORT_TYPES);
    const id = identifier(o, 'id');
    if (exportById.has(id)) throw o.error(`'${id}' is already used by another --export`, 'id');
    o.choice('addr.type', ['unix'], 'unix');
    const given = o.optionalString('addr.path');
    let socketPath: string;
    if (given !== undefined) {
      if (given === '') throw o.error('must not be empty', 'addr.path');
      socketPath = resolve(given);
    } else if (options.defaultSocketDir !== undefined) {
      socketPath = join(options.defaultSocketDir, `${id}.sock`);
    } else {
      throw o.error('missing (required: the vhost-user socket to listen on)', 'addr.path', '');
    }
    const pollMaxNs = o.optionalInteger('poll-max-ns', 0, MAX_POLL_NS);
    const common = { id, socketPath, label: o.label, pollMaxNs };
    let plan: (typeof exports)[number];
    if (type === 'vhost-user-blk') {
      const nodeName = o.string('node-name');
      const writable = o.bool('writable', false);
      const numQueues = o.optionalInteger('num-queues', 1, MAX_QUEUES);
      const serial = o.optionalString('serial');
      if (serial !== undefined && !/^[\x20-\x7e]*$/.test(serial)) {
        throw o.error(`'${serial}' must be printable ASCII`, 'serial');
      }
      if (serial !== undefined && serial.length > MAX_SERIAL_BYTES) {
        throw o.error(`'${serial}' is longer than ${MAX_SERIAL_BYTES} bytes`, 'serial');
      }
      const b = blockdevByName.get(nodeName);
      if (b === undefined) throw o.error(`'${nodeName}' is not a --blockdev`, 'node-name');
      const owner = formatNodeOver(blockdevs, nodeName);
      if (owner !== undefined) {
        throw o.error(
          `--blockdev '${nodeName}' is the file of ${owner.label} (driver=${owner.driver}): export '${owner.nodeName}'`,
          'node-name',
        );
      }
      const user = blockdevUser.get(nodeName);
      if (user !== undefined)
        throw o.error(`--blockdev '${nodeName}' is already exported by ${user}`, 'node-name');
      blockdevUser.set(nodeName, o.label);
      if (writable && b.readOnly) {
        throw o.error(`writable=on, but ${b.label} is read-only=on`, 'writable');
      }
      plan = { type, ...common, nodeName, writable, numQueues, serial };
    } else if (type === 'vhost-user-console') {
      const chardevId = o.string('chardev');
      useChardev(o, 'chardev', chardevId);
      const name = portName(o);
      plan = { type, ...common, ports: [{ chardev: chardevId, name, console: true }] };
    } else if (type === 'vhost-user-net') {
      plan = { type, ...common, ...netExport(o, netdevById, netdevUser, netExports++) };
    } else {
      plan = { type, ...common };
    }
    o.finish();
    exportById.set(id, plan);
    exports.push(plan);
  }

  const deviceIds = new Set<string>();
  for (const o of deviceOptions) {
    o.identifyBy('id');
    const driver = o.choice('driver', ['virtserialport', 'virtconsole']);
    const id = o.has('id') ? identifier(o, 'id') : undefined;
    if (id !== undefined) {
      if (deviceIds.has(id)) throw o.error(`'${id}' is already used by another --device`, 'id');
      deviceIds.add(id);
    }
    const exportId = o.string('export');
    const target = exportById.get(exportId);
    if (target === undefined) throw o.error(`'${exportId}' is not an --export`, 'export');
    if (target.type !== 'vhost-user-console') {
      throw o.error(`--export '${exportId}' is a ${target.type}, not a vhost-user-console`, 'export');
    }
    const chardevId = o.string('chardev');
    useChardev(o, 'chardev', chardevId);
    const name = portName(o);
    if (driver === 'virtserialport' && name === undefined) {
      throw o.error(
        'missing (a virtserialport needs a name: /dev/virtio-ports/NAME in the guest)',
        'name',
        '',
      );
    }
    if (name !== undefined && target.ports.some((p) => p.name === name)) {
      throw o.error(`port name '${name}' is already used on --export id=${exportId}`, 'name');
    }
    if (target.ports.length >= MAX_CONSOLE_PORTS) {
      throw o.error(
        `--export id=${exportId} already has ${MAX_CONSOLE_PORTS} ports (the most a device can have)`,
      );
    }
    o.finish();
    target.ports.push({ chardev: chardevId, name, console: driver === 'virtconsole' });
  }

  for (const c of chardevs) {
    if (!chardevUser.has(c.id)) {
      throw new CliUsageError(
        `${c.label}: not used by any port (give it to a vhost-user-console --export or a --device virtserialport)`,
        c.id,
        { option: '--chardev' },
      );
    }
  }

  for (const n of netdevs) {
    if (n.kind !== 'hubport' || n.uplink === undefined) continue;
    const hubid = n.hubid;
    if (!netdevs.some((x) => x.kind === 'hubport' && x.hubid === hubid && x.uplink === undefined)) {
      throw new CliUsageError(
        `${n.label}: hubid=${hubid} has no port for an export (add --netdev hubport,id=...,hubid=${hubid} and an export on it)`,
        hubid,
        { option: '--netdev', key: 'hubid' },
      );
    }
  }

  for (const n of netdevs) {
    if (!netdevUser.has(n.id)) {
      throw new CliUsageError(`${n.label}: not used by any --export type=vhost-user-net or hubport`, n.id, {
        option: '--netdev',
      });
    }
  }

  // Every path the command creates or listens on, once.
  const paths = new Map<string, string>();
  const claim = (path: string, label: string, key: string): void => {
    const other = paths.get(path);
    if (other !== undefined) {
      throw new CliUsageError(`${label}: ${key}: '${path}' is also used by ${other}`, path, {
        option: label.split(' ')[0] as string,
        key,
      });
    }
    paths.set(path, label);
  };
  for (const e of exports) claim(e.socketPath, e.label, 'addr.path');
  for (const n of netdevs) {
    if (n.kind === 'stream' && n.address.type === 'unix') claim(n.address.path, n.label, 'addr.path');
  }
  for (const c of chardevs) if (c.backend !== 'stdio') claim(c.path, c.label, 'path');
  for (const b of blockdevs) {
    if (b.driver === 'file') claim(b.filename, b.label, 'filename');
    else if ((b.driver === 'qcow2' || b.driver === 'raw') && 'filename' in b.file) {
      claim(b.filename, b.label, 'file.filename');
    }
  }

  return { blockdevs, chardevs, netdevs, exports };
}

/** The vhost-user-net keys of one --export, checked against its --netdev. */
function netExport(
  o: KeyValueOptions,
  netdevById: ReadonlyMap<string, NetdevPlan>,
  netdevUser: Map<string, string>,
  index: number,
): Omit<NetExportPlan, 'type' | keyof ExportCommon> {
  const netdevId = o.string('netdev');
  const n = netdevById.get(netdevId);
  if (n === undefined) throw o.error(`'${netdevId}' is not a --netdev`, 'netdev');
  if (n.kind === 'hubport' && n.uplink !== undefined) {
    throw o.error(
      `'${netdevId}' is the port of its uplink --netdev '${n.uplink}' (give the export a hubport of its own)`,
      'netdev',
    );
  }
  const user = netdevUser.get(netdevId);
  if (user !== undefined)
    throw o.error(`--netdev '${netdevId}' is already the host side of ${user}`, 'netdev');
  netdevUser.set(netdevId, o.label);
  const mac =
    o.optionalString('mac') ??
    `${DEFAULT_MAC_PREFIX}${(DEFAULT_MAC_LAST + index).toString(16).padStart(2, '0').slice(-2)}`;
  if (!MAC.test(mac)) throw o.error(`'${mac}' is not a MAC address like 52:54:00:12:34:56`, 'mac');
  if ((parseInt(mac.slice(0, 2), 16) & 1) !== 0) throw o.error(`'${mac}' is a multicast address`, 'mac');
  const mtu = o.optionalInteger('mtu', MIN_MTU, MAX_MTU);
  const queues = o.optionalInteger('queues', 1, MAX_NET_QUEUES) ?? n.queues;
  if (n.queues > 1 && queues !== n.queues) {
    throw o.error(
      `${queues} queue pairs, but ${n.label} has queues=${n.queues} (one tap queue per pair)`,
      'queues',
    );
  }
  const offloads = o.bool('offloads', n.vnetHdr);
  if (offloads && !n.vnetHdr) {
    const why = n.kind === 'tap' ? 'has vnet_hdr=off' : `carries plain frames (only a tap has vnet headers)`;
    throw o.error(`offloads=on needs vnet headers, but ${n.label} ${why}`, 'offloads');
  }
  return { netdev: netdevId, mac: mac.toLowerCase(), mtu, queues, offloads };
}

function netdev(o: KeyValueOptions): NetdevPlan {
  o.identifyBy('id');
  const kind = o.choice('type', ['tap', 'stream', 'passt', 'hubport']);
  const id = identifier(o, 'id');
  let plan: NetdevPlan;
  switch (kind) {
    case 'tap': {
      const ifname = o.optionalString('ifname');
      if (ifname !== undefined && !IFNAME.test(ifname)) {
        throw o.error(
          `'${ifname}' is not an interface name (1 to 15 letters, digits, '-', '.', '_')`,
          'ifname',
        );
      }
      const queues = o.optionalInteger('queues', 1, MAX_NET_QUEUES) ?? 1;
      const vnetHdr = o.bool('vnet_hdr', true);
      plan = { kind, id, ifname, queues, vnetHdr, label: o.label };
      break;
    }
    case 'stream':
      plan = { kind, id, ...streamNetdev(o), queues: 1, vnetHdr: false, label: o.label };
      break;
    case 'passt':
      plan = { kind, id, ...passtNetdev(o), queues: 1, vnetHdr: false, label: o.label };
      break;
    case 'hubport': {
      // QEMU's hubid is a number; a name is accepted too (`hubid=0`, `hubid=lan`).
      const hubid = o.string('hubid');
      if (!HUB_ID.test(hubid)) {
        throw o.error(`'${hubid}' is not a hub id (1 to 64 letters, digits, '-', '.', '_')`, 'hubid');
      }
      const uplink = o.optionalString('netdev');
      plan = { kind, id, hubid, uplink, queues: 1, vnetHdr: false, label: o.label };
      break;
    }
  }
  o.finish();
  return plan;
}

/** The keys of `--netdev stream`: QEMU 7.2's NetdevStreamOptions (addr.*, server), and reconnect as QEMU 8.0 added it. */
function streamNetdev(o: KeyValueOptions): Pick<StreamNetdevPlan, 'server' | 'address' | 'reconnectMs'> {
  const server = o.bool('server', false);
  const type = o.choice('addr.type', ['unix', 'inet']);
  const only = (key: string, forType: string): void => {
    if (o.has(key)) throw o.error(`only for addr.type=${forType}`, key);
  };
  let address: StreamNetdevPlan['address'];
  if (type === 'unix') {
    only('addr.host', 'inet');
    only('addr.port', 'inet');
    address = { type, path: resolve(o.string('addr.path')) };
  } else {
    only('addr.path', 'unix');
    const host = o.string('addr.host');
    // A server may ask for port 0 (any free port); a client must name one.
    const port = o.optionalInteger('addr.port', server ? 0 : 1, MAX_PORT);
    if (port === undefined) throw o.error('missing (required with addr.type=inet)', 'addr.port', '');
    address = { type, host, port };
  }
  return { server, address, reconnectMs: reconnectMs(o, server) };
}

/** `reconnect=SECONDS` of a socket client (a chardev or a stream netdev), in ms; 0 or absent: undefined. */
function reconnectMs(o: KeyValueOptions, server: boolean): number | undefined {
  const reconnect = o.optionalInteger('reconnect', 0, 86_400);
  if (reconnect === undefined || reconnect === 0) return undefined;
  if (server) throw o.error('only for server=off (a client reconnects; a server listens)', 'reconnect');
  return reconnect * 1000;
}

/** The keys of `--netdev passt`: a running passt's socket, or how to start one. */
function passtNetdev(o: KeyValueOptions): Pick<PasstNetdevPlan, 'socket' | 'command' | 'args' | 'netns'> {
  const socketPath = o.optionalString('socket');
  const spawnKeys = ['path', 'address', 'gateway', 'ipv6', 'tcp-ports', 'udp-ports', 'netns'];
  if (socketPath !== undefined) {
    const extra = spawnKeys.find((k) => o.has(k));
    if (extra !== undefined) {
      throw o.error(
        'only for a passt ringvm starts (not with socket=, which connects to a running one)',
        extra,
      );
    }
    if (socketPath === '') throw o.error('must not be empty', 'socket');
    return { socket: resolve(socketPath), command: undefined, args: [], netns: undefined };
  }
  const command = o.optionalString('path');
  if (command === '') throw o.error('must not be empty', 'path');
  const args: string[] = [];
  for (const key of ['address', 'gateway'] as const) {
    const ip = o.optionalString(key);
    if (ip === undefined) continue;
    if (net.isIPv4(ip)) args.push(`--${key}`, ip);
    else throw o.error(`'${ip}' is not an IPv4 address`, key);
  }
  if (!o.bool('ipv6', true)) args.push('--ipv4-only');
  // Forwarding specs in passt's own syntax (e.g. 2222:22, 8000-8010); passt itself reports a bad one.
  for (const key of ['tcp-ports', 'udp-ports'] as const) {
    const spec = o.optionalString(key);
    if (spec === undefined) continue;
    if (!PORT_SPEC.test(spec))
      throw o.error(`'${spec}' is not a passt port specification (e.g. 2222:22)`, key);
    args.push(`--${key}`, spec);
  }
  const netns = o.optionalString('netns');
  if (netns !== undefined && !NETNS.test(netns)) {
    throw o.error(`'${netns}' is not a network namespace name (letters, digits, '-', '.', '_')`, 'netns');
  }
  return { socket: undefined, command, args, netns };
}

function portName(o: KeyValueOptions): string | undefined {
  const name = o.optionalString('name');
  if (name === undefined) return undefined;
  if (name === '') throw o.error('must not be empty', 'name');
  if (Buffer.byteLength(name) > MAX_PORT_NAME_BYTES) {
    throw o.error(`longer than ${MAX_PORT_NAME_BYTES} bytes`, 'name');
  }
  return name;
}

/** The format node (qcow2, raw) whose file is node `nodeName`, if any. */
function formatNodeOver(
  blockdevs: readonly BlockdevPlan[],
  nodeName: string,
): (BlockdevPlan & { driver: 'qcow2' | 'raw' }) | undefined {
  for (const b of blockdevs) {
    if ((b.driver === 'qcow2' || b.driver === 'raw') && 'node' in b.file && b.file.node === nodeName)
      return b;
  }
  return undefined;
}

/**
 * Gives each format node its file's filename and read-only flag: `file=NODE` must name a `driver=file` node that
 * no other format node uses.
 */
function resolveFileReferences(blockdevs: BlockdevPlan[], byName: Map<string, BlockdevPlan>): void {
  const usedBy = new Map<string, string>();
  blockdevs.forEach((b, i) => {
    if ((b.driver !== 'qcow2' && b.driver !== 'raw') || !('node' in b.file)) return;
    const fail = (message: string): CliUsageError =>
      new CliUsageError(`${b.label}: file: ${message}`, 'node' in b.file ? b.file.node : '', {
        option: '--blockdev',
        key: 'file',
      });
    const file = byName.get(b.file.node);
    if (file === undefined) throw fail(`'${b.file.node}' is not a --blockdev`);
    if (file.driver !== 'file') {
      throw fail(
        `--blockdev '${b.file.node}' is driver=${file.driver}; a ${b.driver} node's file must be driver=file`,
      );
    }
    const other = usedBy.get(file.nodeName);
    if (other !== undefined) throw fail(`--blockdev '${file.nodeName}' is already the file of ${other}`);
    usedBy.set(file.nodeName, b.label);
    const resolved: BlockdevPlan = { ...b, filename: file.filename, readOnly: b.readOnly || file.readOnly };
    blockdevs[i] = resolved;
    byName.set(b.nodeName, resolved);
  });
}

function blockdev(o: KeyValueOptions): BlockdevPlan {
  o.identifyBy('node-name');
  const driver = o.choice('driver', ['file', 'memory', 'qcow2', 'raw']);
  const nodeName = identifier(o, 'node-name');
  const readOnly = o.bool('read-only', false);
  let plan: BlockdevPlan;
  if (driver === 'file') {
    const filename = resolve(o.string('filename'));
    plan = { driver, nodeName, filename, readOnly, label: o.label };
  } else if (driver === 'qcow2' || driver === 'raw') {
    const node = o.optionalString('file');
    const inline = o.optionalString('file.filename');
    o.choice('file.driver', ['file'], 'file');
    if (o.has('file.driver') && inline === undefined) {
      throw o.error('only with file.filename (file=NODE names a whole --blockdev)', 'file.driver');
    }
    let file: FileReference;
    if (node !== undefined && inline !== undefined) {
      throw o.error('give file=NODE or file.filename=PATH, not both', 'file');
    } else if (node !== undefined) {
      if (node === '') throw o.error('must not be empty', 'file');
      file = { node };
    } else if (inline !== undefined) {
      if (inline === '') throw o.error('must not be empty', 'file.filename');
      file = { filename: resolve(inline) };
    } else {
      throw o.error(
        `missing (required: file=NODE, a --blockdev driver=file node, or file.filename=PATH)`,
        'file',
        '',
      );
    }
    // A node reference is resolved once every --blockdev is known (resolveFileReferences).
    plan = {
      driver,
      nodeName,
      file,
      filename: 'filename' in file ? file.filename : '',
      readOnly,
      label: o.label,
    };
  } else {
    const size = o.optionalSize('size');
    if (size === undefined) throw o.error('missing (required: the RAM disk size, e.g. 64M)', 'size', '');
    if (size === 0 || size % 512 !== 0)
      throw o.error(`${size} is not a positive multiple of 512 bytes`, 'size');
    if (size > 2 ** 40) throw o.error(`${size} bytes is more than 1T`, 'size');
    plan = { driver, nodeName, size, readOnly, label: o.label };
  }
  o.finish();
  return plan;
}

function chardev(o: KeyValueOptions): ChardevPlan {
  o.identifyBy('id');
  const backend = o.choice('backend', ['socket', 'stdio', 'file']);
  const id = identifier(o, 'id');
  let plan: ChardevPlan;
  if (backend === 'socket') {
    const path = resolve(o.string('path'));
    const server = o.bool('server', false);
    if (o.bool('wait', false)) {
      throw o.error(
        'wait=on is not supported: ringvm never waits for a chardev client before serving',
        'wait',
      );
    }
    plan = { backend, id, path, server, reconnectMs: reconnectMs(o, server), label: o.label };
  } else if (backend === 'file') {
    const path = resolve(o.string('path'));
    const append = o.bool('append', false);
    plan = { backend, id, path, append, label: o.label };
  } else {
    plan = { backend, id, label: o.label };
  }
  o.finish();
  return plan;
}

// ---- host checks ----

const TUN_DEVICE = '/dev/net/tun';

function describeCode(e: unknown): string {
  const code = (e as NodeJS.ErrnoException | undefined)?.code;
  if (code === 'ENOENT') return 'does not exist';
  if (code === 'ENOTDIR') return 'a part of the path is not a directory';
  if (code === 'EACCES' || code === 'EPERM') return 'permission denied';
  if (code === 'EROFS') return 'read-only file system';
  return e instanceof Error ? e.message : String(e);
}

function kindOf(st: Stats): string {
  if (st.isDirectory()) return 'a directory';
  if (st.isBlockDevice()) return 'a block device';
  if (st.isCharacterDevice()) return 'a character device';
  if (st.isFIFO()) return 'a FIFO';
  if (st.isSocket()) return 'a socket';
  if (st.isFile()) return 'a regular file';
  return 'not a regular file';
}

function hostError(label: string, key: string, message: string, value: string): CliUsageError {
  return new CliUsageError(`${label}: ${key}: ${message}`, value, {
    option: label.split(' ')[0] as string,
    key,
  });
}

/**
 * Checks the host resources the plan names, in command-line order; throws the first problem as a
 * {@link CliUsageError} naming the option.
 */
export async function checkHostResources(plan: DevicePlan): Promise<void> {
  const exportedWritable = (nodeName: string): boolean =>
    plan.exports.some((e) => e.type === 'vhost-user-blk' && e.nodeName === nodeName && e.writable);
  for (const b of plan.blockdevs) {
    if (b.driver === 'memory') continue;
    if (b.driver === 'file') {
      const over = formatNodeOver(plan.blockdevs, b.nodeName);
      await checkImage(b.label, 'filename', b.filename, exportedWritable(over?.nodeName ?? b.nodeName));
      if (
        over === undefined &&
        plan.exports.some((e) => e.type === 'vhost-user-blk' && e.nodeName === b.nodeName)
      ) {
        await refuseFormattedFile(b.label, b.filename, b.nodeName);
      }
    } else {
      const key = 'filename' in b.file ? 'file.filename' : 'file';
      if ('filename' in b.file) await checkImage(b.label, key, b.filename, exportedWritable(b.nodeName));
      if (b.driver === 'qcow2') await checkQcow2(b.label, key, b.filename, exportedWritable(b.nodeName));
    }
  }
  for (const c of plan.chardevs) {
    if (c.backend === 'socket') {
      await checkSocketEnd(c.label, 'path', c.path, c.server, c.reconnectMs);
    } else if (c.backend === 'file') {
      await checkDirectory(c.label, 'path', c.path);
      const st = await fs.stat(c.path).catch(() => undefined);
      if (st?.isDirectory() === true) throw hostError(c.label, 'path', `'${c.path}' is a directory`, c.path);
    }
  }
  for (const n of plan.netdevs) {
    if (n.kind === 'stream' && n.address.type === 'unix') {
      await checkSocketEnd(n.label, 'addr.path', n.address.path, n.server, n.reconnectMs);
    } else if (n.kind === 'passt' && n.socket !== undefined) {
      await checkConnectPath(n.label, 'socket', n.socket, "a running passt's --socket path");
    } else if (n.kind === 'tap') {
      try {
        await fs.access(TUN_DEVICE, constants.R_OK | constants.W_OK);
      } catch (e) {
        throw new CliUsageError(
          `${n.label}: ${TUN_DEVICE} ${describeCode(e)} (the tun module, and root or CAP_NET_ADMIN)`,
          TUN_DEVICE,
          {
            option: '--netdev',
          },
        );
      }
    }
  }
  for (const e of plan.exports) await checkListenPath(e.label, 'addr.path', e.socketPath);
}

/** The first 4 bytes of a qcow2 image, `QFI\xfb` (docs/interop/qcow2.txt, "magic"). */
const QCOW2_MAGIC = 0x514649fb;

/**
 * A `driver=file` node exported as it is serves the file's bytes (raw), as in qemu-storage-daemon. ringvm never
 * probes an image to pick its format (a guest that wrote a qcow2 header into its raw disk would otherwise make
 * the host open the backing file of its choosing), but it refuses to serve a qcow2 image's bytes as a raw disk
 * by mistake: the format must then be named (docs/cli.md, "Image formats").
 */
async function refuseFormattedFile(label: string, path: string, nodeName: string): Promise<void> {
  let head: Buffer;
  try {
    const handle = await fs.open(path, constants.O_RDONLY | constants.O_NONBLOCK);
    try {
      head = Buffer.alloc(4);
      const { bytesRead } = await handle.read(head, 0, 4, 0);
      head = head.subarray(0, bytesRead);
    } finally {
      await handle.close();
    }
  } catch (e) {
    throw hostError(label, 'filename', `cannot read '${path}': ${describeCode(e)}`, path);
  }
  if (head.length === 4 && head.readUInt32BE(0) === QCOW2_MAGIC) {
    throw hostError(
      label,
      'filename',
      `'${path}' is a qcow2 image: serve it with --blockdev driver=qcow2,node-name=NAME,file=${nodeName} ` +
        `(or driver=raw,file=${nodeName} to serve its bytes as they are)`,
      path,
    );
  }
}

/**
 * The qcow2 image opens: a valid header, no corruption found at open, every backing file there, no loop. The
 * check opens it read-only (nothing is repaired here: the export's own open does that, read-write). A writable
 * export of an image marked corrupt is refused (QEMU opens those read-only only).
 */
async function checkQcow2(label: string, key: string, path: string, writable: boolean): Promise<void> {
  let image: Qcow2Image;
  try {
    image = await Qcow2Image.open(path, { readOnly: true });
  } catch (e) {
    if (e instanceof VirtioError) throw hostError(label, key, e.message, path);
    throw e;
  }
  try {
    if (writable && image.info().corrupt) {
      throw hostError(
        label,
        key,
        `'${path}' is marked corrupt: it can be served read-only only (repair it with ringvm img check -r all)`,
        path,
      );
    }
  } finally {
    await image.close();
  }
}

/** The image exists, is a regular file, and opens read-only (or read-write when an export writes to it). */
async function checkImage(label: string, key: string, path: string, writable: boolean): Promise<void> {
  let st: Stats;
  try {
    st = await fs.stat(path);
  } catch (e) {
    throw hostError(label, key, `'${path}' ${describeCode(e)}`, path);
  }
  if (!st.isFile()) {
    throw hostError(label, key, `'${path}' is ${kindOf(st)}, not an image file`, path);
  }
  try {
    const handle = await fs.open(
      path,
      (writable ? constants.O_RDWR : constants.O_RDONLY) | constants.O_NONBLOCK,
    );
    await handle.close();
  } catch (e) {
    throw hostError(
      label,
      key,
      `cannot open '${path}' for ${writable ? 'reading and writing (an --export has writable=on)' : 'reading'}: ${describeCode(e)}`,
      path,
    );
  }
}

async function checkDirectory(label: string, key: string, path: string): Promise<void> {
  const dir = dirname(path);
  let st: Stats;
  try {
    st = await fs.stat(dir);
  } catch (e) {
    throw hostError(label, key, `directory '${dir}' ${describeCode(e)}`, path);
  }
  if (!st.isDirectory()) throw hostError(label, key, `'${dir}' is not a directory`, path);
}

/** A socket can be made at `path`: short enough, its directory exists, nothing but a stale socket is there. */
async function checkListenPath(label: string, key: string, path: string): Promise<void> {
  if (Buffer.byteLength(path) > MAX_SOCKET_PATH_BYTES) {
    throw hostError(
      label,
      key,
      `'${path}' is longer than the ${MAX_SOCKET_PATH_BYTES} bytes a unix socket path can have`,
      path,
    );
  }
  await checkDirectory(label, key, path);
  let st: Stats;
  try {
    st = await fs.lstat(path);
  } catch {
    return; // nothing there: fine
  }
  if (!st.isSocket()) {
    throw hostError(label, key, `'${path}' exists and is ${kindOf(st)}; refusing to replace it`, path);
  }
  if (await isListening(path)) {
    throw hostError(label, key, `another server is listening on '${path}'`, path);
  }
}

/** `path` is a socket to connect to now; `hint` ends the message when it is missing. */
async function checkConnectPath(label: string, key: string, path: string, hint: string): Promise<void> {
  let st: Stats;
  try {
    st = await fs.stat(path);
  } catch (e) {
    throw hostError(label, key, `'${path}' ${describeCode(e)} (${hint})`, path);
  }
  if (!st.isSocket()) throw hostError(label, key, `'${path}' is ${kindOf(st)}, not a socket`, path);
}

/**
 * The unix socket of a chardev or stream netdev: a server's path must be free to listen on; a client's must be a
 * listening socket now, unless it reconnects (then only its directory must exist).
 */
async function checkSocketEnd(
  label: string,
  key: string,
  path: string,
  server: boolean,
  reconnectMs: number | undefined,
): Promise<void> {
  if (server) await checkListenPath(label, key, path);
  else if (reconnectMs === undefined) await checkConnectPath(label, key, path, RECONNECT_HINT);
  else await checkDirectory(label, key, path);
}

const RECONNECT_HINT = 'server=off connects to a listening socket; add reconnect=SECONDS to wait for it';

function isListening(path: string): Promise<boolean> {
  return new Promise((resolvePromise) => {
    const probe = net.connect(path);
    probe.once('connect', () => {
      probe.destroy();
      resolvePromise(true);
    });
    probe.once('error', () => {
      resolvePromise(false);
    });
  });
}
