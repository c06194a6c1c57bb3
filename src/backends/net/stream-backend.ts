/**
 * `StreamNetBackend`: a virtio-net link over a stream socket in the framing of QEMU's `-netdev stream` and
 * `-netdev socket` (4-byte big-endian length before each frame, no virtio_net_hdr), so a ringvm guest can be
 * wired to a QEMU guest, to another ringvm guest, or to anything that speaks that framing.
 *
 * - **server** listens on a unix path or a TCP address and serves one peer at a time (as QEMU's server does): a
 *   second peer is refused while one is connected; after it leaves, the next is accepted. A stale unix socket
 *   file (nobody listening) is replaced; a path with a live server or that is not a socket is refused.
 * - **client** connects; with `reconnectMs` it retries after a failed connect and after every disconnect
 *   (QEMU's `reconnect=`), otherwise a failed first connect rejects `open`.
 *
 * The link is down while no peer is connected: `transmit` then throws LINK_DOWN (the device drops and counts).
 *
 * ```ts
 * const link = await StreamNetBackend.open({ mode: 'server', address: { type: 'unix', path: '/tmp/n0.sock' } });
 * // qemu-system-x86_64 ... -netdev stream,id=n0,server=off,addr.type=unix,addr.path=/tmp/n0.sock
 * ```
 */
import { lstat, unlink } from 'node:fs/promises';
import net from 'node:net';
import { StreamBackendError, describeError } from './stream-backend-error.js';
import { StreamLink, type StreamLinkOptions } from './stream-link.js';

export type StreamAddress =
  | { readonly type: 'unix'; readonly path: string }
  | { readonly type: 'inet'; readonly host: string; readonly port: number };

export interface StreamNetBackendOptions extends StreamLinkOptions {
  readonly mode: 'server' | 'client';
  readonly address: StreamAddress;
  /** Client mode: retry a failed or lost connection after this many milliseconds. */
  readonly reconnectMs?: number;
}

export class StreamNetBackend extends StreamLink {
  readonly mode: 'server' | 'client';
  readonly reconnectMs: number | undefined;
  /** Server: peers refused because one was connected. */
  refused = 0;
  #address: StreamAddress;
  #server: net.Server | undefined;
  #ownsPath = false;
  #timer: NodeJS.Timeout | undefined;
  /** Client: connection attempts failed since the link was last up (logged once per series). */
  #failedAttempts = 0;

  private constructor(options: StreamNetBackendOptions) {
    super(options);
    this.mode = options.mode;
    this.reconnectMs = options.reconnectMs;
    this.#address = options.address;
  }

  /** The address served or connected to; a server's TCP port 0 reads back as the port it got. */
  get address(): StreamAddress {
    return this.#address;
  }

  /** Server: listening when this resolves. Client: connected (or, with reconnectMs, trying in the background). */
  static async open(options: StreamNetBackendOptions): Promise<StreamNetBackend> {
    validate(options);
    const backend = new StreamNetBackend(options);
    if (options.mode === 'server') await backend.#listen();
    else await backend.#startClient();
    return backend;
  }

  override async close(): Promise<void> {
    if (this.closed) return;
    await super.close();
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
    const server = this.#server;
    this.#server = undefined;
    if (server !== undefined) {
      await new Promise<void>((resolve) => {
        server.close(() => {
          resolve();
        });
      });
    }
    if (this.#ownsPath && this.#address.type === 'unix') {
      this.#ownsPath = false;
      await unlink(this.#address.path).catch(() => undefined);
    }
  }

  protected override onDetach(): void {
    if (this.mode !== 'client' || this.closed) return;
    if (this.reconnectMs !== undefined) {
      this.onLog?.(`stream client: ${describeAddress(this.#address)} went away; reconnecting`);
    }
    this.#scheduleReconnect();
  }

  // ---- server ----

  async #listen(): Promise<void> {
    const address = this.#address;
    if (address.type === 'unix') await prepareSocketPath(address.path);
    const server = net.createServer((socket) => {
      socket.setNoDelay(true);
      if (!this.adopt(socket)) this.refused++;
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', (e: NodeJS.ErrnoException) => {
        reject(
          new StreamBackendError(
            e.code === 'EADDRINUSE' ? 'ADDRESS_IN_USE' : 'LISTEN_FAILED',
            `${describeAddress(address)}: cannot listen: ${describeError(e)}`,
            describeAddress(address),
            { cause: e },
          ),
        );
      });
      if (address.type === 'unix') server.listen(address.path, resolve);
      else server.listen(address.port, address.host, resolve);
    });
    server.on('error', (e: Error) => {
      this.onLog?.(`stream server error: ${e.message}`);
    });
    this.#server = server;
    if (address.type === 'unix') this.#ownsPath = true;
    else {
      const bound = server.address();
      if (bound !== null && typeof bound === 'object') {
        this.#address = { type: 'inet', host: address.host, port: bound.port };
      }
    }
  }

  // ---- client ----

  async #startClient(): Promise<void> {
    try {
      await this.#connectOnce();
    } catch (e) {
      if (this.reconnectMs === undefined) {
        throw new StreamBackendError(
          'CONNECT_FAILED',
          `${describeAddress(this.#address)}: cannot connect: ${describeError(e)}`,
          describeAddress(this.#address),
          { cause: e },
        );
      }
      this.#connectFailed(e);
    }
  }

  /** A reconnecting client's attempt failed: the first failure of a series is logged, the rest retried quietly. */
  #connectFailed(e: unknown): void {
    if (this.#failedAttempts++ === 0) {
      this.onLog?.(
        `stream client: cannot connect to ${describeAddress(this.#address)} (${describeError(e)}); ` +
          `retrying every ${this.reconnectMs} ms`,
      );
    }
    this.#scheduleReconnect();
  }

  #connectOnce(): Promise<void> {
    const address = this.#address;
    return new Promise((resolve, reject) => {
      const socket =
        address.type === 'unix' ? net.connect(address.path) : net.connect(address.port, address.host);
      const onError = (e: Error): void => {
        socket.destroy();
        reject(e);
      };
      socket.once('error', onError);
      socket.once('connect', () => {
        socket.off('error', onError);
        socket.setNoDelay(true);
        const failed = this.#failedAttempts;
        // Logged when it took retries, or when it is not the first connection (a reconnection).
        if (failed > 0 || this.stats.connections > 0) {
          const after = failed > 0 ? ` after ${failed} failed attempt${failed === 1 ? '' : 's'}` : '';
          this.onLog?.(`stream client: connected to ${describeAddress(address)}${after}`);
        }
        this.#failedAttempts = 0;
        this.adopt(socket);
        resolve();
      });
    });
  }

  #scheduleReconnect(): void {
    if (this.closed || this.reconnectMs === undefined || this.#timer !== undefined) return;
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      if (this.closed) return;
      this.#connectOnce().catch((e: unknown) => {
        this.#connectFailed(e);
      });
    }, this.reconnectMs);
  }
}

function validate(options: StreamNetBackendOptions): void {
  const bad = (what: string, value: unknown): never => {
    throw new StreamBackendError('INVALID_OPTION', `stream netdev: ${what}`, value);
  };
  // Options may come from JSON (a DeviceFactoryRef): check what the types promise too.
  const mode: string = options.mode;
  if (mode !== 'server' && mode !== 'client') bad(`mode must be server or client`, mode);
  const a = options.address as { type: string; path?: unknown; host?: unknown; port?: unknown };
  if (a.type === 'unix') {
    if (typeof a.path !== 'string' || a.path.length === 0) bad('unix path is empty', a.path);
  } else if (a.type === 'inet') {
    if (typeof a.host !== 'string' || a.host.length === 0) bad('host is empty', a.host);
    if (typeof a.port !== 'number' || !Number.isInteger(a.port) || a.port < 0 || a.port > 0xffff) {
      bad('port must be 0..65535', a.port);
    }
    if (mode === 'client' && a.port === 0) bad('a client needs a port', a.port);
  } else {
    bad('address type must be unix or inet', a.type);
  }
  if (options.reconnectMs !== undefined) {
    if (options.mode !== 'client') bad('reconnect is for client mode', options.reconnectMs);
    if (!Number.isInteger(options.reconnectMs) || options.reconnectMs <= 0) {
      bad('reconnect must be a positive number of milliseconds', options.reconnectMs);
    }
  }
}

export function describeAddress(a: StreamAddress): string {
  return a.type === 'unix' ? `unix:${a.path}` : `${a.host}:${a.port}`;
}

/** Refuses a path that is not a socket or has a live server; removes a stale socket file. */
async function prepareSocketPath(path: string): Promise<void> {
  let isSocket: boolean;
  try {
    isSocket = (await lstat(path)).isSocket();
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw new StreamBackendError('LISTEN_FAILED', `${path}: ${describeError(e)}`, path, { cause: e });
  }
  if (!isSocket) {
    throw new StreamBackendError(
      'PATH_NOT_SOCKET',
      `${path} exists and is not a socket; refusing to replace it`,
      path,
    );
  }
  const live = await new Promise<boolean>((resolve) => {
    const probe = net.connect(path);
    probe.once('connect', () => {
      probe.destroy();
      resolve(true);
    });
    probe.once('error', () => {
      resolve(false);
    });
  });
  if (live) throw new StreamBackendError('ADDRESS_IN_USE', `${path}: another server is listening`, path);
  await unlink(path);
}
