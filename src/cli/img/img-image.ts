/**
 * Opening the images `ringvm img` works on: the format given with `-f`, or probed from the file's first bytes
 * the way qemu-img probes (a host administrator's tool run on the administrator's own files; `ringvm serve`
 * never probes, see docs/cli.md). Every failure is an {@link ImgError} naming the file.
 */
import { promises as fs } from 'node:fs';
import { BlockBackendError } from '../../backends/block/block-backend-error.js';
import type { MapExtent } from '../../backends/block/map-extent.js';
import { RawFileBackend } from '../../backends/block/raw-file.js';
import type { BlockBackend } from '../../devices/blk/block-backend.js';
import { describeHostError, ImgError } from './img-error.js';

export const IMG_FORMATS = ['raw', 'qcow2'] as const;
export type ImgFormat = (typeof IMG_FORMATS)[number];

/** A block back end that can also say how its disk is stored. */
export interface MappableBackend extends BlockBackend {
  map(): Iterable<MapExtent> | AsyncIterable<MapExtent>;
}

export interface OpenedImage {
  readonly format: 'raw';
  /** The path as the user wrote it. */
  readonly path: string;
  readonly backend: RawFileBackend;
}

/** The first 4 bytes of a qcow2 image: `QFI\xfb`. */
const QCOW2_MAGIC = 0x514649fb;

/** The `-f` value, checked; undefined when absent (probe). */
export function formatOption(value: string | undefined, option: string): ImgFormat | undefined {
  if (value === undefined) return undefined;
  const found = IMG_FORMATS.find((f) => f === value);
  if (found === undefined) {
    throw new ImgError('BAD_FORMAT', `Unknown file format '${value}' (${option}: raw or qcow2)`, value);
  }
  return found;
}

/** What the file looks like: qcow2 when it starts with the qcow2 magic, raw otherwise. */
export async function probeFormat(path: string): Promise<ImgFormat> {
  let handle: fs.FileHandle;
  try {
    handle = await fs.open(path, 'r');
  } catch (e) {
    throw new ImgError('OPEN_FAILED', `Could not open '${path}': ${describeHostError(e)}`, path, {
      cause: e,
    });
  }
  try {
    const head = Buffer.alloc(4);
    const { bytesRead } = await handle.read(head, 0, 4, 0);
    return bytesRead === 4 && head.readUInt32BE(0) === QCOW2_MAGIC ? 'qcow2' : 'raw';
  } catch (e) {
    throw new ImgError('OPEN_FAILED', `Could not read '${path}': ${describeHostError(e)}`, path, {
      cause: e,
    });
  } finally {
    await handle.close();
  }
}

export async function openImgImage(
  path: string,
  options: { readonly format?: ImgFormat | undefined; readonly readOnly: boolean },
): Promise<OpenedImage> {
  const format = options.format ?? (await probeFormat(path));
  if (format === 'qcow2') {
    throw new ImgError('BAD_FORMAT', `'${path}': qcow2 images are not supported by this build yet`, path);
  }
  try {
    const backend = await RawFileBackend.open(path, { readOnly: options.readOnly });
    return { format, path, backend };
  } catch (e) {
    if (e instanceof BlockBackendError) {
      const reason = e.message.startsWith(`${e.path}: `) ? e.message.slice(e.path.length + 2) : e.message;
      throw new ImgError('OPEN_FAILED', `Could not open '${path}': ${reason}`, path, { cause: e });
    }
    throw e;
  }
}
