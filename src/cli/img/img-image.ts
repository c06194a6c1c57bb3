/**
 * Opening the images `ringvm img` works on: the format given with `-f`, or probed from the file's first bytes
 * the way qemu-img probes (a host administrator's tool run on the administrator's own files; `ringvm serve`
 * never probes, see docs/cli.md). Every failure is an {@link ImgError} naming the file, or the back end's own
 * typed error (a `Qcow2Error` for a bad or corrupt image), whose message names it too.
 */
import { stat } from 'node:fs/promises';
import { BlockBackendError } from '../../backends/block/block-backend-error.js';
import { detectImageFormat, Qcow2Image } from '../../backends/block/qcow2/index.js';
import { RawFileBackend } from '../../backends/block/raw-file.js';
import { describeHostError, ImgError } from './img-error.js';

export const IMG_FORMATS = ['raw', 'qcow2'] as const;
export type ImgFormat = (typeof IMG_FORMATS)[number];

export type OpenedImage =
  | {
      readonly format: 'raw';
      /** The path as the user wrote it. */
      readonly path: string;
      readonly backend: RawFileBackend;
    }
  | { readonly format: 'qcow2'; readonly path: string; readonly backend: Qcow2Image };

/** The `-f` value, checked; undefined when absent (probe). */
export function formatOption(value: string | undefined, option: string): ImgFormat | undefined {
  if (value === undefined) return undefined;
  const found = IMG_FORMATS.find((f) => f === value);
  if (found === undefined) {
    throw new ImgError('BAD_FORMAT', `Unknown file format '${value}' (${option}: raw or qcow2)`, value);
  }
  return found;
}

/** "Could not open 'PATH': REASON" from a back end's open error (which starts with the path itself). */
function openFailure(path: string, e: BlockBackendError): ImgError {
  const reason = e.message.startsWith(`${e.path}: `) ? e.message.slice(e.path.length + 2) : e.message;
  return new ImgError('OPEN_FAILED', `Could not open '${path}': ${reason}`, path, { cause: e });
}

export async function openImgImage(
  path: string,
  options: { readonly format?: ImgFormat | undefined; readonly readOnly: boolean },
): Promise<OpenedImage> {
  // Only regular files are images (a directory or a FIFO would fail, or block, at the first read).
  let st;
  try {
    st = await stat(path);
  } catch (e) {
    throw new ImgError('OPEN_FAILED', `Could not open '${path}': ${describeHostError(e)}`, path, {
      cause: e,
    });
  }
  if (!st.isFile()) {
    const kind = st.isDirectory() ? 'Is a directory' : 'Not a regular file';
    throw new ImgError('OPEN_FAILED', `Could not open '${path}': ${kind}`, path);
  }
  try {
    const format = options.format ?? (await detectImageFormat(path));
    if (format === 'qcow2') {
      return { format, path, backend: await Qcow2Image.open(path, { readOnly: options.readOnly }) };
    }
    return { format, path, backend: await RawFileBackend.open(path, { readOnly: options.readOnly }) };
  } catch (e) {
    if (e instanceof BlockBackendError) throw openFailure(path, e);
    throw e;
  }
}
