/**
 * `ringvm img resize [-q] [-f FMT] [--shrink] FILE [+|-]SIZE` — as qemu-img resize: an absolute size, or a change
 * relative to the current one; shrinking needs `--shrink` (data past the new end is lost). The size may be
 * written as `-1G`, which is not taken for an option (qemu-img reads the last word before its options too).
 */
import { ftruncate } from 'node:fs';
import { promisify } from 'node:util';
import { CliUsageError } from '../cli-error.js';
import { parseImgArgv } from './img-argv.js';
import { describeHostError, ImgError } from './img-error.js';
import { formatOption, openImgImage, type OpenedImage } from './img-image.js';
import type { ImgIo } from './img-io.js';
import { parseImgSize } from './img-size.js';

const COMMAND = 'resize';
const truncate = promisify(ftruncate);

/** The new size from `[+|-]SIZE` and the current size. */
export function resizeTarget(text: string, current: number): number {
  const sign = text.startsWith('+') ? 1 : text.startsWith('-') ? -1 : 0;
  const bytes = parseImgSize(sign === 0 ? text : text.slice(1), 'SIZE', COMMAND);
  const target = sign === 0 ? bytes : current + sign * bytes;
  if (target < 0) {
    throw new CliUsageError(`${COMMAND}: SIZE: '${text}' would make the image smaller than 0 bytes`, text);
  }
  return target;
}

export async function runResize(argv: readonly string[], io: ImgIo): Promise<number> {
  // The size is the last word, even when it starts with '-'.
  const sizeText = argv.length >= 2 ? argv[argv.length - 1] : undefined;
  const args = parseImgArgv(sizeText === undefined ? argv : argv.slice(0, -1), {
    command: COMMAND,
    shortValues: ['f'],
    shortFlags: ['q'],
    longValues: [],
    longFlags: ['shrink'],
  });
  const [file, ...extra] = args.positionals;
  if (file === undefined || sizeText === undefined) {
    throw new CliUsageError(`${COMMAND}: expecting FILE and SIZE`, argv.join(' '));
  }
  if (extra.length > 0)
    throw new CliUsageError(`${COMMAND}: unexpected argument '${extra.join(' ')}'`, extra[0] ?? '');
  const image = await openImgImage(file, { format: formatOption(args.value('f'), '-f'), readOnly: false });
  try {
    const current = image.backend.size;
    const target = resizeTarget(sizeText, current);
    if (target < current && !args.flag('shrink')) {
      throw new ImgError(
        'NOT_POSSIBLE',
        `'${file}': shrinking from ${current} to ${target} bytes loses data: give --shrink to do it`,
        sizeText,
      );
    }
    await resizeImage(image, target);
  } finally {
    await image.backend.close();
  }
  if (!args.flag('q')) io.out('Image resized.\n');
  return 0;
}

async function resizeImage(image: OpenedImage, target: number): Promise<void> {
  if (image.format === 'qcow2') {
    await image.backend.resize(target);
    return;
  }
  try {
    await truncate(image.backend.fd, target);
  } catch (e) {
    throw new ImgError('IO_FAILED', `Could not resize '${image.path}': ${describeHostError(e)}`, image.path, {
      cause: e,
    });
  }
}
