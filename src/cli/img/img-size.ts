/**
 * Sizes on the `ringvm img` command line and in its output, as qemu-img writes them.
 *
 * ```ts
 * parseImgSize('1G', 'size');        // 1073741824
 * parseImgSize('65536', 'size');     // 65536 (plain bytes)
 * formatHumanSize(344064);          // '336 KiB'
 * ```
 */
import { CliUsageError } from '../cli-error.js';
import { parseSize } from '../options.js';

/** Bytes, or K/M/G/T/P/E suffixes (powers of 1024, `1.5G` allowed); a {@link CliUsageError} naming `what` otherwise. */
export function parseImgSize(text: string, what: string, command: string): number {
  const bytes = parseSize(text);
  if (bytes === undefined) {
    throw new CliUsageError(
      `${command}: ${what}: invalid size '${text}' (bytes, or a number with a K, M, G, T, P or E suffix)`,
      text,
    );
  }
  return bytes;
}

const UNITS = ['', 'Ki', 'Mi', 'Gi', 'Ti', 'Pi', 'Ei'] as const;

/**
 * qemu's size_to_str: three significant digits in the largest power of 1024 that keeps the number below 1000
 * (`10 MiB`, `336 KiB`, `1.5 GiB`, `0.977 KiB` for 1000 bytes).
 */
export function formatHumanSize(bytes: number): string {
  let i = 0;
  // The switch to the next unit happens at 1000 of the current one, not 1024.
  while (i < UNITS.length - 1 && bytes / 2 ** (10 * i) >= 1000) i++;
  const scaled = bytes / 2 ** (10 * i);
  const text = String(Number(scaled.toPrecision(3)));
  return `${text} ${UNITS[i] ?? ''}B`;
}
