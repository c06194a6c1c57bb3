/**
 * `GuestConsoleFilter`: the host side of the ringvm guest's console protocol (see docs/guest.md): /init prints
 * `RINGVM-START` on its own line before the command and `RINGVM-EXIT <status>` after it (possibly at the end of
 * a line whose first part is the command's last output, without a newline), then powers off. The filter passes
 * the command's output through as it arrives (partial lines included: a shell prompt has no newline), holds back
 * only what could still turn into a marker, drops the markers, and reports the status.
 *
 * Bytes are handled as latin1 strings: one char per byte, so UTF-8 split across chunks passes through intact.
 */
export interface GuestConsoleFilterOptions {
  /** Receives the output (latin1 string; write it with `Buffer.from(s, 'latin1')`). */
  readonly out: (s: string) => void;
  /** Keep the boot messages (before RINGVM-START) in {@link GuestConsoleFilter.bootLog} instead of passing them on. */
  readonly holdBoot: boolean;
  /** Pass everything on, markers and the messages after RINGVM-EXIT included. */
  readonly verbose: boolean;
  /** End lines with `\r\n` (for a terminal the guest put in raw mode, while the guest console sends `\n`). */
  readonly crlf: boolean;
}

const START = /^RINGVM-START\r?$/;
const EXIT = /RINGVM-EXIT (\d+)\r?$/;
const EXIT_PREFIX = 'RINGVM-EXIT ';
const START_TEXT = 'RINGVM-START\r';

/** Whether `s` could still grow into `RINGVM-EXIT <digits>` (with an optional `\r`). */
function couldBeExit(s: string): boolean {
  if (s.length <= EXIT_PREFIX.length) return EXIT_PREFIX.startsWith(s);
  return s.startsWith(EXIT_PREFIX) && /^\d*\r?$/.test(s.slice(EXIT_PREFIX.length));
}

export class GuestConsoleFilter {
  readonly #options: GuestConsoleFilterOptions;
  #started = false;
  #status: number | undefined;
  /** The current line's bytes not passed on yet. */
  #held = '';
  /** Part of the current line was passed on already (so it cannot be RINGVM-START). */
  #lineHasOutput = false;
  #boot = '';

  constructor(options: GuestConsoleFilterOptions) {
    this.#options = options;
  }

  /** The guest reached its command (printed RINGVM-START). */
  get started(): boolean {
    return this.#started;
  }

  /** The command's exit status, once RINGVM-EXIT has been seen. */
  get status(): number | undefined {
    return this.#status;
  }

  /** The boot messages held back (with `holdBoot`). */
  get bootLog(): string {
    return this.#boot;
  }

  push(chunk: Uint8Array | string): void {
    let text = this.#held + (typeof chunk === 'string' ? chunk : Buffer.from(chunk).toString('latin1'));
    this.#held = '';
    for (let nl = text.indexOf('\n'); nl >= 0; nl = text.indexOf('\n')) {
      this.#line(text.slice(0, nl));
      text = text.slice(nl + 1);
    }
    this.#partial(text);
  }

  /** The stream ended: passes on what was held. */
  end(): void {
    const rest = this.#held;
    this.#held = '';
    if (rest !== '') this.#emit(rest);
  }

  #line(line: string): void {
    const fresh = !this.#lineHasOutput;
    this.#lineHasOutput = false;
    if (this.#status === undefined) {
      if (!this.#started) {
        if (fresh && START.test(line)) {
          this.#started = true;
          if (this.#options.verbose) this.#options.out(this.#eol(line));
          return;
        }
      } else {
        const m = EXIT.exec(line);
        if (m !== null) {
          if (m.index > 0) this.#emit(line.slice(0, m.index));
          this.#status = Number(m[1]);
          if (this.#options.verbose) this.#options.out(this.#eol(line.slice(m.index)));
          return;
        }
      }
    }
    this.#emit(this.#eol(line));
  }

  #partial(text: string): void {
    if (text === '') return;
    if (!this.#started && this.#options.holdBoot) {
      this.#held = text; // boot messages are kept by line
      return;
    }
    let keep = text.length;
    if (this.#status === undefined) {
      if (!this.#started && !this.#lineHasOutput && START_TEXT.startsWith(text)) {
        keep = 0;
      } else if (this.#started) {
        for (let i = text.indexOf('R'); i >= 0; i = text.indexOf('R', i + 1)) {
          if (couldBeExit(text.slice(i))) {
            keep = i;
            break;
          }
        }
      }
    }
    if (keep > 0) {
      this.#emit(text.slice(0, keep));
      this.#lineHasOutput = true;
    }
    this.#held = text.slice(keep);
  }

  #eol(line: string): string {
    return line + (this.#options.crlf && !line.endsWith('\r') ? '\r\n' : '\n');
  }

  #emit(s: string): void {
    if (!this.#started) {
      if (this.#options.holdBoot) this.#boot += s;
      else this.#options.out(s);
    } else if (this.#status === undefined || this.#options.verbose) {
      this.#options.out(s);
    }
  }
}
