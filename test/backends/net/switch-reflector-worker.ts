// A worker thread that sits on a NetSwitch through a SwitchPortBackend, as a net device in a vhost-user export's
// worker does, and plays a host: every frame it receives goes back to its sender (MACs swapped, the rest
// unchanged); broadcasts are not answered. workerData: { handle, mac } — `mac` is this host's address, announced with one broadcast at start.
import { parentPort, workerData } from 'node:worker_threads';
import { SwitchPortBackend, type SwitchPortHandle } from '../../../src/backends/net/switch-port-backend.js';
import { BackendProbe } from './net-backend-harness.js';

const data = workerData as { handle: SwitchPortHandle; mac: Uint8Array };
const backend = new SwitchPortBackend(data.handle);
const probe = new BackendProbe(backend);
let reflected = 0;
const links: boolean[] = [];
const origDrain = probe.drain.bind(probe);
probe.drain = () => {
  origDrain();
  for (const f of probe.frames.splice(0)) {
    if (!f.subarray(0, 6).equals(data.mac)) continue; // broadcasts (the other host's announcement) stay here
    const out = Buffer.from(f);
    out.set(f.subarray(6, 12), 0);
    out.set(data.mac, 6);
    probe.send(out);
    reflected++;
  }
};
const announce = Buffer.alloc(60);
announce.fill(0xff, 0, 6);
announce.set(data.mac, 6);
announce.writeUInt16BE(0x88b5, 12);
probe.send(announce);
parentPort?.on('message', (m: string) => {
  if (m === 'stats')
    parentPort?.postMessage({ reflected, links: [...probe.links, ...links], tooLong: probe.tooLong });
  if (m === 'stop') {
    void backend.close().then(() => {
      parentPort?.close();
    });
  }
});
parentPort?.postMessage('ready');
