/**
 * `FileChardev`: guest output appended to a file (a console log); no host input. Open from `start()` (the file
 * is created if missing) until `close()`, which flushes everything written.
 *
 * ```ts
 * const log = new FileChardev({ path: '/tmp/guest-console.log' });
 * await log.start();
 * const device = new ConsoleDevice({ ports: [{ console: true, chardev: log }] });
 * ```
 */
import { createWriteStream, type WriteStream } from 'node:fs';
import { ChardevBase } from './chardev-base.js';
import { ChardevError, describeError } from './chardev-error.js';

export interface FileChardevOptions {
  readonly path: string;
  /** Start with an empty file instead of appending (default false). */
  readonly truncate?: boolean;
}

export class FileChardev extends ChardevBase {
  readonly path: string;
  readonly #truncate: boolean;
  #stream: WriteStream | undefined;
  /** The write error that closed the chardev, if one did. */
  error: Error | undefined;

  constructor(options: FileChardevOptions) {
    super();
    this.path = options.path;
    this.#truncate = options.truncate ?? false;
  }

  async start(): Promise<void> {
    if (this.#stream !== undefined) {
      throw new ChardevError('CHARDEV_STATE', `${this.path}: file chardev already started`, this.path);
    }
    const stream = createWriteStream(this.path, { flags: this.#truncate ? 'w' : 'a' });
    this.#stream = stream;
    await new Promise<void>((resolve, reject) => {
      stream.once('error', (e) => {
        this.#stream = undefined;
        reject(
          new ChardevError(
            'CHARDEV_OPEN_FAILED',
            `${this.path}: cannot open: ${describeError(e)}`,
            this.path,
            {
              cause: e,
            },
          ),
        );
      });
      stream.once('open', () => {
        resolve();
      });
    });
    stream.on('drain', () => {
      this.emitDrain();
    });
    stream.on('error', (e) => {
      this.error = e;
      this.setOpen(false);
    });
    this.setOpen(true);
  }

  write(data: Uint8Array): boolean {
    const stream = this.#stream;
    if (stream === undefined || !this.isOpen) return true;
    return stream.write(data);
  }

  async close(): Promise<void> {
    const stream = this.#stream;
    this.#stream = undefined;
    this.setOpen(false);
    if (stream === undefined || stream.destroyed) return;
    await new Promise<void>((resolve) => {
      stream.end(() => {
        resolve();
      });
    });
  }

  /** No host input. */
  protected pauseInput(): void {}

  protected resumeInput(): void {}
}
