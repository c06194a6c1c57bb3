/**
 * The `-p` progress bar of `ringvm img convert`: one line on a terminal, redrawn in place with `\r` at most every
 * {@link REDRAW_MS}, ended with a newline. Off (draws nothing) when the stream is not a terminal, so logs and
 * pipes get no control characters.
 *
 * ```ts
 * const bar = new ProgressBar({ write: (s) => process.stderr.write(s), isTTY: process.stderr.isTTY, columns: 80 });
 * bar.update(512 << 20, 1 << 30);   // [#########.........]  50.0%
 * bar.finish();
 * ```
 */

/** Redraws no more often than this: a terminal does not need more, and a write per chunk would cost. */
const REDRAW_MS = 100;
const MIN_BAR = 10;
const MAX_BAR = 50;

export interface ProgressStream {
  write(text: string): void;
  readonly isTTY: boolean;
  /** Terminal width; 80 when unknown. */
  readonly columns?: number | undefined;
}

export class ProgressBar {
  readonly enabled: boolean;
  readonly #stream: ProgressStream;
  readonly #now: () => number;
  #lastDraw = -Infinity;
  #lastText = '';
  #drawn = false;

  constructor(stream: ProgressStream, options: { enabled?: boolean; now?: () => number } = {}) {
    this.#stream = stream;
    this.enabled = (options.enabled ?? true) && stream.isTTY;
    this.#now = options.now ?? (() => performance.now());
  }

  /** `done` of `total` units (bytes) are finished. */
  update(done: number, total: number, force = false): void {
    if (!this.enabled) return;
    const t = this.#now();
    if (!force && t - this.#lastDraw < REDRAW_MS) return;
    const text = render(done, total, this.#stream.columns ?? 80);
    if (text === this.#lastText && !force) return;
    this.#lastDraw = t;
    this.#lastText = text;
    this.#stream.write(`\r${text}`);
    this.#drawn = true;
  }

  /** Draws 100% (when `total` is given) and ends the line. */
  finish(total?: number): void {
    if (!this.enabled) return;
    if (total !== undefined) this.update(total, total, true);
    if (this.#drawn) this.#stream.write('\n');
    this.#drawn = false;
  }
}

/** `[#########.........]  50.0%` fitted to `columns`. */
export function render(done: number, total: number, columns: number): string {
  const fraction = total <= 0 ? 1 : Math.min(1, Math.max(0, done / total));
  const percent = `${(fraction * 100).toFixed(1)}%`.padStart(7);
  const width = Math.max(MIN_BAR, Math.min(MAX_BAR, columns - percent.length - 4));
  const filled = Math.floor(fraction * width);
  return `[${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${percent}`;
}
