/**
 * The worker thread behind a {@link VhostUserExport}: owns the listening socket, one front-end connection at a
 * time, the {@link VhostUserBackendSession}, and the device built by the factory. The sockets and the rings' kick
 * eventfds are watched by this thread's own libuv loop (`watchReadable`), so the loop stays free for the
 * device's host I/O (file completions, chardev sockets) and for the main thread's stop message; nothing here
 * blocks, and nothing of the data path touches the main thread.
 *
 * Messages are handled strictly one after another (a promise chain): while host I/O is in flight the worker
 * waits for it before the next vhost-user message, which may unmap guest memory, reset the device or stop a ring.
 */
import { parentPort, workerData } from 'node:worker_threads';
import {
  WOULD_BLOCK,
  acceptUnix,
  closeFd,
  eventfdRead,
  listenUnix,
  recvWithFds,
  sendWithFds,
  watchReadable,
  type FdWatch,
} from '../../sys/index.js';
import { VirtioError } from '../../virtio/errors.js';
import { VhostUserBackendSession } from './backend-session.js';
import { VhostUserMessageParser } from './message-parser.js';
import { LatencyTrace } from './latency-trace.js';
import { AdaptivePoll } from './adaptive-poll.js';
import { SysHostIo } from './sys-host-io.js';
import type { DeviceFactory, DeviceFactoryRef, DeviceInstance } from './vhost-user-export.js';
import { unlinkSync } from 'node:fs';

export interface ExportWorkerData {
  readonly socketPath: string;
  readonly device: DeviceFactoryRef;
  /** {@link AdaptivePoll}'s longest window (ns); 0: no polling. */
  readonly pollMaxNs: number;
}

/** Main thread → worker. */
export type ExportWorkerCommand =
  { readonly type: 'stop' } | { readonly type: 'control'; readonly id: number; readonly request: unknown };

export type ExportWorkerMessage =
  | { readonly type: 'listening' }
  | { readonly type: 'error'; readonly message: string; readonly code: string | undefined }
  | { readonly type: 'log'; readonly line: string }
  | { readonly type: 'stopped' }
  | { readonly type: 'control-result'; readonly id: number; readonly ok: true; readonly result: unknown }
  | {
      readonly type: 'control-result';
      readonly id: number;
      readonly ok: false;
      readonly message: string;
      readonly code: string | undefined;
    };

/** Bytes read from the connection per recvmsg (a vhost-user message is at most 12 + 4096 bytes). */
const RECV_BUFFER_BYTES = 64 * 1024;
/** Most fds one recvmsg accepts (SET_MEM_TABLE carries up to 8). */
const RECV_MAX_FDS = 16;

function post(message: ExportWorkerMessage): void {
  parentPort?.postMessage(message);
}

function isCommand(m: unknown): m is ExportWorkerCommand {
  return typeof m === 'object' && m !== null && 'type' in m && (m.type === 'stop' || m.type === 'control');
}

/** The stable `code` of a typed error (VirtioError, SysError, back-end errors), if it has one. */
function errorCode(e: unknown): string | undefined {
  if (typeof e === 'object' && e !== null && 'code' in e && typeof e.code === 'string') return e.code;
  return undefined;
}

function describe(e: unknown): string {
  if (e instanceof VirtioError) return `${e.code}: ${e.message}`;
  return e instanceof Error ? e.message : String(e);
}

interface Connection {
  readonly fd: number;
  readonly watch: FdWatch;
  readonly session: VhostUserBackendSession;
  readonly parser: VhostUserMessageParser;
}

class ExportReactor {
  readonly #data: ExportWorkerData;
  readonly #instance: DeviceInstance;
  readonly #hostIo: SysHostIo;
  readonly #recvBuffer = new Uint8Array(RECV_BUFFER_BYTES);
  #listenFd = -1;
  #listenWatch: FdWatch | null = null;
  #conn: Connection | null = null;
  /** The kick fd watched per ring index. */
  #kicks = new Map<number, { fd: number; watch: FdWatch }>();
  /** Rings to kick once the current message is handled. */
  #pendingKicks = new Set<number>();
  /** Socket work runs one step at a time, in order. */
  #queue: Promise<void> = Promise.resolve();
  #stopped = false;
  #connections = 0;
  readonly #trace = LatencyTrace.enabled ? new LatencyTrace() : null;
  readonly #poll: AdaptivePoll;

  constructor(data: ExportWorkerData, instance: DeviceInstance) {
    this.#data = data;
    this.#instance = instance;
    this.#poll = new AdaptivePoll(data.pollMaxNs);
    this.#hostIo = new SysHostIo((line) => {
      this.#log(line);
    });
    this.#trace?.wrap(this.#hostIo);
  }

  #log(line: string): void {
    post({ type: 'log', line });
  }

  /** Runs `step` after every step queued before it; a failure is logged and ends the connection. */
  #enqueue(step: () => Promise<void> | void): void {
    this.#queue = this.#queue.then(step).catch(async (e: unknown) => {
      this.#log(`export error: ${describe(e)}`);
      await this.#disconnect('internal error');
    });
  }

  listen(): void {
    this.#listenFd = listenUnix(this.#data.socketPath, 1, { unlinkStale: true, nonBlocking: true });
    this.#listenWatch = watchReadable(this.#listenFd, () => {
      this.#enqueue(() => {
        this.#accept();
      });
    });
  }

  #accept(): void {
    for (;;) {
      if (this.#stopped) return;
      const fd = acceptUnix(this.#listenFd, { nonBlocking: true });
      if (fd === WOULD_BLOCK) return;
      if (this.#conn !== null) {
        this.#log(`refused a second front end on ${this.#data.socketPath}: one is connected`);
        closeFd(fd);
        continue;
      }
      const session = new VhostUserBackendSession(this.#instance.device, this.#hostIo, {
        onFault: (fault) => {
          this.#log(`fault: ${describe(fault)}`);
        },
        onRingChange: (ring) => {
          this.#ringChanged(ring);
        },
      });
      const watch = watchReadable(fd, () => {
        this.#enqueue(() => this.#readConnection());
      });
      this.#conn = { fd, watch, session, parser: new VhostUserMessageParser() };
      this.#connections++;
      this.#log(`front end connected (connection ${this.#connections})`);
    }
  }

  /**
   * Keeps exactly the session's kick fd for `ring` watched (runs inside session.handle, before a replaced fd is
   * closed). The ring is kicked once after the message is handled: the driver may have made buffers available
   * before the ring could be served.
   */
  #ringChanged(ring: number): void {
    const info = this.#conn?.session.ring(ring);
    const current = info?.kickFd ?? null;
    const watched = this.#kicks.get(ring);
    if (watched !== undefined && watched.fd !== current) {
      watched.watch.close();
      this.#kicks.delete(ring);
    }
    if (current !== null && watched?.fd !== current) {
      const watch = watchReadable(current, () => {
        this.#kick(ring, current);
      });
      this.#kicks.set(ring, { fd: current, watch });
    }
    if (info?.polling === true)
      this.#log(`ring ${ring}: polling mode (no kick fd) is not supported; it is not served`);
    this.#pendingKicks.add(ring);
  }

  /** A kick: consume the eventfd and let the device serve the queue (straight away, not queued). */
  #kick(ring: number, fd: number): void {
    const conn = this.#conn;
    if (conn === null || this.#kicks.get(ring)?.fd !== fd) return;
    const trace = this.#trace;
    trace?.wake();
    try {
      eventfdRead(fd);
    } catch (e) {
      this.#log(`ring ${ring}: kick eventfd read failed: ${describe(e)}`);
      return;
    }
    trace?.read();
    this.#poll.woke();
    const start = trace === null ? 0 : LatencyTrace.now();
    conn.session.kick(ring);
    trace?.kicked(start);
    const session = conn.session;
    const instance = this.#instance;
    this.#poll.spin(
      () => session.hasAvailable(ring),
      () => session.kick(ring),
      () => instance.busy?.() === true,
    );
  }

  async #readConnection(): Promise<void> {
    const conn = this.#conn;
    if (conn === null || this.#conn !== conn) return;
    for (;;) {
      let received;
      try {
        received = recvWithFds(conn.fd, this.#recvBuffer, RECV_MAX_FDS);
      } catch (e) {
        this.#log(`connection read failed: ${describe(e)}`);
        await this.#disconnect('read error');
        return;
      }
      if (received.bytes === WOULD_BLOCK) return;
      if (received.bytes === 0) {
        for (const fd of received.fds) closeFd(fd);
        await this.#disconnect('front end closed the connection');
        return;
      }
      conn.parser.push(this.#recvBuffer.subarray(0, received.bytes), received.fds);
      for (;;) {
        let message;
        try {
          message = conn.parser.next();
        } catch (e) {
          this.#log(`malformed message: ${describe(e)}`);
          await this.#disconnect('malformed message');
          return;
        }
        if (message === null) break;
        // Host I/O still in flight writes into guest memory: let it land before any message can unmap that
        // memory, reset the device or stop a ring.
        if (this.#instance.busy?.() === true) await this.#instance.idle?.();
        const result = conn.session.handle(message);
        if (result.reply !== null && !this.#send(conn.fd, result.reply)) {
          await this.#disconnect('reply could not be sent');
          return;
        }
        if (result.close) {
          this.#log(`ending the connection: ${describe(result.error)}`);
          await this.#disconnect('protocol error');
          return;
        }
        for (const ring of this.#pendingKicks) conn.session.kick(ring);
        this.#pendingKicks.clear();
      }
    }
  }

  #send(fd: number, bytes: Uint8Array): boolean {
    try {
      const sent = sendWithFds(fd, bytes);
      if (sent === bytes.length) return true;
      this.#log(`reply truncated: ${sent} of ${bytes.length} bytes sent`);
    } catch (e) {
      this.#log(`reply failed: ${describe(e)}`);
    }
    return false;
  }

  async #disconnect(reason: string): Promise<void> {
    const conn = this.#conn;
    if (conn === null) return;
    this.#conn = null;
    conn.watch.close();
    for (const [, kick] of this.#kicks) kick.watch.close();
    this.#kicks.clear();
    this.#pendingKicks.clear();
    // Nothing may write into the front end's memory once it is unmapped.
    await this.#instance.idle?.();
    conn.session.close();
    for (const fd of conn.parser.drainFds()) closeFd(fd);
    closeFd(conn.fd);
    this.#log(`front end disconnected: ${reason}`);
    const p = this.#poll.stats;
    if (this.#poll.maxNs > 0)
      this.#log(`polling: ${p.hits} requests found, ${p.misses} empty windows, ${p.wakes} wake-ups`);
    for (const line of this.#trace?.report() ?? []) this.#log(line);
  }

  /** Runs a control request between vhost-user messages and posts its result. */
  control(id: number, request: unknown): void {
    this.#enqueue(() => {
      const instance = this.#instance;
      if (instance.control === undefined) {
        post({
          type: 'control-result',
          id,
          ok: false,
          message: 'this device takes no control requests',
          code: 'EXPORT_NO_CONTROL',
        });
        return;
      }
      try {
        post({ type: 'control-result', id, ok: true, result: instance.control(request) });
      } catch (e) {
        post({ type: 'control-result', id, ok: false, message: describe(e), code: errorCode(e) });
      }
    });
  }

  /** Stops accepting, ends the connection, removes the socket. */
  async stop(): Promise<void> {
    if (this.#stopped) return;
    this.#stopped = true;
    this.#listenWatch?.close();
    this.#listenWatch = null;
    await this.#queue;
    await this.#disconnect('export stopped');
    if (this.#listenFd >= 0) {
      closeFd(this.#listenFd);
      this.#listenFd = -1;
      try {
        unlinkSync(this.#data.socketPath);
      } catch {
        // Removed by someone else already.
      }
    }
  }
}

async function main(data: ExportWorkerData): Promise<void> {
  let instance: DeviceInstance;
  try {
    const module = (await import(data.device.module)) as Record<string, unknown>;
    const factory = module[data.device.name];
    if (typeof factory !== 'function') {
      throw new Error(`${data.device.module} exports no device factory '${data.device.name}'`);
    }
    instance = await (factory as DeviceFactory)(data.device.args);
  } catch (e) {
    post({ type: 'error', message: describe(e), code: errorCode(e) });
    return;
  }
  const reactor = new ExportReactor(data, instance);
  try {
    reactor.listen();
  } catch (e) {
    await instance.close();
    post({ type: 'error', message: `cannot listen on ${data.socketPath}: ${describe(e)}`, code: undefined });
    return;
  }
  post({ type: 'listening' });
  parentPort?.on('message', (command: unknown) => {
    if (!isCommand(command)) return;
    if (command.type === 'control') {
      reactor.control(command.id, command.request);
      return;
    }
    {
      void (async () => {
        await reactor.stop();
        await instance.close();
        post({ type: 'stopped' });
        parentPort?.close();
      })();
    }
  });
}

if (parentPort !== null) await main(workerData as ExportWorkerData);
