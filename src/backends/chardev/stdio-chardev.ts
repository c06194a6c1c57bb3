/**
 * `StdioChardev`: a console port on this process's stdin/stdout (or any readable/writable stream pair). Open from
 * `start()` until `close()`; the streams are not put in raw mode and are not closed (the process owns them).
 *
 * ```ts
 * const stdio = new StdioChardev();
 * stdio.start();
 * const device = new ConsoleDevice({ ports: [{ console: true, chardev: stdio }] });
 * ```
 */
import type { Readable, Writable } from 'node:stream';
import { ChardevBase } from './chardev-base.js';

export interface StdioChardevOptions {
  /** Host input (default `process.stdin`). */
  readonly input?: Readable;
  /** Guest output goes here (default `process.stdout`). */
  readonly output?: Writable;
}

export class StdioChardev extends ChardevBase {
  readonly input: Readable;
  readonly output: Writable;
  readonly #encoder = new TextEncoder();
  #started = false;

  readonly #onData = (chunk: Uint8Array | string): void => {
    this.emitData(typeof chunk === 'string' ? this.#encoder.encode(chunk) : chunk);
  };
  readonly #onDrain = (): void => {
    this.emitDrain();
  };
  readonly #onOutputError = (): void => {
    // stdout went away (EPIPE): nobody is watching any more.
    this.setOpen(false);
  };

  constructor(options: StdioChardevOptions = {}) {
    super();
    this.input = options.input ?? process.stdin;
    this.output = options.output ?? process.stdout;
  }

  start(): void {
    if (this.#started) return;
    this.#started = true;
    this.input.on('data', this.#onData);
    this.output.on('drain', this.#onDrain);
    this.output.on('error', this.#onOutputError);
    if (this.isPaused) this.input.pause();
    else this.input.resume();
    this.setOpen(true);
  }

  write(data: Uint8Array): boolean {
    if (!this.isOpen) return true;
    return this.output.write(data);
  }

  close(): Promise<void> {
    if (this.#started) {
      this.#started = false;
      this.input.off('data', this.#onData);
      this.output.off('drain', this.#onDrain);
      this.output.off('error', this.#onOutputError);
      this.input.pause();
    }
    this.setOpen(false);
    return Promise.resolve();
  }

  protected pauseInput(): void {
    if (this.#started) this.input.pause();
  }

  protected resumeInput(): void {
    if (this.#started) this.input.resume();
  }
}
