/**
 * The device factories `ringvm serve` and `ringvm run` hand to {@link VhostUserExport}: each runs inside the
 * export's worker thread, opens the device's host back ends there (an image, a RAM disk, chardevs) and returns
 * the device with a `close` that flushes and releases them. Their arguments are plain JSON built from the
 * command line by {@link exportFactoryRef}; the factories re-check only what the type system cannot promise.
 *
 * ```ts
 * const { device, close } = await createBlkDevice({ backend: { driver: 'file', filename: '/x.img' }, readOnly: true });
 * ```
 */
import { fstatSync, createReadStream } from 'node:fs';
import net from 'node:net';
import type { Readable, Writable } from 'node:stream';
import tty from 'node:tty';
import { isMainThread } from 'node:worker_threads';
import { MemoryBackend } from '../backends/block/memory-backend.js';
import { Qcow2Image } from '../backends/block/qcow2/index.js';
import { RawFileBackend } from '../backends/block/raw-file.js';
import { FileChardev } from '../backends/chardev/file-chardev.js';
import { StdioChardev } from '../backends/chardev/stdio-chardev.js';
import { UnixSocketChardev } from '../backends/chardev/unix-socket-chardev.js';
import { BlkDevice } from '../devices/blk/blk-device.js';
import type { BlockBackend } from '../devices/blk/block-backend.js';
import type { Chardev } from '../devices/console/chardev.js';
import { ConsoleDevice } from '../devices/console/console-device.js';
import { RngDevice } from '../devices/rng/rng-device.js';
import { NetDevice, type NetDeviceStats } from '../devices/net/net-device.js';
import type { NetBackend } from '../devices/net/net-backend.js';
import { formatMac } from '../devices/net/net-config.js';
import { PasstNetBackend } from '../backends/net/passt-backend.js';
import { StreamNetBackend, type StreamAddress } from '../backends/net/stream-backend.js';
import { SwitchPortBackend, type SwitchPortHandle } from '../backends/net/switch-port-backend.js';
import { TapBackend } from '../backends/net/tap-backend.js';
import type { VirtioDevice } from '../virtio/device/virtio-device.js';

/** What a factory returns (the shape of vhost-user-export's `DeviceInstance`). */
export interface DeviceInstance<D extends VirtioDevice = VirtioDevice> {
  readonly device: D;
  /** Host I/O is in flight: the worker's event loop must keep running. */
  busy?(): boolean;
  idle?(): Promise<void>;
  /** A request from the main thread (VhostUserExport.control). */
  control?(request: unknown): unknown;
  close(): Promise<void>;
}

export type BlockBackendArgs =
  | {
      readonly driver: 'file';
      readonly filename: string;
      /** How the file is read: its bytes as the disk (raw, the default) or as a qcow2 image. */
      readonly format?: 'raw' | 'qcow2';
    }
  | { readonly driver: 'memory'; readonly size: number };

export interface BlkDeviceArgs {
  readonly backend: BlockBackendArgs;
  /** The guest sees a read-only disk and the image is opened O_RDONLY. */
  readonly readOnly: boolean;
  readonly numQueues?: number;
  readonly serial?: string;
}

export type ChardevArgs =
  | {
      readonly backend: 'socket';
      readonly path: string;
      readonly server: boolean;
      readonly reconnectMs?: number;
    }
  | { readonly backend: 'stdio' }
  | { readonly backend: 'file'; readonly path: string; readonly append: boolean };

export interface ConsolePortArgs {
  readonly chardev: ChardevArgs;
  readonly name?: string;
  readonly console: boolean;
}

export interface ConsoleDeviceArgs {
  readonly ports: readonly ConsolePortArgs[];
}

export type RngDeviceArgs = Record<string, never>;

/** The host side of a net export (`--netdev`); each kind is one member. */
export type NetBackendArgs =
  | {
      readonly kind: 'tap';
      /** Attach to this interface, or create it; absent: a new `tapN`. */
      readonly ifname?: string;
      readonly queues: number;
      readonly vnetHdr: boolean;
    }
  | {
      readonly kind: 'stream';
      readonly mode: 'server' | 'client';
      readonly address: StreamAddress;
      readonly reconnectMs?: number;
    }
  | {
      /** A port of a NetSwitch owned by another thread (`switch.addSharedPort().handle`). */
      readonly kind: 'switch-port';
      readonly handle: SwitchPortHandle;
    }
  | {
      readonly kind: 'passt';
      /** Connect to a running passt; absent: start one with `args`. */
      readonly socketPath?: string;
      readonly command?: string;
      readonly args: readonly string[];
      readonly netns?: string;
    };

export interface NetDeviceArgs {
  readonly backend: NetBackendArgs;
  readonly queuePairs: number;
  readonly mac: string;
  readonly mtu?: number;
  readonly offloads: boolean;
}

/** What `control` of a net export takes (VhostUserExport.control). */
export type NetControlRequest =
  | { readonly op: 'set-link'; readonly up: boolean }
  | { readonly op: 'announce' }
  | { readonly op: 'stats' }
  | { readonly op: 'info' };

export interface NetInfo {
  readonly mac: string;
  readonly linkUp: boolean;
  readonly queuePairs: number;
  readonly activePairs: number;
  /** The tap interface's name (tap back ends). */
  readonly ifname: string | undefined;
  readonly features: string;
}

/**
 * Opens the back ends of a net export: one NetBackend per queue pair (or one for all). A stream server is
 * listening, a client connected (or retrying, with reconnectMs), a passt started, when this resolves.
 */
export async function openNetBackends(
  args: NetBackendArgs,
  onLog?: (line: string) => void,
): Promise<{ readonly backends: readonly NetBackend[]; readonly ifname: string | undefined }> {
  switch (args.kind) {
    case 'tap': {
      const tap = TapBackend.open({
        ...(args.ifname !== undefined && { ifname: args.ifname }),
        queues: args.queues,
        vnetHdr: args.vnetHdr,
      });
      return { backends: tap.queues, ifname: tap.ifname };
    }
    case 'stream': {
      const stream = await StreamNetBackend.open({
        mode: args.mode,
        address: args.address,
        ...(args.reconnectMs !== undefined && { reconnectMs: args.reconnectMs }),
        ...(onLog !== undefined && { onLog }),
      });
      return { backends: [stream], ifname: undefined };
    }
    case 'switch-port':
      return { backends: [new SwitchPortBackend(args.handle)], ifname: undefined };
    case 'passt': {
      const passt = await PasstNetBackend.open({
        args: args.args,
        ...(args.socketPath !== undefined && { socketPath: args.socketPath }),
        ...(args.command !== undefined && { command: args.command }),
        ...(args.netns !== undefined && { netns: args.netns }),
        ...(onLog !== undefined && { onLog }),
      });
      return { backends: [passt], ifname: undefined };
    }
  }
}

/**
 * Maximum queue size of the console and rng devices. A vhost-user front end picks the ring size without asking
 * the back end: UML's virtio_uml always asks for 256 (its MAX_SUPPORTED_QUEUE_SIZE), QEMU up to its queue-size
 * property. The devices' own defaults (128, 64) would refuse UML's rings. blk's default is 256 already.
 */
export const EXPORT_QUEUE_SIZE = 256;

/**
 * virtio-blk over a raw or qcow2 image (opened read-only unless the export is writable; both do their I/O in this
 * worker thread, completing requests inside the kick) or a RAM disk.
 */
export async function createBlkDevice(args: BlkDeviceArgs): Promise<DeviceInstance<BlkDevice>> {
  const backend: BlockBackend =
    args.backend.driver === 'memory'
      ? new MemoryBackend(args.backend.size, { readOnly: args.readOnly })
      : args.backend.format === 'qcow2'
        ? await Qcow2Image.open(args.backend.filename, { readOnly: args.readOnly })
        : await RawFileBackend.open(args.backend.filename, { readOnly: args.readOnly, io: 'sync' });
  let device: BlkDevice;
  try {
    device = new BlkDevice({
      backend,
      readOnly: args.readOnly,
      ...(args.numQueues !== undefined && { numQueues: args.numQueues }),
      ...(args.serial !== undefined && { serial: args.serial }),
    });
  } catch (e) {
    await backend.close();
    throw e;
  }
  let closed: Promise<void> | undefined;
  return {
    device,
    busy: () => device.inFlight > 0,
    idle: () => device.idle(),
    close: () =>
      (closed ??= (async () => {
        await device.idle();
        try {
          if (!backend.readOnly) await backend.flush();
        } finally {
          await backend.close();
        }
      })()),
  };
}

/** virtio-console with MULTIPORT: every port's chardev is started here (a server socket listens from now). */
export async function createConsoleDevice(args: ConsoleDeviceArgs): Promise<DeviceInstance<ConsoleDevice>> {
  const chardevs: Chardev[] = [];
  try {
    for (const port of args.ports) chardevs.push(await startChardev(port.chardev));
    const device = new ConsoleDevice({
      queueSize: EXPORT_QUEUE_SIZE,
      ports: args.ports.map((port, i) => ({
        chardev: chardevs[i] as Chardev,
        console: port.console,
        ...(port.name !== undefined && { name: port.name }),
      })),
    });
    let closed: Promise<void> | undefined;
    return {
      device,
      // The chardevs deliver on the worker's event loop at any time (a client connects, host bytes arrive).
      busy: () => true,
      close: () =>
        (closed ??= (async () => {
          device.detach();
          await closeAll(chardevs);
        })()),
    };
  } catch (e) {
    await closeAll(chardevs);
    throw e;
  }
}

/**
 * virtio-net over a `--netdev` back end, with a control API for the main thread: `set-link` (the guest sees
 * carrier on/off), `announce`, `stats` ({@link NetDeviceStats}), `info` ({@link NetInfo}).
 */
export async function createNetDevice(args: NetDeviceArgs): Promise<DeviceInstance<NetDevice>> {
  // Peer and passt events (a stream peer left, broke the framing; passt exited) go to this process's stderr.
  const { backends, ifname } = await openNetBackends(args.backend, (line) => {
    console.error(`netdev ${args.backend.kind}: ${line}`);
  });
  let device: NetDevice;
  try {
    device = new NetDevice({
      backends,
      queuePairs: args.queuePairs,
      mac: args.mac,
      queueSize: EXPORT_QUEUE_SIZE,
      offloads: args.offloads,
      ...(args.mtu !== undefined && { mtu: args.mtu }),
    });
  } catch (e) {
    for (const b of backends) void b.close();
    throw e;
  }
  let closed: Promise<void> | undefined;
  return {
    device,
    control: (request: unknown): NetDeviceStats | NetInfo | boolean => {
      const r = request as NetControlRequest;
      switch (r.op) {
        case 'set-link':
          device.setLinkUp(r.up);
          return device.linkUp;
        case 'announce':
          return device.announce();
        case 'stats':
          return device.stats;
        case 'info':
          return {
            mac: formatMac(device.config.mac),
            linkUp: device.linkUp,
            queuePairs: device.queuePairs,
            activePairs: device.activePairs,
            ifname,
            features: device.deviceFeatures.toString(16),
          };
        default:
          throw new Error(`unknown net control request ${JSON.stringify(request)}`);
      }
    },
    close: () => (closed ??= device.close()),
  };
}

/** virtio-rng from the host's crypto source. */
export function createRngDevice(_args: RngDeviceArgs = {}): Promise<DeviceInstance<RngDevice>> {
  return Promise.resolve({
    device: new RngDevice({ queueSize: EXPORT_QUEUE_SIZE }),
    close: () => Promise.resolve(),
  });
}

async function closeAll(chardevs: readonly Chardev[]): Promise<void> {
  const results = await Promise.allSettled(chardevs.map((c) => c.close()));
  const failed = results.find((r) => r.status === 'rejected');
  if (failed !== undefined) throw failed.reason;
}

async function startChardev(args: ChardevArgs): Promise<Chardev> {
  switch (args.backend) {
    case 'socket': {
      const chardev = new UnixSocketChardev({
        path: args.path,
        mode: args.server ? 'server' : 'client',
        ...(args.reconnectMs !== undefined && { reconnectMs: args.reconnectMs }),
      });
      await chardev.start();
      return chardev;
    }
    case 'file': {
      const chardev = new FileChardev({ path: args.path, truncate: !args.append });
      await chardev.start();
      return chardev;
    }
    case 'stdio': {
      const chardev = new StdioChardev(stdioStreams());
      chardev.start();
      return chardev;
    }
  }
}

/**
 * This process's stdin and stdout. In a worker thread `process.stdin` carries nothing (it is fed by the parent
 * thread only on request), so the worker opens fd 0 itself; stdout is opened on fd 1 when it is a terminal and
 * otherwise goes through `process.stdout` (which Node forwards to the main thread).
 */
function stdioStreams(): { input: Readable; output: Writable } {
  if (isMainThread) return { input: process.stdin, output: process.stdout };
  let input: Readable;
  const st = fstatSync(0);
  if (tty.isatty(0)) input = new tty.ReadStream(0);
  else if (st.isFIFO() || st.isSocket()) input = new net.Socket({ fd: 0, readable: true, writable: false });
  else input = createReadStream('', { fd: 0, autoClose: false });
  const output: Writable = tty.isatty(1) ? new tty.WriteStream(1) : process.stdout;
  return { input, output };
}
