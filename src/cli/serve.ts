/**
 * `ringvm serve`: serves devices on vhost-user sockets until SIGINT/SIGTERM, qemu-storage-daemon style.
 *
 * 1. Parse and validate every option and every host resource ({@link buildDevicePlan},
 *    {@link checkHostResources}): a mistake exits 2 before any socket exists.
 * 2. Start every export at once; print `ringvm: vhost-user-blk 'e0' listening on SOCK` per export when all
 *    listen. If one cannot start, stop the others and exit 1.
 * 3. On SIGINT or SIGTERM stop every export (the device is closed: images flushed; sockets removed) and exit 0.
 *    An export whose worker dies ends the command with status 1 after stopping the others.
 */
import { parseArgv } from './argv.js';
import { CliUsageError } from './cli-error.js';
import {
  firstClosed,
  startExports,
  stopExports,
  ExportStartError,
  type ExportStarter,
} from './export-runner.js';
import { buildDevicePlan, checkHostResources, DEVICE_OPTIONS } from './serve-options.js';
import { stopSource } from './stop-signals.js';

export const SERVE_USAGE = `Usage: ringvm serve [--blockdev ...] [--chardev ...] [--netdev ...] --export ... [--device ...]

Serves virtio devices on vhost-user unix sockets (one socket per --export) until SIGINT or SIGTERM, with
qemu-storage-daemon's option syntax (key=value,...; a comma inside a value is written ",,").

Block nodes:
  --blockdev driver=file,node-name=NAME,filename=PATH[,read-only=on]
  --blockdev driver=memory,node-name=NAME,size=SIZE            a RAM disk (SIZE: 64M, 1G...)
Character devices (host side of console ports):
  --chardev socket,id=ID,path=PATH,server=on                    listen; one client at a time
  --chardev socket,id=ID,path=PATH[,server=off][,reconnect=S]   connect to a listening socket
  --chardev stdio,id=ID                                         this terminal
  --chardev file,id=ID,path=PATH[,append=on]                    guest output to a file
Exports (each a vhost-user back end on its own socket):
  --export type=vhost-user-blk,id=ID,node-name=NAME,addr.type=unix,addr.path=SOCK
           [,writable=on][,num-queues=N][,serial=STRING]        read-only unless writable=on
  --export type=vhost-user-console,id=ID,addr.path=SOCK,chardev=ID[,name=PORTNAME]
                                                                port 0 (hvc0 in the guest)
  --export type=vhost-user-rng,id=ID,addr.path=SOCK
  --export type=vhost-user-net,id=ID,netdev=ID,addr.path=SOCK
           [,mac=MAC][,mtu=N][,queues=N][,offloads=on|off]      virtio-net (UML: SOCK:1)
Network back ends (host side of net exports):
  --netdev tap,id=ID[,ifname=NAME][,queues=N][,vnet_hdr=on|off] attach to tap NAME or create one
  --netdev stream,id=ID,addr.type=unix,addr.path=PATH[,server=on][,reconnect=S]
  --netdev stream,id=ID,addr.type=inet,addr.host=H,addr.port=P[,server=on][,reconnect=S]
                                                                QEMU's -netdev stream framing
  --netdev passt,id=ID[,address=IP][,gateway=IP][,ipv6=off][,tcp-ports=SPEC][,udp-ports=SPEC]
           [,netns=NAME][,path=PASST]                           user-mode networking (ringvm starts passt)
  --netdev passt,id=ID,socket=PATH                              a running passt's socket
  --netdev hubport,id=ID,hubid=HUB[,netdev=UP]                 a port of this process's switch HUB
                                                                (netdev=: tap/stream/passt UP as its uplink)
Console ports:
  --device virtserialport,export=ID,chardev=ID,name=NAME        /dev/virtio-ports/NAME in the guest
  --device virtconsole,export=ID,chardev=ID[,name=NAME]         another console (hvc1...)

Example:
  ringvm serve --blockdev driver=file,node-name=d0,filename=disk.img \\
    --export type=vhost-user-blk,id=e0,node-name=d0,addr.type=unix,addr.path=/tmp/blk.sock,writable=on
  linux.uml ... virtio_uml.device=/tmp/blk.sock:2

Exit status: 0 after SIGINT/SIGTERM; 1 if an export cannot start or fails; 2 for a bad command line.
See docs/cli.md.
`;

export interface ServeIo {
  readonly out: (s: string) => void;
  readonly err: (s: string) => void;
  /** Stops serving, like SIGTERM (for tests and embedding). */
  readonly signal?: AbortSignal;
  /** Handle SIGINT/SIGTERM (default true). */
  readonly processSignals?: boolean;
  /** Starts each export (default: VhostUserExport.start). */
  readonly starter?: ExportStarter;
}

/** Runs `ringvm serve ARGV`; resolves with the exit status. */
export async function runServe(argv: readonly string[], io: ServeIo): Promise<number> {
  let plan;
  try {
    const args = parseArgv(argv, {
      command: 'ringvm serve',
      values: DEVICE_OPTIONS,
      flags: ['--help', '-h'],
      positionals: 'none',
    });
    if (args.flags.has('--help') || args.flags.has('-h')) {
      io.out(SERVE_USAGE);
      return 0;
    }
    plan = buildDevicePlan(args.options);
    if (plan.exports.length === 0) {
      throw new CliUsageError('ringvm serve: nothing to serve (give at least one --export)', '');
    }
    await checkHostResources(plan);
  } catch (e) {
    if (e instanceof CliUsageError) {
      io.err(`ringvm: ${e.message}\nTry 'ringvm serve --help'.\n`);
      return 2;
    }
    throw e;
  }

  const stop = stopSource({
    processSignals: io.processSignals ?? true,
    ...(io.signal !== undefined && { signal: io.signal }),
  });
  try {
    let running;
    try {
      running = await startExports(plan, {
        ...(io.starter !== undefined && { starter: io.starter }),
        onLog: (line) => {
          io.err(`ringvm: ${line}\n`);
        },
      });
    } catch (e) {
      if (e instanceof ExportStartError) {
        io.err(`ringvm: ${e.message}\n`);
        return 1;
      }
      throw e;
    }
    if (!stop.isRequested) {
      for (const r of running)
        io.out(`ringvm: ${r.plan.type} '${r.plan.id}' listening on ${r.handle.socketPath}\n`);
    }
    const outcome = await Promise.race([stop.requested.then(() => undefined), firstClosed(running)]);
    const problems = await stopExports(running);
    for (const p of problems) io.err(`ringvm: ${p}\n`);
    if (outcome !== undefined) {
      io.err(`ringvm: ${outcome.plan.label}: stopped unexpectedly\n`);
      return 1;
    }
    return problems.length > 0 ? 1 : 0;
  } finally {
    stop.dispose();
  }
}
