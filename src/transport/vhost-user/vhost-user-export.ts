/**
 * `VhostUserExport`: serves one {@link VirtioDevice} on a vhost-user unix socket, with the device and its data
 * path in a worker thread (woken by the kick eventfds through epoll), so device work never blocks the main
 * event loop. The main thread only starts, supervises and stops it.
 *
 * Devices cannot cross threads, so the worker builds its own from a {@link DeviceFactoryRef}: a module URL, an
 * export name, and structured-clone-able arguments. The factory runs inside the worker and returns the device and
 * a `close` that releases its host resources (flushes and closes an image, closes chardevs).
 */
import { Worker } from 'node:worker_threads';
import type { VirtioDevice } from '../../virtio/device/virtio-device.js';
import type { ExportWorkerCommand, ExportWorkerData, ExportWorkerMessage } from './export-worker.js';

/** What a device factory module exports under {@link DeviceFactoryRef.name}. */
export type DeviceFactory = (args: unknown) => Promise<DeviceInstance>;

export interface DeviceInstance {
  readonly device: VirtioDevice;
  /** Whether host I/O is in flight (it completes on the worker's event loop, which must then keep running). */
  busy?(): boolean;
  /**
   * Completes when the device has no host I/O in flight. The worker waits for it before it handles any
   * vhost-user message or a disconnect, so nothing writes into guest memory that is about to be unmapped and
   * GET_VRING_BASE answers with every popped request completed.
   */
  idle?(): Promise<void>;
  /**
   * Optional: a request from the main thread ({@link VhostUserExport.control}), run in the worker between
   * vhost-user messages: e.g. a net device's link state or counters. The request and the result must survive
   * structured clone; a throw rejects the caller's promise with its message.
   */
  control?(request: unknown): unknown;
  /** Releases host resources: flush + close images, close chardevs. Called once, at stop. */
  close(): Promise<void>;
}

/** Where the worker finds the device factory. */
export interface DeviceFactoryRef {
  /** `file:` URL of an ES module. */
  readonly module: string;
  /** Name of the exported {@link DeviceFactory}. */
  readonly name: string;
  /** Arguments for the factory; must survive structured clone (postMessage). */
  readonly args: unknown;
}

export interface VhostUserExportOptions {
  /** Path of the unix socket to listen on. A stale socket file is replaced; any other file is an error. */
  readonly socketPath: string;
  readonly device: DeviceFactoryRef;
  /** Log lines (connections, faults, malformed messages). Default: none. */
  readonly onLog?: (line: string) => void;
  /**
   * Longest window (ns) the worker keeps polling a ring after serving it before it sleeps in epoll; it tunes
   * itself below that (adaptive-poll.ts). Default 0: no polling, the worker sleeps as soon as it is idle.
   */
  readonly pollMaxNs?: number;
}

/** A {@link VhostUserExport.control} request failed in the worker (or the device takes none). */
export class VhostUserControlError extends Error {
  readonly code: string;
  constructor(message: string, code = 'EXPORT_CONTROL_FAILED') {
    super(message);
    this.name = 'VhostUserControlError';
    this.code = code;
  }
}

/** Starting an export failed: the factory threw (e.g. a missing image) or the socket could not be bound. */
export class VhostUserExportError extends Error {
  readonly code: string;
  readonly value: string;

  constructor(message: string, socketPath: string, code = 'EXPORT_START_FAILED') {
    super(message);
    this.name = 'VhostUserExportError';
    this.code = code;
    this.value = socketPath;
  }
}

export class VhostUserExport {
  readonly socketPath: string;
  /** Resolves when the worker has stopped (after {@link stop}, or if it died). */
  readonly closed: Promise<void>;
  readonly #worker: Worker;
  #stopping = false;
  #nextControl = 0;
  readonly #controls = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();

  private constructor(socketPath: string, worker: Worker, closed: Promise<void>) {
    this.socketPath = socketPath;
    this.#worker = worker;
    this.closed = closed;
    worker.on('message', (m: ExportWorkerMessage) => {
      if (m.type !== 'control-result') return;
      const waiter = this.#controls.get(m.id);
      if (waiter === undefined) return;
      this.#controls.delete(m.id);
      if (m.ok) waiter.resolve(m.result);
      else waiter.reject(new VhostUserControlError(m.message, m.code));
    });
    void closed.then(() => {
      for (const [, waiter] of this.#controls)
        waiter.reject(new VhostUserControlError('the export stopped', 'EXPORT_STOPPED'));
      this.#controls.clear();
    });
  }

  /**
   * Sends `request` to the device's `control` in the worker (see {@link DeviceInstance.control}) and resolves
   * with its result, e.g. `await netExport.control({ op: 'set-link', up: false })`.
   */
  control(request: unknown): Promise<unknown> {
    if (this.#stopping)
      return Promise.reject(new VhostUserControlError('the export is stopping', 'EXPORT_STOPPED'));
    const id = this.#nextControl++;
    return new Promise((resolve, reject) => {
      this.#controls.set(id, { resolve, reject });
      const command: ExportWorkerCommand = { type: 'control', id, request };
      this.#worker.postMessage(command);
    });
  }

  /** Starts the worker; resolves once the socket is listening, rejects if the device or the socket failed. */
  static async start(options: VhostUserExportOptions): Promise<VhostUserExport> {
    const pollMaxNs = options.pollMaxNs ?? 0;
    if (!Number.isSafeInteger(pollMaxNs) || pollMaxNs < 0) {
      throw new VhostUserExportError(
        `pollMaxNs ${pollMaxNs} is not a whole number of nanoseconds ≥ 0`,
        options.socketPath,
        'EXPORT_BAD_OPTION',
      );
    }
    const data: ExportWorkerData = { socketPath: options.socketPath, device: options.device, pollMaxNs };
    const worker = new Worker(new URL('./export-worker.js', import.meta.url), { workerData: data });
    const log = options.onLog ?? (() => undefined);
    let settleStart: ((error: Error | null) => void) | undefined;
    const started = new Promise<Error | null>((resolve) => (settleStart = resolve));
    const closed = new Promise<void>((resolve) => {
      worker.on('message', (m: ExportWorkerMessage) => {
        if (m.type === 'listening') settleStart?.(null);
        else if (m.type === 'error')
          settleStart?.(new VhostUserExportError(m.message, options.socketPath, m.code));
        else if (m.type === 'log') log(m.line);
      });
      worker.on('error', (e) => {
        log(`export worker failed: ${e.message}`);
        settleStart?.(e);
      });
      worker.on('exit', () => {
        settleStart?.(
          new VhostUserExportError('the export worker exited before listening', options.socketPath),
        );
        resolve();
      });
    });
    const error = await started;
    if (error !== null) {
      await closed;
      throw error;
    }
    return new VhostUserExport(options.socketPath, worker, closed);
  }

  /** Stops serving: disconnects the front end, closes the device's host resources, removes the socket. */
  async stop(): Promise<void> {
    if (!this.#stopping) {
      this.#stopping = true;
      const command: ExportWorkerCommand = { type: 'stop' };
      this.#worker.postMessage(command);
    }
    await this.closed;
  }

  /** Kills the worker without a clean shutdown (for tests of crash recovery). */
  async terminate(): Promise<void> {
    this.#stopping = true;
    await this.#worker.terminate();
    await this.closed;
  }
}
