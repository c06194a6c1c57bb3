/**
 * `UnixSocketChardev`: a console port's host side on a unix stream socket, as QEMU's `-chardev socket,path=…`.
 *
 * - **server** mode listens on `path` and serves one client at a time: a second client is refused (closed at
 *   once) while one is connected; after a client leaves, the next one is accepted. `start()` refuses a path that
 *   exists and is not a socket, or that has a live server behind it; a stale socket file (nobody listening) is
 *   replaced. `close()` removes the socket file.
 * - **client** mode connects to a listening socket (e.g. `socat UNIX-LISTEN:/tmp/port0.sock -`). With
 *   `reconnectMs` it retries after a failed connect and after every disconnect; without it a failed first
 *   connect rejects `start()`.
 *
 * While connected the chardev is open; guest output written while nobody is connected is discarded.
 *
 * ```ts
 * const port = new UnixSocketChardev({ path: '/tmp/ringvm-port0.sock', mode: 'server' });
 * await port.start();
 * const device = new ConsoleDevice({ ports: [{ name: 'org.example.0', chardev: port }] });
 * // later: await port.close();
 * ```
 */
import { lstat, unlink } from 'node:fs/promises';
import net from 'node:net';
import { ChardevBase } from './chardev-base.js';
import { ChardevError, describeError } from './chardev-error.js';

export interface UnixSocketChardevOptions {
  readonly path: string;
  readonly mode: 'server' | 'client';
  /** Client mode: retry a failed or lost connection after this many milliseconds (default: no retry). */
  readonly reconnectMs?: number;
}

export class UnixSocketChardev extends ChardevBase {
  readonly path: string;
  readonly mode: 'server' | 'client';
  readonly reconnectMs: number | undefined;
  /** Connections accepted (server) or established (client). */
  connections = 0;
  /** Server mode: clients refused because one was connected already. */
  refused = 0;

  #server: net.Server | undefined;
  #socket: net.Socket | undefined;
  #started = false;
  #closed = false;
  #ownsPath = false;
  #timer: NodeJS.Timeout | undefined;

  constructor(options: UnixSocketChardevOptions) {
    super();
    this.path = options.path;
    this.mode = options.mode;
    this.reconnectMs = options.reconnectMs;
  }

  /** Server: listens. Client: connects (or, with reconnectMs, keeps trying in the background). */
  async start(): Promise<void> {
    if (this.#started || this.#closed) {
      throw new ChardevError('CHARDEV_STATE', `${this.path}: chardev already started or closed`, this.path);
    }
    this.#started = true;
    if (this.mode === 'server') await this.#listen();
    else await this.#startClient();
  }

  write(data: Uint8Array): boolean {
    const socket = this.#socket;
    if (socket === undefined || !this.isOpen || socket.destroyed) return true;
    return socket.write(data);
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    const socket = this.#socket;
    this.#socket = undefined;
    socket?.destroy();
    this.setOpen(false);
    const server = this.#server;
    this.#server = undefined;
    if (server !== undefined) {
      await new Promise<void>((resolve) => {
        server.close(() => {
          resolve();
        });
      });
    }
    if (this.#ownsPath) {
      this.#ownsPath = false;
      await unlink(this.path).catch(() => undefined);
    }
  }

  protected pauseInput(): void {
    this.#socket?.pause();
  }

  protected resumeInput(): void {
    this.#socket?.resume();
  }

  // ---- server ----

  async #listen(): Promise<void> {
    await this.#prepareSocketPath();
    const server = net.createServer((socket) => {
      this.#accept(socket);
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', (e) => {
        reject(
          new ChardevError(
            'CHARDEV_LISTEN_FAILED',
            `${this.path}: cannot listen: ${describeError(e)}`,
            this.path,
            {
              cause: e,
            },
          ),
        );
      });
      server.listen(this.path, () => {
        resolve();
      });
    });
    // After listening, errors are per connection; keep the server alive.
    server.on('error', () => undefined);
    this.#server = server;
    this.#ownsPath = true;
    if (this.#closed) await this.close();
  }

  /** Refuses a path that is not a socket or has a live server; removes a stale socket file. */
  async #prepareSocketPath(): Promise<void> {
    let isSocket: boolean;
    try {
      isSocket = (await lstat(this.path)).isSocket();
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw new ChardevError('CHARDEV_LISTEN_FAILED', `${this.path}: ${describeError(e)}`, this.path, {
        cause: e,
      });
    }
    if (!isSocket) {
      throw new ChardevError(
        'CHARDEV_PATH_NOT_SOCKET',
        `${this.path} exists and is not a socket; refusing to replace it`,
        this.path,
      );
    }
    if (await isListening(this.path)) {
      throw new ChardevError(
        'CHARDEV_PATH_IN_USE',
        `${this.path}: another server is listening on this socket`,
        this.path,
      );
    }
    await unlink(this.path);
  }

  #accept(socket: net.Socket): void {
    if (this.#socket !== undefined || this.#closed) {
      this.refused++;
      socket.destroy();
      return;
    }
    this.#adopt(socket);
  }

  // ---- client ----

  async #startClient(): Promise<void> {
    try {
      await this.#connectOnce();
    } catch (e) {
      if (this.reconnectMs === undefined) {
        throw new ChardevError(
          'CHARDEV_CONNECT_FAILED',
          `${this.path}: cannot connect: ${describeError(e)}`,
          this.path,
          { cause: e },
        );
      }
      this.#scheduleReconnect();
    }
  }

  #connectOnce(): Promise<void> {
    return new Promise((resolve, reject) => {
      const socket = net.connect(this.path);
      const onError = (e: Error): void => {
        reject(e);
      };
      socket.once('error', onError);
      socket.once('connect', () => {
        socket.off('error', onError);
        if (this.#closed) {
          socket.destroy();
        } else {
          this.#adopt(socket);
        }
        resolve();
      });
    });
  }

  #scheduleReconnect(): void {
    if (this.#closed || this.reconnectMs === undefined || this.#timer !== undefined) return;
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      if (this.#closed) return;
      this.#connectOnce().catch(() => {
        this.#scheduleReconnect();
      });
    }, this.reconnectMs);
  }

  // ---- the connection ----

  /** Makes `socket` the connection: data, drain and close go to the listener. */
  #adopt(socket: net.Socket): void {
    this.#socket = socket;
    this.connections++;
    socket.on('data', (data: Buffer) => {
      if (this.#socket === socket) this.emitData(data);
    });
    socket.on('drain', () => {
      if (this.#socket === socket) this.emitDrain();
    });
    socket.on('error', () => undefined); // 'close' follows
    socket.on('close', () => {
      if (this.#socket !== socket) return;
      this.#socket = undefined;
      this.setOpen(false);
      if (this.mode === 'client') this.#scheduleReconnect();
    });
    if (this.isPaused) socket.pause();
    this.setOpen(true);
  }
}

/** Whether a server accepts connections on the unix socket at `path`. */
function isListening(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = net.connect(path);
    probe.once('connect', () => {
      probe.destroy();
      resolve(true);
    });
    probe.once('error', () => {
      resolve(false);
    });
  });
}
