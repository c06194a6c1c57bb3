/**
 * `PasstNetBackend`: user-mode networking without root through passt (https://passt.top, Debian package
 * `passt`): the guest gets its address, gateway and DNS by DHCP/NDP from passt, and its TCP, UDP and ping traffic
 * leaves through ordinary host sockets. Connections to the gateway address reach the host's loopback (passt's
 * default; `--no-map-gw` turns it off).
 *
 * passt's qemu-mode socket carries exactly the stream framing of QEMU's `-netdev stream` (passt tap.c: a 4-byte
 * network-order length, then the frame), so this is a {@link StreamLink} whose socket is either
 *
 * - **spawned** (default): one end of a socketpair handed to a child `passt --foreground --fd 3` (passt then serves
 *   exactly that connection and exits when it closes); `open` resolves once passt has written its pid file, i.e.
 *   finished initialising, and rejects with passt's own error message if it exits first; or
 * - **connected** (`socketPath`): a running passt's `--socket` path, as QEMU's `-netdev stream,addr.path=…`.
 *
 * Frames go out whole (prefix and frame in one write): the passt in Debian 12 reads its socket in chunks and
 * does not reassemble a length prefix split across two reads.
 *
 * ```ts
 * const net = await PasstNetBackend.open({ args: ['--ipv4-only'] });
 * // a virtio-net device over `net`: the guest runs `udhcpc -i eth0`, then reaches the host at the gateway
 * ```
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { chmod, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { closeFd, socketPair } from '../../sys/index.js';
import { StreamBackendError, describeError } from './stream-backend-error.js';
import { StreamLink, type StreamLinkOptions } from './stream-link.js';

/** How long passt may take to initialise before `open` gives up. */
const PASST_START_TIMEOUT_MS = 30_000;
/** Poll interval for passt's pid file. */
const PASST_POLL_MS = 20;
/** passt's stderr kept for error messages. */
const PASST_STDERR_BYTES = 4096;

export interface PasstNetBackendOptions extends StreamLinkOptions {
  /** Connect to a passt already listening on this unix socket instead of starting one. */
  readonly socketPath?: string;
  /** The passt executable (default `passt` from PATH). */
  readonly command?: string;
  /** Extra passt options, e.g. `['--ipv4-only', '--address', '10.0.2.15']`. */
  readonly args?: readonly string[];
  /** Start passt inside this network namespace (`ip netns exec NAME passt …`; needs root). */
  readonly netns?: string;
  /** passt's log file (`--log-file`); by default it logs nothing but errors to stderr. */
  readonly logFile?: string;
}

export class PasstNetBackend extends StreamLink {
  /** The passt child (spawned mode). */
  readonly child: ChildProcess | undefined;
  #stderr = '';
  #exited: Promise<void> | undefined;
  #dir: string | undefined;

  private constructor(options: PasstNetBackendOptions, child: ChildProcess | undefined) {
    super(options);
    this.child = child;
    if (child !== undefined) {
      child.stderr?.setEncoding('utf8');
      child.stderr?.on('data', (s: string) => {
        this.#stderr = (this.#stderr + s).slice(-PASST_STDERR_BYTES);
      });
      this.#exited = new Promise((resolve) => {
        child.once('exit', (code, signal) => {
          if (!this.closed)
            this.onLog?.(`passt exited (${signal ?? `status ${code}`}): ${this.#stderr.trim()}`);
          resolve();
        });
      });
    }
  }

  /** What passt wrote on stderr (the tail). */
  get stderr(): string {
    return this.#stderr;
  }

  static async open(options: PasstNetBackendOptions = {}): Promise<PasstNetBackend> {
    if (options.socketPath !== undefined) return PasstNetBackend.#connect(options, options.socketPath);
    return PasstNetBackend.#spawn(options);
  }

  static async #connect(options: PasstNetBackendOptions, path: string): Promise<PasstNetBackend> {
    const backend = new PasstNetBackend(options, undefined);
    await new Promise<void>((resolve, reject) => {
      const socket = net.connect(path);
      socket.once('error', (e) => {
        reject(
          new StreamBackendError(
            'CONNECT_FAILED',
            `passt socket ${path}: cannot connect: ${describeError(e)}`,
            path,
            {
              cause: e,
            },
          ),
        );
      });
      socket.once('connect', () => {
        backend.adopt(socket);
        resolve();
      });
    });
    return backend;
  }

  static async #spawn(options: PasstNetBackendOptions): Promise<PasstNetBackend> {
    const dir = await mkdtemp(join(tmpdir(), `ringvm-passt-${process.pid}-`));
    const pidFile = join(dir, 'passt.pid');
    // passt started as root drops to `nobody` before it writes the pid file: let it reach and write only that.
    await chmod(dir, 0o711);
    await writeFile(pidFile, '', { mode: 0o622 });
    await chmod(pidFile, 0o622);
    const passtArgs = [
      '--foreground',
      '--fd',
      '3',
      '--pid',
      pidFile,
      ...(options.logFile !== undefined ? ['--log-file', options.logFile] : ['--quiet']),
      ...(options.args ?? []),
    ];
    const passt = options.command ?? 'passt';
    const [file, argv] =
      options.netns !== undefined
        ? ['ip', ['netns', 'exec', options.netns, passt, ...passtArgs]]
        : [passt, passtArgs];
    const [ours, theirs] = socketPair();
    let child: ChildProcess;
    try {
      child = spawn(file, argv, { stdio: ['ignore', 'ignore', 'pipe', theirs] });
    } finally {
      closeFd(theirs);
    }
    const backend = new PasstNetBackend(options, child);
    backend.#dir = dir;
    const spawnError = new Promise<Error>((resolve) => child.once('error', resolve));
    try {
      await backend.#waitReady(pidFile, spawnError, `${file} ${argv.join(' ')}`);
    } catch (e) {
      closeFd(ours);
      await backend.close();
      throw e;
    }
    backend.adopt(new net.Socket({ fd: ours, readable: true, writable: true }));
    return backend;
  }

  async #waitReady(pidFile: string, spawnError: Promise<Error>, commandLine: string): Promise<void> {
    const deadline = Date.now() + PASST_START_TIMEOUT_MS;
    let failure: Error | undefined;
    void spawnError.then((e) => (failure = e));
    const child = { exited: false };
    void this.#exited?.then(() => (child.exited = true));
    for (;;) {
      if (failure !== undefined) {
        throw new StreamBackendError(
          'PASST_FAILED',
          `cannot start passt (${commandLine}): ${failure.message}`,
          commandLine,
          {
            cause: failure,
          },
        );
      }
      try {
        if ((await readFile(pidFile, 'utf8')).trim().length > 0) return;
      } catch {
        // Not written yet.
      }
      if (child.exited) {
        throw new StreamBackendError(
          'PASST_FAILED',
          `passt exited during start-up (${commandLine}): ${this.#stderr.trim() || 'no message'}`,
          commandLine,
        );
      }
      if (Date.now() > deadline) {
        throw new StreamBackendError(
          'PASST_FAILED',
          `passt did not start within ${PASST_START_TIMEOUT_MS} ms`,
          commandLine,
        );
      }
      await new Promise((r) => setTimeout(r, PASST_POLL_MS));
    }
  }

  override async close(): Promise<void> {
    if (this.closed) return;
    await super.close();
    const child = this.child;
    if (child !== undefined && child.exitCode === null && child.signalCode === null) {
      // passt serves one connection and exits when it closes; make sure.
      child.kill('SIGTERM');
    }
    await this.#exited;
    if (this.#dir !== undefined) await rm(this.#dir, { recursive: true, force: true });
  }
}
