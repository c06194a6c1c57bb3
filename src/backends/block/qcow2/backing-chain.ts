/**
 * Backing files (§ Header, backing_file_offset): where a qcow2 image's unallocated clusters read from. The name
 * in the header is resolved as QEMU resolves it — an absolute name as is, a relative one against the directory
 * of the overlay's path — and opened read-only, raw or qcow2 (named by the backing-format extension, otherwise
 * probed). Chains nest to any depth; a missing file or an image that appears twice in one chain is a
 * {@link Qcow2Error} at open time.
 */
import { realpathSync } from 'node:fs';
import { dirname, isAbsolute, join } from 'node:path';
import { RawFileBackend } from '../raw-file.js';
import { Qcow2Error } from './qcow2-error.js';

export type ImageFormat = 'raw' | 'qcow2';

/** What an overlay needs from its backing image: synchronous reads and a size. */
export interface BackingImage {
  readonly path: string;
  readonly format: ImageFormat;
  readonly size: number;
  /** Reads `bufs` at `offset` (inside `[0, size)`). */
  readSync(offset: number, bufs: readonly Uint8Array[]): void;
  close(): Promise<void>;
}

/** The path a backing name refers to, as QEMU combines it with the overlay's path. */
export function resolveBackingPath(overlayPath: string, backingName: string): string {
  return isAbsolute(backingName) ? backingName : join(dirname(overlayPath), backingName);
}

/** The canonical path of an image in a chain (for loop detection); throws BACKING_NOT_FOUND when missing. */
export function canonicalPath(path: string, overlay: string | undefined): string {
  try {
    return realpathSync(path);
  } catch (e) {
    if (overlay === undefined) return path; // the top image: its own open reports a missing file
    throw new Qcow2Error(
      'BACKING_NOT_FOUND',
      overlay,
      `backing file ${path} cannot be opened: no such file`,
      path,
      {
        cause: e,
      },
    );
  }
}

/** Opens a raw backing image for synchronous reads. */
export async function openRawBacking(path: string, overlay: string): Promise<BackingImage> {
  let raw: RawFileBackend;
  try {
    raw = await RawFileBackend.open(path, { readOnly: true, io: 'sync' });
  } catch (e) {
    throw new Qcow2Error(
      'BACKING_NOT_FOUND',
      overlay,
      `backing file ${path} cannot be opened: ${e instanceof Error ? e.message : String(e)}`,
      path,
      { cause: e },
    );
  }
  const read = raw.readvSync;
  if (read === undefined) throw new Error('RawFileBackend with io: sync has readvSync');
  return {
    path,
    format: 'raw',
    size: raw.size,
    readSync: read,
    close: () => raw.close(),
  };
}
