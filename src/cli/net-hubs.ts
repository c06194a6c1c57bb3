/**
 * `NetHubs`: the in-process switches of a {@link DevicePlan}'s `--netdev hubport` netdevs — one
 * {@link NetSwitch} per hubid, on the thread that starts the exports (the main thread of `ringvm serve`/`run`),
 * and one shared port per hubport, whose handle goes to the export's worker (device-factories.ts builds a
 * SwitchPortBackend from it) — or, for a hubport with `netdev=`, its uplink: that netdev's back end opened on this
 * thread and plugged in as a back-end port.
 */
import { NetSwitch } from '../backends/net/net-switch.js';
import type { SharedSwitchPort } from '../backends/net/switch-ports.js';
import type { SwitchPortHandle } from '../backends/net/switch-port-backend.js';
import type { NetBackend } from '../devices/net/net-backend.js';
import type { DevicePlan, HubportNetdevPlan, NetdevPlan } from './serve-options.js';

export class NetHubs {
  readonly #switches = new Map<string, NetSwitch>();
  readonly #ports = new Map<string, SharedSwitchPort>();
  #closed: Promise<void> | undefined;

  readonly #plan: DevicePlan;

  /**
   * Makes the switches of every hubport netdev in `plan` (none: an empty set) and the shared ports of those that
   * an export uses; {@link openUplinks} plugs in the others.
   */
  constructor(plan: DevicePlan) {
    this.#plan = plan;
    for (const n of plan.netdevs) {
      if (n.kind !== 'hubport') continue;
      const sw = this.#hub(n.hubid);
      if (n.uplink === undefined) this.#ports.set(n.id, sw.addSharedPort({ name: n.id }));
    }
  }

  #hub(hubid: string): NetSwitch {
    let sw = this.#switches.get(hubid);
    if (sw === undefined) {
      sw = new NetSwitch();
      this.#switches.set(hubid, sw);
    }
    return sw;
  }

  /**
   * Opens the back end of every hubport's uplink (`netdev=`) with `open` and plugs it into its switch as a port
   * named after the hubport. Returns the first failure (the netdev and why; {@link close} then closes the
   * uplinks already plugged in, with their switches), or undefined when every uplink is in.
   */
  async openUplinks(
    open: (netdev: Exclude<NetdevPlan, HubportNetdevPlan>) => Promise<readonly NetBackend[]>,
  ): Promise<{ readonly netdev: NetdevPlan; readonly cause: unknown } | undefined> {
    for (const n of this.#plan.netdevs) {
      if (n.kind !== 'hubport' || n.uplink === undefined) continue;
      const up = this.#plan.netdevs.find((x) => x.id === n.uplink);
      if (up === undefined || up.kind === 'hubport') throw new Error(`internal: bad uplink ${n.uplink}`);
      let backends: readonly NetBackend[];
      try {
        backends = await open(up);
      } catch (cause) {
        return { netdev: up, cause };
      }
      const [backend, ...extra] = backends;
      for (const b of extra) await b.close();
      if (backend === undefined) return { netdev: up, cause: new Error('it opened no back end') };
      this.#hub(n.hubid).addBackend(backend, { name: n.id });
    }
    return undefined;
  }

  /** The switch of `hubid` (observe or filter its frames with `onFrame`), if the plan has one. */
  hub(hubid: string): NetSwitch | undefined {
    return this.#switches.get(hubid);
  }

  /** The worker's end of hubport netdev `id`. */
  port(id: string): SwitchPortHandle {
    const port = this.#ports.get(id);
    if (port === undefined) throw new Error(`internal: no hubport netdev ${id}`);
    return port.handle;
  }

  /** Closes every switch (their devices see the link go down). Idempotent. */
  close(): Promise<void> {
    this.#closed ??= Promise.all([...this.#switches.values()].map((sw) => sw.close())).then(() => undefined);
    return this.#closed;
  }
}
