/**
 * Starts and stops the vhost-user exports of a {@link DevicePlan} (shared by `ringvm serve` and `ringvm run`):
 * one {@link VhostUserExport} per `--export`, each building its device in its own worker thread from
 * device-factories.ts.
 */
import {
  VhostUserExport,
  type DeviceFactoryRef,
  type VhostUserExportOptions,
} from '../transport/vhost-user/vhost-user-export.js';
import type {
  BlkDeviceArgs,
  ChardevArgs,
  ConsoleDeviceArgs,
  NetBackendArgs,
  NetDeviceArgs,
  RngDeviceArgs,
} from './device-factories.js';
import { NetHubs } from './net-hubs.js';
import type { ChardevPlan, DevicePlan, ExportPlan, NetdevPlan } from './serve-options.js';

/** What the commands use of a started export (VhostUserExport's public surface). */
export interface ExportHandle {
  readonly socketPath: string;
  /** Settles when the export has stopped (after stop(), or when its worker died). */
  readonly closed: Promise<void>;
  /** Stops serving: closes connections, closes the device (flush), removes the socket. */
  stop(): Promise<void>;
}

/** Starts one export: `VhostUserExport.start` (tests may pass another). */
export type ExportStarter = (options: VhostUserExportOptions) => Promise<ExportHandle>;

export interface RunningExport {
  readonly plan: ExportPlan;
  readonly handle: ExportHandle;
}

/** The factories module, next to this one (build/src/cli/device-factories.js, or the .ts under tsx). */
export const DEVICE_FACTORIES_MODULE = new URL(
  `./device-factories${import.meta.url.endsWith('.ts') ? '.ts' : '.js'}`,
  import.meta.url,
).href;

function chardevArgs(c: ChardevPlan): ChardevArgs {
  switch (c.backend) {
    case 'socket':
      return {
        backend: 'socket',
        path: c.path,
        server: c.server,
        ...(c.reconnectMs !== undefined && { reconnectMs: c.reconnectMs }),
      };
    case 'file':
      return { backend: 'file', path: c.path, append: c.append };
    case 'stdio':
      return { backend: 'stdio' };
  }
}

function netBackendArgs(n: NetdevPlan, hubs: NetHubs | undefined): NetBackendArgs {
  switch (n.kind) {
    case 'tap':
      return {
        kind: 'tap',
        queues: n.queues,
        vnetHdr: n.vnetHdr,
        ...(n.ifname !== undefined && { ifname: n.ifname }),
      };
    case 'stream':
      return {
        kind: 'stream',
        mode: n.server ? 'server' : 'client',
        address: n.address,
        ...(n.reconnectMs !== undefined && { reconnectMs: n.reconnectMs }),
      };
    case 'passt':
      return {
        kind: 'passt',
        args: n.args,
        ...(n.socket !== undefined && { socketPath: n.socket }),
        ...(n.command !== undefined && { command: n.command }),
        ...(n.netns !== undefined && { netns: n.netns }),
      };
    case 'hubport':
      if (hubs === undefined) throw new Error(`internal: hubport ${n.id} without its switches`);
      return { kind: 'switch-port', handle: hubs.port(n.id) };
  }
}

/**
 * The worker-side factory and its (structured-clone) arguments for one export of `plan`; `hubs` holds the
 * switch ports of hubport netdevs.
 */
export function exportFactoryRef(plan: DevicePlan, e: ExportPlan, hubs?: NetHubs): DeviceFactoryRef {
  switch (e.type) {
    case 'vhost-user-blk': {
      const b = plan.blockdevs.find((x) => x.nodeName === e.nodeName);
      if (b === undefined) throw new Error(`internal: no blockdev ${e.nodeName}`);
      const args: BlkDeviceArgs = {
        backend:
          b.driver === 'memory'
            ? { driver: 'memory', size: b.size }
            : { driver: 'file', filename: b.filename, format: b.driver === 'qcow2' ? 'qcow2' : 'raw' },
        readOnly: !e.writable,
        ...(e.numQueues !== undefined && { numQueues: e.numQueues }),
        ...(e.serial !== undefined && { serial: e.serial }),
      };
      return { module: DEVICE_FACTORIES_MODULE, name: 'createBlkDevice', args };
    }
    case 'vhost-user-console': {
      const args: ConsoleDeviceArgs = {
        ports: e.ports.map((p) => {
          const c = plan.chardevs.find((x) => x.id === p.chardev);
          if (c === undefined) throw new Error(`internal: no chardev ${p.chardev}`);
          return {
            chardev: chardevArgs(c),
            console: p.console,
            ...(p.name !== undefined && { name: p.name }),
          };
        }),
      };
      return { module: DEVICE_FACTORIES_MODULE, name: 'createConsoleDevice', args };
    }
    case 'vhost-user-net': {
      const n = plan.netdevs.find((x) => x.id === e.netdev);
      if (n === undefined) throw new Error(`internal: no netdev ${e.netdev}`);
      const args: NetDeviceArgs = {
        backend: netBackendArgs(n, hubs),
        queuePairs: e.queues,
        mac: e.mac,
        offloads: e.offloads,
        ...(e.mtu !== undefined && { mtu: e.mtu }),
      };
      return { module: DEVICE_FACTORIES_MODULE, name: 'createNetDevice', args };
    }
    case 'vhost-user-rng': {
      const args: RngDeviceArgs = {};
      return { module: DEVICE_FACTORIES_MODULE, name: 'createRngDevice', args };
    }
  }
}

/** Starts one export with {@link VhostUserExport} (src/transport/vhost-user). */
export const startVhostUserExport: ExportStarter = (options) => VhostUserExport.start(options);

export interface StartExportsOptions {
  readonly starter?: ExportStarter;
  /** Log lines of every export, already prefixed with the export id. */
  readonly onLog?: (line: string) => void;
}

/** An export that failed to start; the message names it. */
/** An export, or a hub's uplink netdev, could not start. */
export class ExportStartError extends Error {
  constructor(
    readonly plan: ExportPlan | NetdevPlan,
    cause: unknown,
  ) {
    super(`${plan.label}: cannot start: ${cause instanceof Error ? cause.message : String(cause)}`, {
      cause,
    });
    this.name = 'ExportStartError';
  }
}

/**
 * Starts every export at once. If one fails, the others (started or still starting) are stopped and the first
 * failure is thrown as an {@link ExportStartError}.
 */
export async function startExports(
  plan: DevicePlan,
  options: StartExportsOptions = {},
): Promise<RunningExport[]> {
  const starter = options.starter ?? startVhostUserExport;
  const onLog = options.onLog;
  // The switches of hubport netdevs live on this thread; they close once every export on them has stopped.
  const hubs = new NetHubs(plan);
  const uplinkFailure = await hubs.openUplinks(async (n) => {
    // device-factories opens the same back ends in the export workers; only a plan with uplinks loads it here.
    const { openNetBackends } = await import('./device-factories.js');
    const args = netBackendArgs(n.kind === 'tap' ? { ...n, vnetHdr: false } : n, undefined);
    const log =
      onLog === undefined
        ? undefined
        : (line: string) => {
            onLog(`[${n.id}] ${line}`);
          };
    return (await openNetBackends(args, log)).backends;
  });
  if (uplinkFailure !== undefined) {
    await hubs.close();
    throw new ExportStartError(uplinkFailure.netdev, uplinkFailure.cause);
  }
  const onHubport = (e: ExportPlan): boolean =>
    e.type === 'vhost-user-net' && plan.netdevs.some((n) => n.id === e.netdev && n.kind === 'hubport');
  let onHubs = plan.exports.filter(onHubport).length;
  const onHub = (e: ExportPlan, handle: ExportHandle): ExportHandle => {
    if (!onHubport(e)) return handle;
    let released = false;
    return {
      socketPath: handle.socketPath,
      closed: handle.closed,
      stop: async () => {
        await handle.stop();
        if (released) return;
        released = true;
        onHubs--;
        if (onHubs === 0) await hubs.close();
      },
    };
  };
  const results = await Promise.allSettled(
    plan.exports.map(async (e) => ({
      plan: e,
      handle: onHub(
        e,
        await starter({
          socketPath: e.socketPath,
          device: exportFactoryRef(plan, e, hubs),
          ...(e.pollMaxNs !== undefined && { pollMaxNs: e.pollMaxNs }),
          ...(onLog !== undefined && {
            onLog: (line: string) => {
              onLog(`[${e.id}] ${line}`);
            },
          }),
        }),
      ),
    })),
  );
  const running = results.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
  const index = results.findIndex((r) => r.status === 'rejected');
  if (index >= 0) {
    await stopExports(running);
    await hubs.close();
    const failed = results[index] as PromiseRejectedResult;
    throw new ExportStartError(plan.exports[index] as ExportPlan, failed.reason);
  }
  return running;
}

/** Stops every export (in parallel); returns the failures' messages. */
export async function stopExports(running: readonly RunningExport[]): Promise<string[]> {
  const results = await Promise.allSettled(running.map((r) => r.handle.stop()));
  return results.flatMap((r, i) =>
    r.status === 'rejected'
      ? [
          `${(running[i] as RunningExport).plan.label}: stop failed: ${r.reason instanceof Error ? r.reason.message : String(r.reason)}`,
        ]
      : [],
  );
}

/** Resolves with the first export whose `closed` settles (its worker stopped without being asked). */
export function firstClosed(running: readonly RunningExport[]): Promise<RunningExport> {
  return Promise.race(
    running.map((r) =>
      r.handle.closed.then(
        () => r,
        () => r,
      ),
    ),
  );
}
