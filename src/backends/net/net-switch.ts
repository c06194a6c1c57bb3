/**
 * `NetSwitch`: an in-process learning Ethernet switch. Any number of ports — ringvm net devices in other threads
 * ({@link NetSwitch.addSharedPort}), back ends such as tap, stream sockets and passt
 * ({@link NetSwitch.addBackend}), and TypeScript endpoints ({@link NetSwitch.addEndpoint}) — form one L2
 * segment:
 *
 * - the source address of every frame is learned on its ingress port (ageing: `ageingMs`, 300 s by default);
 * - a unicast frame to a known address goes to that port only (dropped if that is the port it came from);
 *   broadcast, multicast and unknown unicast are flooded to every other port;
 * - frames shorter than an Ethernet header are dropped as runts;
 * - `onFrame` callbacks see every frame before it is forwarded and may drop it by returning false.
 *
 * The switch runs on the thread that created it (its ports' wake-ups and callbacks run there). Per-port
 * counters are in `port.stats`.
 *
 * ```ts
 * const sw = new NetSwitch();
 * const vm0 = sw.addSharedPort({ name: 'vm0' }); // vm0.handle → the export's SwitchPortBackend
 * const uplink = sw.addBackend(await StreamNetBackend.open({ mode: 'client', address }), { name: 'qemu' });
 * const tap = sw.addEndpoint({ name: 'observer' });
 * sw.onFrame((frame, from) => { console.log(from.name, frame.length); });
 * ```
 */
import type { NetBackend } from '../../devices/net/net-backend.js';
import { ETH_HEADER_SIZE } from '../../devices/net/net-layout.js';
import { FRAME_RING_DEFAULT_BYTES } from './switch-frame-ring.js';
import {
  MAC_AGEING_DEFAULT_MS,
  MAC_TABLE_DEFAULT_ENTRIES,
  SwitchMacTable,
  formatMac,
  macKey,
} from './switch-mac-table.js';
import {
  BackendSwitchPort,
  EndpointSwitchPort,
  SWITCH_BACKLOG_DEFAULT_FRAMES,
  SharedSwitchPort,
  SwitchPort,
  type SwitchIngress,
} from './switch-ports.js';
import { STREAM_FRAME_MAX_BYTES } from './stream-framing.js';
import { UsageError } from '../../virtio/errors.js';

/** Offsets in an Ethernet header. */
const ETH_DST = 0;
const ETH_SRC = 6;
/** The I/G bit: group (broadcast/multicast) address. */
const ETH_GROUP_BIT = 0x01;
/** Default frames forwarded from one port before the others get a turn. */
const SWITCH_DEFAULT_BURST = 256;

export interface NetSwitchOptions {
  /** Forget a learned address after this long without frames from it (default 300 000 ms). */
  readonly ageingMs?: number;
  /** Addresses remembered at most (default 4096). */
  readonly maxMacEntries?: number;
  /** Frames held per port that cannot take them at once (default 256). */
  readonly backlogFrames?: number;
  /** Frames taken from one port per turn (default 256). */
  readonly burst?: number;
  /** Clock in milliseconds (tests of ageing); default performance.now. */
  readonly now?: () => number;
}

/** Sees each frame entering the switch; returning false drops it. `frame` is a view valid for the call. */
export type SwitchFrameCallback = (frame: Uint8Array, from: SwitchPort) => boolean | undefined;

export interface SwitchMacEntry {
  readonly mac: string;
  readonly port: string;
  readonly ageMs: number;
}

export class NetSwitch implements SwitchIngress {
  readonly burst: number;
  readonly #table: SwitchMacTable<SwitchPort>;
  readonly #ports: SwitchPort[] = [];
  readonly #callbacks = new Set<SwitchFrameCallback>();
  readonly #backlogFrames: number;
  readonly #now: () => number;
  #closed = false;
  /** Frames flooded (broadcast, multicast, unknown unicast). */
  flooded = 0;

  constructor(options: NetSwitchOptions = {}) {
    const ageing = options.ageingMs ?? MAC_AGEING_DEFAULT_MS;
    const entries = options.maxMacEntries ?? MAC_TABLE_DEFAULT_ENTRIES;
    this.#backlogFrames = options.backlogFrames ?? SWITCH_BACKLOG_DEFAULT_FRAMES;
    this.burst = options.burst ?? SWITCH_DEFAULT_BURST;
    for (const [what, v, min] of [
      ['ageingMs', ageing, 0],
      ['maxMacEntries', entries, 1],
      ['backlogFrames', this.#backlogFrames, 0],
      ['burst', this.burst, 1],
    ] as const) {
      if (!Number.isFinite(v) || v < min) {
        throw new UsageError('INVALID_ARGUMENT', `NetSwitch: ${what} must be a number ≥ ${min}, got ${v}`, v);
      }
    }
    this.#table = new SwitchMacTable(ageing, entries);
    this.#now = options.now ?? (() => performance.now());
  }

  get ports(): readonly SwitchPort[] {
    return this.#ports;
  }

  /** A port for a net device in another thread: pass `port.handle` to it (see SwitchPortBackend). */
  addSharedPort(options: { readonly name?: string; readonly ringBytes?: number } = {}): SharedSwitchPort {
    return this.#add(
      new SharedSwitchPort(
        this,
        this.#name(options.name),
        this.#backlogFrames,
        options.ringBytes ?? FRAME_RING_DEFAULT_BYTES,
      ),
    );
  }

  /** Plugs a back end (tap, stream socket, passt, ...) in as a port; the switch closes it with the port. */
  addBackend(
    backend: NetBackend,
    options: { readonly name?: string; readonly maxFrame?: number } = {},
  ): BackendSwitchPort {
    return this.#add(
      new BackendSwitchPort(
        this,
        this.#name(options.name),
        backend,
        this.#backlogFrames,
        options.maxFrame ?? STREAM_FRAME_MAX_BYTES,
      ),
    );
  }

  /** A port driven from TypeScript: `send` frames into the segment, `onFrame` to see what reaches it. */
  addEndpoint(options: { readonly name?: string } = {}): EndpointSwitchPort {
    return this.#add(new EndpointSwitchPort(this, this.#name(options.name)));
  }

  /** Unplugs a port (and closes it; a back end port closes its back end). */
  async removePort(port: SwitchPort): Promise<void> {
    const i = this.#ports.indexOf(port);
    if (i < 0) return;
    this.#ports.splice(i, 1);
    this.#table.forgetPort(port);
    await port.close();
  }

  /** Observes (and, returning false, drops) every frame entering the switch. Returns an unsubscribe. */
  onFrame(callback: SwitchFrameCallback): () => void {
    this.#callbacks.add(callback);
    return () => this.#callbacks.delete(callback);
  }

  /** The learned addresses. */
  macTable(): SwitchMacEntry[] {
    const now = this.#now();
    const out: SwitchMacEntry[] = [];
    for (const [key, e] of this.#table.entries()) {
      if (now - e.lastSeen <= this.#table.ageingMs)
        out.push({ mac: formatMac(key), port: e.port.name, ageMs: now - e.lastSeen });
    }
    return out;
  }

  /** @internal Called by ports with each frame they produce. */
  ingress(from: SwitchPort, frame: Uint8Array): void {
    if (frame.length < ETH_HEADER_SIZE || this.#closed) {
      from.stats.rxDropped++;
      return;
    }
    for (const cb of this.#callbacks) {
      if (cb(frame, from) === false) {
        from.stats.rxDropped++;
        return;
      }
    }
    const now = this.#now();
    if (((frame[ETH_SRC] as number) & ETH_GROUP_BIT) === 0)
      this.#table.learn(macKey(frame, ETH_SRC), from, now);
    if (((frame[ETH_DST] as number) & ETH_GROUP_BIT) === 0) {
      const to = this.#table.lookup(macKey(frame, ETH_DST), now);
      if (to !== undefined) {
        if (to === from) from.stats.rxDropped++;
        else to.deliver(frame);
        return;
      }
    }
    this.flooded++;
    for (const port of this.#ports) if (port !== from) port.deliver(frame);
  }

  /** Closes every port. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    const ports = this.#ports.splice(0);
    await Promise.all(ports.map((p) => p.close()));
  }

  #add<P extends SwitchPort>(port: P): P {
    if (this.#closed) {
      void port.close();
      throw new UsageError('INVALID_STATE', 'NetSwitch is closed', port.name);
    }
    this.#ports.push(port);
    return port;
  }

  #name(name: string | undefined): string {
    const chosen = name ?? `port${this.#ports.length}`;
    if (this.#ports.some((p) => p.name === chosen)) {
      throw new UsageError('INVALID_ARGUMENT', `NetSwitch: a port named ${chosen} exists`, chosen);
    }
    return chosen;
  }
}
