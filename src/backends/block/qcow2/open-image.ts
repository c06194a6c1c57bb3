/**
 * `openImage`: any disk image as a {@link BlockBackend} — qcow2 through {@link Qcow2Image}, raw through
 * {@link RawFileBackend} — with the format named or detected from the file's first bytes.
 *
 * ```ts
 * const disk = await openImage('disk.img', { readOnly: false });            // detected
 * const base = await openImage('base.raw', { readOnly: true, format: 'raw' });
 * ```
 */
import type { BlockBackend } from '../../../devices/blk/block-backend.js';
import { RawFileBackend } from '../raw-file.js';
import type { ImageFormat } from './backing-chain.js';
import { detectFormatOfFile } from './detect-format.js';
import { Qcow2Image } from './qcow2-image.js';

export interface OpenImageOptions {
  readonly readOnly: boolean;
  /** Detected when omitted (qcow2 magic, else raw). */
  readonly format?: ImageFormat | undefined;
  /** qcow2 only: bytes of metadata cache (see Qcow2OpenOptions). */
  readonly cacheBytes?: number | undefined;
  /** raw only: how reads and writes run (see RawFileOpenOptions). */
  readonly io?: 'threads' | 'sync' | undefined;
}

/** The format of the image at `path`: `qcow2` when it starts with the qcow2 magic, otherwise `raw`. */
export function detectImageFormat(path: string): Promise<ImageFormat> {
  return detectFormatOfFile(path);
}

export async function openImage(path: string, opts: OpenImageOptions): Promise<BlockBackend> {
  const format = opts.format ?? (await detectFormatOfFile(path));
  if (format === 'qcow2') {
    return Qcow2Image.open(path, {
      readOnly: opts.readOnly,
      ...(opts.cacheBytes === undefined ? {} : { cacheBytes: opts.cacheBytes }),
    });
  }
  return RawFileBackend.open(path, {
    readOnly: opts.readOnly,
    ...(opts.io === undefined ? {} : { io: opts.io }),
  });
}
