/**
 * `ringvm img create [-q] -f raw|qcow2 [-b BACKING [-F FMT]] [-o OPTIONS] FILE [SIZE]` — as qemu-img create: the
 * file is created, or truncated when it exists; a qcow2 overlay's size defaults to its backing file's.
 */
import { promises as fs } from 'node:fs';
import { Qcow2Image, type Qcow2CreateOptions } from '../../backends/block/qcow2/index.js';
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
  const backingFile = args.value('b') ?? options.get('backing_file');
  const backingFormatText = args.value('F') ?? options.get('backing_fmt');
  if (backingFormatText !== undefined && backingFile === undefined) {
    throw new CliUsageError(
      `${COMMAND}: -F: a backing format without a backing file (-b)`,
      backingFormatText,
      {
        option: '-F',
      },
    );
  }
  if (size === undefined && backingFile === undefined) {
    throw new CliUsageError(
      `${COMMAND}: SIZE: missing (the image size, e.g. 20G, or a backing file with -b)`,
      '',
    );
  }
  const backingFormat = formatOption(backingFormatText, '-F');
  const created: Qcow2CreateOptions = {
    ...qcow2Options(options, COMMAND),
    ...(size !== undefined && { size }),
    ...(backingFile !== undefined && { backingFile }),
    ...(backingFormat !== undefined && { backingFormat }),
  };
  await Qcow2Image.create(file, created);
  if (!args.flag('q')) {
    const image = await Qcow2Image.open(file, { readOnly: true });
    const info = image.info();
    await image.close();
    io.out(
      `Formatting '${file}', fmt=qcow2 cluster_size=${info.clusterSize} extended_l2=off compression_type=zlib ` +
        `size=${info.virtualSize}` +
        (info.backingFile === undefined ? '' : ` backing_file=${info.backingFile}`) +
        (info.backingFormat === undefined ? '' : ` backing_fmt=${info.backingFormat}`) +
        ` lazy_refcounts=${info.lazyRefcounts ? 'on' : 'off'} refcount_bits=${info.refcountBits}\n`,
    );
  }
  return 0;
}

/** The qcow2 layout options of `-o` (cluster_size, lazy_refcounts, refcount_bits, compat), checked. */
export function qcow2Options(options: ReadonlyMap<string, string>, command: string): Qcow2CreateOptions {
  const clusterText = options.get('cluster_size');
  const lazy = options.get('lazy_refcounts');
  const refcountText = options.get('refcount_bits');
  const compat = options.get('compat');
  if (compat !== undefined && compat !== '1.1' && compat !== 'v3') {
    throw new CliUsageError(
      `${command}: -o compat: '${compat}' is not supported (ringvm creates version 3 images: compat=1.1)`,
      compat,
      { option: '-o', key: 'compat' },
    );
  }
  let refcountBits: number | undefined;
  if (refcountText !== undefined) {
    refcountBits = /^\d+$/.test(refcountText) ? Number(refcountText) : NaN;
    if (![1, 2, 4, 8, 16, 32, 64].includes(refcountBits)) {
      throw new CliUsageError(
        `${command}: -o refcount_bits: '${refcountText}' is not a power of two from 1 to 64`,
        refcountText,
        { option: '-o', key: 'refcount_bits' },
      );
    }
  }
  let clusterSize: number | undefined;
  if (clusterText !== undefined) {
    clusterSize = parseImgSize(clusterText, '-o cluster_size', command);
    if (clusterSize < 512 || clusterSize > 2 << 20 || (clusterSize & (clusterSize - 1)) !== 0) {
      throw new CliUsageError(
        `${command}: -o cluster_size: '${clusterText}' is not a power of two from 512 to 2M`,
        clusterText,
        { option: '-o', key: 'cluster_size' },
      );
    }
  }
  return {
    ...(clusterSize !== undefined && { clusterSize }),
    ...(lazy !== undefined && { lazyRefcounts: onOff(lazy, 'lazy_refcounts', command) }),
    ...(refcountBits !== undefined && { refcountBits }),
  };
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
