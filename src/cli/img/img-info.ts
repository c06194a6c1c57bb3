/**
 * `ringvm img info [-f FMT] [--output=human|json] [--backing-chain] FILE` — qemu-img info's fields, with its JSON
 * names (`virtual-size`, `actual-size`, `cluster-size`, `backing-filename`, `dirty-flag`, `format-specific`...).
 */
import { promises as fs } from 'node:fs';
import { CliUsageError } from '../cli-error.js';
import { parseImgArgv } from './img-argv.js';
import { describeHostError, ImgError } from './img-error.js';
import { formatOption, openImgImage, type OpenedImage } from './img-image.js';
import type { ImgIo } from './img-io.js';
import { formatHumanSize } from './img-size.js';

const COMMAND = 'info';

/** One image's description, in qemu-img's JSON field names and order of importance. */
export interface ImageInfo {
  readonly filename: string;
  readonly format: string;
  readonly 'virtual-size': number;
  /** Bytes the file occupies on the host (allocated blocks). */
  readonly 'actual-size': number;
  readonly 'dirty-flag': boolean;
  readonly 'cluster-size'?: number;
  readonly 'backing-filename'?: string;
  readonly 'full-backing-filename'?: string;
  readonly 'backing-filename-format'?: string;
  readonly 'format-specific'?: {
    readonly type: string;
    readonly data: Readonly<Record<string, string | number | boolean>>;
  };
}

export function outputOption(value: string | undefined, command: string): 'human' | 'json' {
  if (value === undefined || value === 'human') return 'human';
  if (value === 'json') return 'json';
  throw new CliUsageError(`${command}: --output: '${value}' is not one of human, json`, value, {
    option: '--output',
  });
}

/** The single FILE positional of info, check and map. */
export function onlyFile(positionals: readonly string[], command: string): string {
  const [file, ...extra] = positionals;
  if (file === undefined) throw new CliUsageError(`${command}: expecting a FILE name`, '');
  if (extra.length > 0) {
    throw new CliUsageError(`${command}: unexpected argument '${extra.join(' ')}'`, extra[0] ?? '');
  }
  return file;
}

/** Allocated bytes of a file (st_blocks × 512). */
export async function actualSize(path: string): Promise<number> {
  try {
    return (await fs.stat(path)).blocks * 512;
  } catch (e) {
    throw new ImgError('OPEN_FAILED', `Could not stat '${path}': ${describeHostError(e)}`, path, {
      cause: e,
    });
  }
}

/** The description of an opened image (its backing file, if any, is not opened here). */
export async function describeImage(image: OpenedImage): Promise<ImageInfo> {
  if (image.format === 'raw') {
    return {
      filename: image.path,
      format: image.format,
      'virtual-size': image.backend.size,
      'actual-size': await actualSize(image.path),
      'dirty-flag': false,
    };
  }
  const q = image.backend.info();
  const v3 = q.version === 3;
  return {
    filename: image.path,
    format: 'qcow2',
    'virtual-size': q.virtualSize,
    'actual-size': q.actualSize,
    'dirty-flag': q.dirty,
    'cluster-size': q.clusterSize,
    ...(q.backingFile !== undefined && { 'backing-filename': q.backingFile }),
    ...(q.backingChain[0] !== undefined && { 'full-backing-filename': q.backingChain[0].path }),
    ...(q.backingFormat !== undefined && { 'backing-filename-format': q.backingFormat }),
    'format-specific': {
      type: 'qcow2',
      // qemu-img's fields, in its order (version 2 images have no feature bits to show).
      data: v3
        ? {
            compat: '1.1',
            'compression-type': 'zlib',
            'lazy-refcounts': q.lazyRefcounts,
            'refcount-bits': q.refcountBits,
            corrupt: q.corrupt,
            'extended-l2': false,
          }
        : { compat: '0.10', 'compression-type': 'zlib', 'refcount-bits': q.refcountBits },
    },
  };
}

/** qemu-img info's human-readable text for one image. */
export function humanInfo(info: ImageInfo): string {
  const lines = [
    `image: ${info.filename}`,
    `file format: ${info.format}`,
    `virtual size: ${formatHumanSize(info['virtual-size'])} (${info['virtual-size']} bytes)`,
    `disk size: ${formatHumanSize(info['actual-size'])}`,
  ];
  if (info['cluster-size'] !== undefined) lines.push(`cluster_size: ${info['cluster-size']}`);
  if (info['dirty-flag']) lines.push('cleanly shut down: no');
  if (info['backing-filename'] !== undefined) {
    const full = info['full-backing-filename'];
    lines.push(
      `backing file: ${info['backing-filename']}${full !== undefined && full !== info['backing-filename'] ? ` (actual path: ${full})` : ''}`,
    );
  }
  if (info['backing-filename-format'] !== undefined) {
    lines.push(`backing file format: ${info['backing-filename-format']}`);
  }
  const specific = info['format-specific'];
  if (specific !== undefined) {
    lines.push('Format specific information:');
    for (const [key, value] of Object.entries(specific.data))
      lines.push(`    ${key.replace(/-/g, ' ')}: ${value}`);
  }
  return `${lines.join('\n')}\n`;
}

/** JSON as qemu-img prints it: four-space indentation. */
export function jsonText(value: unknown): string {
  return `${JSON.stringify(value, null, 4)}\n`;
}

export async function runInfo(argv: readonly string[], io: ImgIo): Promise<number> {
  const args = parseImgArgv(argv, {
    command: COMMAND,
    shortValues: ['f'],
    shortFlags: ['U'],
    longValues: ['output'],
    longFlags: ['backing-chain', 'force-share'],
  });
  const file = onlyFile(args.positionals, COMMAND);
  const output = outputOption(args.value('output'), COMMAND);
  const format = formatOption(args.value('f'), '-f');
  const chain: ImageInfo[] = [];
  let next: { path: string; format: typeof format } | undefined = { path: file, format };
  while (next !== undefined) {
    const image = await openImgImage(next.path, { format: next.format, readOnly: true });
    let info: ImageInfo;
    try {
      info = await describeImage(image);
    } finally {
      await image.backend.close();
    }
    chain.push(info);
    next = undefined;
    if (args.flag('backing-chain') && info['full-backing-filename'] !== undefined) {
      const backingFormat = info['backing-filename-format'];
      next = {
        path: info['full-backing-filename'],
        format: backingFormat === undefined ? undefined : formatOption(backingFormat, 'backing format'),
      };
    }
  }
  if (output === 'json') io.out(jsonText(args.flag('backing-chain') ? chain : chain[0]));
  else io.out(chain.map(humanInfo).join('\n'));
  return 0;
}
