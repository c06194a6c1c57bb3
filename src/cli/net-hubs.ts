/**
 * `NetHubs`: the in-process switches of a {@link DevicePlan}'s `--netdev hubport` netdevs — one
 * {@link NetSwitch} per hubid, on the thread that starts the exports (the main thread of `ringvm serve`/`run`),
 * and one shared port per hubport, whose handle goes to the export's worker (device-factories.ts builds a
 * SwitchPortBackend from it).
 */
import { NetSwitch } from '../backends/net/net-switch.js';
import type { SharedSwitchPort } from '../backends/net/switch-ports.js';
import type { SwitchPortHandle } from '../backends/net/switch-port-backend.js';
import type { DevicePlan } from './serve-options.js';

export class NetHubs {
  readonly #switches = new Map<string, NetSwitch>();
  readonly #ports = new Map<string, SharedSwitchPort>();
  #closed: Promise<void> | undefined;

  /** Makes the switches and ports of every hubport netdev in `plan` (none: an empty set). */
  constructor(plan: DevicePlan) {
    for (const n of plan.netdevs) {
      if (n.kind !== 'hubport') continue;
      let sw = this.#switches.get(n.hubid);
      if (sw === undefined) {
        sw = new NetSwitch();
        this.#switches.set(n.hubid, sw);
      }
      this.#ports.set(n.id, sw.addSharedPort({ name: n.id }));
    }
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
