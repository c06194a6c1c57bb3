/**
 * `ringvm img create [-q] -f raw|qcow2 [-b BACKING [-F FMT]] [-o OPTIONS] FILE [SIZE]` — as qemu-img create: the
 * file is created, or truncated when it exists; a qcow2 overlay's size defaults to its backing file's.
 */
import { promises as fs } from 'node:fs';
import { CliUsageError } from '../cli-error.js';
import { splitItems } from '../options.js';
import { parseImgArgv } from './img-argv.js';
import { describeHostError, ImgError } from './img-error.js';
import { formatOption, type ImgFormat } from './img-image.js';
import type { ImgIo } from './img-io.js';
import { parseImgSize } from './img-size.js';

const COMMAND = 'create';

/** The `-o` options of each format (qemu-img's names). */
const CREATE_OPTIONS: Readonly<Record<ImgFormat, readonly string[]>> = {
  raw: ['size'],
  qcow2: ['size', 'cluster_size', 'lazy_refcounts', 'refcount_bits', 'backing_file', 'backing_fmt', 'compat'],
};

/**
 * The `-o key=value,...` options (every `-o`, in order; later ones win), checked against what `format` takes.
 * A bare key means `key=on`, as in qemu's option parser. `,,` is a comma inside a value.
 */
export function parseCreateOptions(
  texts: readonly string[],
  format: ImgFormat,
  command: string,
): Map<string, string> {
  const options = new Map<string, string>();
  for (const text of texts) {
    for (const item of splitItems(text)) {
      if (item === '') continue;
      const eq = item.indexOf('=');
      const key = eq < 0 ? item : item.slice(0, eq);
      const value = eq < 0 ? 'on' : item.slice(eq + 1);
      if (!CREATE_OPTIONS[format].includes(key)) {
        throw new CliUsageError(
          `${command}: -o: invalid option '${key}' for format '${format}' (known: ${CREATE_OPTIONS[format].join(', ')})`,
          key,
          { option: '-o', key },
        );
      }
      options.set(key, value);
    }
  }
  return options;
}

export function onOff(value: string, key: string, command: string): boolean {
  const v = value.toLowerCase();
  if (v === 'on' || v === 'true' || v === 'yes') return true;
  if (v === 'off' || v === 'false' || v === 'no') return false;
  throw new CliUsageError(`${command}: -o ${key}: expected on or off, got '${value}'`, value, {
    option: '-o',
    key,
  });
}

export async function runCreate(argv: readonly string[], io: ImgIo): Promise<number> {
  const args = parseImgArgv(argv, {
    command: COMMAND,
    shortValues: ['f', 'b', 'F', 'o'],
    shortFlags: ['q', 'u'],
    longValues: [],
    longFlags: [],
    repeat: ['o'],
  });
  const [file, sizeText, ...extra] = args.positionals;
  if (file === undefined) throw new CliUsageError(`${COMMAND}: expecting a FILE name`, '');
  if (extra.length > 0)
    throw new CliUsageError(`${COMMAND}: unexpected argument '${extra.join(' ')}'`, extra[0] ?? '');
  const format = formatOption(args.value('f'), '-f') ?? 'raw';
  const options = parseCreateOptions(args.values('o'), format, COMMAND);
  let size = sizeText === undefined ? undefined : parseImgSize(sizeText, 'SIZE', COMMAND);
  const sizeOption = options.get('size');
  if (size === undefined && sizeOption !== undefined) size = parseImgSize(sizeOption, '-o size', COMMAND);

  if (format === 'raw') {
    if (args.value('b') !== undefined || args.value('F') !== undefined) {
      throw new CliUsageError(`${COMMAND}: -b: backing files are not supported for file format 'raw'`, '-b', {
        option: '-b',
      });
    }
    if (size === undefined)
      throw new CliUsageError(`${COMMAND}: SIZE: missing (the image size, e.g. 20G)`, '');
    await createRaw(file, size);
    if (!args.flag('q')) io.out(`Formatting '${file}', fmt=raw size=${size}\n`);
    return 0;
  }
  throw new ImgError('BAD_FORMAT', `'${file}': qcow2 images are not supported by this build yet`, file);
}

/** A raw image of `size` bytes, all holes: created, or truncated and re-sized when it exists. */
export async function createRaw(path: string, size: number): Promise<void> {
  let handle: fs.FileHandle;
  try {
    handle = await fs.open(path, 'w', 0o644);
  } catch (e) {
    throw new ImgError('OPEN_FAILED', `Could not create '${path}': ${describeHostError(e)}`, path, {
      cause: e,
    });
  }
  try {
    await handle.truncate(size);
  } catch (e) {
    throw new ImgError(
      'IO_FAILED',
      `Could not resize '${path}' to ${size} bytes: ${describeHostError(e)}`,
      path,
      {
        cause: e,
      },
    );
  } finally {
    await handle.close();
  }
}
